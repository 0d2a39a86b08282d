"""A person at the door: keypad, thumb turn, jam, battery, tamper, radio loss — one event each."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from drivers.zwave import ZWaveDriver
from drivers.zwave.events import ACCESS_CONTROL
from gatewayd.driver import Simulation
from gatewayd.model import DeviceError, DeviceOffline, EventName, Lock, Method, Unlock
from tests.contract.sink import RecordingSink
from tests.zwave.conftest import Tasks, driver_with, started_read, until
from tests.zwave.stack import ZWaveStack, native_id

pytestmark = pytest.mark.stack


async def _quiet(seconds: float = 1.5) -> None:
    await anyio.sleep(seconds)  # let any late duplicate arrive before counting


async def test_keypad_unlock_names_the_slot_once(zwave: tuple[ZWaveDriver, RecordingSink]) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await driver.simulate(dev, Simulation.KEYPAD_UNLOCK, {"slot_id": 7})
    ev = await sink.wait_event(dev, "door unlocked")  # type: ignore[arg-type]
    assert ev.details == {"method": "pin_code", "slot_id": 7}
    await sink.wait_for(lambda: sink.devices[dev].properties.locked is False)
    await driver.simulate(dev, Simulation.MANUAL_LOCK, {})
    ev = await sink.wait_event(dev, "door locked")  # type: ignore[arg-type]
    assert ev.details == {"method": "manual"}
    await _quiet()
    assert sink.names(dev) == ["door unlocked", "door locked"]


async def test_a_keypad_lock_that_names_a_code_is_pin_code_with_its_slot(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """Access Control 0x05 (keypad lock) naming user 3: the door was locked with the code in
    slot 3, `pin_code` with the slot, as the Zigbee driver reports a keypad Lock that names a
    user. Before, it went up as method `keypad` (the lock button) with a slot_id."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await driver.simulate(dev, Simulation.MANUAL_UNLOCK, {})
    await sink.wait_for(lambda: sink.devices[dev].properties.locked is False)
    mark = len(sink.events)

    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x05, params=[3])

    ev = await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
    assert ev.details == {"method": "pin_code", "slot_id": 3}


async def test_a_lock_or_unlock_with_a_user_code_names_the_slot_once(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """Access Control 0x22 / 0x21 (Notification v8 "unlock / lock operation with User Code",
    the user as zwave-js's "user ID"), each followed by the lock's Door Lock report: one event
    each, `pin_code` with the slot. zwave-js infers no bolt state from these events; before,
    the unlock went up as `unknown` with no slot, or was lost when no report followed."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await started_read(driver)
    mark = len(sink.events)
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x22, params=[5])
    zwave_stack.control(2, "mode_raw", mode=0x00)
    ev = await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark)
    assert ev.details == {"method": "pin_code", "slot_id": 5}
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x21, params=[4])
    ev = await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
    assert ev.details == {"method": "pin_code", "slot_id": 4}
    zwave_stack.control(2, "mode_raw", mode=0xFF)
    await _quiet()
    assert [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev] == [
        ("door unlocked", {"method": "pin_code", "slot_id": 5}),
        ("door locked", {"method": "pin_code", "slot_id": 4}),
    ]
    assert sink.devices[dev].properties.locked is True


async def test_a_notification_seconds_after_its_bolt_report_is_no_second_event(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """The lock reports its bolt first and says what moved it seconds later (a busy mesh, a
    lock that sends its notification late): the report went up alone after the merge window,
    and the notification is the same move, no second event. Before, a notification more than
    3 s after that event was a second `door unlocked` for one turn of the bolt. The lock's
    next move, notification first, is its own event."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    # the driver's start-up bolt read answered first: that read sets the bolt without an event,
    # and a bare report it overtakes (no notification names the move) would go up as no event
    await started_read(driver)
    mark = len(sink.events)
    zwave_stack.control(2, "mode_raw", mode=0x00)
    await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark)
    await anyio.sleep(3.5)
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x06, params=[5])
    await _quiet()
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x05, params=[4])
    zwave_stack.control(2, "mode_raw", mode=0xFF)
    await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
    await _quiet()
    assert [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev] == [
        ("door unlocked", {"method": "unknown"}),
        ("door locked", {"method": "pin_code", "slot_id": 4}),
    ]


