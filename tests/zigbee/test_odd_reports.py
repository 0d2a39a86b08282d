"""Odd values from real Zigbee locks, sent by the virtual lock as real ZCL frames through zigpy:
never a value out of range upstream, never a false event, never a lost later report."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from drivers.zigbee.driver import ZigbeeDriver
from drivers.zigbee.virtual.lock import VirtualLock
from gatewayd.driver import Simulation
from gatewayd.model import CodeNotConfirmed, Device, EventName, Lock, PinCode, SetCode
from tests.contract.sink import RecordingSink
from tests.zigbee.conftest import running

pytestmark = pytest.mark.stack

YALE, GENERIC = "00:0d:6f:00:0a:90:00:01", "00:0d:6f:00:0a:90:00:02"
POWER, DOOR_LOCK = 0x0001, 0x0101
UINT8, ENUM8, STRING = 0x20, 0x30, 0x42
KEYPAD, RF, MANUAL = 0, 1, 2
LOCK, UNLOCK, ONE_TOUCH_LOCK = 0x01, 0x02, 0x07
PIN_ADDED, PIN_DELETED = 0x02, 0x03
PIN = "80461357"


class HistorySink(RecordingSink):
    """Also keeps every device update: what the cloud was told, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[Device] = []

    def device_updated(self, device: Device) -> None:
        self.updates.append(device)
        super().device_updated(device)


def by_native(sink: RecordingSink, ieee: str) -> str:
    return next(d.id for d in sink.devices.values() if d.native_id == ieee)


def virtual(driver: ZigbeeDriver, ieee: str) -> VirtualLock:
    assert driver.virtual is not None
    return driver.virtual.lock(ieee)


async def battery_mark(sink: RecordingSink, vlock: VirtualLock, dev: str, level: float) -> None:
    """A plain battery report, waited for: every frame the lock sent before it has been handled."""
    vlock.battery(level)
    await sink.wait_for(lambda: sink.devices[dev].properties.battery_level == pytest.approx(level))


@pytest.mark.parametrize("ieee", [GENERIC, YALE], ids=["zcl", "whole-percent-quirk"])
async def test_a_battery_the_lock_cannot_measure_is_unknown_never_out_of_range(
    tmp_path: Path, ieee: str
) -> None:
    """battery_percentage_remaining 0xFF (ZCL: invalid) or above 200 is unknown: battery_level
    None, no `low battery`. Before, the Yale quirk doubled 0xFF to 510, reported as 1.0, and a
    raw 250 was clamped to 1.0. battery_voltage 0 / 0xFF changes nothing; the next report counts."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, ieee), virtual(driver, ieee)
        await battery_mark(sink, vlock, dev, 0.5)
        mark, updates = len(sink.events), len(sink.updates)
        for raw in (0xFF, 250, 201):
            await battery_mark(sink, vlock, dev, 0.5)
            vlock.odd_report(POWER, 0x0021, UINT8, raw)
            await sink.wait_for(lambda: sink.devices[dev].properties.battery_level is None)
        for raw in (0, 0xFF):
            vlock.odd_report(POWER, 0x0020, UINT8, raw)
        await asyncio.sleep(0.3)
        assert sink.devices[dev].properties.battery_level is None
        await battery_mark(sink, vlock, dev, 0.4)
        levels = [d.properties.battery_level for d in sink.updates[updates:]]
        assert all(level is None or 0.0 <= level <= 1.0 for level in levels), levels
        assert sink.names(dev)[mark:] == []


async def test_an_undefined_bolt_is_unknown_and_no_event_when_it_comes_back(
    tmp_path: Path,
) -> None:
    """lock_state 0xFF (undefined) or 3 (not in the enum): locked None, no event, and a command
    waits for the lock to report the bolt again. When it reports the bolt as before there is no
    `door locked`. Before, the last state (locked) stayed up and a lock completed at once."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        assert sink.devices[dev].properties.locked is True
        mark = len(sink.events)
        for raw in (0xFF, 3):
            vlock.odd_report(DOOR_LOCK, 0x0000, ENUM8, raw)
            await sink.wait_for(lambda: sink.devices[dev].properties.locked is None)
            vlock.report(DOOR_LOCK, [0x0000])  # locked, as before
            await sink.wait_for(lambda: sink.devices[dev].properties.locked is True)
        await asyncio.sleep(0.5)  # past the merge window
        assert sink.names(dev)[mark:] == []
        vlock.odd_report(DOOR_LOCK, 0x0000, ENUM8, 0xFF)
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is None)
        vlock.mem.bound.discard(DOOR_LOCK)  # no report after the command: it reads the bolt
        frames = vlock.frames_received
        await driver.execute(dev, Lock())
        assert sink.devices[dev].properties.locked is True
        assert vlock.frames_received == frames + 2  # lock_door, then a read of lock_state


