"""gatewayd: drives Z-Wave and Zigbee door locks and keeps one secure tunnel to the cloud API."""

# pyproject.toml's version, written here: read through importlib.metadata, it imported zipfile and
# csv into every daemon. tests/unit/test_imports.py keeps the two equal.
__version__ = "0.1.0"