async def test_a_bolt_read_after_a_raw_report_answers_the_reported_bolt(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """The mock's `mode_raw` and an Access Control bolt event by `notify_raw` move its bolt as
    they report, so the driver's bolt read after them (the start-up read, which tests may
    overtake, or a reconnect's) answers the same. Before, the read answered the bolt they had
    left, and took the report back with a false event: tests that sent them right after
    start-up were flaky."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await started_read(driver)  # the start-up read answered (see below)
    mark = len(sink.events)
    unlocked = ("door unlocked", {"method": "unknown"})
    zwave_stack.control(2, "mode_raw", mode=0x00)
    await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark)
    await driver._resync(first=False)
    await _quiet()
    assert [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev] == [
        unlocked
    ]
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x05)  # keypad lock
    await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
    await driver._resync(first=False)
    await _quiet()
    assert [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev] == [
        unlocked,
        ("door locked", {"method": "keypad"}),
    ]
    assert sink.devices[dev].properties.locked is True


async def test_keypad_lock_jam_wrong_code_tamper_battery(
    zwave: tuple[ZWaveDriver, RecordingSink],
) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(3)]
    await driver.simulate(dev, Simulation.MANUAL_UNLOCK, {})
    await sink.wait_event(dev, "door unlocked")  # type: ignore[arg-type]
    await driver.simulate(dev, Simulation.KEYPAD_LOCK, {})
    ev = await sink.wait_event(dev, "door locked")  # type: ignore[arg-type]
    assert ev.details == {"method": "keypad"}
    await driver.simulate(dev, Simulation.JAM, {})
    await sink.wait_event(dev, "door jammed")  # type: ignore[arg-type]
    assert sink.devices[dev].properties.jammed is True
    await driver.simulate(dev, Simulation.WRONG_CODE, {})
    await sink.wait_event(dev, "keypad invalid code")  # type: ignore[arg-type]
    await driver.simulate(dev, Simulation.TAMPER, {})
    await sink.wait_event(dev, "tampered")  # type: ignore[arg-type]
    await driver.simulate(dev, Simulation.BATTERY, {"level": 0.15})
    ev = await sink.wait_event(dev, "low battery")  # type: ignore[arg-type]
    assert sink.devices[dev].properties.battery_level == pytest.approx(0.15)
    await driver.simulate(dev, Simulation.BATTERY, {"level": 0.9})
    await sink.wait_for(lambda: sink.devices[dev].properties.battery_level == pytest.approx(0.9))
    await _quiet(0.5)
    assert sink.names(dev).count("low battery") == 1


async def test_offline_lock_fails_fast_and_comes_back(
    zwave: tuple[ZWaveDriver, RecordingSink],
) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await driver.simulate(dev, Simulation.OFFLINE, {})
    await sink.wait_event(dev, "device disconnected", timeout=15)  # type: ignore[arg-type]
    assert sink.devices[dev].properties.online is False
    assert driver.health().state.value == "degraded"
    with anyio.fail_after(5):
        with pytest.raises(DeviceOffline):
            await driver.execute(dev, Unlock())
    await driver.simulate(dev, Simulation.ONLINE, {})
    await sink.wait_event(dev, "device connected", timeout=15)  # type: ignore[arg-type]
    await driver.execute(dev, Unlock())
    assert sink.devices[dev].properties.online is True


async def test_a_lock_marked_dead_is_pinged_and_served_once_it_answers(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """zwave-js marks a node dead on a missed frame, and only a frame from the node marks it
    alive again. Refused unpinged, a lock back in reach failed every command with
    `device_offline` until it happened to send something on its own, hours later perhaps."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await driver.simulate(dev, Simulation.OFFLINE, {})
    await sink.wait_for(lambda: sink.devices[dev].properties.online is False, timeout=20)
    zwave_stack.control(2, "online")  # in reach again; nothing pings it
    with anyio.fail_after(15):
        await driver.execute(dev, Unlock())
    assert zwave_stack.control(2, "state")["locked"] is False
    await sink.wait_for(lambda: sink.devices[dev].properties.online is True, timeout=10)
    await driver.execute(dev, Lock())


async def test_a_lock_that_refuses_or_does_not_answer_fails_typed(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(3)]
    await driver.simulate(dev, Simulation.FAULT, {"kind": "refuse"})
    with pytest.raises(DeviceError, match="reports it is locked"):
        await driver.execute(dev, Unlock())
    assert sink.devices[dev].properties.locked is True
    await driver.simulate(dev, Simulation.FAULT, {"kind": "no_reply"})
    with pytest.raises(TimeoutError), anyio.fail_after(3):
        await driver.execute(dev, Unlock())  # asked until the deadline cuts it
    await driver.execute(dev, Lock())  # the fault hit one command only
    assert zwave_stack.control(3, "state")["locked"] is True
    assert "door unlocked" not in sink.names(dev)
    await driver.simulate(dev, Simulation.FAULT, {"kind": "delay", "delay_s": 0.3})
    await driver.execute(dev, Unlock())  # slow, but confirmed
    assert sink.names(dev)[-1] == "door unlocked"


async def test_door_open_and_closed(zwave: tuple[ZWaveDriver, RecordingSink]) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(4)]
    await driver.simulate(dev, Simulation.DOOR_OPEN, {})
    await sink.wait_event(dev, "door opened")  # type: ignore[arg-type]
    assert sink.devices[dev].properties.door_open is True
    await driver.simulate(dev, Simulation.DOOR_CLOSE, {})
    await sink.wait_event(dev, "door closed")  # type: ignore[arg-type]
    assert sink.devices[dev].properties.door_open is False
    await _quiet(0.5)
    assert sink.names(dev) == ["door opened", "door closed"]