@pytest.mark.parametrize(
    ("raw", "door_open", "events"),
    [
        (2, None, []),  # error: jammed
        (3, True, ["door opened"]),  # error: forced open
        (4, None, []),  # error: unspecified
        (0xFF, None, []),  # undefined
        (7, None, []),  # not in the enum
    ],
)
async def test_a_door_state_beyond_open_and_closed(
    tmp_path: Path, raw: int, door_open: bool | None, events: list[str]
) -> None:
    """A door the lock cannot tell is unknown (None), a forced-open one is open; back to closed
    is `door closed` only if the door was seen open."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        assert sink.devices[dev].properties.door_open is False
        mark = len(sink.events)
        vlock.odd_report(DOOR_LOCK, 0x0003, ENUM8, raw)
        await battery_mark(sink, vlock, dev, 0.5)
        assert sink.devices[dev].properties.door_open is door_open
        vlock.door(open_=False)
        await sink.wait_for(lambda: sink.devices[dev].properties.door_open is False)
        await asyncio.sleep(0.3)
        closed = ["door closed"] if door_open else []
        assert sink.names(dev)[mark:] == events + closed


async def test_operation_events_with_odd_sources_codes_and_users(tmp_path: Path) -> None:
    """Unknown source: the bolt change, method unknown. Unknown event code: nothing. A user id
    out of the lock's slots (1..29) or 0xFFFF names no slot. Before, slot_id 500 went up."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        mark = len(sink.events)
        vlock.odd_operation(KEYPAD, UNLOCK, 500)
        vlock.odd_operation(0x05, LOCK, 3)
        vlock.odd_operation(KEYPAD, 0x20, 3)
        vlock.odd_operation(RF, 0x00, 0)
        vlock.odd_operation(KEYPAD, UNLOCK, 0xFFFF)
        vlock.odd_operation(0xFF, LOCK, 0x10)
        await battery_mark(sink, vlock, dev, 0.5)
        await asyncio.sleep(0.3)
        got = [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev]
        assert got == [
            ("door unlocked", {"method": "keypad"}),
            ("door locked", {"method": "unknown"}),
            ("door unlocked", {"method": "keypad"}),
            ("door locked", {"method": "unknown"}),
        ]
        await driver.simulate(dev, Simulation.KEYPAD_UNLOCK, {"slot_id": 4})
        ev = await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark + len(got))
        assert ev.details == {"method": "pin_code", "slot_id": 4}


async def test_a_keypad_lock_that_names_a_code_is_pin_code_with_its_slot(tmp_path: Path) -> None:
    """An operation event Lock from the keypad naming user 3: `pin_code` with slot 3, as the
    Z-Wave driver reports Access Control 0x05 naming a user (tests/zwave/test_events.py)."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        vlock.manual(lock=False)
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is False)
        mark = len(sink.events)
        vlock.odd_operation(KEYPAD, LOCK, 3)
        ev = await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
        assert ev.details == {"method": "pin_code", "slot_id": 3}


async def test_programming_events_with_odd_codes_and_users(tmp_path: Path) -> None:
    """Unknown programming codes, and slots the lock does not have, are not reported; a code
    added from an unknown source is, method unknown. Before, slot 500 went up, and an unknown
    source was called `rf`."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        mark = len(sink.events)
        vlock.odd_programming(KEYPAD, 0x01, 0)  # master code changed
        vlock.odd_programming(KEYPAD, 0x05, 3)  # RFID code added
        vlock.odd_programming(KEYPAD, 0x42, 3)  # not in the enum
        vlock.odd_programming(KEYPAD, PIN_ADDED, 500)
        vlock.odd_programming(RF, PIN_DELETED, 0x1234)
        vlock.odd_programming(0x07, PIN_ADDED, 5)
        await battery_mark(sink, vlock, dev, 0.5)
        got = [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev]
        assert got == [("code set on device", {"slot_id": 5, "method": "unknown"})]


