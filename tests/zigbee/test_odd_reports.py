"""Odd values from real Zigbee locks, sent by the virtual lock as real ZCL frames through zigpy:
never a value out of range upstream, never a false event, never a lost later report."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from drivers.zigbee.driver import ZigbeeDriver
from drivers.zigbee.virtual.lock import (
    NIMLY_AUTO,
    NIMLY_FINGERPRINT,
    NIMLY_KEYPAD,
    NIMLY_UNATTRIBUTED,
    NIMLY_ZIGBEE,
    VirtualLock,
)
from drivers.zigbee.virtual.radio import VirtualNetwork
from gatewayd.driver import Simulation
from gatewayd.model import CodeNotConfirmed, Device, EventName, Lock, PinCode, SetCode
from tests.contract.sink import RecordingSink
from tests.reliability.leakscan import key_forms, zigbee_keys
from tests.zigbee.conftest import config, running

pytestmark = pytest.mark.stack

YALE, GENERIC = "00:0d:6f:00:0a:90:00:01", "00:0d:6f:00:0a:90:00:02"
JOINING = "00:0d:6f:00:0a:90:00:03"
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
        closed = ["door closed"] if door_open else []
        await sink.wait_for(lambda: len(sink.names(dev)[mark:]) >= len(events + closed), 20)
        await asyncio.sleep(0.3)
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
        await sink.wait_for(lambda: sum(e.device_id == dev for e in sink.events[mark:]) >= 4, 20)
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
    assert await _locked_by(tmp_path, KEYPAD, LOCK, 3) == {"method": "pin_code", "slot_id": 3}


async def _locked_by(tmp_path: Path, source: int, code: int, user: int) -> dict[str, Any]:
    """The details of the `door locked` an unlocked lock's operation event gives."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        vlock.manual(lock=False)
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is False)
        mark = len(sink.events)
        vlock.odd_operation(source, code, user)
        ev = await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
        return dict(ev.details)


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
    """Raised by the driver's listeners (not by zigpy, under the PIN filter that calls it)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if "drivers/zigbee/lock.py" in code.co_filename and code.co_name != "_without_pin":
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
    assert await _locked_by(tmp_path, source, ONE_TOUCH_LOCK, 0) == {"method": "keypad"}


NIMLY_PIN = b"86420975"  # typed at a Nimly lock's keypad: the lock reports it in clear


def nimly_network(tmp_path: Path) -> tuple[VirtualNetwork, VirtualLock]:
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    vlock.as_nimly()
    return net, vlock


def zigpy_cache(driver: ZigbeeDriver, dev: str) -> str:
    """Everything zigpy's attribute caches of the lock hold."""
    zdev = driver._locks[dev].zdev
    caches = [c._attr_cache for ep in zdev.non_zdo_endpoints for c in ep.in_clusters.values()]
    return repr([vars(cache) for cache in caches])


async def door_mark(sink: RecordingSink, vlock: VirtualLock, dev: str, open_: bool) -> None:
    """A door report, waited for: every frame the lock sent before it has been handled."""
    vlock.door(open_)
    await sink.wait_for(lambda: sink.devices[dev].properties.door_open is open_)


def stored(tmp_path: Path) -> bytes:
    """zigpy's database as on disk, its write-ahead log too."""
    files = [tmp_path / "zigbee.db", tmp_path / "zigbee.db-wal"]
    return b"".join(f.read_bytes() for f in files if f.exists())


@pytest.mark.parametrize("quirks", [True, False], ids=["quirk", "no-quirk"])
async def test_the_pin_a_nimly_lock_reports_is_never_cached_stored_or_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, quirks: bool
) -> None:
    """A Nimly lock reports the PIN typed at its keypad in clear (manufacturer attribute 0x0101
    of the Door Lock cluster). It reaches neither zigpy's attribute cache nor its database, nor
    any log line, even at debug level; the unlock it came with is reported. Before, zigpy kept
    it in its cache and wrote it to zigbee.db (for good, as the last PIN typed)."""
    caplog.set_level(logging.DEBUG)
    net, vlock = nimly_network(tmp_path)
    sink = HistorySink()
    with capture_logs() as structured:
        async with running(tmp_path, sink, config(quirks=quirks), virtual=net) as driver:
            dev = by_native(sink, GENERIC)
            quirk = driver._locks[dev].door_lock
            assert hasattr(quirk.AttributeDefs, "nimly_last_pin_code") is quirks
            mark = len(sink.events)
            vlock.nimly_move(NIMLY_KEYPAD, False, 3, NIMLY_PIN)
            await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark)
            await door_mark(sink, vlock, dev, True)
            vlock.nimly_report(NIMLY_KEYPAD, True, 3, NIMLY_PIN)  # the report on its own
            await door_mark(sink, vlock, dev, False)
            assert NIMLY_PIN.decode() not in zigpy_cache(driver, dev)
    assert NIMLY_PIN not in stored(tmp_path)
    texts = [caplog.text, *(repr(e) for e in structured), repr(sink.events)]
    assert [t for t in texts if NIMLY_PIN.decode() in t] == []