async def test_a_late_echo_of_our_own_command_is_not_a_second_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lock's RF notification for our unlock may arrive seconds later (a busy mesh, a
    server restart replaying it): it repeats what the remote event said and must not repeat it."""
    import time as real_time

    from drivers.zwave.events import BoltTracker
    from gatewayd.model import Method

    fired: list[tuple[str, dict[str, object]]] = []
    tracker = BoltTracker(
        lambda name, details: fired.append((str(name), details)), 1.0, lambda: None
    )
    tracker.seed(True)
    tracker.begin_command()
    tracker.on_value(False)  # zwave-js's own inference while our command runs: no event
    tracker.end_command(confirmed=True)
    tracker.commanded(False)
    now = real_time.monotonic()
    monkeypatch.setattr("drivers.zwave.events.time.monotonic", lambda: now + 30.0)
    tracker.on_notification(False, Method.RF, None)  # the echo, 30 s late
    tracker.on_notification(False, Method.PIN_CODE, 3)  # a person at the keypad: a real event
    tracker.on_notification(True, Method.RF, None)  # a real change by RF: an event
    assert fired == [
        ("door unlocked", {"method": "remote"}),
        ("door unlocked", {"method": "pin_code", "slot_id": 3}),
        ("door locked", {"method": "rf"}),
    ]


def test_a_bolt_change_seen_during_a_command_that_fails_is_one_event() -> None:
    """Our command fails (link lost, deadline) after the lock was seen to move: the change is
    still reported, once, with the method the lock gave; one a notification already reported
    is not repeated. Before, such a change waited for the command's confirmation: none came."""
    from drivers.zwave.events import BoltTracker
    from gatewayd.model import Method

    fired: list[tuple[str, dict[str, object]]] = []
    tracker = BoltTracker(
        lambda name, details: fired.append((str(name), details)), 1.0, lambda: None
    )
    tracker.seed(True)
    tracker.begin_command()
    tracker.on_notification(False, Method.RF, None)  # taken for the echo of our command
    tracker.on_value(False)
    tracker.end_command(confirmed=False)
    tracker.begin_command()
    tracker.on_value(True)  # no notification at all
    tracker.end_command(confirmed=False)
    tracker.begin_command()
    tracker.on_notification(False, Method.MANUAL, None)  # a hand on the thumb turn: reported
    tracker.on_value(False)
    tracker.end_command(confirmed=False)
    tracker.begin_command()
    tracker.end_command(confirmed=False)  # nothing moved: nothing to say
    assert fired == [
        ("door unlocked", {"method": "rf"}),
        ("door locked", {"method": "unknown"}),
        ("door unlocked", {"method": "manual"}),
    ]


async def test_a_bolt_read_overtaken_by_the_lock_s_reports_is_not_applied() -> None:
    """The driver reads each bolt at start and after a reconnect; the lock unlocks and locks at
    the keypad while the read is under way, and zwave-js answered the read with the unlock's
    report. Applied after them, the read showed the door unlocked without an event, and the
    next report of the locked bolt was a second `door locked`. (Seen with the mock lock: a
    keypad unlock and lock right after the driver started.)"""
    from drivers.zwave.events import BoltTracker
    from gatewayd.model import Method

    fired: list[tuple[str, dict[str, object]]] = []
    tracker = BoltTracker(
        lambda name, details: fired.append((str(name), details)), 0.1, lambda: None
    )
    tracker.seed(True)
    mark = tracker.read_mark()  # the read goes out
    tracker.on_notification(False, Method.PIN_CODE, 5)
    tracker.on_value(False)  # the report that answers the read
    tracker.on_notification(True, Method.PIN_CODE, 4)
    tracker.on_read(False, mark, first=True)  # the read's answer, taken in late
    assert tracker.locked is True
    tracker.on_value(True)
    await _quiet(0.3)
    tracker.on_read(True, tracker.read_mark(), first=False)  # a read after them counts
    mark = tracker.read_mark()
    tracker.on_read(False, mark, first=False)
    await _quiet(0.3)
    assert fired == [
        ("door unlocked", {"method": "pin_code", "slot_id": 5}),
        ("door locked", {"method": "pin_code", "slot_id": 4}),
        ("door unlocked", {"method": "unknown"}),
    ]