@pytest.mark.parametrize("user_id", [0xFF, 0xFFFF])
async def test_all_codes_cleared_at_the_keypad_is_reported_and_forgotten(
    tmp_path: Path, user_id: int
) -> None:
    """All codes cleared from the keypad's master menu: the lock's PIN Code Deleted names user
    0xFF (8-bit user ids) or 0xFFFF, no slot. It goes up as one `code removed from device`,
    all codes, no slot_id; and the code the driver saw confirmed in a slot is forgotten, so the
    same code set there again, over another one the lock got meanwhile, is reported. Before,
    the event was dropped as naming a slot the lock does not have, and the set was taken for
    a rewrite of the code already there: reported to nobody."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, YALE), virtual(driver, YALE)  # it masks its codes
        await driver.execute(dev, SetCode(slot_id=2, code=PinCode(PIN)))
        mark = len(sink.events)
        vlock.mem.pins.clear()
        vlock.odd_programming(KEYPAD, PIN_DELETED, user_id)
        event = await sink.wait_event(dev, EventName.CODE_REMOVED, after=mark, timeout=3)
        assert event.details == {"all_codes": True, "method": "keypad"}
        vlock.mem.pins[2] = "13572468"  # stored at the keypad, its event lost
        await driver.execute(dev, SetCode(slot_id=2, code=PinCode(PIN)))
        got = [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev]
        assert got == [
            ("code removed from device", {"all_codes": True, "method": "keypad"}),
            ("code set on device", {"slot_id": 2, "method": "remote"}),
        ]


@pytest.mark.parametrize(
    ("status", "raw", "outcome"),
    [
        (1, b"****", "completed"),  # masked with stars: the programming event confirms
        (1, b"\xff\xfe\x80\x81", "completed"),  # not UTF-8: no code to compare
        (1, b"12a4x", "completed"),  # not digits: no code to compare
        (1, b"99999999", "code_not_confirmed"),  # another code
        (3, PIN.encode(), "code_not_confirmed"),  # stored, but disabled
        (7, PIN.encode(), "code_not_confirmed"),  # a user status not in the enum
        (0xFF, PIN.encode(), "completed"),  # user status not supported: the code reads back
    ],
    ids=["stars", "not-utf8", "not-digits", "other", "disabled", "status-7", "status-ff"],
)
async def test_a_pin_read_back_that_is_not_a_pin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int, raw: bytes, outcome: str
) -> None:
    """A get_pin_code_response whose code is not digits is no read-back: the lock's programming
    event confirms, as for a masking lock. Before, such a code failed the set as "reads back a
    different code". A code held disabled or with an unknown status is not confirmed. The PIN
    is in no error and no log line."""
    sink = HistorySink()
    caplog.set_level(logging.DEBUG)
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        vlock.odd_readback = (status, raw)
        texts: list[str] = []
        with capture_logs() as structured:
            try:
                await driver.execute(dev, SetCode(slot_id=2, code=PinCode(PIN)))
                got = "completed"
            except CodeNotConfirmed as exc:
                got = exc.to_dict()["type"]
                texts += [str(exc), repr(exc.to_dict())]
        assert got == outcome
        assert vlock.mem.pins == {2: PIN}
        events = [str(e.event_name) for e in sink.events if e.device_id == dev]
        assert events.count("code set on device") == (outcome == "completed")
    texts += [caplog.text, *(repr(e) for e in structured), repr(sink.events)]
    assert [t for t in texts if PIN in t] == []


async def test_reports_of_the_wrong_type_or_a_manufacturers_attribute_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A manufacturer-specific attribute that shares an id with lock_state (0x0000) or
    battery_percentage_remaining is another attribute: not a bolt state. Before, its 2 was an
    unlock, and a string raised ValueError in the listener, out through zigpy, cutting short the
    frame. A standard attribute of the wrong type that zigpy cannot convert changes nothing.
    The next report is handled."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        errors: list[BaseException] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _l, ctx: errors.append(ctx.get("exception")))  # type: ignore[arg-type]
        mark = len(sink.events)
        vlock.odd_report(DOOR_LOCK, 0x0000, UINT8, 2, manufacturer=0x1234)
        vlock.odd_report(DOOR_LOCK, 0x0000, STRING, "jammed", manufacturer=0x1234)
        vlock.odd_report(DOOR_LOCK, 0x0003, UINT8, 0, manufacturer=0x1234)
        vlock.odd_report(POWER, 0x0021, UINT8, 3, manufacturer=0x1234)
        vlock.odd_report(POWER, 0x0021, STRING, "low", manufacturer=0x1234)
        vlock.odd_report(DOOR_LOCK, 0x0000, STRING, "abc")  # zigpy itself cannot convert it
        await battery_mark(sink, vlock, dev, 0.5)
        await asyncio.sleep(0.4)
        props = sink.devices[dev].properties
        assert (props.locked, props.door_open, props.jammed) == (True, False, False)
        assert sink.names(dev)[mark:] == []
        assert [type(e).__name__ for e in errors if e is not None and _from_driver(e)] == []
        await driver.simulate(dev, Simulation.MANUAL_UNLOCK, {})
        ev = await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark)
        assert ev.details == {"method": "manual"}


def _from_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if "drivers/zigbee/lock.py" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


async def test_a_lock_s_own_low_battery_alarm_is_a_low_battery_event(tmp_path: Path) -> None:
    """Alarms cluster alarm 0x10-0x13 (battery too low to operate, then thresholds 1-3) of the
    Power Configuration cluster, or of the Door Lock cluster as some locks send it: `low battery`,
    once until the battery is seen recovered. Other clusters' alarms and other codes are not.
    Before, every alarm not of the Door Lock cluster was dropped, and 0x10-0x13 there too: a lock
    whose percentage is wrong or seldom reported died with no warning."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        await battery_mark(sink, vlock, dev, 0.5)
        mark = len(sink.events)
        vlock.odd_alarm(0x13, POWER)
        ev = await sink.wait_event(dev, EventName.LOW_BATTERY, after=mark)
        assert ev.details == {"battery_level": 0.5}
        vlock.odd_alarm(0x10, POWER)  # the same low battery, said again
        await battery_mark(sink, vlock, dev, 0.6)  # recovered: a new alarm is news
        vlock.odd_alarm(0x11, DOOR_LOCK)
        vlock.odd_alarm(0x10, 0x0006)  # On/Off: no battery of the lock's
        vlock.odd_alarm(0x02, DOOR_LOCK)  # reserved
        await battery_mark(sink, vlock, dev, 0.7)
        assert sink.names(dev)[mark:] == ["low battery", "low battery"]


