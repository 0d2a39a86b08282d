"""zwave-server down at start, restarted or cut off mid-run: typed errors, honest health, and
every change at the door reported once, whether it came while the link was up or down."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from aiohttp import WSMsgType, web

from drivers.zwave import ZWaveDriver
from drivers.zwave.commands import LinkLost
from drivers.zwave.driver import STOP_TIMEOUT_S
from gatewayd.config import ZWaveConfig
from gatewayd.daemon import DB_NAME
from gatewayd.driver import DriverContext, DriverState
from gatewayd.model import (
    ClearCode,
    Device,
    DeviceError,
    DeviceNotFound,
    EventName,
    GatewayError,
    Lock,
    PinCode,
    SetCode,
    Unlock,
)
from gatewayd.registry import Registry
from gatewayd.store import Store
from gatewayd.upstream import Upstream
from tests.contract.sink import RecordingSink
from tests.proxy import FaultProxy
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


async def test_a_zwave_server_that_hangs_after_the_upgrade_is_left_no_open_socket(
    tmp_path: Path, tasks: Tasks
) -> None:
    """zwave-server takes the websocket upgrade, then sends nothing (no version, no state dump):
    each connect attempt times out and closes the websocket it opened. Before, every attempt
    left its socket open (our pings kept it alive) until the driver stopped: on a box whose
    zwave-server hung, one file descriptor more per reconnect, for weeks."""
    upgrades = 0
    open_sockets = 0

    async def hang(request: web.Request) -> web.StreamResponse:
        nonlocal upgrades, open_sockets
        if upgrades >= 3:  # no more upgrades: only the attempts already made hold sockets
            raise web.HTTPServiceUnavailable
        upgrades += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        open_sockets += 1
        try:
            async for msg in ws:  # answers pings; ends when the client closes
                assert msg.type is not WSMsgType.ERROR
        finally:
            open_sockets -= 1
        return ws

    app = web.Application()
    app.router.add_get("/", hang)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = ZWaveConfig(
        enabled=True, url=f"ws://127.0.0.1:{port}", connect_timeout_s=0.3, reconnect_max_s=0.2
    )
    driver = ZWaveDriver(config, DriverContext(tmp_path, tasks.spawn))
    try:
        await driver.start(RecordingSink())
        await until(lambda: upgrades == 3)
        await until(lambda: open_sockets == 0, timeout=5)
        assert driver.health().state is DriverState.DOWN
    finally:
        await driver.stop()
        await runner.cleanup()


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
        await sink.wait_event(b, EventName.DOOR_UNLOCKED, timeout=30)
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


@asynccontextmanager
async def proxied_driver(
    stack: ZWaveStack, tmp_path: Path, tasks: Tasks, sink: RecordingSink
) -> AsyncIterator[tuple[FaultProxy, ZWaveDriver]]:
    """A driver, reporting to `sink`, that reaches `stack`'s zwave-server through a FaultProxy:
    a cut link leaves zwave-server hearing the locks while the gateway does not."""
    proxy = await FaultProxy(target_port=stack.ws_port).start()
    try:
        cfg = make_config(stack, url=f"ws://127.0.0.1:{proxy.port}", reconnect_max_s=0.5)
        driver = ZWaveDriver(cfg, DriverContext(tmp_path, tasks.spawn))
        await driver.start(sink)
        await sink.wait_for(lambda: len(sink.devices) == stack.locks, timeout=30)
        yield proxy, driver
        await driver.stop()
    finally:
        await proxy.close()


@asynccontextmanager
async def behind_proxy(
    tmp_path: Path, tasks: Tasks
) -> AsyncIterator[tuple[ZWaveStack, FaultProxy, ZWaveDriver, RecordingSink]]:
    """A stack of two locks of its own, and a `proxied_driver` in front of it."""
    stack = ZWaveStack(tmp_path / "stack", locks=2)
    try:
        await anyio.to_thread.run_sync(stack.start)
        sink = RecordingSink()
        async with proxied_driver(stack, tmp_path, tasks, sink) as (proxy, driver):
            yield stack, proxy, driver, sink
    finally:
        stack.stop()


async def _while_cut(proxy: FaultProxy, driver: ZWaveDriver, act: Callable[[], object]) -> None:
    """Cut the gateway's link, run act at the door, let the driver reconnect."""
    proxy.refuse = True
    proxy.cut()
    await until(lambda: driver.health().state is DriverState.DOWN, timeout=10)
    await anyio.to_thread.run_sync(act)
    await anyio.sleep(0.5)
    proxy.refuse = False
    await until(lambda: driver.health().state is DriverState.READY, timeout=20)


