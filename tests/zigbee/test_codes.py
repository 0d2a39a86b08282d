"""Codes a Zigbee lock refuses: its set_pin_code_response status becomes a typed error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from drivers.zigbee import lock as zigbee_lock
from drivers.zigbee.virtual.radio import VirtualNetwork
from drivers.zigbee.zigpy_api import DoorLock
from gatewayd.actions import validate
from gatewayd.driver import Simulation
from gatewayd.model import (
    Device,
    EventName,
    GatewayError,
    Lock,
    PinCode,
    SetCode,
)
from gatewayd.upstream import device_dict
from tests.contract.sink import RecordingSink
from tests.support import set_code_request
from tests.zigbee.conftest import AnnouncingSink, config, drop, eventually, reads, running

pytestmark = pytest.mark.stack

YALE, GENERIC = "00:0d:6f:00:0a:90:00:01", "00:0d:6f:00:0a:90:00:02"
PIN = "80461357"


def by_native(sink: RecordingSink, ieee: str) -> str:
    return next(d.id for d in sink.devices.values() if d.native_id == ieee)


@pytest.mark.parametrize("ieee", [GENERIC, YALE], ids=["readable", "masked"])
async def test_a_code_another_slot_holds_fails_with_duplicate_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ieee: str
) -> None:
    """set_pin_code_response status 3 (duplicate code): duplicate_code, with no PIN in the
    error or any log line. Before, a device_error "the lock refused the code (undefined_0x03)"."""
    sink = RecordingSink()
    caplog.set_level(logging.DEBUG)
    async with running(tmp_path, sink) as driver:
        dev = by_native(sink, ieee)
        lock = driver.virtual.lock(ieee)  # type: ignore[union-attr]
        await driver.execute(dev, SetCode(slot_id=2, code=PinCode(PIN)))
        mark = len(sink.events)
        with capture_logs() as structured, pytest.raises(GatewayError) as err:
            await driver.execute(dev, SetCode(slot_id=3, code=PinCode(PIN)))
        assert err.value.to_dict()["type"] == "duplicate_code"
        assert "slot 3" in err.value.message
        assert sorted(lock.mem.pins) == [2]
        await asyncio.sleep(0.3)
        assert [e.event_name for e in sink.events[mark:] if e.device_id == dev] == []
    texts = [str(err.value), repr(err.value), repr(err.value.to_dict()), caplog.text]
    texts += [repr(e) for e in structured] + [repr(sink.events)]
    assert [t for t in texts if PIN in t] == []


async def test_a_lock_with_no_room_fails_with_code_memory_full(tmp_path: Path) -> None:
    """status 2 (memory full): code_memory_full. Before, a device_error naming zigpy's
    unrelated MAC_PAN_ACCESS_DENIED."""
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        dev = by_native(sink, GENERIC)
        await driver.simulate(dev, Simulation.FAULT, {"kind": "memory_full"})
        with pytest.raises(GatewayError) as err:
            await driver.execute(dev, SetCode(slot_id=4, code=PinCode(PIN)))
        assert err.value.to_dict()["type"] == "code_memory_full"
        assert "full" in err.value.message
        assert PIN not in repr(err.value.to_dict())
        assert driver.virtual.lock(GENERIC).mem.pins == {}  # type: ignore[union-attr]
        # the lock itself is fine: the next code goes in
        await driver.execute(dev, SetCode(slot_id=4, code=PinCode(PIN)))
        await sink.wait_event(dev, EventName.CODE_SET)


async def test_a_general_failure_is_a_device_error_that_says_so(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        dev = by_native(sink, GENERIC)
        await driver.simulate(dev, Simulation.FAULT, {"kind": "refuse"})
        with pytest.raises(GatewayError) as err:
            await driver.execute(dev, SetCode(slot_id=4, code=PinCode(PIN)))
        assert err.value.to_dict() == {
            "type": "device_error",
            "message": "slot 4: the lock refused the code (general failure)",
        }


async def test_the_same_code_again_in_its_own_slot_is_no_duplicate(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        dev = by_native(sink, GENERIC)
        await driver.execute(dev, SetCode(slot_id=5, code=PinCode(PIN)))
        result = await driver.execute(dev, SetCode(slot_id=5, code=PinCode(PIN)))
        assert result.details == {"slot_id": 5}


async def test_a_lock_whose_user_count_went_unread_is_read_again_when_heard(
    tmp_path: Path,
) -> None:
    """The lock did not answer the read after pairing (asleep, a lost frame): its slots are not
    known. It is read again as soon as it is heard, and the cloud is told its real range (this
    lock: 30 users, slots 1..29). Before, the guess 1..11 stayed for good: slots 12..29 were
    refused as invalid input, by the gateway and by the driver."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    the_read_after_pairing = drop(vlock, reads(DoorLock.cluster_id))
    sink = RecordingSink()
    async with running(tmp_path, sink, virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        assert not sink.devices[dev].codes.slots_known  # not read
        the_read_after_pairing.stop()
        vlock.battery(0.5)  # a report: the lock is heard
        await sink.wait_for(lambda: sink.devices[dev].codes.max_slot == 29)
        await driver.execute(dev, SetCode(slot_id=20, code=PinCode(PIN)))
        assert vlock.mem.pins == {20: PIN}


CODE_LIMITS = (0x0012, 0x0017, 0x0018)  # num_of_pin_users_supported, max_pin_len, min_pin_len


async def test_while_the_user_count_is_unread_no_range_is_shown_and_any_slot_is_taken(
    tmp_path: Path,
) -> None:
    """The read after pairing goes unanswered (this lock: 30 users, slots 1..29). Until the
    lock tells its user count, the cloud is shown no upper end of its slots, and the gateway
    takes a code for slot 20 (the lock refuses a slot it lacks). Before, the cloud was shown
    the guess "1 through 11", and slot 20 was refused as invalid input until the read."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    drop(vlock, reads(DoorLock.cluster_id), times=1)  # the read after pairing; not the next
    sink = AnnouncingSink()
    async with running(tmp_path, sink, virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        device = next(d for d in sink.added if d.id == dev)  # as announced: not read
        shown = device_dict(device)
        assert shown["properties"]["code_slots"] == {"min": 1, "max": None}
        slot_text = shown["actions"]["set_code"]["inputs"]["slot_id"]["description"]
        assert "through" not in slot_text
        request = set_code_request(dev, PIN, 20)
        action = validate(request, device)
        assert action == SetCode(slot_id=20, code=PinCode(PIN))
        await driver.execute(dev, action)  # the lock, heard, is read meanwhile: 1..29
        assert vlock.mem.pins == {20: PIN}
        await sink.wait_for(lambda: sink.devices[dev].codes.max_slot == 29)
        assert device_dict(sink.devices[dev])["properties"]["code_slots"] == {"min": 1, "max": 29}


async def _paired_with_a_read_lost(
    tmp_path: Path, attr: int, times: int | None = None
) -> tuple[Device, list[MutableMapping[str, Any]]]:
    """A lock paired while its reads of Door Lock attribute `attr` are lost (the first `times`
    of them): the Device announced, and the log lines."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    lost = drop(vlock, reads(DoorLock.cluster_id, attr), times=times).lost
    sink = AnnouncingSink()
    with capture_logs() as logs:
        async with running(tmp_path, sink, virtual=net):
            dev = by_native(sink, GENERIC)
            announced = next(d for d in sink.added if d.id == dev)
    assert lost  # asked for, unanswered
    return announced, logs


async def test_a_lock_that_never_answers_a_read_naming_its_code_limits_is_read_all_the_same(
    tmp_path: Path,
) -> None:
    """This lock's firmware never answers a read that asks for its user count. Its bolt, door,
    battery and firmware are read after pairing all the same, and it is announced with them,
    its code limits unknown. Before, they were asked for in the limits' read: the whole read
    went unanswered (zigbee.device_setup_failed), and the lock was shown with no bolt, battery
    or firmware until a later resync."""
    announced, logs = await _paired_with_a_read_lost(tmp_path, 0x0012)  # never answered
    props = announced.properties
    assert (props.locked, props.door_open, props.firmware) == (True, False, "1.0.3")
    assert props.battery_level is not None
    assert not announced.codes.slots_known
    assert [e for e in logs if e["event"] == "zigbee.device_setup_failed"] == []


async def test_a_lock_whose_bolt_read_after_pairing_is_lost_is_read_all_the_same(
    tmp_path: Path,
) -> None:
    """The read of the bolt and door after pairing is lost on the air. The battery and firmware
    are read all the same, and the lock is announced with them (the setup failure is logged;
    the code limits are read when the lock is next heard, as after any unanswered read of its
    Door Lock cluster). Before, the lost read ended the setup there: the lock was shown with no
    battery or firmware until a later resync."""
    announced, logs = await _paired_with_a_read_lost(tmp_path, 0x0000, times=1)  # lock_state
    props = announced.properties
    assert props.battery_level is not None
    assert props.firmware == "1.0.3"
    failed = [e for e in logs if e["event"] == "zigbee.device_setup_failed"]
    assert len(failed) == 1


async def test_a_lock_whose_bolt_read_after_pairing_is_lost_has_it_read_when_next_heard(
    tmp_path: Path,
) -> None:
    """The read of the bolt and door after pairing is lost on the air, and the lock reports
    neither on its own. When it is next heard (a battery report), they are read again, so the
    cloud sees the bolt. Before, the bolt stayed unknown until the lock moved, or a resync
    (back online, a reconnect, a restart)."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    drop(vlock, reads(DoorLock.cluster_id, 0x0000), times=1)  # lock_state, after pairing
    sink = RecordingSink()
    async with running(tmp_path, sink, virtual=net):
        dev = by_native(sink, GENERIC)
        assert sink.devices[dev].properties.locked is None  # as announced: not read
        mark = len(sink.events)
        vlock.battery(0.5)  # heard
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is True)
        assert sink.devices[dev].properties.door_open is False
        await asyncio.sleep(0.3)  # an event the read would make would be among them
        assert [e.event_name for e in sink.events[mark:] if e.device_id == dev] == []


async def test_a_lock_whose_bolt_was_never_read_is_not_reported_moving_when_it_is_back(
    tmp_path: Path,
) -> None:
    """The read of the bolt and door after pairing is lost, and the lock goes out of reach
    before it is heard again. When it is back, the read of its bolt and door is its state, not
    a move: no `door locked` or `door closed` for a bolt and a door that never moved. Before,
    the resync made of their first answer one event each, method unknown."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    drop(vlock, reads(DoorLock.cluster_id, 0x0000), times=1)  # lock_state, after pairing
    sink = RecordingSink()
    async with running(tmp_path, sink, virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        assert sink.devices[dev].properties.locked is None  # as announced: not read
        mark = len(sink.events)
        await driver.simulate(dev, Simulation.OFFLINE, {})
        await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED, after=mark, timeout=10)
        vlock.online = True  # back in reach, silently: the availability ping finds it
        await sink.wait_event(dev, EventName.DEVICE_CONNECTED, after=mark, timeout=10)
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is True)
        assert sink.devices[dev].properties.door_open is False
        await asyncio.sleep(0.3)  # an event the read would make would be among them
        names = [e.event_name for e in sink.events[mark:] if e.device_id == dev]
        assert names == [EventName.DEVICE_DISCONNECTED, EventName.DEVICE_CONNECTED]


