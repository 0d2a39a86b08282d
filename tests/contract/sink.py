"""A DriverSink that records what a driver reports, for driver tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anyio

from gatewayd.model import Device, DoorEvent, EventName


class RecordingSink:
    """Records devices and events; stable ids per native id, like the core's store."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.devices: dict[str, Device] = {}
        self.removed: list[str] = []
        self.events: list[DoorEvent] = []
        self._changed = anyio.Event()

    # -- DriverSink
    def device_id(self, native_id: str) -> str:
        return self.ids.setdefault(native_id, str(uuid.uuid4()))

    def device_added(self, device: Device) -> None:
        self.devices[device.id] = device
        self._poke()

    def device_updated(self, device: Device) -> None:
        self.devices[device.id] = device
        self._poke()

    def device_removed(self, device_id: str) -> None:
        self.devices.pop(device_id, None)
        self.removed.append(device_id)
        self._poke()

    def door_event(self, event: DoorEvent) -> None:
        self.events.append(event)
        self._poke()

    # -- test helpers
    def _poke(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until predicate() holds, re-checking after every report; fail after timeout."""
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def wait_event(
        self, device_id: str, name: EventName, timeout: float = 10.0, after: int = 0
    ) -> DoorEvent:
        """The first event `name` for `device_id` among events[after:], waiting for it."""

        def find() -> DoorEvent | None:
            for ev in self.events[after:]:
                if ev.device_id == device_id and ev.event_name == name:
                    return ev
            return None

        await self.wait_for(lambda: find() is not None, timeout)
        found = find()
        assert found is not None
        return found

    def names(self, device_id: str) -> list[str]:
        return [str(e.event_name) for e in self.events if e.device_id == device_id]

    def code_events(self, device_id: str, after: int, detail: str) -> list[tuple[str, Any]]:
        """`code set on device` and `code removed from device` for `device_id` among
        events[after:], each as (name, its details[detail])."""
        names = (EventName.CODE_SET, EventName.CODE_REMOVED)
        return [
            (str(e.event_name), e.details.get(detail))
            for e in self.events[after:]
            if e.device_id == device_id and e.event_name in names
        ]