async def test_a_low_battery_while_the_link_was_down_is_reported_after_the_reconnect(
    tmp_path: Path, tasks: Tasks
) -> None:
    """zwave-server takes the lock's 15 % battery report while the gateway's link is down: after
    the reconnect the lock shows 15 % and one "low battery" event goes out, as when the link is
    up. Before, the low state was taken over silently and the event never sent."""
    async with behind_proxy(tmp_path, tasks) as (stack, proxy, driver, sink):
        dev = sink.ids[native_id(3)]
        mark = len(sink.events)
        await _while_cut(proxy, driver, lambda: stack.control(3, "battery", level=0.15))
        await sink.wait_for(
            lambda: sink.devices[dev].properties.battery_level == pytest.approx(0.15), timeout=10
        )
        await sink.wait_event(dev, EventName.LOW_BATTERY, timeout=30, after=mark)
        await anyio.sleep(1.5)  # a repeat would be in by now
        names = [e.event_name for e in sink.events[mark:] if e.device_id == dev]
        assert names == [EventName.LOW_BATTERY]


async def test_a_door_opened_while_the_link_was_down_is_reported_after_the_reconnect(
    tmp_path: Path, tasks: Tasks
) -> None:
    """The door is opened while the gateway's link is down (zwave-server hears it). After the
    reconnect the door shows open and one "door opened" event goes out, as for the bolt.
    Before, the driver never read the door state from the lock again: closed, no event."""
    async with behind_proxy(tmp_path, tasks) as (stack, proxy, driver, sink):
        dev = sink.ids[native_id(2)]
        assert sink.devices[dev].properties.door_open is False
        mark = len(sink.events)
        await _while_cut(proxy, driver, lambda: stack.control(2, "door_open"))
        await sink.wait_for(lambda: sink.devices[dev].properties.door_open is True, timeout=10)
        await sink.wait_event(dev, EventName.DOOR_OPENED, timeout=30, after=mark)
        await anyio.sleep(1.5)  # a repeat would be in by now
        names = [e.event_name for e in sink.events[mark:] if e.device_id == dev]
        assert names == [EventName.DOOR_OPENED]


class _CutOnUnlocked(RecordingSink):
    """Cuts the link the moment the driver first shows the lock unlocked."""

    proxy: FaultProxy | None = None
    dev: str | None = None

    def device_updated(self, device: Device) -> None:
        super().device_updated(device)
        if self.proxy is not None and device.id == self.dev and device.properties.locked is False:
            self.proxy.refuse = True
            self.proxy.cut()
            self.proxy = None


async def test_a_bolt_that_moved_before_the_link_dropped_mid_unlock_is_reported(
    zwave_stack: ZWaveStack, tmp_path: Path, tasks: Tasks
) -> None:
    """The lock unlocks and zwave-js says so (the driver shows it unlocked), then the link drops
    before the read-back's answer. The action may fail, but the door did unlock: one "door
    unlocked" event goes out. Before, the change seen during our own command was left to the
    command's confirmation, which never came; after the reconnect the state already matched."""
    zwave_stack.reset()
    sink = _CutOnUnlocked()
    async with proxied_driver(zwave_stack, tmp_path, tasks, sink) as (proxy, driver):
        dev = sink.ids[native_id(2)]
        # The cut races the read-back's answer when both come in one TCP read (then the action
        # completes and is reported as remote): three tries make the loss show on almost every
        # run without the fix.
        wrong: list[object] = []
        for _ in range(3):
            await anyio.to_thread.run_sync(zwave_stack.reset)  # bolt locked again
            await sink.wait_for(lambda: sink.devices[dev].properties.locked is True, timeout=10)
            await anyio.sleep(1.5)  # the reset's own reports are in
            mark = len(sink.events)
            sink.dev, sink.proxy = dev, proxy
            outcome: object = "completed"
            try:
                with anyio.fail_after(10):
                    await driver.execute(dev, Unlock())
            except DeviceError as exc:
                outcome = exc
            assert zwave_stack.control(2, "state")["locked"] is False  # the door did unlock
            proxy.refuse = False
            await until(lambda: driver.health().state is DriverState.READY, timeout=20)
            with anyio.move_on_after(30):  # a lost event is counted below
                await sink.wait_event(dev, EventName.DOOR_UNLOCKED, timeout=30, after=mark)
            await anyio.sleep(1.5)  # a repeat would be in by now
            names = [e.event_name for e in sink.events[mark:] if e.device_id == dev]
            if names != [EventName.DOOR_UNLOCKED]:
                wrong.append((outcome, names))
        assert wrong == []