async def test_a_lock_restarted_with_its_bolt_cached_but_not_its_user_count_is_read_when_heard(
    tmp_path: Path,
) -> None:
    """The first run's reads of the lock's Door Lock cluster went unanswered, but its bolt
    report came (zigpy cached lock_state, not the code limits). After a restart, the read from
    the cache finds the bolt and asks nothing: the limits are read when the lock is next heard
    (here by the read of its bolt after the restart), and the cloud is told the real range
    (this lock: slots 1..29), not the guess 1..11."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    drop(vlock, reads(DoorLock.cluster_id))  # every read of the Door Lock cluster, this run
    sink = RecordingSink()
    async with running(tmp_path, sink, virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        vlock.manual(False)  # reported: zigpy caches the bolt
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is False)
        door_lock = driver._locks[dev].door_lock
        assert door_lock.get("num_of_pin_users_supported") is None
        assert not sink.devices[dev].codes.slots_known
    net.save()
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:  # the same state dir; the lock answers
        dev = by_native(sink, GENERIC)
        await sink.wait_for(lambda: sink.devices[dev].codes.max_slot == 29)
        assert sink.devices[dev].properties.locked is False
        await driver.execute(dev, SetCode(slot_id=20, code=PinCode(PIN)))
        assert driver.virtual is not None
        assert driver.virtual.lock(GENERIC).mem.pins == {20: PIN}


@pytest.mark.parametrize("code", ["5938", "593861720"], ids=["short", "long"])
async def test_a_code_refused_for_its_length_before_the_limits_were_read_is_invalid_input(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, code: str
) -> None:
    """The read after pairing goes unanswered, so a code is checked against the guess (4 to 8
    digits) and sent; this lock takes 6 to 8 and refuses a 4-digit one. The refusal is
    invalid_input naming the lock's own lengths, read then, and no PIN. Before, a device_error
    "the lock refused the code (INVALID_VALUE)": nothing said the length was wrong. A 9-digit
    code is tried too (the lengths are not known), and refused the same way."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    vlock.profile = replace(vlock.profile, min_pin=6)
    drop(vlock, reads(DoorLock.cluster_id), times=1)  # the read after pairing; not the next
    sink = AnnouncingSink()
    caplog.set_level(logging.DEBUG)
    async with running(tmp_path, sink, virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        assert not next(d for d in sink.added if d.id == dev).codes.slots_known  # not read
        with capture_logs() as structured, pytest.raises(GatewayError) as err:
            await driver.execute(dev, SetCode(slot_id=3, code=PinCode(code)))
        assert err.value.to_dict()["type"] == "invalid_input"
        assert err.value.to_dict()["validation_errors"] == {"code": "must have 6 to 8 digits"}
        assert vlock.mem.pins == {}
    texts = [str(err.value), repr(err.value), repr(err.value.to_dict()), caplog.text]
    texts += [repr(e) for e in structured] + [repr(sink.events)]
    assert [t for t in texts if code in t] == []


@pytest.mark.parametrize(("lengths", "code"), [((3, 8), "593"), ((4, 10), "5938617204")])
async def test_while_the_code_lengths_are_unread_none_are_shown_and_any_length_is_tried(
    tmp_path: Path, lengths: tuple[int, int], code: str
) -> None:
    """The read after pairing goes unanswered; this lock takes codes of 3 (or up to 10) digits.
    Until it tells its lengths, the cloud is shown none (`supported_code_lengths` null) and the
    code is taken and set. Before, the guess 4..8 was shown and the code refused invalid_input
    by the gateway and the driver, never tried."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    vlock.profile = replace(vlock.profile, min_pin=lengths[0], max_pin=lengths[1])
    drop(vlock, reads(DoorLock.cluster_id), times=1)  # the read after pairing; not the next
    sink = AnnouncingSink()
    async with running(tmp_path, sink, virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        device = next(d for d in sink.added if d.id == dev)  # as announced: not read
        assert device_dict(device)["properties"]["supported_code_lengths"] is None
        request = set_code_request(dev, code, 3)
        await driver.execute(dev, validate(request, device))
        assert vlock.mem.pins == {3: code}
        await sink.wait_for(lambda: sink.devices[dev].codes.lengths_known)
        shown = device_dict(sink.devices[dev])["properties"]["supported_code_lengths"]
        assert shown == list(range(lengths[0], lengths[1] + 1))


@pytest.mark.parametrize(("users", "removed"), [(300, {"slot_id": 255}), (30, {"all_codes": True})])
async def test_a_code_cleared_for_user_255_while_the_user_count_is_unread_waits_for_the_count(
    tmp_path: Path, users: int, removed: dict[str, Any]
) -> None:
    """User id 0xFF in a programming event is all users on a lock with 8-bit user ids, but
    slot 255 on one with more than 255 users. The read after pairing went unanswered: the
    event waits for the count, which hearing the lock reads. Before, it was "all codes removed"
    on the lock with 300 users too, while its other codes were still there."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    vlock.profile = replace(vlock.profile, pin_users=users)
    drop(vlock, reads(DoorLock.cluster_id), times=1)  # the read after pairing; not the next
    sink = RecordingSink()
    async with running(tmp_path, sink, virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        assert not sink.devices[dev].codes.slots_known  # not read
        mark = len(sink.events)
        keypad, prog = int(DoorLock.OperationEventSource.Keypad), DoorLock.ProgrammingEvent
        vlock.odd_programming(keypad, int(prog.PINCodeDeleted), 0xFF)
        vlock.odd_programming(keypad, int(prog.PINCodeAdded), 4)  # then a code in slot 4
        await sink.wait_for(lambda: len(sink.events) - mark >= 2)
        await asyncio.sleep(0.3)  # a late third one would be among them
        mine = [e for e in sink.events[mark:] if e.device_id == dev]
        assert [(e.event_name, e.details) for e in mine] == [
            (EventName.CODE_REMOVED, {**removed, "method": "keypad"}),
            (EventName.CODE_SET, {"slot_id": 4, "method": "keypad"}),
        ]
        assert driver._locks[dev].codes().max_slot == users - 1


@pytest.mark.parametrize("end", ["driver stops", "lock leaves"])
async def test_a_code_clear_held_for_user_255_goes_up_when_the_driver_stops_or_the_lock_goes(
    tmp_path: Path, end: str
) -> None:
    """The event for user 0xFF waits for the user count; the driver stops, or the lock leaves,
    while that read is still unanswered. The event goes up then, 0xFF taken as all users, as
    when the count cannot be read, like a bolt report still waiting for its operation event;
    before the lock's `device disconnected`, as it was heard before it left. Before, the wait
    was cancelled with the events it held at a stop: the lock's codes were cleared at its
    keypad and the cloud never heard of it; and at a leave it went up after the disconnect,
    once the read had timed out."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    drop(vlock, *(reads(DoorLock.cluster_id, attr) for attr in CODE_LIMITS))  # never answered
    sink = RecordingSink()
    async with running(tmp_path, sink, virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        lock = driver._locks[dev]  # the read as it is heard goes unanswered for command_timeout_s
        keypad, prog = int(DoorLock.OperationEventSource.Keypad), DoorLock.ProgrammingEvent
        vlock.odd_programming(keypad, int(prog.PINCodeDeleted), 0xFF)
        await eventually(lambda: lock._held_programming is not None)
        mark = len(sink.events)
        expected = [(EventName.CODE_REMOVED, {"all_codes": True, "method": "keypad"})]
        if end == "driver stops":
            await driver.stop()
        else:
            vlock.leave()
            await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED, after=mark)
            expected.append((EventName.DEVICE_DISCONNECTED, {"reason": "left"}))
        mine = [e for e in sink.events[mark:] if e.device_id == dev]
        assert [(e.event_name, e.details) for e in mine] == expected


async def test_a_lock_that_never_answers_its_code_limits_is_read_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This lock answers every read but one that asks for its code limits. They are read again
    when it is heard, with backoff, LIMITS_READS times at most; then given up, logged
    zigbee.limits_unread, and the lock stays usable with its limits unknown. Before, they were
    read again each time it was heard after command_timeout_s, for good."""
    monkeypatch.setattr(zigbee_lock, "LIMITS_RETRY_S", 0.05, raising=False)
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    lost = drop(vlock, *(reads(DoorLock.cluster_id, attr) for attr in CODE_LIMITS)).lost
    sink = RecordingSink()
    with capture_logs() as logs:
        async with running(tmp_path, sink, config(command_timeout_s=0.5), virtual=net) as driver:
            dev = by_native(sink, GENERIC)
            given_up = lambda: any(e["event"] == "zigbee.limits_unread" for e in logs)  # noqa: E731
            most = 1 + 5  # the read after pairing, then LIMITS_READS
            with anyio.fail_after(30):
                while not given_up():  # heard again and again: a battery report
                    vlock.battery(0.5 + 0.01 * (len(lost) % 2))
                    await asyncio.sleep(0.1)
                    assert len(lost) <= most
            asked = len(lost)
            for n in range(5):  # heard, well after the last backoff: not asked again
                vlock.battery(0.3 + 0.01 * n)
                await asyncio.sleep(0.5)
            assert len(lost) == asked
            codes = sink.devices[dev].codes
            assert not codes.slots_known
            assert not codes.lengths_known
            await driver.execute(dev, Lock())
            assert sink.devices[dev].properties.locked is True
