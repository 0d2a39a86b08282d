"""Contract harness for the Z-Wave driver: the real zwave-js stack with two mock locks.

zwave-js's mock-server runs the locks (tests/zwave/mock/locks.cjs) behind a real zwave-server on
free loopback ports; a third lock waits in inclusion mode so `pair` has something to include.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from drivers.zwave import ZWaveDriver
from gatewayd.driver import Driver, DriverContext, DriverState, Spawn, ZWaveConfig
from tests.contract.sink import RecordingSink
from tests.zwave.stack import ZWaveStack

UNSUPPORTED: dict[str, str] = {
    # zwave-js 15.29's mock controller answers RemoveNodeFromNetwork with "ready" but never runs
    # a node through exclusion, and has no RemoveFailedNode: a lock cannot leave the mock network.
    "unpair": "the zwave-js mock controller implements neither exclusion nor failed-node removal",
}
ACTION_DEADLINE_S = 5.0
LOCKS = 2


@asynccontextmanager
async def open_driver(tmp_path: Path, sink: RecordingSink, spawn: Spawn) -> AsyncIterator[Driver]:
    """Start the stack, construct the driver with >= 2 locks, await driver.start(sink), wait until
    the locks are reported and ready, yield; stop driver and stack after."""
    stack = ZWaveStack(tmp_path / "zwave-stack", locks=LOCKS)
    try:
        await anyio.to_thread.run_sync(stack.start)
        config = ZWaveConfig(
            enabled=True,
            url=stack.url,
            code_recheck_s=0.5,
            connect_timeout_s=5.0,
            interview_timeout_s=30.0,
            reconnect_max_s=2.0,
            mock_control_url=stack.control_url,
        )
        driver = ZWaveDriver(config, DriverContext(state_dir=tmp_path, spawn=spawn))
        await driver.start(sink)
        await sink.wait_for(
            lambda: (
                len(sink.devices) >= LOCKS
                and all(d.properties.locked is not None for d in sink.devices.values())
            ),
            timeout=30,
        )
        assert driver.health().state is DriverState.READY, driver.health()
        try:
            yield driver
        finally:
            await driver.stop()
    finally:
        await anyio.to_thread.run_sync(stack.stop)