@pytest.mark.parametrize("frozen", [False, True], ids=["answering", "frozen"])
async def test_stop_after_the_daemon_cancelled_the_driver_tasks_returns_within_its_bound(
    frozen: bool, zwave_stack: ZWaveStack, tmp_path: Path, tasks: Tasks
) -> None:
    """Shutdown in the daemon's order: its task group, the connection task with it, is
    cancelled, then stop() is called under DRIVER_STOP_TIMEOUT_S, a limit that cannot cut
    stop()'s shielded waits. stop() returns within its own bound, whether zwave-server still
    answers or has frozen (the link stays up, nothing comes back), and the driver is stopped.
    Before, stop() waited 5 s, shielded, for the end of a connection task already gone."""
    zwave_stack.reset()
    sink = RecordingSink()
    bound = STOP_TIMEOUT_S + 2  # generous: stop() gives up on its own after STOP_TIMEOUT_S
    async with proxied_driver(zwave_stack, tmp_path, tasks, sink) as (proxy, driver):
        proxy.blackhole = frozen
        for task in tasks.tasks:
            task.cancel()
        _, running = await asyncio.wait(tasks.tasks, timeout=bound)
        assert running == set()
        # in a task of its own: a shielded wait in stop() cannot be cut from here
        stopping = asyncio.ensure_future(driver.stop())
        finished, _ = await asyncio.wait({stopping}, timeout=bound)
        assert finished == {stopping}, f"stop() still running after {bound} s"
        stopping.result()
        assert driver.health().state is DriverState.STOPPED
        assert driver.devices() == []
        with anyio.fail_after(bound):
            await driver.stop()  # again: nothing left to wait for


async def test_zwave_server_restarted_on_another_controller_never_drives_its_locks(
    tmp_path: Path, tasks: Tasks
) -> None:
    """zwave-server restarted on another controller (a second stick, a typo in its config): its
    node 2 is another door. This network's locks go offline and commands for them are refused;
    the other network's locks are devices of their own; back on this network, all is as before."""
    other_home_id = 0x0BADF00D
    home = ZWaveStack(tmp_path / "home", locks=2)
    other = ZWaveStack(tmp_path / "other", locks=2, home_id=other_home_id)
    other.ws_port = home.ws_port  # the gateway's url is unchanged
    try:
        await anyio.to_thread.run_sync(home.start)
        await anyio.to_thread.run_sync(other.start_mock)
        sink = RecordingSink()
        driver = ZWaveDriver(make_config(home), DriverContext(tmp_path, tasks.spawn))
        await driver.start(sink)
        await sink.wait_for(lambda: len(sink.devices) == 2, timeout=30)
        front = sink.ids[native_id(2)]

        home.stop_server()
        await until(lambda: driver.health().state is DriverState.DOWN, timeout=10)
        await anyio.to_thread.run_sync(other.start_server)
        await until(
            lambda: driver.health().details.get("home_id") == f"{other_home_id:08x}", timeout=30
        )
        with anyio.fail_after(10), pytest.raises(DeviceNotFound):
            await driver.execute(front, Unlock())
        assert other.control(2, "state")["locked"] is True  # the other network's door stayed shut
        assert sink.devices[front].properties.online is False
        theirs = native_id(2, other_home_id)
        await sink.wait_for(lambda: sink.ids.get(theirs) in sink.devices, timeout=30)
        assert sink.ids[theirs] != front

        other.stop_server()
        await until(lambda: driver.health().state is DriverState.DOWN, timeout=10)
        await anyio.to_thread.run_sync(home.start_server)
        await sink.wait_for(lambda: sink.devices[front].properties.online is True, timeout=30)
        assert sink.devices[sink.ids[theirs]].properties.online is False
        await driver.execute(front, Unlock())
        assert home.control(2, "state")["locked"] is False
        await driver.stop()
    finally:
        other.stop()
        home.stop()


