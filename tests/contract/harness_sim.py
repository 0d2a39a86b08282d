"""Contract harness for the simulated-lock driver: no stack, two locks, a little latency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from drivers.sim import SimDriver
from gatewayd.driver import Driver, DriverContext, SimConfig, Spawn
from tests.contract.sink import RecordingSink

UNSUPPORTED: frozenset[str] = frozenset()  # the sim does everything the contract asks
ACTION_DEADLINE_S = 1.0

CONFIG = SimConfig(enabled=True, locks=2, latency_ms=5.0, pair_delay_s=0.05)


@asynccontextmanager
async def open_driver(tmp_path: Path, sink: RecordingSink, spawn: Spawn) -> AsyncIterator[Driver]:
    """Start a SimDriver with two locks in tmp_path; stop it after."""
    driver = SimDriver(CONFIG, DriverContext(state_dir=tmp_path, spawn=spawn))
    await driver.start(sink)
    await sink.wait_for(lambda: len(sink.devices) >= CONFIG.locks)
    try:
        yield driver
    finally:
        await driver.stop()
