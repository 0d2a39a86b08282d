"""The device registry: every driver's sink, the devices they report, and the way to act on them.

Drivers report through a per-driver sink; the registry gives devices their stable ids (store),
keeps the latest view of each, forwards changes and door events upstream, and routes actions to
the driver that owns the device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import msgspec

from gatewayd.driver import Driver, DriverSink, DriverState, Inventory, PairOptions
from gatewayd.logging import get_logger
from gatewayd.model import (
    Action,
    ActionNotSupported,
    ActionResult,
    ClearCode,
    Device,
    DeviceError,
    DeviceNotFound,
    DeviceOffline,
    DoorEvent,
    EventName,
    GatewayError,
    Lock,
    Method,
    PinCode,
    SetCode,
    Unlock,
)
from gatewayd.protocol import ProtocolError
from gatewayd.store import Store
from gatewayd.upstream import Upstream, device_json

log = get_logger(__name__)


_CODE_EVENTS = frozenset({EventName.CODE_SET, EventName.CODE_REMOVED})
# what a report that cannot become a frame raises: a value msgspec cannot encode (a radio
# library's object), a frame over the size limit
_UNSENDABLE = (TypeError, ValueError, msgspec.MsgspecError, ProtocolError)


def _answers_action(event: DoorEvent) -> bool:
    """A remote lock/unlock, or a code programmed, is the device answering our action."""
    return event.details.get("method") == Method.REMOTE or (
        event.event_name in _CODE_EVENTS and "method" not in event.details
    )


def _answered_by(event: DoorEvent) -> Callable[[Action | None], bool]:
    """Which action of ours this report can answer: a bolt report the lock or unlock that
    turns the bolt that way, a code report the set or clear of its slot, any other the action
    that runs. A late report of the last action, or of a set that failed, is no answer to the
    next action on the lock, whatever that is."""
    slot = event.details.get("slot_id")
    match event.event_name:
        case EventName.DOOR_LOCKED:
            return lambda action: isinstance(action, Lock)
        case EventName.DOOR_UNLOCKED:
            return lambda action: isinstance(action, Unlock)
        case EventName.CODE_SET:
            return lambda action: isinstance(action, SetCode) and slot in (None, action.slot_id)
        case EventName.CODE_REMOVED:
            return lambda action: isinstance(action, ClearCode) and slot in (None, action.slot_id)
    return lambda _action: True


def _state(driver: Driver) -> DriverState | None:
    try:
        return driver.health().state
    except Exception:  # noqa: BLE001 - a failing health() says nothing
        return None


def _lists(driver: Driver, device_id: str) -> bool:
    """Whether `driver` still lists the device: only then can its radio act on it."""
    try:
        return any(device.id == device_id for device in driver.devices())
    except Exception:  # noqa: BLE001 - a driver that cannot tell is asked, as before
        return True


class _DriverSink:
    """The sink one driver reports to; it knows which driver is speaking."""

    def __init__(self, registry: Registry, driver: str) -> None:
        self._registry = registry
        self._driver = driver

    def device_id(self, native_id: str) -> str:
        return self._registry.store.device_id(self._driver, native_id)

    def device_added(self, device: Device) -> None:
        self._registry.put(self._driver, device)

    def device_updated(self, device: Device) -> None:
        self._registry.put(self._driver, device)

    def device_removed(self, device_id: str) -> None:
        self._registry.remove(device_id)

    def door_event(self, event: DoorEvent) -> None:
        self._registry.event(event)


class Registry:
    """Devices by id, their owning drivers, and the Executor the dispatcher acts through."""

    def __init__(self, store: Store, upstream: Upstream) -> None:
        self.store = store
        self.upstream = upstream
        self.drivers: dict[str, Driver] = {}
        self._devices: dict[str, Device] = {}
        self._owner: dict[str, str] = {}
        self._reported: dict[str, tuple[Any, ...]] = {}  # device.visible() last reported
        self.last_event: dict[str, DoorEvent] = {}
        self.event_counts: Counter[str] = Counter()
        # the action request a report on a device answers, of those `answers` accepts
        self.answering: Callable[[str, Callable[[Action | None], bool]], str | None] = (
            lambda _device_id, _answers: None
        )
        # enabled drivers that could not be loaded (the daemon's): their radios are down, and
        # their locks may still be on their networks, unlike a driver no longer enabled's
        self.unavailable: Mapping[str, str] = {}
        self.event_listeners: list[Callable[[DoorEvent], None]] = []

    def attach(self, driver: Driver) -> DriverSink:
        self.drivers[driver.name] = driver
        return _DriverSink(self, driver.name)

    # ------------------------------------------------------------------ from drivers

    def put(self, driver: str, device: Device) -> None:
        if device.id not in self._devices and not self.store.knows_device(device.id):
            # not an id the store handed out, or one it forgot: the late report of a removed
            # device would bring it back upstream after its device_removed, for good
            log.warning("registry.unknown_device_dropped", device_id=device.id, driver=driver)
            return
        self._devices[device.id] = device
        self._owner[device.id] = driver
        visible = device.visible()
        if self._reported.get(device.id) == visible:
            return
        body = self._send(device)
        if body is not None:
            self._reported[device.id] = visible
            self.store.save_device(device.id, body)

    def _send(self, device: Device) -> bytes | None:
        """Report the device upstream; its JSON, or None (logged) when it cannot be a frame: a
        driver's bug, which raised into the driver could fail the action that moved the lock."""
        try:
            body = device_json(device)  # encoded once, for the store and the frame
            self.upstream.device(device, body)
        except _UNSENDABLE as exc:
            log.error(
                "registry.device_not_sent",
                device_id=device.id,
                driver=self._owner.get(device.id),
                error=type(exc).__name__,
            )
            return None
        return body

    def report_all(self) -> None:
        """Report every device again (after a claim: a cloud that knows this gateway under a
        new id has acked the old reports under the old one)."""
        for device in self._devices.values():
            self._send(device)

    def remove(self, device_id: str) -> None:
        # one not reported in this run may still be in the store, and in the cloud, from the last
        if self._devices.pop(device_id, None) is None and not self.store.knows_device(device_id):
            return
        self._owner.pop(device_id, None)
        self._reported.pop(device_id, None)
        self.last_event.pop(device_id, None)
        self.store.forget_device(device_id)
        self.upstream.device_removed(device_id)
        log.info("registry.device_removed", device_id=device_id)

    def remove_unreported(self, driver: str, inventory: Inventory) -> tuple[list[str], list[str]]:
        """Remove the devices the store holds for `driver` that `inventory` covers and that it
        has not reported in this run (see Driver.inventory). Returns the device ids removed
        and the native ids of the unreported devices kept: those of other networks."""
        reported = {device_id for device_id, owner in self._owner.items() if owner == driver}
        unreported = [
            row
            for row in self.store.devices()
            if row.driver == driver and row.device_id not in reported
        ]
        gone = [row.device_id for row in unreported if inventory.covers(row.native_id)]
        kept = sorted(row.native_id for row in unreported if not inventory.covers(row.native_id))
        for device_id in gone:
            self.remove(device_id)
        return gone, kept

    def event(self, event: DoorEvent) -> None:
        if _answers_action(event) and "action_request_id" not in event.details:
            answering = self.answering(event.device_id, _answered_by(event))
            if answering is not None:
                details = {**event.details, "action_request_id": answering}
                event = DoorEvent(
                    event.device_id, event.event_name, details, event.id, event.date_created
                )
        if event.device_id not in self._devices and not self.store.knows_device(event.device_id):
            # a late event of a removed device, or of an id the store never handed out: the
            # cloud knows no such device
            log.warning(
                "registry.unknown_device_event_dropped",
                device_id=event.device_id,
                event_name=str(event.event_name),
            )
            return
        try:
            self.upstream.event(event)
        except _UNSENDABLE as exc:
            # the error's text may quote the details: only its type is logged
            log.error(
                "registry.event_not_sent",
                event_id=event.id,
                device_id=event.device_id,
                event_name=str(event.event_name),
                error=type(exc).__name__,
            )
            return
        if event.device_id in self._devices:
            self.last_event[event.device_id] = event
        self.event_counts[str(event.event_name)] += 1
        for listener in self.event_listeners:
            listener(event)
        log.info(
            "registry.door_event",
            event_id=event.id,
            device_id=event.device_id,
            event_name=str(event.event_name),
            method=event.details.get("method"),
            slot_id=event.details.get("slot_id"),
        )

    # ------------------------------------------------------------------ Executor

    def device(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def unreported(self, device_id: str) -> GatewayError | None:
        """Why a paired lock (in the store) that no driver has reported in this run cannot act
        now: its driver is still starting (at every boot the tunnel is up before the radios),
        its radio is down, or its driver is not enabled. None for a device the store does not
        know: that one is not found. Not `device_not_found`: a cloud may take that as gone."""
        if not self.store.knows_device(device_id):
            return None
        row = next((r for r in self.store.devices() if r.device_id == device_id), None)
        if row is None:
            return None
        driver = self.drivers.get(row.driver)
        if driver is None and row.driver in self.unavailable:
            return DeviceOffline(f"the {row.driver} driver could not be loaded: its radio is down")
        if driver is None:
            return DeviceOffline(f"the {row.driver} driver is not enabled on this gateway")
        state = _state(driver)
        if state is DriverState.STARTING:
            return DeviceOffline(f"the {row.driver} driver is still starting; try again shortly")
        if state not in (DriverState.READY, DriverState.DEGRADED):
            return DeviceOffline(f"the {row.driver} radio is down; try again once it is up")
        return DeviceOffline(f"the {row.driver} radio does not list this lock (another network?)")

    def devices(self) -> list[Device]:
        return list(self._devices.values())

    def driver_of(self, device_id: str) -> str | None:
        return self._owner.get(device_id)

    def hold_s(self, device_id: str, action: Action) -> float:
        owner = self._owner.get(device_id)
        return 0.0 if owner is None else self.drivers[owner].hold_s(device_id, action)

    async def execute(self, device_id: str, action: Action) -> ActionResult:
        owner = self._owner.get(device_id)
        if owner is None:
            raise DeviceNotFound(f"device {device_id} not found")
        return await self.drivers[owner].execute(device_id, action)

    async def pair(self, duration_s: int, inputs: Mapping[str, Any]) -> None:
        wanted = inputs.get("protocol")
        targets = [d for n, d in self.drivers.items() if wanted is None or n == wanted]
        if not targets and wanted in self.unavailable:
            raise DeviceError(f"the {wanted} driver could not be loaded: its radio is down")
        if not targets:
            raise ActionNotSupported(f"no driver for protocol {wanted!r}")
        dsk_pin = inputs.get("dsk_pin")  # validated by the dispatcher: 5 digits or absent
        options = PairOptions(dsk_pin=None if dsk_pin is None else PinCode(str(dsk_pin)))
        await self._on_all(targets, lambda d: d.pair(duration_s, options))

    async def unpair(self, duration_s: int, device_id: str | None) -> None:
        if device_id is None:
            await self._on_all(list(self.drivers.values()), lambda d: d.unpair(duration_s, None))
            return
        owner = self._owner.get(device_id)
        if owner is not None and _lists(self.drivers[owner], device_id):
            await self.drivers[owner].unpair(duration_s, device_id)
            return
        self._unpair_unreported(device_id)

    def _unpair_unreported(self, device_id: str) -> None:
        """Remove a stored device that no driver reports (of another network than its running
        driver's, or of a driver no longer enabled), or that its driver reported earlier in
        this run and no longer lists (zwave-server switched to another controller: the locks of
        the network it left are offline here, and no radio can reach them). No radio can
        remove it, and without this it would stay in the store and the cloud for good."""
        row = next((r for r in self.store.devices() if r.device_id == device_id), None)
        # devices() still lists a row whose forget is not committed yet; knows_device does not
        if row is None or not self.store.knows_device(device_id):
            raise DeviceNotFound(f"device {device_id} not found")
        driver = self.drivers.get(row.driver)
        if driver is None and row.driver in self.unavailable:
            # enabled, but its radio library cannot be loaded: the lock may still be on its
            # network, and forgotten it would come back with a new id once the library is fixed
            raise DeviceError(
                f"the {row.driver} driver could not be loaded, so the lock cannot be excluded;"
                f" try again once it loads, or disable the {row.driver} driver to forget its"
                " devices"
            )
        state = None if driver is None else _state(driver)
        if state is DriverState.STARTING:
            # it may be about to report this device: forgetting it now would give it a new id
            raise DeviceError(f"the {row.driver} driver is still starting; try again once it is up")
        if driver is not None and state not in (DriverState.READY, DriverState.DEGRADED):
            # the lock may still be on its network: forgotten, it would come back with a new id
            raise DeviceError(
                f"the {row.driver} radio is down, so the lock cannot be excluded; try again once"
                f" it is up, or disable the {row.driver} driver to forget its devices"
            )
        self.remove(device_id)
        log.info(
            "registry.unreported_device_unpaired",
            device_id=device_id,
            driver=row.driver,
            native_id=row.native_id,
        )

    async def _on_all(self, drivers: list[Driver], call: Callable[[Driver], Any]) -> None:
        """Run `call` on every driver concurrently; fail only if no driver could do it."""
        errors: list[GatewayError] = []

        async def one(driver: Driver) -> None:
            try:
                await call(driver)
            except GatewayError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for driver in drivers:
                tg.start_soon(one, driver, name=f"registry.{driver.name}")
        if len(errors) == len(drivers):
            raise errors[0]