async def test_a_lock_of_the_network_zwave_server_left_can_be_unpaired_once_the_radio_is_up(
    tmp_path: Path, tasks: Tasks
) -> None:
    """After zwave-server moved to another controller, the locks of the network it left stay
    in the store and the cloud, offline, and no radio can reach them: the operator's
    unpair_devices naming one removes it, as it would after a restart, but not while the
    radio is down (the server may come back on that network, with that lock on it)."""
    other_home_id = 0x0BADF00D
    home = ZWaveStack(tmp_path / "home", locks=2)
    other = ZWaveStack(tmp_path / "other", locks=2, home_id=other_home_id)
    other.ws_port = home.ws_port  # the gateway's url is unchanged
    store = Store.open(tmp_path / DB_NAME)
    driver = ZWaveDriver(make_config(home), DriverContext(tmp_path, tasks.spawn))
    try:
        await anyio.to_thread.run_sync(home.start)
        await anyio.to_thread.run_sync(other.start_mock)
        registry = Registry(store, Upstream(store))
        await driver.start(registry.attach(driver))
        await until(lambda: len(registry.devices()) == 2, timeout=30)
        front, back = (store.device_id("zwave", native_id(n)) for n in (2, 3))

        home.stop_server()
        await until(lambda: driver.health().state is DriverState.DOWN, timeout=10)
        await anyio.to_thread.run_sync(other.start_server)
        theirs = native_id(2, other_home_id)
        await until(lambda: any(d.native_id == theirs for d in registry.devices()), timeout=30)
        ghost = registry.device(front)
        assert ghost is not None
        assert ghost.properties.online is False

        other.stop_server()  # the radio is down: the ghost is kept
        await until(lambda: driver.health().state is DriverState.DOWN, timeout=10)
        with anyio.fail_after(10), pytest.raises(DeviceError, match="radio is down"):
            await registry.unpair(10, front)
        assert store.knows_device(front)

        await anyio.to_thread.run_sync(other.start_server)
        await until(lambda: driver.health().state is DriverState.READY, timeout=30)
        with anyio.fail_after(10):
            await registry.unpair(10, front)
        assert not store.knows_device(front)
        assert registry.device(front) is None
        assert store.knows_device(back)  # only the one named
        with anyio.fail_after(10), pytest.raises(DeviceNotFound):
            await registry.unpair(10, front)  # gone, and said so
        assert store.flush()
        frames = [json.loads(frame) for _, frame in store.outbox_after(0)]
        removed = [f["device_id"] for f in frames if f["type"] == "device_removed"]
        assert removed == [front]
    finally:
        await driver.stop()
        store.close()
        other.stop()
        home.stop()


