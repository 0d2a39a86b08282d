"""Small helpers the contract tests share: picking locks, acting under a deadline, PINs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from gatewayd.driver import Driver, Simulation
from gatewayd.model import Action, ActionResult, Device, DoorEvent, EventName, PinCode
from tests.contract.conftest import Harness
from tests.contract.sink import RecordingSink


def locks(sink: RecordingSink) -> list[Device]:
    """The reported locks, in a stable order."""
    return sorted(sink.devices.values(), key=lambda d: d.native_id)


def a_lock(sink: RecordingSink) -> Device:
    return locks(sink)[0]


async def act(harness: Harness, driver: Driver, device_id: str, action: Action) -> ActionResult:
    """Execute one action under the harness's deadline, as the dispatcher would."""
    with anyio.fail_after(harness.deadline_s):
        return await driver.execute(device_id, action)


async def simulate(
    driver: Driver, device_id: str, what: Simulation, params: Mapping[str, Any] | None = None
) -> None:
    await driver.simulate(device_id, what, params or {})


async def next_event(sink: RecordingSink, device_id: str, name: EventName, mark: int) -> DoorEvent:
    """The first `name` event for the device reported after `mark` (a len(sink.events))."""
    return await sink.wait_event(device_id, name, after=mark)


async def property_becomes(sink: RecordingSink, device_id: str, field: str, value: object) -> None:
    """Wait until the reported device's properties.<field> equals value."""
    await sink.wait_for(
        lambda: (
            device_id in sink.devices
            and getattr(sink.devices[device_id].properties, field) == value
        )
    )


def distinctive_pin(device: Device) -> PinCode:
    """A PIN that fits the lock, starts with 0 and would be unmistakable in any text."""
    length = max(device.codes.min_length, min(device.codes.max_length, 8))
    return PinCode(("0739182654" * 2)[:length])


def code_slot(device: Device) -> int:
    """A user slot the lock accepts, 2 where possible (slot 1 is often the master code)."""
    return min(max(device.codes.min_slot, 2), device.codes.max_slot)