async def test_a_start_up_read_answered_by_a_turn_before_its_report_is_one_event() -> None:
    """The bolt is turned by hand while the start-up read waits for the lock; zwave-js takes the
    turn's report for the read's answer, and the answer reaches the driver before the report's
    value update (seen on the mock lock, 1 run in 3). Taken in silently as a start-up read, the
    turn had no event: the value update after it changed nothing."""
    from drivers.zwave.events import BoltTracker

    fired: list[tuple[str, dict[str, object]]] = []
    tracker = BoltTracker(
        lambda name, details: fired.append((str(name), details)), 0.1, lambda: None
    )
    tracker.seed(True)
    tracker.on_read(False, tracker.read_mark(), first=True)  # the turn's report, as the answer
    tracker.on_value(False)  # its value update
    await _quiet(0.3)
    assert fired == [("door unlocked", {"method": "unknown"})]
    assert tracker.locked is False
    never_known = BoltTracker(
        lambda name, details: fired.append((str(name), details)), 0.1, lambda: None
    )
    never_known.on_read(True, never_known.read_mark(), first=True)
    await _quiet(0.3)
    assert never_known.locked is True
    assert len(fired) == 1  # a bolt never known is taken in without an event


async def test_late_notifications_of_a_turn_and_its_move_back_are_two_events() -> None:
    """The bolt is turned and turned back within the merge window, both value updates coming
    before the notifications that name them. The first turn goes up when the bolt goes back,
    with no method; its notification, late, is that turn, not a third move. Before, it was
    reported again and undid the move back's pending event: two unlocks, the bolt shown
    unlocked until the move back's own notification."""
    from drivers.zwave.events import BoltTracker
    from gatewayd.model import Method

    fired: list[tuple[str, dict[str, object]]] = []
    tracker = BoltTracker(
        lambda name, details: fired.append((str(name), details)), 0.2, lambda: None
    )
    tracker.seed(True)
    tracker.on_value(False)
    tracker.on_value(True)
    tracker.on_notification(False, Method.MANUAL, None)
    assert tracker.locked is True
    tracker.on_notification(True, Method.MANUAL, None)
    await _quiet(0.5)
    assert fired == [
        ("door unlocked", {"method": "unknown"}),
        ("door locked", {"method": "manual"}),
    ]
    assert tracker.locked is True