async def test_a_lock_removed_from_the_network_while_zwave_server_was_away_is_removed(
    tmp_path: Path, tasks: Tasks
) -> None:
    """A lock excluded (or removed as failed) through another client while the link was down
    sends us no "node removed": zwave-server's node list after the reconnect, which is
    complete, no longer has it. Before, it stayed listed for the rest of the run, and every
    command and unpair naming it answered device_not_found, until the daemon restarted."""
    stack = ZWaveStack(tmp_path / "home", locks=2)
    driver = ZWaveDriver(make_config(stack), DriverContext(tmp_path, tasks.spawn))
    try:
        await anyio.to_thread.run_sync(stack.start)
        sink = RecordingSink()
        await driver.start(sink)
        await sink.wait_for(lambda: len(sink.devices) == 2, timeout=30)
        front, back = sink.ids[native_id(2)], sink.ids[native_id(3)]

        stack.stop_server()
        await until(lambda: driver.health().state is DriverState.DOWN, timeout=10)
        assert stack.remove_node(3) == [2]
        await anyio.to_thread.run_sync(stack.start_server)
        await until(lambda: driver.health().state is DriverState.READY, timeout=30)
        with anyio.fail_after(5):
            await sink.wait_for(lambda: back in sink.removed)
        assert sink.removed == [back]
        assert [d.id for d in driver.devices()] == [front]
        assert driver.health().details["locks"] == 1
        await driver.execute(front, Unlock())  # the lock still on the network: as before
        assert stack.control(2, "state")["locked"] is False
    finally:
        await driver.stop()
        stack.stop()


async def test_a_jam_or_tamper_while_the_link_was_down_is_reported_after_the_reconnect(
    tmp_path: Path, tasks: Tasks
) -> None:
    """zwave-server takes the lock's jam and tamper notifications while the gateway's link is
    down (zwave-js keeps them as the "Lock state" and "Cover status" values): after the
    reconnect the lock shows jammed, and one "door jammed" and one "tampered" go out, as when
    the link is up. Before, the values were taken over in silence: both events were lost and
    the lock was shown not jammed."""
    async with behind_proxy(tmp_path, tasks) as (stack, proxy, driver, sink):
        dev = sink.ids[native_id(3)]
        mark = len(sink.events)

        def jam_and_tamper() -> None:
            stack.control(3, "jam")
            stack.control(3, "tamper")

        await _while_cut(proxy, driver, jam_and_tamper)
        await sink.wait_for(lambda: sink.devices[dev].properties.jammed is True, timeout=10)
        await sink.wait_event(dev, EventName.DOOR_JAMMED, timeout=30, after=mark)
        await sink.wait_event(dev, EventName.TAMPERED, timeout=30, after=mark)
        await anyio.sleep(1.5)  # a repeat would be in by now
        names = [e.event_name for e in sink.events[mark:] if e.device_id == dev]
        assert sorted(names) == sorted([EventName.DOOR_JAMMED, EventName.TAMPERED])


async def test_a_jam_cleared_while_the_link_was_down_is_no_longer_shown(
    tmp_path: Path, tasks: Tasks
) -> None:
    """The lock jams (reported), then someone turns the bolt by hand while the gateway's link
    is down, which clears the jam (zwave-js idles "Lock state"). After the reconnect the lock
    shows unlocked and not jammed. Before, it went on showing jammed until its next bolt
    notification."""
    async with behind_proxy(tmp_path, tasks) as (stack, proxy, driver, sink):
        dev = sink.ids[native_id(3)]
        stack.control(3, "jam")
        await sink.wait_for(lambda: sink.devices[dev].properties.jammed is True, timeout=10)
        mark, reads = len(sink.events), driver.resyncs
        await _while_cut(proxy, driver, lambda: stack.control(3, "manual_unlock"))
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is False, timeout=10)
        await until(lambda: driver.resyncs > reads, timeout=30)  # the reconnect's reads are in
        await sink.wait_event(dev, EventName.DOOR_UNLOCKED, timeout=30, after=mark)
        await anyio.sleep(1.5)  # a repeat would be in by now
        assert sink.devices[dev].properties.jammed is False
        names = [e.event_name for e in sink.events[mark:] if e.device_id == dev]
        assert names == [EventName.DOOR_UNLOCKED]