@pytest.mark.parametrize("quirks", [True, False], ids=["quirk", "no-quirk"])
async def test_the_pin_a_nimly_lock_reports_while_interviewed_is_never_cached_stored_or_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, quirks: bool
) -> None:
    """A PIN typed at a Nimly lock's keypad while zigpy interviews it (newly joined, before
    the driver's resolver has its device) reaches neither zigpy's cache, nor its database, nor
    a log line. Before, zigpy's raw device took the report in and wrote it to zigbee.db, until
    the next start scrubbed it."""
    caplog.set_level(logging.DEBUG)
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json", locks=2, joining=1)
    vlock = net.lock(JOINING)
    vlock.as_nimly()
    vlock.mem.bound.add(DOOR_LOCK)  # it reports before it is configured
    receive, typed = vlock.receive, []

    def interviewed(packet: Any) -> None:
        if packet.cluster_id == 0x0000 and not typed:  # zigpy reads its model: mid-interview
            typed.append(True)
            vlock.nimly_report(NIMLY_KEYPAD, False, 3, NIMLY_PIN)
        receive(packet)

    vlock.receive = interviewed  # type: ignore[method-assign]
    sink = HistorySink()
    with capture_logs() as structured:
        async with running(tmp_path, sink, config(quirks=quirks), virtual=net) as driver:
            await driver.pair(30)
            await sink.wait_for(lambda: len(sink.devices) == 3, timeout=20)
            dev = by_native(sink, JOINING)
            assert typed
            await door_mark(sink, vlock, dev, True)
            assert NIMLY_PIN.decode() not in zigpy_cache(driver, dev)
    assert NIMLY_PIN not in stored(tmp_path)
    texts = [caplog.text, *(repr(e) for e in structured), repr(sink.events)]
    assert [t for t in texts if NIMLY_PIN.decode() in t] == []


