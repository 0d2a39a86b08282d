"""The Zigbee driver on zigpy and the virtual radio: restart, quirks, faults, radio loss."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from drivers.zigbee import ZigbeeDriver
from drivers.zigbee.zigpy_api import DoorLock, foundation
from gatewayd.driver import DriverContext, DriverState, Simulation
from gatewayd.model import (
    ActionTimeout,
    ClearCode,
    CodeNotConfirmed,
    Device,
    DeviceError,
    DeviceOffline,
    DoorEvent,
    EventName,
    GatewayError,
    InvalidInput,
    Lock,
    PinCode,
    SetCode,
    Unlock,
)
from tests.contract.sink import RecordingSink
from tests.zigbee.conftest import BASE, config, running

pytestmark = pytest.mark.stack

YALE, GENERIC = "00:0d:6f:00:0a:90:00:01", "00:0d:6f:00:0a:90:00:02"


def by_native(sink: RecordingSink, ieee: str) -> str:
    return next(d.id for d in sink.devices.values() if d.native_id == ieee)


async def test_restart_keeps_devices_without_reinterview_or_duplicate_events(
    tmp_path: Path,
) -> None:
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        assert driver.virtual is not None
        first = {d.native_id: d.id for d in sink.devices.values()}
        assert driver.virtual.descriptor_requests == 6
        await driver.execute(by_native(sink, YALE), Unlock())
        await sink.wait_for(lambda: sink.devices[by_native(sink, YALE)].properties.locked is False)
    events_before = len(sink.events)

    async with running(tmp_path, sink) as driver:
        assert driver.virtual is not None
        assert {d.native_id: d.id for d in driver.devices()} == first
        assert driver.virtual.descriptor_requests == 0  # nothing re-interviewed
        assert sink.devices[first[YALE]].properties.locked is False  # from zigpy's cache
        await asyncio.sleep(0.5)
        assert len(sink.events) == events_before
        await driver.execute(first[GENERIC], Unlock())  # and the restored locks still work
    assert (tmp_path / "zigbee.db").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("ieee", [YALE, GENERIC])  # notification first / report first
async def test_report_and_notification_make_one_event(tmp_path: Path, ieee: str) -> None:
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        device_id = by_native(sink, ieee)
        mark = len(sink.events)
        await driver.simulate(device_id, Simulation.KEYPAD_UNLOCK, {"slot_id": 3})
        event = await sink.wait_event(device_id, EventName.DOOR_UNLOCKED, after=mark)
        assert event.details == {"method": "pin_code", "slot_id": 3}
        await driver.execute(device_id, Lock())
        await sink.wait_event(device_id, EventName.DOOR_LOCKED, timeout=20, after=mark)
        await asyncio.sleep(0.5)  # past the merge window: late duplicates would be here
        names = [str(e.event_name) for e in sink.events[mark:] if e.device_id == device_id]
        assert names == ["door unlocked", "door locked"]


@pytest.mark.parametrize("quirks", [True, False])
async def test_quirk_fixes_whole_percent_battery(tmp_path: Path, quirks: bool) -> None:
    """The Yale lock reports whole percent; zha-quirks' matching quirk doubles it to ZCL units."""
    sink = RecordingSink()
    async with running(tmp_path, sink, config(quirks=quirks)) as driver:
        device_id = by_native(sink, YALE)
        await driver.simulate(device_id, Simulation.BATTERY, {"level": 0.5})
        expected = 0.5 if quirks else 0.25
        await sink.wait_for(lambda: sink.devices[device_id].properties.battery_level == expected)


