"""Contract harness for the Z-Wave driver: the real zwave-js stack with two mock locks.

zwave-js's mock-server runs the locks (tests/zwave/mock/locks.cjs) behind a real zwave-server on
free loopback ports; a third lock waits in inclusion mode so `pair` has something to include.

The node processes are started once, by the first test that needs them, and stopped when the
test process exits; they hold no asyncio state, so every test's event loop can use them. Each
test gets a fresh driver, and before it the mock's control channel puts every lock back in a
clean state (no faults, no codes, bolt locked, door closed, online) and, once a lock has been
included, puts another in inclusion mode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from drivers.zwave import ZWaveDriver
from gatewayd.driver import Driver, DriverContext, DriverState, Spawn, ZWaveConfig
from tests.contract.sink import RecordingSink
from tests.zwave.stack import native_id, shared_stack

UNSUPPORTED: dict[str, str] = {
    # zwave-js 15.29's mock controller answers RemoveNodeFromNetwork with "ready" but never runs
    # a node through exclusion; the failed-node removal tests/zwave/mock/locks.cjs adds takes
    # only a lock gone offline, and a node removed stays removed for every later test of the
    # shared stack (tests/zwave/test_codes.py removes one on a stack of its own).
    "unpair": "the zwave-js mock controller runs no exclusion of a lock that is online",
}
ACTION_DEADLINE_S = 5.0
LOCKS = 2  # = tests.zwave.stack.SHARED_LOCKS


@asynccontextmanager
async def open_driver(tmp_path: Path, sink: RecordingSink, spawn: Spawn) -> AsyncIterator[Driver]:
    """Reset the shared stack's locks, start a driver on it, wait until every lock in the
    network is reported locked and online, yield; stop the driver after."""
    stack = await anyio.to_thread.run_sync(shared_stack)
    assert stack.locks == LOCKS
    network = await anyio.to_thread.run_sync(stack.reset)
    expected = {native_id(n) for n in network["nodes"]}
    assert len(expected) >= LOCKS, network
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

    def clean() -> bool:
        reported = {d.native_id: d.properties for d in sink.devices.values()}
        return expected <= set(reported) and all(
            p.locked is True and p.online is True for p in reported.values()
        )

    try:
        await driver.start(sink)
        await sink.wait_for(clean, timeout=30)
        assert driver.health().state is DriverState.READY, driver.health()
        yield driver
    finally:
        await driver.stop()
