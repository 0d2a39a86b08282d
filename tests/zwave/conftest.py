"""Fixtures: one real zwave-js stack per session (mock locks + zwave-server), a driver per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from drivers.zwave import ZWaveDriver
from gatewayd.config import ZWaveConfig
from gatewayd.driver import DriverContext
from tests.contract.sink import RecordingSink
from tests.zwave.stack import ZWaveStack


def running_stack(workdir: Path, **kw: Any) -> Iterator[ZWaveStack]:
    """A stack of its own (`ZWaveStack` keywords), started, and stopped afterwards: the body of
    a stack fixture."""
    stack = ZWaveStack(workdir, **kw)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def _session_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZWaveStack]:
    yield from running_stack(tmp_path_factory.mktemp("zwave"), locks=3)


@pytest.fixture
def zwave_stack(_session_stack: ZWaveStack) -> ZWaveStack:
    """The session's stack, its processes started again if one is gone: a test that froze or
    stopped one of them and failed before it was back must not fail every test after it."""
    if not _session_stack.alive():
        _session_stack.stop()
        _session_stack.start()
    return _session_stack


class Tasks:
    """A Spawn for tests: named asyncio tasks, cancelled at teardown."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def spawn(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await fn()

        self.tasks.append(asyncio.get_running_loop().create_task(run(), name=name))

    async def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def make_config(stack: ZWaveStack, **kw: object) -> ZWaveConfig:
    opts: dict[str, object] = {
        "enabled": True,
        "url": stack.url,
        "code_recheck_s": 1.5,
        "connect_timeout_s": 5.0,
        "interview_timeout_s": 30.0,
        "reconnect_max_s": 2.0,
        "mock_control_url": stack.control_url,
    }
    opts.update(kw)
    return ZWaveConfig(**opts)  # type: ignore[arg-type]


@pytest.fixture
async def tasks() -> AsyncIterator[Tasks]:
    t = Tasks()
    yield t
    await t.cancel()


@pytest.fixture
async def zwave(
    zwave_stack: ZWaveStack, tmp_path: Path, tasks: Tasks
) -> AsyncIterator[tuple[ZWaveDriver, RecordingSink]]:
    """A started driver that sees all mock locks, with the mock reset to a clean state."""
    async for started in started_driver(zwave_stack, tmp_path, tasks):
        yield started


async def started_driver(
    stack: ZWaveStack, tmp_path: Path, tasks: Tasks
) -> AsyncIterator[tuple[ZWaveDriver, RecordingSink]]:
    """The body of a driver fixture: the stack reset, a driver started that sees all its
    locks, stopped afterwards."""
    async with driver_with(stack, tmp_path, tasks) as started:
        yield started


@asynccontextmanager
async def driver_with(
    stack: ZWaveStack, tmp_path: Path, tasks: Tasks, **config: object
) -> AsyncIterator[tuple[ZWaveDriver, RecordingSink]]:
    """The stack reset, a driver (`make_config` keywords) started that sees all its locks;
    stopped at the end, however the block ends."""
    stack.reset()
    sink = RecordingSink()
    driver = ZWaveDriver(make_config(stack, **config), DriverContext(tmp_path, tasks.spawn))
    await driver.start(sink)
    try:
        await sink.wait_for(lambda: len(sink.devices) == stack.locks, timeout=30)
        yield driver, sink
    finally:
        await driver.stop()


@asynccontextmanager
async def own_stack(
    tmp_path: Path, tasks: Tasks, *, locks: int, **config: object
) -> AsyncIterator[tuple[ZWaveStack, ZWaveDriver, RecordingSink]]:
    """A stack of its own (for a mock set up by environment variables, or one a test changes
    for good), started, with a driver on it as `driver_with` makes one; both stopped at the
    end."""
    stack = ZWaveStack(tmp_path / "stack", locks=locks)
    try:
        await anyio.to_thread.run_sync(stack.start)
        async with driver_with(stack, tmp_path, tasks, **config) as (driver, sink):
            yield stack, driver, sink
    finally:
        await anyio.to_thread.run_sync(stack.stop)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition nothing notifies about (driver health), failing after timeout."""
    import anyio

    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)


async def started_read(driver: ZWaveDriver) -> None:
    """Wait until the driver's start-up read of every bolt is done: a raw report (`mode_raw`,
    `notify_raw`) sent before it ends may be overtaken by its answer, and taken in silently."""
    await until(lambda: driver.resyncs >= 1, timeout=30)