async def test_a_code_refused_outside_its_schedule_is_an_invalid_code_with_its_slot(
    tmp_path: Path,
) -> None:
    """Operation events UnlockFailureInvalidSchedule / LockFailureInvalidSchedule: the lock
    refused a code it holds, at a time its schedule does not allow; `keypad invalid code` with
    the slot the lock names (none for a user id outside its slots), and the bolt unchanged.
    Before, both were dropped: a refused entry attempt never reached the cloud."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        mark = len(sink.events)
        vlock.odd_operation(KEYPAD, 0x06, 4)
        vlock.odd_operation(KEYPAD, 0x04, 0xFFFF)
        await battery_mark(sink, vlock, dev, 0.5)
        got = [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev]
        assert got == [
            ("keypad invalid code", {"method": "keypad", "slot_id": 4}),
            ("keypad invalid code", {"method": "keypad"}),
        ]
        assert sink.devices[dev].properties.locked is True


@pytest.mark.parametrize("source", [MANUAL, RF, 0xFF], ids=["manual", "rf", "indeterminate"])
async def test_a_one_touch_lock_is_the_keypad_whatever_source_it_names(
    tmp_path: Path, source: int
) -> None:
    """Operation event OneTouchLock is the keypad's lock button (`keypad`), as the Z-Wave
    driver reports Access Control "keypad lock". Before, its method came from the source the
    lock named: `manual`, `rf` or `unknown`."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        vlock.manual(lock=False)
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is False)
        mark = len(sink.events)
        vlock.odd_operation(source, ONE_TOUCH_LOCK, 0)
        ev = await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
        assert ev.details == {"method": "keypad"}