async def test_a_pin_zigpy_stored_before_is_deleted_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A PIN an earlier version let zigpy write to zigbee.db is deleted, its bytes overwritten,
    before zigpy opens the database: it is neither loaded into zigpy's cache nor left on disk.
    The lock is adopted as before. Before, it stayed there for good."""
    net, _ = nimly_network(tmp_path)
    sink = HistorySink()
    async with running(tmp_path, sink, virtual=net):
        pass
    db = sqlite3.connect(tmp_path / "zigbee.db")
    (table,) = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'attributes_cache%'"
        " ORDER BY name DESC"
    ).fetchone()
    # the row zigpy wrote for a report of 0x0101, from its row of lock_state
    db.execute(
        f"INSERT INTO {table} (ieee, endpoint_id, cluster_type, cluster_id, attr_id,"
        " manufacturer_code, status, value, last_updated) SELECT ieee, endpoint_id,"
        " cluster_type, cluster_id, 257, 4660, status, ?, last_updated"
        f" FROM {table} WHERE cluster_id = 257 AND attr_id = 0",
        (NIMLY_PIN,),
    )
    db.commit()
    db.close()
    assert NIMLY_PIN in stored(tmp_path)
    sink = HistorySink()
    with capture_logs() as structured:
        async with running(tmp_path, sink, virtual=net) as driver:
            dev = by_native(sink, GENERIC)
            assert NIMLY_PIN.decode() not in zigpy_cache(driver, dev)
            assert sink.devices[dev].properties.locked is True
    assert NIMLY_PIN not in stored(tmp_path)
    assert [e["event"] for e in structured if e["event"] == "zigbee.stored_pins_deleted"] == [
        "zigbee.stored_pins_deleted"
    ]


@pytest.mark.parametrize("source_first", [False, True], ids=["report-first", "source-first"])
@pytest.mark.parametrize("quirks", [True, False], ids=["quirk", "no-quirk"])
async def test_a_nimly_lock_s_bolt_moves_carry_their_method(
    tmp_path: Path, quirks: bool, source_first: bool
) -> None:
    """A Nimly lock sends no operation event: the source of a bolt move (keypad code and its
    slot, Zigbee, auto-relock, fingerprint...) is its attribute 0x0100. With its lock_state
    report it makes one event, whichever comes first, with the quirk's name for it or none.
    Before, every move was `unknown`, a code's slot was lost, and one of our own commands was
    `remote` only because our command was in flight."""
    net, vlock = nimly_network(tmp_path)
    sink = HistorySink()
    async with running(tmp_path, sink, config(quirks=quirks), virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        mark = len(sink.events)
        moves: list[tuple[int, bool, int]] = [
            (NIMLY_KEYPAD, False, 3),  # a code in slot 3
            (NIMLY_AUTO, True, 0),  # the auto-relock
            (NIMLY_KEYPAD, False, 0),  # the master code: no slot of ours
            (NIMLY_KEYPAD, True, 0),  # the keypad's lock button
            (NIMLY_FINGERPRINT, False, 5),
            (NIMLY_UNATTRIBUTED, True, 0),  # NimlyCodePRO: Zigbee, auto-relock or inside keypad
            (NIMLY_ZIGBEE, False, 0),  # another controller's command
        ]
        for count, (source, locking, user) in enumerate(moves, start=1):
            vlock.nimly_move(source, locking, user, source_first=source_first)
            await sink.wait_for(lambda n=count: len(sink.names(dev)[mark:]) >= n)
        await driver.execute(dev, Lock())  # ours: Zigbee source
        await sink.wait_for(lambda: len(sink.names(dev)[mark:]) >= len(moves) + 1, timeout=20)
        await asyncio.sleep(0.5)  # past the merge window: a second event would be here
        got = [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev]
        assert got == [
            ("door unlocked", {"method": "pin_code", "slot_id": 3}),
            ("door locked", {"method": "auto"}),
            ("door unlocked", {"method": "keypad"}),
            ("door locked", {"method": "keypad"}),
            ("door unlocked", {"method": "unknown", "slot_id": 5}),
            ("door locked", {"method": "unknown"}),
            ("door unlocked", {"method": "rf"}),
            ("door locked", {"method": "remote"}),
        ]


async def test_zigpy_s_database_thread_logs_no_values_even_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """aiosqlite, the thread zigpy writes its database through, logs every statement with its
    values at debug level: attribute values as the locks report them, and the network key
    with zigpy's network backups. Its debug records are dropped like the stack's own. Before,
    a gateway run at debug level wrote them to its journal."""
    caplog.set_level(logging.DEBUG)
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        await battery_mark(sink, vlock, dev, 0.5)
    keys = zigbee_keys(tmp_path)
    forms = {form for key in keys for form in key_forms(key)}
    assert keys
    assert sum(form in caplog.text for form in forms) == 0  # the key, not printed if it fails
    assert [r.getMessage()[:80] for r in caplog.records if r.name == "aiosqlite"] == []


@pytest.mark.parametrize("then", ["by_hand", "by_our_command"])
@pytest.mark.parametrize("ieee", [GENERIC, YALE], ids=["report_only", "tells_first"])
async def test_two_bolt_reports_within_the_merge_window_are_two_events(
    tmp_path: Path, ieee: str, then: str
) -> None:
    """A lock_state report with no operation event (unlocked: a turn the lock names no method
    for, or whose notification was lost), then within event_merge_s a move back, by hand or by
    our command. On a lock that sends only reports, the second report cancelled the first one's
    wait for its operation event; on one that tells of a move by its operation event before its
    report (a Yale lock's order), that event did. Either way the unlock was never reported."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, ieee), virtual(driver, ieee)
        assert vlock.profile.notify_before_report is (ieee == YALE)
        assert sink.devices[dev].properties.locked is True
        mark = len(sink.events)
        vlock.odd_report(DOOR_LOCK, 0x0000, ENUM8, 2)  # unlocked
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is False)
        if then == "by_hand" and ieee == YALE:
            vlock.manual(True)  # locked again, within the window: its operation event first
            last = "manual"
        elif then == "by_hand":
            vlock.odd_report(DOOR_LOCK, 0x0000, ENUM8, 1)  # locked again, within the window
            last = "unknown"
        else:
            await driver.execute(dev, Lock())
            last = "remote"
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is True)
        await sink.wait_for(lambda: sum(e.device_id == dev for e in sink.events[mark:]) >= 2, 20)
        await asyncio.sleep(0.6)  # past the merge window
        events = [(e.event_name, e.details) for e in sink.events[mark:] if e.device_id == dev]
        assert events == [
            ("door unlocked", {"method": "unknown"}),
            ("door locked", {"method": last}),
        ]
