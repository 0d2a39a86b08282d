"""gatewayd: drives Z-Wave and Zigbee door locks and keeps one secure tunnel to the cloud API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gatewayd")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
