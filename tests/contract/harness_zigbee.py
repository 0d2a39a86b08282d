"""Contract harness for the Zigbee driver: zigpy's real stack over the virtual radio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from drivers.zigbee import ZigbeeDriver
from gatewayd.driver import Driver, DriverContext, DriverState, Spawn, ZigbeeConfig
from tests.contract.sink import RecordingSink

UNSUPPORTED: dict[str, str] = {
    "inventory": "zigpy's device database is not the network's member list: see its docstring",
}
ACTION_DEADLINE_S = 5.0

CONFIG = ZigbeeConfig(
    enabled=True,
    radio_type="virtual",
    virtual_locks=2,
    virtual_joining_locks=1,
    command_timeout_s=8.0,  # longer than the deadline: FAULT no_reply must outlast it
    report_wait_s=1.0,
    event_merge_s=0.2,
    availability_s=0.5,
)


@asynccontextmanager
async def open_driver(tmp_path: Path, sink: RecordingSink, spawn: Spawn) -> AsyncIterator[Driver]:
    """Start the driver on the virtual radio; the two installed locks join and are interviewed."""
    driver = ZigbeeDriver(CONFIG, DriverContext(state_dir=tmp_path, spawn=spawn))
    await driver.start(sink)
    try:
        await sink.wait_for(
            lambda: (
                len(sink.devices) >= CONFIG.virtual_locks
                and all(d.properties.locked is not None for d in sink.devices.values())
                and driver.health().state is DriverState.READY
            ),
            timeout=30,
        )
        yield driver
    finally:
        await driver.stop()
