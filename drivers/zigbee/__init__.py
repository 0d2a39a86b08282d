"""Zigbee door locks through zigpy; zigpy itself is imported only when the driver starts."""

from drivers.zigbee.driver import ZigbeeDriver

__all__ = ["ZigbeeDriver"]
