"""zwave-server down at start or restarted mid-run: typed errors, honest health, no repeats."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from drivers.zwave import ZWaveDriver
from gatewayd.driver import DriverContext, DriverState
from gatewayd.model import DeviceError, GatewayError, Lock, Unlock
from tests.contract.sink import RecordingSink
from tests.zwave.conftest import Tasks, make_config, until
from tests.zwave.stack import ZWaveStack, native_id

pytestmark = pytest.mark.stack


async def test_server_down_at_start_then_up(tmp_path: Path, tasks: Tasks) -> None:
    stack = ZWaveStack(tmp_path / "stack", locks=1)
    try:
        stack.start_mock()
        sink = RecordingSink()
        driver = ZWaveDriver(make_config(stack), DriverContext(tmp_path, tasks.spawn))
        with anyio.fail_after(15):
            await driver.start(sink)  # must not raise
        health = driver.health()
        assert health.state is DriverState.DOWN
        assert health.last_error
        assert sink.devices == {}
        await anyio.to_thread.run_sync(stack.start_server)
        await sink.wait_for(lambda: len(sink.devices) == 1, timeout=30)
        assert driver.health().state is DriverState.READY
        dev = sink.ids[native_id(2)]
        await driver.execute(dev, Unlock())
        await driver.stop()
    finally:
        stack.stop()


async def test_server_restart_resyncs_without_repeating_events(
    tmp_path: Path, tasks: Tasks
) -> None:
    stack = ZWaveStack(tmp_path / "stack", locks=2)
    try:
        await anyio.to_thread.run_sync(stack.start)
        sink = RecordingSink()
        driver = ZWaveDriver(make_config(stack), DriverContext(tmp_path, tasks.spawn))
        await driver.start(sink)
        await sink.wait_for(lambda: len(sink.devices) == 2, timeout=30)
        a, b = sink.ids[native_id(2)], sink.ids[native_id(3)]
        await driver.execute(a, Unlock())

        stack.stop_server()
        await until(lambda: driver.health().state is DriverState.DOWN, timeout=10)
        with anyio.fail_after(5), pytest.raises(DeviceError, match="zwave-server"):
            await driver.execute(a, Lock())
        # while the gateway cannot hear it, someone unlocks lock b by hand
        stack.control(3, "manual_unlock")

        await anyio.to_thread.run_sync(stack.start_server)
        await until(lambda: driver.health().state is DriverState.READY, timeout=30)
        await sink.wait_for(lambda: sink.devices[b].properties.locked is False, timeout=10)
        await anyio.sleep(1.5)
        assert sink.names(a) == ["door unlocked"]  # nothing repeated for lock a
        assert sink.names(b) == ["door unlocked"]  # the change made while away: once
        assert driver.health().details["reconnects"] >= 1
        await driver.execute(a, Lock())
        assert sink.names(a) == ["door unlocked", "door locked"]
        await driver.stop()
    finally:
        stack.stop()


async def test_server_killed_mid_command_ends_typed(tmp_path: Path, tasks: Tasks) -> None:
    stack = ZWaveStack(tmp_path / "stack", locks=1)
    try:
        await anyio.to_thread.run_sync(stack.start)
        sink = RecordingSink()
        driver = ZWaveDriver(make_config(stack), DriverContext(tmp_path, tasks.spawn))
        await driver.start(sink)
        await sink.wait_for(lambda: len(sink.devices) == 1, timeout=30)
        dev = sink.ids[native_id(2)]
        stack.control(2, "fault", kind="delay", delay_s=3)

        async def kill_soon() -> None:
            await anyio.sleep(0.5)
            stack.stop_server()

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_soon)
            with anyio.fail_after(10), pytest.raises(GatewayError):
                await driver.execute(dev, Unlock())
        assert driver.health().state is DriverState.DOWN
        await driver.stop()
    finally:
        stack.stop()
