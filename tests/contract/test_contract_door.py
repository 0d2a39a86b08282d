"""Contract: what a person at the door does is reported — keypad, thumb turn, jam, battery..."""

from __future__ import annotations

import pytest

from gatewayd.driver import Driver, Simulation
from gatewayd.model import EventName as E
from gatewayd.model import GatewayError, Lock, SetCode, Unlock
from tests.contract.conftest import Harness
from tests.contract.helpers import (
    a_lock,
    act,
    code_slot,
    distinctive_pin,
    next_event,
    property_becomes,
    simulate,
)
from tests.contract.sink import RecordingSink


async def test_keypad_unlock_names_the_slot(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    harness.require("keypad_unlock")
    device = a_lock(sink)
    slot = code_slot(device)
    await act(harness, driver, device.id, SetCode(slot_id=slot, code=distinctive_pin(device)))
    await act(harness, driver, device.id, Lock())
    await property_becomes(sink, device.id, "locked", True)
    mark = len(sink.events)

    await simulate(driver, device.id, Simulation.KEYPAD_UNLOCK, {"slot_id": slot})

    event = await next_event(sink, device.id, E.DOOR_UNLOCKED, mark)
    assert event.details["method"] == "pin_code"
    assert event.details["slot_id"] == slot
    await property_becomes(sink, device.id, "locked", False)


async def test_keypad_lock_button(harness: Harness, driver: Driver, sink: RecordingSink) -> None:
    harness.require("keypad_lock")
    device = a_lock(sink)
    await act(harness, driver, device.id, Unlock())
    await property_becomes(sink, device.id, "locked", False)
    mark = len(sink.events)

    await simulate(driver, device.id, Simulation.KEYPAD_LOCK)

    event = await next_event(sink, device.id, E.DOOR_LOCKED, mark)
    assert event.details["method"] == "keypad"
    await property_becomes(sink, device.id, "locked", True)


async def test_thumb_turn_is_manual(harness: Harness, driver: Driver, sink: RecordingSink) -> None:
    harness.require("manual")
    device = a_lock(sink)
    await act(harness, driver, device.id, Lock())
    await property_becomes(sink, device.id, "locked", True)
    mark = len(sink.events)

    await simulate(driver, device.id, Simulation.MANUAL_UNLOCK)
    unlocked = await next_event(sink, device.id, E.DOOR_UNLOCKED, mark)
    await property_becomes(sink, device.id, "locked", False)
    mark = len(sink.events)
    await simulate(driver, device.id, Simulation.MANUAL_LOCK)
    locked = await next_event(sink, device.id, E.DOOR_LOCKED, mark)

    assert unlocked.details["method"] == "manual"
    assert locked.details["method"] == "manual"
    await property_becomes(sink, device.id, "locked", True)


async def test_wrong_code_is_reported(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    harness.require("wrong_code")
    device = a_lock(sink)
    mark = len(sink.events)

    await simulate(driver, device.id, Simulation.WRONG_CODE)

    event = await next_event(sink, device.id, E.KEYPAD_INVALID_CODE, mark)
    assert event.details == {"method": "keypad"}  # the same on every driver


async def test_jam_is_reported(harness: Harness, driver: Driver, sink: RecordingSink) -> None:
    harness.require("jam")
    device = a_lock(sink)
    mark = len(sink.events)

    await simulate(driver, device.id, Simulation.JAM)

    await next_event(sink, device.id, E.DOOR_JAMMED, mark)
    await property_becomes(sink, device.id, "jammed", True)


async def test_low_battery_is_reported(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    harness.require("battery")
    device = a_lock(sink)
    mark = len(sink.events)

    await simulate(driver, device.id, Simulation.BATTERY, {"level": 0.1})

    await next_event(sink, device.id, E.LOW_BATTERY, mark)
    await sink.wait_for(
        lambda: abs((sink.devices[device.id].properties.battery_level or 1.0) - 0.1) < 0.011
    )


async def test_offline_lock_fails_actions_until_it_is_back(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    harness.require("offline")
    device = a_lock(sink)
    mark = len(sink.events)

    await simulate(driver, device.id, Simulation.OFFLINE)
    await next_event(sink, device.id, E.DEVICE_DISCONNECTED, mark)
    await property_becomes(sink, device.id, "online", False)
    with pytest.raises(GatewayError):
        await act(harness, driver, device.id, Unlock())

    mark = len(sink.events)
    await simulate(driver, device.id, Simulation.ONLINE)
    await next_event(sink, device.id, E.DEVICE_CONNECTED, mark)
    await property_becomes(sink, device.id, "online", True)
    await act(harness, driver, device.id, Unlock())
    await property_becomes(sink, device.id, "locked", False)


async def test_door_open_and_close(harness: Harness, driver: Driver, sink: RecordingSink) -> None:
    harness.require("door")
    device = a_lock(sink)
    mark = len(sink.events)

    await simulate(driver, device.id, Simulation.DOOR_OPEN)
    await next_event(sink, device.id, E.DOOR_OPENED, mark)
    await property_becomes(sink, device.id, "door_open", True)
    await simulate(driver, device.id, Simulation.DOOR_CLOSE)
    await next_event(sink, device.id, E.DOOR_CLOSED, mark)
    await property_becomes(sink, device.id, "door_open", False)


async def test_tamper_is_reported(harness: Harness, driver: Driver, sink: RecordingSink) -> None:
    harness.require("tamper")
    device = a_lock(sink)
    mark = len(sink.events)

    await simulate(driver, device.id, Simulation.TAMPER)

    await next_event(sink, device.id, E.TAMPERED, mark)