async def test_an_alarm_v1_jam_while_the_link_was_down_is_reported_after_the_reconnect(
    tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock of Notification CC version 1 (no zwave-js alarm mapping) says its jam only as
    Alarm CC v1 type 9, which zwave-server keeps as the alarmType / alarmLevel values while the
    gateway's link is down: after the reconnect the lock shows jammed and one "door jammed"
    goes out, as for a later version's lock (its "Lock state" value). A hand on the thumb turn
    while the link is down again (alarm type 22) ends the jam, reported as the unlock the bolt
    read finds. Before, the jam was taken over in silence: no event, the lock shown not jammed.
    (Its method: see the alarm v1 keypad unlock test below.)"""
    monkeypatch.setenv("ZWAVE_MOCK_NOTIFICATION_V1", "1")
    async with behind_proxy(tmp_path, tasks) as (stack, proxy, driver, sink):
        dev = sink.ids[native_id(2)]
        mark = len(sink.events)
        await _while_cut(proxy, driver, lambda: stack.control(2, "alarm_raw", type=9, level=0))
        await sink.wait_for(lambda: sink.devices[dev].properties.jammed is True, timeout=10)
        await sink.wait_event(dev, EventName.DOOR_JAMMED, timeout=30, after=mark)
        await anyio.sleep(1.5)  # a repeat would be in by now
        assert [e.event_name for e in sink.events[mark:] if e.device_id == dev] == [
            EventName.DOOR_JAMMED
        ]

        def turn_by_hand() -> None:
            stack.control(2, "manual_unlock")
            stack.control(2, "alarm_raw", type=22, level=1)

        mark, reads = len(sink.events), driver.resyncs
        await _while_cut(proxy, driver, turn_by_hand)
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is False, timeout=10)
        await until(lambda: driver.resyncs > reads, timeout=30)  # the reconnect's reads are in
        await sink.wait_event(dev, EventName.DOOR_UNLOCKED, timeout=30, after=mark)
        await anyio.sleep(1.5)  # a repeat would be in by now
        assert sink.devices[dev].properties.jammed is False
        assert [e.event_name for e in sink.events[mark:] if e.device_id == dev] == [
            EventName.DOOR_UNLOCKED
        ]


def _door_events(sink: RecordingSink, dev: str, mark: int) -> list[tuple[str, dict[str, object]]]:
    return [(str(e.event_name), dict(e.details)) for e in sink.events[mark:] if e.device_id == dev]


async def _events_once_settled(
    sink: RecordingSink, dev: str, mark: int, awaited: EventName
) -> list[tuple[str, dict[str, object]]]:
    """The device's events since `mark`, once `awaited` is among them and a repeat of it
    would be in too."""
    await sink.wait_event(dev, awaited, timeout=30, after=mark)
    await anyio.sleep(1.5)
    return _door_events(sink, dev, mark)


@pytest.mark.parametrize("node", [2, 3], ids=["unmapped", "mapped"])
async def test_an_alarm_v1_keypad_unlock_while_the_link_was_down_keeps_its_method_and_slot(
    node: int, tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Notification CC version 1 lock is unlocked with the code of slot 3 while the gateway's
    link is down: zwave-server keeps its Door Lock report and its Alarm CC v1 type 19 (level 3).
    After the reconnect one "door unlocked" goes out with method `pin_code` and slot 3, as when
    the link is up. An alarm older than the bolt it finds (the bolt locked again afterwards,
    by something that sent no alarm) names no move: no unlock is made up. The same for a lock
    whose zwave-js device file maps its alarms (Yale YRD226 ZW2): the notification zwave-js made
    of the alarm went to no one. Before, the unlock went up as method `unknown`, without its
    slot."""
    monkeypatch.setenv("ZWAVE_MOCK_NOTIFICATION_V1", "1")
    async with behind_proxy(tmp_path, tasks) as (stack, proxy, driver, sink):
        dev = sink.ids[native_id(node)]
        await until(lambda: driver.resyncs >= 1, timeout=30)

        def keypad_unlock() -> None:
            stack.control(node, "mode_raw", mode=0x00)
            stack.control(node, "alarm_raw", type=19, level=3)

        mark = len(sink.events)
        await _while_cut(proxy, driver, keypad_unlock)
        assert await _events_once_settled(sink, dev, mark, EventName.DOOR_UNLOCKED) == [
            ("door unlocked", {"method": "pin_code", "slot_id": 3})
        ]

        def keypad_unlock_then_lock_without_alarm() -> None:
            stack.control(node, "alarm_raw", type=19, level=4)
            stack.control(node, "mode_raw", mode=0xFF)  # e.g. locked by another controller

        mark = len(sink.events)
        await _while_cut(proxy, driver, keypad_unlock_then_lock_without_alarm)
        await sink.wait_event(dev, EventName.DOOR_LOCKED, timeout=30, after=mark)
        await anyio.sleep(1.5)  # a false unlock would be in by now
        assert _door_events(sink, dev, mark) == [("door locked", {"method": "unknown"})]


@pytest.mark.parametrize("node", [2, 3], ids=["unmapped", "mapped"])
async def test_an_alarm_v1_code_change_at_the_keypad_while_the_link_was_down_is_reported(
    node: int, tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A code added at the keypad of a Notification CC version 1 lock while the gateway's link
    is down (Alarm CC v1 type 112, alarmLevel the slot, kept by zwave-server) goes up after the
    reconnect as "code set on device", as when the link is up; once: a later reconnect does not
    repeat it, nor one the driver reported while the link was up; the same for a lock whose
    alarms zwave-js maps to notifications. Before, it was lost."""
    monkeypatch.setenv("ZWAVE_MOCK_NOTIFICATION_V1", "1")
    async with behind_proxy(tmp_path, tasks) as (stack, proxy, driver, sink):
        dev = sink.ids[native_id(node)]
        mark = len(sink.events)
        stack.control(node, "alarm_raw", type=33, level=4)  # heard: reported now, not again
        await sink.wait_event(dev, EventName.CODE_REMOVED, timeout=30, after=mark)
        await _while_cut(proxy, driver, lambda: None)
        await _while_cut(proxy, driver, lambda: stack.control(node, "alarm_raw", type=112, level=4))
        await sink.wait_event(dev, EventName.CODE_SET, timeout=30, after=mark)
        await _while_cut(proxy, driver, lambda: None)
        await anyio.sleep(1.5)  # a repeat would be in by now
        assert _door_events(sink, dev, mark) == [
            ("code removed from device", {"slot_id": 4, "method": "keypad"}),
            ("code set on device", {"slot_id": 4, "method": "keypad"}),
        ]


async def test_a_mapped_alarm_v1_jam_while_the_link_was_down_is_one_event(
    tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Notification CC version 1 lock whose alarms zwave-js maps (Yale YRD226 ZW2) jams while
    the gateway's link is down: zwave-js keeps the mapped notification's "Lock state" value as
    well as the alarmType / alarmLevel. After the reconnect one "door jammed" goes out. Before,
    the state value and the alarm's replay each reported it: two."""
    monkeypatch.setenv("ZWAVE_MOCK_NOTIFICATION_V1", "1")
    async with behind_proxy(tmp_path, tasks) as (stack, proxy, driver, sink):
        dev = sink.ids[native_id(3)]
        mark = len(sink.events)
        await _while_cut(proxy, driver, lambda: stack.control(3, "alarm_raw", type=9, level=0))
        await sink.wait_event(dev, EventName.DOOR_JAMMED, timeout=30, after=mark)
        await anyio.sleep(1.5)  # a repeat would be in by now
        assert sink.devices[dev].properties.jammed is True
        assert _door_events(sink, dev, mark) == [("door jammed", {})]


async def test_a_masked_set_cut_off_by_the_link_drop_is_ours_when_its_alarm_v1_comes_late(
    tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set_code on a lock that masks its read-back waits for the lock's "code added"; the
    link to zwave-server drops first, the set fails ("connection lost before the lock
    confirmed"), and the lock's Alarm CC v1 type 112 for the slot is what zwave-server took
    meanwhile. Replayed after a reconnect later than the late-set window, it is our own set
    carried out: "code set on device" with method `remote`, as for a set that timed out.
    Before, it went up as a change at the keypad (method `keypad`)."""
    from drivers.zwave import driver as zwave_driver

    monkeypatch.setenv("ZWAVE_MOCK_NOTIFICATION_V1", "1")
    monkeypatch.setattr(zwave_driver, "OWN_ECHO_S", 1.0)  # a late word's window, shorter
    async with behind_proxy(tmp_path, tasks) as (stack, proxy, driver, sink):
        dev = sink.ids[native_id(2)]
        lock = driver._locks[2]
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("1234")))  # read back after
        stack.control(2, "readback_raw", status=1, code=list(b"****"))  # the next read-back
        mark = len(sink.events)
        setting = asyncio.ensure_future(
            driver.execute(dev, SetCode(slot_id=4, code=PinCode("4711")))
        )
        await until(lambda: lock.masked, timeout=10)  # the set waits for the lock's word

        def code_added_then_a_late_reconnect() -> None:
            stack.control(2, "alarm_raw", type=112, level=4)
            time.sleep(1.5)

        await _while_cut(proxy, driver, code_added_then_a_late_reconnect)
        with pytest.raises(DeviceError, match="connection to zwave-server lost"):
            await setting
        assert await _events_once_settled(sink, dev, mark, EventName.CODE_SET) == [
            ("code set on device", {"slot_id": 4, "method": "remote"})
        ]


async def test_a_set_cut_off_by_the_link_drop_before_its_read_back_is_ours_when_its_word_comes(
    tmp_path: Path, tasks: Tasks
) -> None:
    """The link to zwave-server drops while a User Code Set (or its read-back) is on the mesh,
    not yet answered: the set fails (`LinkLost`: the connection lost, or down for its read-back),
    and the lock's "user code added" for the slot, heard after the reconnect, is that set
    carried out: "code set on device" with method `remote`. Before, only a set already waiting
    for the lock's word was marked so, and this one went up as a change at the keypad."""
    async with behind_proxy(tmp_path, tasks) as (stack, proxy, driver, sink):
        dev = sink.ids[native_id(2)]
        stack.control(2, "fault", kind="no_reply")  # the Set goes unanswered
        mark = len(sink.events)
        setting = asyncio.ensure_future(
            driver.execute(dev, SetCode(slot_id=4, code=PinCode("4711")))
        )
        await until(lambda: bool(stack.control(2, "state")["swallowing"]), timeout=10)
        await _while_cut(proxy, driver, lambda: None)
        with pytest.raises(LinkLost):  # the link dropped, or was down for its read-back
            await setting
        stack.control(2, "fault", kind="none")
        stack.control(2, "notify_raw", type=6, event=14, params=[4])  # "user code added"
        assert await _events_once_settled(sink, dev, mark, EventName.CODE_SET) == [
            ("code set on device", {"slot_id": 4, "method": "remote"})
        ]


async def test_a_clear_cut_off_by_the_link_drop_is_ours_when_its_alarm_v1_comes_late(
    tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link to zwave-server drops while a clear of the slot (its User Code Set) is on the
    mesh, not yet answered: the clear fails (`LinkLost`, as a set), and the lock's
    Alarm CC v1 type 33 for the slot ("code deleted"), taken by zwave-server meanwhile and
    replayed after a reconnect later than the echo window, is that clear carried out: "code
    removed from device" with method `remote`. Before, the clear's window was not restarted at
    the reconnect, and it went up as a change at the keypad (method `keypad`)."""
    from drivers.zwave import driver as zwave_driver

    monkeypatch.setenv("ZWAVE_MOCK_NOTIFICATION_V1", "1")
    monkeypatch.setattr(zwave_driver, "OWN_ECHO_S", 1.0)  # a late word's window, shorter
    async with behind_proxy(tmp_path, tasks) as (stack, proxy, driver, sink):
        dev = sink.ids[native_id(2)]
        await driver.execute(dev, SetCode(slot_id=4, code=PinCode("4711")))
        mark = len(sink.events)
        stack.control(2, "fault", kind="no_reply")  # the clear goes unanswered
        clearing = asyncio.ensure_future(driver.execute(dev, ClearCode(slot_id=4)))
        await until(lambda: bool(stack.control(2, "state")["swallowing"]), timeout=10)

        def code_deleted_then_a_late_reconnect() -> None:
            stack.control(2, "alarm_raw", type=33, level=4)
            time.sleep(1.5)

        await _while_cut(proxy, driver, code_deleted_then_a_late_reconnect)
        with pytest.raises(LinkLost):  # the link dropped, or was down for its read-back
            await clearing
        assert await _events_once_settled(sink, dev, mark, EventName.CODE_REMOVED) == [
            ("code removed from device", {"slot_id": 4, "method": "remote"})
        ]
