"""Contract: devices, remote actions, codes, faults, pairing and stop — for every driver."""

from __future__ import annotations

import json
import logging
import uuid

import anyio
import pytest
from structlog.testing import capture_logs

from gatewayd.driver import Driver, DriverState, Simulation
from gatewayd.model import (
    ClearCode,
    CodeNotConfirmed,
    DeviceError,
    DeviceNotFound,
    EventName,
    GatewayError,
    Lock,
    PinCode,
    SetCode,
    Unlock,
)
from tests.contract.conftest import Harness
from tests.contract.helpers import (
    a_lock,
    act,
    code_slot,
    distinctive_pin,
    locks,
    next_event,
    property_becomes,
    simulate,
)
from tests.contract.sink import RecordingSink

SETTLE_S = 0.6  # on every harness, a lock's own notices of a command arrive within this


async def test_devices_are_reported_ready_and_described(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    reported = locks(sink)
    assert len(reported) >= 2
    assert {d.id for d in driver.devices()} == {d.id for d in reported}
    assert len({d.native_id for d in reported}) == len(reported)
    assert driver.health().state is DriverState.READY
    for device in reported:
        assert device.protocol == driver.name
        assert device.manufacturer
        assert device.model
        assert 1 <= device.codes.min_length <= device.codes.max_length <= 16
        assert 0 <= device.codes.min_slot <= device.codes.max_slot
        assert device.properties.online is True
        assert device.properties.locked is not None
        if "battery" not in harness.unsupported:
            level = device.properties.battery_level
            assert level is not None
            assert 0.0 <= level <= 1.0


async def test_lock_is_confirmed_and_reported_as_remote(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    device = a_lock(sink)
    await act(harness, driver, device.id, Unlock())
    await property_becomes(sink, device.id, "locked", False)
    mark = len(sink.events)

    await act(harness, driver, device.id, Lock())

    event = await next_event(sink, device.id, EventName.DOOR_LOCKED, mark)
    assert event.details["method"] == "remote"
    await property_becomes(sink, device.id, "locked", True)


async def test_unlock_is_confirmed_and_reported_as_remote(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    device = locks(sink)[1]
    await act(harness, driver, device.id, Lock())
    await property_becomes(sink, device.id, "locked", True)
    mark = len(sink.events)

    await act(harness, driver, device.id, Unlock())

    event = await next_event(sink, device.id, EventName.DOOR_UNLOCKED, mark)
    assert event.details["method"] == "remote"
    await property_becomes(sink, device.id, "locked", False)


@pytest.mark.parametrize("action", [Lock(), Unlock()], ids=["lock", "unlock"])
async def test_a_bolt_already_there_is_still_confirmed_with_one_remote_report(
    harness: Harness, driver: Driver, sink: RecordingSink, action: Lock | Unlock
) -> None:
    """The cloud tells a lock/unlock that reached the lock from one that did not by the
    lock's `remote` report: it comes also when the bolt was already where it was sent."""
    device = a_lock(sink)
    locked = isinstance(action, Lock)
    await act(harness, driver, device.id, action)
    await property_becomes(sink, device.id, "locked", locked)
    await anyio.sleep(SETTLE_S)  # the first command's notices are in by now
    mark = len(sink.events)

    await act(harness, driver, device.id, action)

    name = EventName.DOOR_LOCKED if locked else EventName.DOOR_UNLOCKED
    event = await next_event(sink, device.id, name, mark)
    assert event.details["method"] == "remote"
    await anyio.sleep(SETTLE_S)  # a second report, from the lock's notice, would be in by now
    bolt = [
        (e.event_name, e.details)
        for e in sink.events[mark:]
        if e.device_id == device.id
        and e.event_name in (EventName.DOOR_LOCKED, EventName.DOOR_UNLOCKED)
    ]
    assert bolt == [(name, {"method": "remote"})]
    assert sink.devices[device.id].properties.locked is locked


async def test_set_code_is_confirmed_and_the_pin_never_leaks(
    harness: Harness,
    driver: Driver,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    device = a_lock(sink)
    pin, slot = distinctive_pin(device), code_slot(device)
    digits = pin.reveal()
    mark = len(sink.events)
    caplog.set_level(logging.INFO)

    with capture_logs() as structured:
        await act(harness, driver, device.id, SetCode(slot_id=slot, code=pin))
        event = await next_event(sink, device.id, EventName.CODE_SET, mark)

    assert event.details == {"slot_id": slot, "method": "remote"}  # the same on every driver
    texts = [repr(e) for e in sink.events] + [json.dumps(e.to_dict()) for e in sink.events]
    texts += [repr(d) for d in sink.devices.values()] + [repr(d) for d in driver.devices()]
    texts += [repr(entry) for entry in structured] + [caplog.text, repr(driver.health())]
    leaks = [text for text in texts if digits in text]
    assert leaks == []


async def test_clear_code_is_confirmed(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    device = a_lock(sink)
    slot = code_slot(device)
    await act(harness, driver, device.id, SetCode(slot_id=slot, code=distinctive_pin(device)))
    mark = len(sink.events)

    await act(harness, driver, device.id, ClearCode(slot_id=slot))

    event = await next_event(sink, device.id, EventName.CODE_REMOVED, mark)
    assert event.details == {"slot_id": slot, "method": "remote"}  # the same on every driver


async def test_setting_the_code_a_slot_holds_completes_and_reports_no_change(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    """A set_code sent again (a cloud retry, a user saving twice) finds the code in place: it
    completes, and no second `code set on device` tells the account a code changed. Before,
    every driver reported it again."""
    device = a_lock(sink)
    pin, slot = distinctive_pin(device), code_slot(device)
    await act(harness, driver, device.id, SetCode(slot_id=slot, code=pin))
    await anyio.sleep(SETTLE_S)  # the first set's notices are in by now
    mark = len(sink.events)

    result = await act(harness, driver, device.id, SetCode(slot_id=slot, code=pin))

    assert result.details == {"slot_id": slot}
    await anyio.sleep(SETTLE_S)  # a report of the second set, or the lock's notice, is in by now
    assert sink.code_events(device.id, mark, "slot_id") == []


async def test_clearing_an_empty_slot_completes_and_reports_nothing(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    """A clear_code of a slot that holds no code completes with no `code removed from
    device`: nothing was removed."""
    device = a_lock(sink)
    slot = code_slot(device)
    await act(harness, driver, device.id, SetCode(slot_id=slot, code=distinctive_pin(device)))
    await act(harness, driver, device.id, ClearCode(slot_id=slot))
    await anyio.sleep(SETTLE_S)
    mark = len(sink.events)

    result = await act(harness, driver, device.id, ClearCode(slot_id=slot))

    assert result.details == {"slot_id": slot}
    await anyio.sleep(SETTLE_S)
    assert sink.code_events(device.id, mark, "slot_id") == []


async def test_a_new_code_in_a_slot_that_holds_one_is_reported(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    """Only the same code is no change: another code in the same slot is one, reported once."""
    device = a_lock(sink)
    pin, slot = distinctive_pin(device), code_slot(device)
    other = PinCode(pin.reveal()[::-1])
    await act(harness, driver, device.id, SetCode(slot_id=slot, code=pin))
    await anyio.sleep(SETTLE_S)
    mark = len(sink.events)

    await act(harness, driver, device.id, SetCode(slot_id=slot, code=other))

    await next_event(sink, device.id, EventName.CODE_SET, mark)
    await anyio.sleep(SETTLE_S)
    assert sink.code_events(device.id, mark, "slot_id") == [(str(EventName.CODE_SET), slot)]


async def test_a_dropped_code_is_not_confirmed(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    harness.require("fault_drop_code")
    device = a_lock(sink)
    slot = code_slot(device)
    await simulate(driver, device.id, Simulation.FAULT, {"kind": "drop_code"})
    mark = len(sink.events)

    with pytest.raises(CodeNotConfirmed):
        await act(harness, driver, device.id, SetCode(slot_id=slot, code=distinctive_pin(device)))
    assert EventName.CODE_SET not in [e.event_name for e in sink.events[mark:]]

    # the fault hit one command only: the retry is stored and confirmed
    await act(harness, driver, device.id, SetCode(slot_id=slot, code=distinctive_pin(device)))
    await next_event(sink, device.id, EventName.CODE_SET, mark)


async def test_a_pin_another_slot_holds_is_refused_as_duplicate_code(
    harness: Harness,
    driver: Driver,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Locks keep one PIN per user: the same PIN for a second slot is refused, and the cloud
    is told why (duplicate_code), never with the PIN. The first slot keeps its code."""
    harness.require("duplicate_code")
    device = a_lock(sink)
    pin, slot = distinctive_pin(device), code_slot(device)
    other = slot + 1 if slot < device.codes.max_slot else slot - 1
    await act(harness, driver, device.id, SetCode(slot_id=slot, code=pin))
    mark = len(sink.events)
    caplog.set_level(logging.INFO)

    with capture_logs() as structured, pytest.raises(GatewayError) as err:
        await act(harness, driver, device.id, SetCode(slot_id=other, code=pin))

    assert err.value.to_dict()["type"] == "duplicate_code"
    await anyio.sleep(SETTLE_S)  # a late notice of the refused code would be in by now
    assert [e for e in sink.events[mark:] if e.device_id == device.id] == []
    texts = [str(err.value), repr(err.value), json.dumps(err.value.to_dict()), caplog.text]
    texts += [repr(entry) for entry in structured]
    assert [text for text in texts if pin.reveal() in text] == []
    # the slot that holds the PIN still does: cleared, the PIN can go to the other slot
    await act(harness, driver, device.id, ClearCode(slot_id=slot))
    await act(harness, driver, device.id, SetCode(slot_id=other, code=pin))


async def test_refused_command_fails_with_device_error(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    harness.require("fault_refuse")
    device = a_lock(sink)
    await simulate(driver, device.id, Simulation.FAULT, {"kind": "refuse"})

    with pytest.raises(DeviceError):
        await act(harness, driver, device.id, Unlock())

    await act(harness, driver, device.id, Unlock())
    await property_becomes(sink, device.id, "locked", False)


async def test_no_reply_is_cancelled_at_the_deadline_and_the_lock_still_works(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    harness.require("fault_no_reply")
    device = a_lock(sink)
    await act(harness, driver, device.id, Lock())  # a normal command answers within the deadline
    await property_becomes(sink, device.id, "locked", True)
    await simulate(driver, device.id, Simulation.FAULT, {"kind": "no_reply"})

    with pytest.raises(TimeoutError), anyio.fail_after(harness.deadline_s):
        await driver.execute(device.id, Unlock())

    mark = len(sink.events)
    await act(harness, driver, device.id, Unlock())
    event = await next_event(sink, device.id, EventName.DOOR_UNLOCKED, mark)
    assert event.details["method"] == "remote"
    await property_becomes(sink, device.id, "locked", False)


async def test_unknown_device_is_not_found(harness: Harness, driver: Driver) -> None:
    with pytest.raises(DeviceNotFound):
        await act(harness, driver, str(uuid.uuid4()), Lock())


async def test_pairing_adds_a_lock(harness: Harness, driver: Driver, sink: RecordingSink) -> None:
    harness.require("pair")
    before = set(sink.devices)

    await driver.pair(30)

    await sink.wait_for(lambda: len(set(sink.devices) - before) >= 1, timeout=60)
    (new_id,) = set(sink.devices) - before
    assert new_id in {d.id for d in driver.devices()}
    assert sink.devices[new_id].protocol == driver.name


async def test_unpairing_a_named_lock_removes_it(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    harness.require("unpair")
    device = locks(sink)[-1]

    await driver.unpair(30, device.id)

    await sink.wait_for(lambda: device.id in sink.removed, timeout=60)
    assert device.id not in sink.devices
    assert device.id not in {d.id for d in driver.devices()}


async def test_stop_reports_stopped(harness: Harness, driver: Driver) -> None:
    assert driver.health().state is not DriverState.STOPPED
    await driver.stop()
    assert driver.health().state is DriverState.STOPPED
    await driver.stop()  # idempotent: the harness stops it again
    assert driver.health().state is DriverState.STOPPED


async def test_a_restart_reports_the_same_devices(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    harness.require("restart")
    before = {d.id: d.native_id for d in locks(sink)}
    await driver.stop()
    sink.devices.clear()

    with anyio.fail_after(60):
        await driver.start(sink)
    await sink.wait_for(lambda: set(before) <= set(sink.devices), timeout=60)

    assert {d.id: d.native_id for d in locks(sink)} == before
    assert driver.health().state is DriverState.READY
    await act(harness, driver, locks(sink)[0].id, Lock())