async def test_a_door_read_overtaken_by_the_lock_s_report_is_not_applied(
    zwave: tuple[ZWaveDriver, RecordingSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconnect read of a lock answers "door closed"; the door opens before the driver
    takes that answer in. Applied after the open, the read showed the door closed again with
    a false `door closed` event."""
    from zwave_js_server.model.node import Node

    driver, sink = zwave
    dev = sink.ids[native_id(4)]
    real_invoke = Node.async_invoke_cc_api

    async def read_then_door_opens(node: Node, *args: Any, **kwargs: Any) -> Any:
        answer = await real_invoke(node, *args, **kwargs)
        if node.node_id == 4:  # the answer says closed; the lock reports the door open
            await driver.simulate(dev, Simulation.DOOR_OPEN, {})
            await sink.wait_event(dev, "door opened")  # type: ignore[arg-type]
        return answer

    monkeypatch.setattr(Node, "async_invoke_cc_api", read_then_door_opens)
    await driver._resync(first=False)
    await _quiet(0.3)
    assert sink.devices[dev].properties.door_open is True
    assert sink.names(dev) == ["door opened"]


async def test_a_door_moved_during_the_start_up_read_is_one_event_if_its_answer_comes_first(
    zwave: tuple[ZWaveDriver, RecordingSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The door of a lock whose door state is known (closed) opens while the start-up read
    waits for the lock, and the read's answer ("open") reaches the driver before the door's
    own reports. One `door opened`, as for the bolt. Before, a start-up read took any door
    state in silently: the reports after it changed nothing, and the open went unreported."""
    from collections.abc import Callable

    from zwave_js_server.model.node import Node

    driver, sink = zwave
    dev = sink.ids[native_id(4)]
    await started_read(driver)
    assert sink.devices[dev].properties.door_open is False
    held: list[Callable[[], None]] = []
    on_value, on_notification = driver._on_value, driver._on_notification

    def hold_value(node_id: int, value: Any) -> None:
        held.append(lambda: on_value(node_id, value))

    def hold_notification(node_id: int, event: dict[str, Any]) -> None:
        held.append(lambda: on_notification(node_id, event))

    real_invoke = Node.async_invoke_cc_api

    async def door_opens_during_the_read(node: Node, *args: Any, **kwargs: Any) -> Any:
        if node.node_id == 4:
            monkeypatch.setattr(driver, "_on_value", hold_value)
            monkeypatch.setattr(driver, "_on_notification", hold_notification)
            await driver.simulate(dev, Simulation.DOOR_OPEN, {})
            await until(lambda: bool(held))  # the door's report is in, held back
        return await real_invoke(node, *args, **kwargs)

    monkeypatch.setattr(Node, "async_invoke_cc_api", door_opens_during_the_read)
    mark = len(sink.events)
    await driver._resync(first=True)
    monkeypatch.setattr(driver, "_on_value", on_value)
    monkeypatch.setattr(driver, "_on_notification", on_notification)
    for report in held:  # the door's reports, after the read's answer
        report()
    await _quiet(0.5)
    assert sink.devices[dev].properties.door_open is True
    assert [str(e.event_name) for e in sink.events[mark:] if e.device_id == dev] == ["door opened"]


async def test_a_mock_control_channel_out_of_reach_is_a_typed_error(
    zwave_stack: ZWaveStack, tmp_path: Path, tasks: Tasks
) -> None:
    """simulate() on a mock whose control channel does not answer: a DeviceError (the status
    API's typed 400), not aiohttp's ClientConnectorError (a 500)."""
    import socket

    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        async with driver_with(zwave_stack, tmp_path, tasks, mock_control_url=url) as (
            driver,
            sink,
        ):
            dev = sink.ids[native_id(4)]
            with pytest.raises(DeviceError, match="mock control channel"):
                await driver.simulate(dev, Simulation.DOOR_OPEN, {})


async def test_a_frozen_zwave_server_takes_the_driver_down_and_fails_commands_typed(
    zwave_stack: ZWaveStack, tmp_path: Path, tasks: Tasks
) -> None:
    """zwave-server stopped answering (SIGSTOP: hung, or a link gone without a close): the
    driver stayed "ready" and a command waited for its deadline with no word. Its websocket is
    pinged now, and a late pong takes the driver down; it comes back when the server does."""
    async with driver_with(zwave_stack, tmp_path, tasks, heartbeat_s=1.0) as (driver, sink):
        dev = sink.ids[native_id(2)]
        os.kill(zwave_stack.server.pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(10), pytest.raises(DeviceError):
                await driver.execute(dev, Unlock())
            assert driver.health().state.value == "down"
        finally:
            os.kill(zwave_stack.server.pid, signal.SIGCONT)
        await until(lambda: driver.health().state.value == "ready", timeout=30)
        await driver.execute(dev, Unlock())


@pytest.mark.parametrize("first", [True, False])
async def test_hand_turns_while_the_bolt_read_waits_for_the_lock_are_one_event_each(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack, first: bool
) -> None:
    """The driver reads the bolt (at start, after a reconnect) and the lock answers late; the
    bolt is turned by hand, then turned and turned back, while the read waits, and the read's
    answer matches the last report. Each turn is one event and the bolt shown is the last one.
    Before, a report without a notification that was followed within the merge window by the
    move back (read or no read) lost its event: only `door locked` went up, for a door that
    had been unlocked; and a start-up read whose answer came before the turn's value update
    took the turn in silently (the tracker test above pins that order down)."""
    import asyncio

    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await started_read(driver)
    for turns in ([0x00], [0x00, 0xFF]):
        mark = len(sink.events)
        zwave_stack.control(2, "fault", kind="delay", delay_s=1.0)
        read = asyncio.ensure_future(driver._resync(first=first))
        await anyio.sleep(0.3)  # the read is at the lock, which answers in 1 s
        for mode in turns:
            zwave_stack.control(2, "mode_raw", mode=mode)
        await read
        zwave_stack.control(2, "fault", kind="none")
        await _quiet()
        names = [str(e.event_name) for e in sink.events[mark:] if e.device_id == dev]
        locked = turns[-1] == 0xFF
        assert names == ["door unlocked", "door locked"][: len(turns)]
        assert sink.devices[dev].properties.locked is locked
        if not locked:
            zwave_stack.control(2, "mode_raw", mode=0xFF)
            await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
            await _quiet(0.5)


async def test_a_late_keypad_notification_after_a_turn_and_back_is_no_second_unlock(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """The bolt is unlocked (a bare report, its notification awaited) and locked back within
    the merge window: one event each, method unknown. Then the keypad's "unlock with slot 3"
    notification of the first move arrives late; zwave-js makes the bolt unlocked of it. The
    lock is read: still locked, the word is dropped. Before, a second `door unlocked` (slot 3)
    went up and the locked door was shown unlocked."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await started_read(driver)
    mark = len(sink.events)
    zwave_stack.control(2, "mode_raw", mode=0x00)
    zwave_stack.control(2, "mode_raw", mode=0xFF)
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x06, params=[3], late=True)
    await _quiet()
    assert [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev] == [
        ("door unlocked", {"method": "unknown"}),
        ("door locked", {"method": "unknown"}),
    ]
    assert sink.devices[dev].properties.locked is True


def _reading_tracker() -> tuple[Any, list[tuple[str, dict[str, object]]], list[int]]:
    """A tracker (merge window 0.1 s), the events it fires, and the read marks of the bolt reads
    it asks for (answered by the test through `on_read`)."""
    from drivers.zwave.events import BoltTracker

    fired: list[tuple[str, dict[str, object]]] = []
    reads: list[int] = []
    tracker = BoltTracker(
        lambda name, details: fired.append((str(name), details)),
        0.1,
        lambda: None,
        lambda: reads.append(tracker.read_mark()),
    )
    return tracker, fired, reads


# what `_a_keypad_word_after_a_turn_and_back` goes up as when the word is a new unlock
TURN_AND_BACK_THEN_THE_KEYPAD = [
    ("door unlocked", {"method": "unknown"}),
    ("door locked", {"method": "unknown"}),
    ("door unlocked", {"method": "pin_code", "slot_id": 3}),
]


def _a_keypad_word_after_a_turn_and_back() -> tuple[
    Any, list[tuple[str, dict[str, object]]], list[int]
]:
    """A `_reading_tracker` locked, turned and back by bare moves, then zwave-js's bolt state and
    the word of a keypad unlock at slot 3: the first turn's word, late, or a new unlock at the
    keypad. The bolt is shown as it was until a read tells (one asked)."""
    tracker, fired, reads = _reading_tracker()
    tracker.seed(True)
    tracker.on_value(False)  # a bare unlock
    tracker.on_value(True)  # and back
    tracker.on_value(False)  # zwave-js's bolt state of the keypad word
    tracker.on_notification(False, Method.PIN_CODE, 3)
    assert tracker.locked is True
    assert len(reads) == 1
    return tracker, fired, reads


async def test_a_new_move_named_like_a_late_word_is_reported_once_the_read_finds_it() -> None:
    """The notification that could be the late word of a move turned back is a new move when
    the bolt read finds the bolt moved: one event, with the notification's method and slot."""
    tracker, fired, reads = _a_keypad_word_after_a_turn_and_back()
    tracker.on_read(False, reads[0], first=False)  # the lock was unlocked again, at the keypad
    await _quiet(0.3)
    assert fired == TURN_AND_BACK_THEN_THE_KEYPAD
    assert tracker.locked is False


async def test_a_late_word_the_read_finds_untrue_does_not_name_the_next_bare_move() -> None:
    """A late keypad word after a turn and back is read: the bolt did not move, the word is
    dropped. A hand turn seconds later, reported bare (its notification still on the way), is
    `unknown` until its word names it `manual`. Before, the dropped word was kept and named
    that turn: `pin_code` slot 3, for a code no one entered."""
    tracker, fired, reads = _a_keypad_word_after_a_turn_and_back()
    tracker.on_read(True, reads[0], first=False)  # still locked: the word was late
    await _quiet(0.3)
    tracker.on_value(False)  # a hand on the thumb turn
    tracker.on_notification(False, Method.MANUAL, None)
    await _quiet(0.3)
    assert fired == [
        ("door unlocked", {"method": "unknown"}),
        ("door locked", {"method": "unknown"}),
        ("door unlocked", {"method": "manual"}),
    ]
    assert tracker.locked is False


async def test_a_late_word_dropped_while_the_move_back_waits_is_used_up() -> None:
    """A turn and back, both bare; the first turn's word (no bolt state of zwave-js: a "user
    code" unlock) comes while the move back waits, and is dropped as that turn's. A keypad
    unlock seconds later, its word first, is a new move: reported at once, no bolt read. Before,
    the dropped word's turn still counted as unnamed: the new unlock waited for a read, and was
    lost with the bolt shown locked when the lock did not answer it."""
    tracker, fired, reads = _reading_tracker()
    tracker.seed(True)
    tracker.on_value(False)
    tracker.on_value(True)
    tracker.on_notification(False, Method.PIN_CODE, 5)  # the first turn's word, late
    tracker.on_notification(True, Method.MANUAL, None)  # the move back's
    await _quiet(0.3)
    tracker.on_notification(False, Method.PIN_CODE, 4)  # a new unlock at the keypad
    await _quiet(0.3)  # the lock answers no read
    assert reads == []
    assert fired == [
        ("door unlocked", {"method": "unknown"}),
        ("door locked", {"method": "manual"}),
        ("door unlocked", {"method": "pin_code", "slot_id": 4}),
    ]
    assert tracker.locked is False


@pytest.mark.parametrize("read_first", [True, False])
async def test_late_words_of_a_turn_and_back_are_no_third_event(read_first: bool) -> None:
    """A hand turn and back, both reported bare; then both words come late, each with the bolt
    state zwave-js makes of it just before. The first word's is read and found untrue; the
    second names the move back already reported, whether the read answers before it or after.
    Before, that bolt state of the first word counted as turning the move back: the second
    word then looked late for it too, the bolt was shown unlocked until a second read, which
    reported the move back again, a second `door locked` (manual)."""
    tracker, fired, reads = _reading_tracker()
    tracker.seed(True)
    tracker.on_value(False)
    tracker.on_value(True)
    tracker.on_value(False)  # the first word, late, and zwave-js's bolt state of it
    tracker.on_notification(False, Method.MANUAL, None)
    if read_first:
        tracker.on_read(True, reads[0], first=False)
    await _quiet(0.3)
    tracker.on_value(True)  # the second word, late
    tracker.on_notification(True, Method.MANUAL, None)
    assert tracker.locked is True
    for mark in list(reads):
        tracker.on_read(True, mark, first=False)
    await _quiet(0.3)
    assert fired == [
        ("door unlocked", {"method": "unknown"}),
        ("door locked", {"method": "unknown"}),
    ]
    assert tracker.locked is True


@pytest.mark.parametrize("ours", [False, True])
async def test_a_word_after_a_newer_move_to_its_state_is_no_second_event(ours: bool) -> None:
    """A hand turn and back, both reported bare; then the bolt is unlocked again (by hand,
    reported bare, or by our command) and a word naming an unlock comes: that newest unlock's
    (or the first one's, late), no new move, as the bolt did not change since. Before, it was
    taken for the late word of the first unlock: the unlocked door was shown locked until a
    bolt read, which then reported a second `door unlocked`."""
    tracker, fired, reads = _reading_tracker()
    tracker.seed(True)
    tracker.on_value(False)
    tracker.on_value(True)
    await _quiet(0.2)
    if ours:
        tracker.begin_command()
        tracker.on_value(False)
        tracker.commanded(False)
        tracker.end_command(confirmed=True)
    else:
        tracker.on_value(False)
    await _quiet(0.2)
    tracker.on_notification(False, Method.PIN_CODE if ours else Method.MANUAL, 3 if ours else None)
    assert tracker.locked is False
    for mark in list(reads):
        tracker.on_read(False, mark, first=False)
    await _quiet(0.2)
    assert fired == [
        ("door unlocked", {"method": "unknown"}),
        ("door locked", {"method": "unknown"}),
        ("door unlocked", {"method": "remote" if ours else "unknown"}),
    ]


async def test_a_late_looking_word_no_read_answers_is_reported_all_the_same() -> None:
    """A turn and back, both bare; then a keypad unlock word (slot 3) that may be the first
    turn's, late, or a new unlock at the keypad. The bolt read that would tell finds no lock
    answering: the word goes up all the same, as the move it names, and the bolt is shown as it
    says until the lock's next report. A duplicate is an audit note; a lost keypad unlock is an
    audit gap. Before, the failed read left the word untold: no event, the door shown locked."""
    tracker, fired, reads = _a_keypad_word_after_a_turn_and_back()
    assert tracker.on_unverified(reads[0]) is Method.PIN_CODE  # no read answered
    await _quiet(0.3)
    assert fired == TURN_AND_BACK_THEN_THE_KEYPAD
    assert tracker.locked is False
    tracker.on_value(True)  # the lock's next report: locked by hand
    tracker.on_notification(True, Method.MANUAL, None)
    await _quiet(0.3)
    assert fired[3:] == [("door locked", {"method": "manual"})]
    assert tracker.on_unverified(reads[0]) is None  # told once


async def test_a_late_looking_word_placed_by_a_report_during_the_reads_is_not_repeated() -> None:
    """The reads fail, but the lock's own report of the move came while they were tried: the
    report placed the word (one event), and the reads' end adds nothing."""
    tracker, fired, reads = _a_keypad_word_after_a_turn_and_back()
    tracker.on_value(False)  # the lock's report of a keypad unlock, while the reads fail
    assert tracker.on_unverified(reads[0]) is None
    await _quiet(0.3)
    assert fired == TURN_AND_BACK_THEN_THE_KEYPAD
    assert tracker.locked is False


async def test_a_keypad_unlock_after_a_turn_and_back_is_reported_when_the_lock_answers_no_read(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """The mock lock is turned and turned back (bare reports), then stops answering the
    controller, and its keypad says "unlock with slot 3": a real unlock, which the driver cannot
    tell from the first turn's late word, and the Door Lock Get that would tell goes unanswered,
    each time it is asked. The unlock goes up all the same and the door is shown unlocked.
    Before, the failed read was logged and the unlock was lost, the door shown locked."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await started_read(driver)
    mark = len(sink.events)
    zwave_stack.control(2, "mode_raw", mode=0x00)
    zwave_stack.control(2, "mode_raw", mode=0xFF)
    await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
    turned = len(sink.events)
    zwave_stack.control(2, "offline")  # from now on, it answers no frame of the controller
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x06, params=[3])
    ev = await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=turned, timeout=15)
    assert ev.details == {"method": "pin_code", "slot_id": 3}
    await sink.wait_for(lambda: sink.devices[dev].properties.locked is False)
    bolt = (EventName.DOOR_LOCKED, EventName.DOOR_UNLOCKED)
    events = [e for e in sink.events[mark:] if e.device_id == dev and e.event_name in bolt]
    assert [(str(e.event_name), e.details) for e in events] == [
        ("door unlocked", {"method": "unknown"}),
        ("door locked", {"method": "unknown"}),
        ("door unlocked", {"method": "pin_code", "slot_id": 3}),
    ]


def _commanded(tracker: Any, locked: bool) -> None:
    """Our own command moves the bolt, as the driver runs it: zwave-js's bolt state while it
    runs, the lock's confirmation (one `remote` event), its end."""
    tracker.begin_command()
    tracker.on_value(locked)
    tracker.commanded(locked)
    tracker.end_command(confirmed=True)


@pytest.mark.parametrize("late_s", [2.0, 4.5])
@pytest.mark.parametrize(("method", "slot"), [(Method.KEYPAD, None), (Method.PIN_CODE, 3)])
async def test_a_slow_keypad_word_for_our_own_unlock_is_no_second_event(
    monkeypatch: pytest.MonkeyPatch, late_s: float, method: Method, slot: int | None
) -> None:
    """Our unlock is confirmed and goes up as `remote`; the lock's own word for that move names
    a keypad method (some locks say so of a Z-Wave command) and comes seconds late, the bolt
    unchanged since: it is our move's word, no new unlock. Before, a word more than 1.5 s after
    our event (3 merge windows) was a second `door unlocked`. The same word after the late
    window (`LATE_NOTICE_S`) is a person at the keypad (see the test of a 30 s late echo)."""
    import time as real_time

    from drivers.zwave.events import LATE_NOTICE_S

    tracker, fired, reads = _reading_tracker()
    tracker.seed(True)
    _commanded(tracker, False)
    now = real_time.monotonic()
    monkeypatch.setattr("drivers.zwave.events.time.monotonic", lambda: now + late_s)
    tracker.on_notification(False, method, slot)  # (no sleep: the loop's clock is patched too)
    assert fired == [("door unlocked", {"method": "remote"})]
    assert tracker.locked is False
    assert reads == []
    monkeypatch.setattr("drivers.zwave.events.time.monotonic", lambda: now + LATE_NOTICE_S + 1)
    tracker.on_notification(False, method, slot)
    named = {"method": str(method)} | ({"slot_id": slot} if slot else {})
    assert fired[1:] == [("door unlocked", named)]


@pytest.mark.parametrize("new", [True, False])
async def test_an_unlock_word_after_our_unlock_and_a_hand_lock_is_read(new: bool) -> None:
    """Our unlock (`remote`), then a hand lock (bare report, then its word), then a word naming
    an unlock within seconds, with zwave-js's bolt state of it: a keypad unlock (new) or our
    unlock's own RF word, late. It may be either, so the bolt is read: found unlocked, a new
    move, one event with the word's method; found locked, no event and the door shown locked.
    Before, the late RF word was a second `door unlocked` (rf) and showed the locked door
    unlocked."""
    tracker, fired, reads = _reading_tracker()
    tracker.seed(True)
    _commanded(tracker, False)
    tracker.on_value(True)
    tracker.on_notification(True, Method.MANUAL, None)
    tracker.on_value(False)  # zwave-js's bolt state of the word
    tracker.on_notification(False, *((Method.PIN_CODE, 4) if new else (Method.RF, None)))
    assert len(reads) == 1
    tracker.on_read(not new, reads[0], first=False)  # unlocked: the bolt did move
    await _quiet(0.3)
    assert fired == [
        ("door unlocked", {"method": "remote"}),
        ("door locked", {"method": "manual"}),
    ] + ([("door unlocked", {"method": "pin_code", "slot_id": 4})] if new else [])
    assert tracker.locked is not new


async def test_a_slow_keypad_word_for_our_unlock_on_the_mock_lock_is_no_second_event(
    zwave_stack: ZWaveStack, tmp_path: Path, tasks: Tasks
) -> None:
    """Our unlock of the mock lock goes up as `remote`; 2 s later the lock says "keypad unlock"
    of that same move (a word sent late, the bolt unchanged): no second event. Then a hand lock
    and a real keypad unlock (slot 3) seconds after our unlock: both go up. Before, a late word
    more than 3 merge windows (here 0.9 s) after our event was a second `door unlocked`."""
    async with driver_with(zwave_stack, tmp_path, tasks, event_merge_s=0.3) as (driver, sink):
        await _slow_word_for_our_unlock(driver, sink, zwave_stack)


async def _slow_word_for_our_unlock(
    driver: ZWaveDriver, sink: RecordingSink, zwave_stack: ZWaveStack
) -> None:
    dev = sink.ids[native_id(2)]
    await started_read(driver)
    mark = len(sink.events)
    await driver.execute(dev, Unlock())
    await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark)
    await anyio.sleep(2.0)  # past 3 merge windows (0.9 s), within LATE_NOTICE_S
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x06, late=True)
    await _quiet()
    zwave_stack.control(2, "mode_raw", mode=0xFF)
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x01)  # by hand
    await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x06, params=[3])
    await _quiet()
    assert [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev] == [
        ("door unlocked", {"method": "remote"}),
        ("door locked", {"method": "manual"}),
        ("door unlocked", {"method": "pin_code", "slot_id": 3}),
    ]
    assert sink.devices[dev].properties.locked is False