async def test_masked_readback_is_confirmed_by_the_programming_event(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        device_id = by_native(sink, YALE)  # masks codes on read-back
        mark = len(sink.events)
        await driver.execute(device_id, SetCode(slot_id=4, code=PinCode("0481")))
        sets = [e for e in sink.events[mark:] if e.event_name == EventName.CODE_SET]
        assert [e.details["slot_id"] for e in sets] == [4]  # one event, not one per source


@pytest.mark.parametrize("code", ["1234\n", "12\u0663\u0664", "\u00b2345"])
async def test_a_code_of_anything_but_ascii_digits_never_reaches_the_lock(
    tmp_path: Path, code: str
) -> None:
    """The driver's own check, behind the dispatcher's: a final newline, Arabic-Indic digits
    and a superscript two are all `isdigit()`-ish, and none is a keypad code."""
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        with pytest.raises(InvalidInput) as caught:
            await driver.execute(by_native(sink, GENERIC), SetCode(slot_id=5, code=PinCode(code)))
        assert caught.value.validation_errors == {"code": "must contain digits 0-9 only"}
        assert driver.virtual.lock(GENERIC).mem.pins.get(5) is None  # type: ignore[attr-defined]


class UnplugAfterReport(RecordingSink):
    """Pulls the radio out right after the generic lock reports its bolt unlocked."""

    net: Any = None
    armed = False

    def device_updated(self, device: Device) -> None:
        super().device_updated(device)
        if self.armed and device.native_id == GENERIC and device.properties.locked is False:
            self.armed = False
            self.net.unplug()


async def test_a_report_heard_just_before_the_radio_goes_is_still_an_event(
    tmp_path: Path,
) -> None:
    """The bolt report arrives, the operation event that would name its method does not (the
    radio is unplugged within event_merge_s): after the reconnect the door's change has been
    reported once, method unknown, not lost to the silent adoption of the new state."""
    sink = UnplugAfterReport()
    async with running(tmp_path, sink) as driver:
        sink.net = driver.virtual  # type: ignore[attr-defined]
        dev = by_native(sink, GENERIC)
        assert sink.devices[dev].properties.locked is True
        mark = len(sink.events)
        sink.armed = True
        await driver.simulate(dev, Simulation.MANUAL_UNLOCK, {})
        async with asyncio.timeout(5):
            while driver.health().state is not DriverState.DOWN:
                await asyncio.sleep(0.01)
        driver.virtual.plug()  # type: ignore[attr-defined]
        async with asyncio.timeout(10):
            while driver.health().state is not DriverState.READY:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # any late or repeated event would be in by now
        events = [e for e in sink.events[mark:] if e.device_id == dev]
        assert [(e.event_name, e.details.get("method")) for e in events] == [
            (EventName.DOOR_UNLOCKED, "unknown")
        ]
        assert sink.devices[dev].properties.locked is False


@pytest.mark.parametrize("late_s", [0.0, 0.3])
async def test_our_own_set_and_clear_are_one_event_each_however_late_the_lock_confirms(
    tmp_path: Path, late_s: float
) -> None:
    """Real locks send the programming event of a change we made whenever they like, often
    after answering the read-back: it is the lock confirming our change, not a second one."""
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        dev = by_native(sink, GENERIC)
        driver.virtual.lock(GENERIC).programming_delay_s = late_s  # type: ignore[attr-defined]
        mark = len(sink.events)
        await driver.execute(dev, SetCode(slot_id=4, code=PinCode("2468")))
        await driver.execute(dev, ClearCode(slot_id=4))
        await asyncio.sleep(late_s + 0.5)
        events = [(e.event_name, e.details) for e in sink.events[mark:] if e.device_id == dev]
        assert events == [
            (EventName.CODE_SET, {"slot_id": 4, "method": "remote"}),
            (EventName.CODE_REMOVED, {"slot_id": 4, "method": "remote"}),
        ]
        await driver.simulate(dev, Simulation.KEYPAD_UNLOCK, {"slot_id": 4})  # still alive


async def test_faults_become_typed_errors_and_nothing_leaks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = RecordingSink()
    caplog.set_level(logging.DEBUG)
    async with running(tmp_path, sink) as driver:
        device_id = by_native(sink, GENERIC)
        with capture_logs() as structured:
            await driver.simulate(device_id, Simulation.FAULT, {"kind": "no_reply"})
            with pytest.raises(ActionTimeout):
                await driver.execute(device_id, Unlock())
            driver.virtual.lock(GENERIC).set_fault("garbage")  # type: ignore[union-attr]
            with pytest.raises(DeviceError):
                await driver.execute(device_id, Unlock())
            await driver.simulate(device_id, Simulation.FAULT, {"kind": "drop_code"})
            with pytest.raises(CodeNotConfirmed):
                await driver.execute(device_id, SetCode(slot_id=2, code=PinCode("97153")))
            await driver.execute(device_id, SetCode(slot_id=2, code=PinCode("97153")))
        assert driver.health().state is DriverState.READY
    texts = [caplog.text, repr(structured), repr(sink.events), repr(list(sink.devices.values()))]
    assert not [t for t in texts if "97153" in t]


async def test_a_slow_answer_to_an_unlock_does_not_unlock_a_second_time(tmp_path: Path) -> None:
    """A lock that routes (mains-powered) answers an unlock after zigpy's 5 s wait for it:
    zigpy sent the unlock again, and again, and the lock took each one (had someone locked it
    by hand in between, the door stood unlocked behind them). The unlock goes out once; with
    its answer late, the bolt's own report tells the outcome."""
    from drivers.zigbee.virtual.radio import VirtualNetwork

    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    lock = net.lock(GENERIC)
    lock.router = True
    sink = RecordingSink()
    async with running(tmp_path, sink, config(command_timeout_s=6.0), virtual=net) as driver:
        device_id = by_native(sink, GENERIC)
        lock.delay_s = 5.5  # its answer to the unlock (and its report), after zigpy's 5 s

        async def quick_again() -> None:  # then it answers reads at once
            while lock.bolt_commands == 0:
                await asyncio.sleep(0.01)
            lock.delay_s = 0.0

        mark = len(sink.events)
        quick = asyncio.ensure_future(quick_again())
        await driver.execute(device_id, Unlock())
        await quick
        assert lock.bolt_commands == 1
        assert sink.devices[device_id].properties.locked is False
        assert [(e.event_name, e.details.get("method")) for e in sink.events[mark:]] == [
            (EventName.DOOR_UNLOCKED, "remote")
        ]
        # and one that never moves fails in time, with one send
        lock.set_fault("no_reply")
        with pytest.raises(ActionTimeout, match="did not answer"):
            await driver.execute(device_id, Lock())
        assert lock.bolt_commands == 2


async def test_lock_leaving_mid_command_fails_fast(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with running(tmp_path, sink, config(command_timeout_s=30.0)) as driver:
        device_id = by_native(sink, GENERIC)
        lock = driver.virtual.lock(GENERIC)  # type: ignore[union-attr]
        lock.set_fault("no_reply")
        asyncio.get_running_loop().call_later(0.2, lock.leave)
        started = time.monotonic()
        with pytest.raises(DeviceOffline):
            await driver.execute(device_id, Unlock())
        assert time.monotonic() - started < 10  # not the 30 s command timeout
        await sink.wait_event(device_id, EventName.DEVICE_DISCONNECTED)


async def test_unplugged_radio_is_down_then_reconnects(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        net = driver.virtual
        assert net is not None
        device_id = by_native(sink, GENERIC)
        net.unplug()
        assert driver.health().state is DriverState.DOWN
        assert driver.health().last_error
        with pytest.raises(DeviceError):
            await driver.execute(device_id, Unlock())
        await asyncio.sleep(0.3)  # reconnect attempts fail while unplugged
        assert driver.health().state is DriverState.DOWN
        net.plug()
        async with asyncio.timeout(10):
            while driver.health().state is not DriverState.READY:
                await asyncio.sleep(0.05)
        await driver.execute(device_id, Unlock())
        assert driver.health().details["reconnects"] >= 1


async def test_missing_serial_radio_does_not_fail_start(tmp_path: Path) -> None:
    sink = RecordingSink()
    cfg = config(radio_type="znp", device=str(tmp_path / "no-such-tty"))
    async with running(tmp_path, sink, cfg, wait_locks=0) as driver:
        health = driver.health()
        assert health.state is DriverState.DOWN
        assert health.radio == "znp"
        assert health.last_error
        with pytest.raises(GatewayError):
            await driver.pair(30)


async def test_pairing_and_unpairing(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with running(tmp_path, sink, config(virtual_joining_locks=1)) as driver:
        before = set(sink.devices)
        await driver.pair(30)
        await sink.wait_for(lambda: len(sink.devices) == 3)
        (new_id,) = set(sink.devices) - before
        await driver.unpair(30, new_id)
        await sink.wait_for(lambda: new_id in sink.removed)
        assert new_id not in {d.id for d in driver.devices()}


JOINING_YALE, JOINING_GENERIC = "00:0d:6f:00:0a:90:00:03", "00:0d:6f:00:0a:90:00:04"
POWER = 0x0001


class OrderSink(RecordingSink):
    """Also keeps the order of device_added and door events, by device id."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[tuple[str, str]] = []

    def device_added(self, device: Device) -> None:
        self.order.append(("added", device.id))
        super().device_added(device)

    def door_event(self, event: DoorEvent) -> None:
        self.order.append(("event", event.device_id))
        super().door_event(event)


@pytest.mark.parametrize("ieee", [JOINING_YALE, JOINING_GENERIC], ids=["yale", "zcl"])
@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("keypad_before_answer", [("door unlocked", {"method": "pin_code", "slot_id": 3})]),
        ("keypad_after_answer", [("door unlocked", {"method": "pin_code", "slot_id": 3})]),
        ("hand_after_answer", [("door unlocked", {"method": "manual"})]),
        ("door_after_answer", [("door opened", {})]),
        ("state_report", []),  # a report of the state it is in: what the read learns too
    ],
)
async def test_what_a_lock_does_while_it_is_read_after_pairing_goes_up(
    tmp_path: Path, ieee: str, what: str, expected: list[tuple[str, dict[str, Any]]]
) -> None:
    """A lock that joins is read (bolt, door, battery, code limits); a keypad unlock, a hand
    turn or the door opened while that read runs is an event, the state the read finds is
    not; the cloud hears of the device before its events. Before, every event the lock sent
    during the read was muted: the state changed, and the cloud never heard of the unlock."""
    sink = OrderSink()
    async with running(tmp_path, sink, config(virtual_joining_locks=2)) as driver:
        assert driver.virtual is not None
        vlock = driver.virtual.lock(ieee)
        receive, acted = vlock.receive, []

        def on_frame(packet: Any) -> None:
            """At the Door Lock read after the join, `what` happens, before or after the lock
            answers; the rest of the read is answered late, as a sleepy lock does."""
            if not _is_read(packet):
                receive(packet)
            elif acted:
                asyncio.get_running_loop().call_later(0.3, receive, packet)
            elif packet.cluster_id != DoorLock.cluster_id:
                receive(packet)  # the interview's
            else:
                acted.append(what)
                if what == "keypad_before_answer":
                    vlock.keypad_unlock(3)
                elif what == "state_report":
                    vlock.report(DoorLock.cluster_id, [0x0000])
                receive(packet)
                if what == "keypad_after_answer":
                    vlock.keypad_unlock(3)
                elif what == "hand_after_answer":
                    vlock.manual(False)
                elif what == "door_after_answer":
                    vlock.door(True)

        vlock.receive = on_frame  # type: ignore[method-assign]
        await driver.pair(30)
        await sink.wait_for(lambda: any(d.native_id == ieee for d in sink.devices.values()))
        device_id = by_native(sink, ieee)
        assert acted == [what]
        await sink.wait_for(lambda: len(sink.names(device_id)) >= len(expected), timeout=20)
        await asyncio.sleep(0.5)  # past the merge window: a late or spurious event would be here
        got = [(str(e.event_name), e.details) for e in sink.events if e.device_id == device_id]
        assert got == expected
        assert [how for how, d in sink.order if d == device_id][:1] == ["added"]
        props = sink.devices[device_id].properties
        assert props.locked is (what in ("door_after_answer", "state_report"))
        assert props.door_open is (what == "door_after_answer")


def _is_read(packet: Any) -> bool:
    """Whether `packet` is a ZCL Read Attributes request."""
    if packet.dst_ep == 0:
        return False  # ZDO
    hdr = foundation.ZCLHeader.deserialize(packet.data.serialize())[0]
    return bool(hdr.frame_control.is_general) and (
        hdr.command_id == foundation.GeneralCommand.Read_Attributes
    )


@pytest.mark.parametrize("ieee", [JOINING_YALE, JOINING_GENERIC], ids=["quirk", "zcl"])
@pytest.mark.parametrize("after", [False, True], ids=["before-answer", "after-answer"])
async def test_a_report_a_quirk_rewrites_during_the_read_after_pairing_is_a_report(
    tmp_path: Path, ieee: str, after: bool
) -> None:
    """The battery drops to 10 % as the lock answers the read after its join (90 %). Yale's
    quirk rewrites its battery values (whole percent, doubled), so zigpy tells of its report as
    a rewritten value, as it tells of the read's answer. The report is still the lock's newer
    word: 10 % is shown, with its low-battery event. Before, it was taken for the read's answer:
    muted, then (sent after the answer) undone by the older answer, showing 90 %."""
    sink = OrderSink()
    async with running(tmp_path, sink, config(virtual_joining_locks=2)) as driver:
        assert driver.virtual is not None
        vlock = driver.virtual.lock(ieee)
        receive, acted = vlock.receive, []

        def on_frame(packet: Any) -> None:
            if acted or packet.cluster_id != POWER:
                receive(packet)
            elif _is_read(packet):
                acted.append(True)
                if not after:
                    vlock.battery(0.1)
                receive(packet)
                if after:
                    vlock.mem.battery = 0.1  # the answer is out, with 90 %
                    vlock.battery(0.1)
            else:
                receive(packet)

        vlock.mem.battery = 0.9
        vlock.receive = on_frame  # type: ignore[method-assign]
        await driver.pair(30)
        await sink.wait_for(lambda: any(d.native_id == ieee for d in sink.devices.values()))
        device_id = by_native(sink, ieee)
        assert acted
        await sink.wait_event(device_id, EventName.LOW_BATTERY, timeout=20)
        await asyncio.sleep(0.5)
        assert sink.devices[device_id].properties.battery_level == pytest.approx(0.1)
        assert sink.names(device_id) == [EventName.LOW_BATTERY]


def _non_daemon_threads() -> list[str]:
    """Threads that keep the process from exiting, but the loop's executor (joined when the
    loop closes)."""
    return [
        t.name for t in threading.enumerate() if not t.daemon and not t.name.startswith("asyncio_")
    ]


async def test_a_damaged_zigbee_database_is_named_on_the_drivers_health(tmp_path: Path) -> None:
    """zigpy's database damaged (a worn SD card): the driver said only `DatabaseError`, as if
    the radio were unplugged, and an operator had nothing to go on."""
    (tmp_path / BASE.database_path).write_bytes(b"not a database " * 300)
    sink = RecordingSink()
    async with running(tmp_path, sink, wait_locks=0) as driver:
        async with asyncio.timeout(10):
            while driver.health().state is not DriverState.DOWN:
                await asyncio.sleep(0.05)
        error = driver.health().last_error or ""
        assert "file is not a database" in error
        assert str(tmp_path / BASE.database_path) in error
        assert "restore it from a backup" in error
        await asyncio.sleep(1.5)  # a retry or two
    # zigpy left its connection's (non-daemon) thread running on every failed attempt: the
    # process could not exit
    assert _non_daemon_threads() == ["MainThread"]


async def test_a_zigbee_database_zigpy_calls_inconsistent_is_named_as_damaged(
    tmp_path: Path,
) -> None:
    """zigpy refuses a database whose schema version disagrees with its tables' (a torn
    migration, a file from elsewhere) with its own CorruptDatabase: the driver's health did not
    say what to do with it, as it does for one SQLite calls damaged."""
    async with running(tmp_path, RecordingSink()):
        pass  # a database of zigpy's current schema
    db = sqlite3.connect(tmp_path / BASE.database_path)
    db.execute("PRAGMA user_version = 3")  # its tables carry a later version
    db.commit()
    db.close()
    async with running(tmp_path, RecordingSink(), wait_locks=0) as driver:
        async with asyncio.timeout(10):
            while driver.health().state is not DriverState.DOWN:
                await asyncio.sleep(0.05)
        error = driver.health().last_error or ""
    assert "CorruptDatabase" in error
    assert "restore it from a backup" in error


def test_a_full_disk_is_not_taken_for_a_damaged_zigbee_database(tmp_path: Path) -> None:
    """zigpy's database refused a write for a full disk (SQLITE_FULL, a DatabaseError too):
    the driver's health told the operator to restore it from a backup, without which the locks
    must be paired again. It is only full: it says so, and the radio comes back by itself once
    there is room (`_supervise` retries any failure)."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 2")  # SQLite may add no page more: as on a full disk
    with pytest.raises(sqlite3.OperationalError) as full:
        db.execute("INSERT INTO t VALUES (zeroblob(5000))")
    db.close()
    driver = ZigbeeDriver(BASE, DriverContext(state_dir=tmp_path, spawn=lambda n, f: None))
    driver._down(full.value)  # what start and the reconnect loop do with a failure
    error = driver.health().last_error or ""
    assert "database or disk is full" in error
    assert str(tmp_path / BASE.database_path) in error
    assert "backup" not in error
    assert "paired again" not in error


async def test_a_damaged_page_in_the_zigbee_database_is_found_before_zigpy_opens_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / BASE.database_path
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        pass
    assert db.stat().st_size > 4096
    with open(db, "r+b") as f:  # a page of its tables, not the header
        f.seek(4096)
        f.write(b"\x5a" * 4096)
    async with running(tmp_path, sink, wait_locks=0) as driver:
        async with asyncio.timeout(10):
            while driver.health().state is not DriverState.DOWN:
                await asyncio.sleep(0.05)
        assert "damaged" in (driver.health().last_error or "")
    assert _non_daemon_threads() == ["MainThread"]


@pytest.mark.parametrize("ieee", [YALE, GENERIC])
@pytest.mark.parametrize("locking", [False, True])
async def test_an_operation_event_with_the_tsn_of_our_bolt_command_is_no_answer(
    tmp_path: Path, ieee: str, locking: bool
) -> None:
    """zigpy matches an answer by TSN, not command: the lock's operation event for the move
    it makes, sent before its answer with the request's TSN, became the unlock's "answer"
    (refused, status None) and never reached the cluster's handlers."""
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        device_id = by_native(sink, ieee)
        lock = driver.virtual.lock(ieee)  # type: ignore[union-attr]
        if locking:
            await driver.execute(device_id, Unlock())
            await sink.wait_event(device_id, EventName.DOOR_UNLOCKED, timeout=20)
            await asyncio.sleep(0.5)  # past the merge window: its operation event and report
        commands, mark = lock.bolt_commands, len(sink.events)
        server = DoorLock.ServerCommandDefs
        command = server.lock_door if locking else server.unlock_door
        lock.tsn_clash = (command.id, locking, None, 0)
        await driver.execute(device_id, Lock() if locking else Unlock())
        assert lock.tsn_clash is None  # the clash did happen
        name = EventName.DOOR_LOCKED if locking else EventName.DOOR_UNLOCKED
        await sink.wait_event(device_id, name, timeout=20, after=mark)
        await asyncio.sleep(0.5)  # past the merge window: a late duplicate would be here
        assert [(e.event_name, e.details) for e in sink.events[mark:]] == [
            (name, {"method": "remote"})
        ]
        assert lock.bolt_commands == commands + 1
        assert sink.devices[device_id].properties.locked is locking


async def test_an_operation_event_with_the_tsn_of_a_code_read_back_is_no_answer(
    tmp_path: Path,
) -> None:
    """A keypad unlock whose operation event carries the TSN of set_code's read-back: the
    event keeps its method and slot, and the read is sent again."""
    from drivers.zigbee.virtual.lock import OpSource

    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        device_id = by_native(sink, GENERIC)  # reads codes back in clear
        lock = driver.virtual.lock(GENERIC)  # type: ignore[union-attr]
        mark = len(sink.events)
        clash = (DoorLock.ServerCommandDefs.get_pin_code.id, False, OpSource.Keypad, 3)

        def on_set() -> None:  # the read-back follows the set: its request clashes
            lock.tsn_clash = clash

        lock.on_pin_set = on_set
        await driver.execute(device_id, SetCode(slot_id=5, code=PinCode("4826")))
        assert lock.tsn_clash is None  # the clash did happen
        assert lock.mem.pins[5] == "4826"
        await sink.wait_for(lambda: len(sink.events) - mark >= 2, timeout=20)
        await asyncio.sleep(0.5)
        assert [(e.event_name, e.details) for e in sink.events[mark:]] == [
            (EventName.DOOR_UNLOCKED, {"method": "pin_code", "slot_id": 3}),
            (EventName.CODE_SET, {"slot_id": 5, "method": "remote"}),
        ]
        assert lock.bolt_commands == 0


async def test_an_operation_event_with_the_tsn_of_a_bolt_read_is_no_answer(
    tmp_path: Path,
) -> None:
    """A keypad unlock whose operation event carries the TSN of our read of the bolt: zigpy
    took it for the read's answer (every attribute failed) and the event lost its method and
    slot. It goes up as it is, and the read is sent again."""
    from drivers.zigbee.virtual.lock import OpSource

    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        device_id = by_native(sink, GENERIC)
        lock = driver.virtual.lock(GENERIC)  # type: ignore[union-attr]
        mark = len(sink.events)
        lock.read_clash = (False, OpSource.Keypad, 3)
        await driver._locks[device_id].resync()
        assert lock.read_clash is None  # the clash did happen
        await sink.wait_event(device_id, EventName.DOOR_UNLOCKED, timeout=20, after=mark)
        await asyncio.sleep(0.5)
        assert [(e.event_name, e.details) for e in sink.events[mark:]] == [
            (EventName.DOOR_UNLOCKED, {"method": "pin_code", "slot_id": 3}),
        ]
        assert sink.devices[device_id].properties.locked is False
