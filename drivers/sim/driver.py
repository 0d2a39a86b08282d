"""SimDriver: simulated locks with latency, faults and people at the door — for tests and demos."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio

from drivers.sim.lock import Fault, SimLock
from drivers.sim.timers import Timers
from gatewayd.driver import (
    NO_PAIR_OPTIONS,
    Driver,
    DriverContext,
    DriverHealth,
    DriverSink,
    DriverState,
    Inventory,
    PairOptions,
    SimConfig,
    Simulation,
)
from gatewayd.logging import get_logger
from gatewayd.model import (
    Action,
    ActionResult,
    ClearCode,
    CodeConstraints,
    CodeNotConfirmed,
    Device,
    DeviceError,
    DeviceNotFound,
    DeviceOffline,
    DoorEvent,
    DuplicateCode,
    EventName,
    InvalidInput,
    Lock,
    Method,
    SetCode,
    Unlock,
)

log = get_logger(__name__)

INVENTORY_FILE = "sim-locks.json"
"""Which locks exist (native ids only, never codes), kept in the state dir across restarts."""


def native_id(n: int) -> str:
    return f"sim-{n:04d}"


class SimDriver(Driver):
    """Simulated locks. `execute` sleeps `latency_ms` (not at all when 0), then acts and reports.

    The lock inventory (paired and unpaired locks) persists in the state dir; `config.locks`
    seeds it, and a changed `config.locks` reseeds it.
    """

    name: ClassVar[str] = "sim"

    def __init__(self, config: SimConfig, ctx: DriverContext) -> None:
        self._config = config
        self._ctx = ctx
        self._codes = CodeConstraints(
            min_length=config.code_lengths[0],
            max_length=config.code_lengths[1],
            min_slot=config.slots[0],
            max_slot=config.slots[1],
        )
        self._latency_s = config.latency_ms / 1000.0
        self._sink: DriverSink | None = None
        self._timers: Timers | None = None
        self._locks: dict[str, SimLock] = {}  # device_id -> lock, in order of joining
        self._next = 1
        self._state = DriverState.STOPPED
        self._pairing_until = 0.0
        self._last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self, sink: DriverSink) -> None:
        if self._state is DriverState.READY:
            return
        self._sink = sink
        ids, seeded = self._load_inventory()
        # The locks are hardware: restarting the driver leaves their bolts, codes and batteries
        # as they were (a new process starts them afresh: their codes are never kept on disk).
        known = {lock.native_id: lock for lock in self._locks.values()}
        self._locks = {}
        for nid in ids:
            device_id = sink.device_id(nid)
            lock = known.get(nid)
            if lock is None or lock.device_id != device_id:
                lock = SimLock(native_id=nid, device_id=device_id, codes=self._codes)
            self._locks[lock.device_id] = lock
        if seeded:
            # unwritten, a later start with the count the file still held brought its locks back
            self._save_inventory()
        timers = self._timers = Timers()
        self._ctx.spawn("sim.timers", timers.run)
        self._state = DriverState.READY
        for lock in self._locks.values():
            sink.device_added(self._device(lock))
            if not lock.locked and not lock.door_open:
                self._arm_relock(lock)  # left unlocked, it relocks by itself as before
        log.info("sim.started", locks=len(self._locks))

    async def stop(self) -> None:
        if self._timers is not None:
            self._timers.close()
            self._timers = None
        if self._state is not DriverState.STOPPED:
            log.info("sim.stopped")
        self._state = DriverState.STOPPED

    def devices(self) -> Sequence[Device]:
        return [self._device(lock) for lock in self._locks.values()]

    def inventory(self) -> Inventory | None:
        if self._state is not DriverState.READY:
            return None
        return Inventory(prefix="", network="sim")  # start() reported every lock it holds

    def health(self) -> DriverHealth:
        details: dict[str, Any] = {"locks": len(self._locks)}
        if self._state is DriverState.READY:
            details["pairing"] = anyio.current_time() < self._pairing_until
        return DriverHealth(
            state=self._state, radio="sim", last_error=self._last_error, details=details
        )

    # ------------------------------------------------------------------ actions
    async def execute(self, device_id: str, action: Action) -> ActionResult:
        lock = self._online_lock(device_id)
        fault = lock.take_fault()
        if fault is Fault.REFUSE:
            raise DeviceError("the lock refused the command")
        delay = self._latency_s + lock.delay_s
        if delay > 0:  # with no latency and no delay fault, nothing here awaits at all
            await anyio.sleep(delay)
        if fault is Fault.NO_REPLY:
            log.info("sim.no_reply", device_id=device_id, action=str(action.name))
            await anyio.sleep_forever()
        # Everything below is synchronous, so a cancellation can never leave half a change.
        lock = self._online_lock(device_id)
        match action:
            case Lock() | Unlock():
                result = self._remote_bolt(lock, locked=isinstance(action, Lock))
            case SetCode(slot_id=slot_id, code=code):
                self._codes.check(slot_id, code)
                if lock.holds_elsewhere(slot_id, code):
                    raise DuplicateCode.in_slot(slot_id)
                # like the radio drivers: a slot that already holds the code is not written,
                # and what did not change is not reported as a change
                if lock.read_slot(slot_id) != code:
                    lock.write_slot(slot_id, code)
                    if lock.read_slot(slot_id) != code:
                        raise CodeNotConfirmed(f"slot {slot_id} did not read back the code written")
                    self._emit(lock, EventName.CODE_SET, {"slot_id": slot_id, "method": "remote"})
                result = ActionResult(details={"slot_id": slot_id})
            case ClearCode(slot_id=slot_id):
                self._codes.check(slot_id)
                if lock.read_slot(slot_id) is not None:
                    lock.clear_slot(slot_id)
                    if lock.read_slot(slot_id) is not None:
                        raise CodeNotConfirmed(f"slot {slot_id} still holds a code")
                    self._emit(
                        lock, EventName.CODE_REMOVED, {"slot_id": slot_id, "method": "remote"}
                    )
                result = ActionResult(details={"slot_id": slot_id})
        if self._config.battery_drain_per_action > 0:
            if lock.drain(self._config.battery_drain_per_action):
                self._emit(lock, EventName.LOW_BATTERY, {"battery_level": lock.battery})
            self._report(lock)
        return result

    def _remote_bolt(self, lock: SimLock, *, locked: bool) -> ActionResult:
        if lock.jammed:
            raise DeviceError("the bolt is jammed")
        self._move_bolt(lock, locked=locked, method=Method.REMOTE)
        return ActionResult(details={"locked": locked})

    async def pair(self, duration_s: int, options: PairOptions = NO_PAIR_OPTIONS) -> None:
        del options  # nothing here takes a DSK PIN
        timers = self._running_timers()
        self._pairing_until = anyio.current_time() + duration_s
        n = self._next
        self._next += 1
        timers.call_later(("join", n), self._config.pair_delay_s, lambda: self._join(n))
        log.info("sim.pairing", duration_s=duration_s, native_id=native_id(n))

    async def unpair(self, duration_s: int, device_id: str | None) -> None:
        self._running_timers()
        if device_id is None:
            if not self._locks:
                log.info("sim.unpair_nothing", duration_s=duration_s)
                return
            device_id = next(reversed(self._locks))
        lock = self._locks.pop(device_id, None)
        if lock is None:
            raise DeviceNotFound(f"no simulated lock {device_id}")
        if self._timers is not None:
            self._timers.cancel(("relock", lock.device_id))
        self._save_inventory()
        assert self._sink is not None
        self._sink.device_removed(lock.device_id)
        log.info("sim.lock_removed", device_id=lock.device_id, native_id=lock.native_id)

    def _join(self, n: int) -> None:
        if self._sink is None or self._state is not DriverState.READY:
            return
        nid = native_id(n)
        lock = SimLock(native_id=nid, device_id=self._sink.device_id(nid), codes=self._codes)
        self._locks[lock.device_id] = lock
        self._save_inventory()
        self._sink.device_added(self._device(lock))
        log.info("sim.lock_added", device_id=lock.device_id, native_id=nid)

    # ------------------------------------------------------------------ people at the door
    async def simulate(self, device_id: str, what: Simulation, params: Mapping[str, Any]) -> None:
        lock = self._lock(device_id)
        match what:
            case Simulation.KEYPAD_UNLOCK:
                slot_id = _int_param(params, "slot_id")
                if lock.read_slot(slot_id) is None:
                    raise InvalidInput(f"slot {slot_id} holds no code to type")
                self._move_bolt(lock, locked=False, method=Method.PIN_CODE, slot_id=slot_id)
            case Simulation.KEYPAD_LOCK:
                self._move_bolt(lock, locked=True, method=Method.KEYPAD)
            case Simulation.MANUAL_LOCK:
                self._move_bolt(lock, locked=True, method=Method.MANUAL)
            case Simulation.MANUAL_UNLOCK:
                self._move_bolt(lock, locked=False, method=Method.MANUAL)
            case Simulation.WRONG_CODE:
                self._emit(lock, EventName.KEYPAD_INVALID_CODE, {"method": Method.KEYPAD.value})
            case Simulation.JAM:
                lock.jammed = True
                self._cancel_relock(lock)
                self._report(lock)
                self._emit(lock, EventName.DOOR_JAMMED, {})
            case Simulation.BATTERY:
                level = _float_param(params, "level")
                if not 0.0 <= level <= 1.0:
                    raise InvalidInput("battery level must be within 0..1")
                crossed = lock.set_battery(level)
                self._report(lock)
                if crossed:
                    self._emit(lock, EventName.LOW_BATTERY, {"battery_level": lock.battery})
            case Simulation.OFFLINE:
                if lock.online:
                    self._report(lock)  # the last state heard before the node went quiet
                    lock.online = False
                    self._report(lock, force=True)
                    self._emit(lock, EventName.DEVICE_DISCONNECTED, {}, force=True)
            case Simulation.ONLINE:
                if not lock.online:
                    lock.online = True
                    self._report(lock)
                    self._emit(lock, EventName.DEVICE_CONNECTED, {})
            case Simulation.DOOR_OPEN:
                lock.door_open = True
                self._report(lock)
                self._emit(lock, EventName.DOOR_OPENED, {})
            case Simulation.DOOR_CLOSE:
                lock.door_open = False
                self._report(lock)
                self._emit(lock, EventName.DOOR_CLOSED, {})
                if not lock.locked:
                    self._arm_relock(lock)
            case Simulation.TAMPER:
                self._emit(lock, EventName.TAMPERED, {})
            case Simulation.FAULT:
                self._set_fault(lock, params)

    def _set_fault(self, lock: SimLock, params: Mapping[str, Any]) -> None:
        try:
            kind = Fault(params.get("kind", ""))
        except ValueError:
            raise InvalidInput(
                "unknown fault kind", {"kind": "one of " + ", ".join(f.value for f in Fault)}
            ) from None
        delay_s = _float_param(params, "delay_s") if kind is Fault.DELAY else 0.0
        if delay_s < 0:
            raise InvalidInput("delay_s must not be negative", {"delay_s": "must be >= 0"})
        lock.set_fault(kind, delay_s)
        log.info("sim.fault_set", device_id=lock.device_id, kind=kind.value, delay_s=delay_s)

    # ------------------------------------------------------------------ the lock's reports
    def _move_bolt(
        self, lock: SimLock, *, locked: bool, method: Method, slot_id: int | None = None
    ) -> None:
        """The bolt turns (which frees a jam) and the lock reports it."""
        lock.locked = locked
        lock.jammed = False
        self._report(lock)
        details: dict[str, Any] = {"method": method.value}
        if slot_id is not None:
            details["slot_id"] = slot_id
        self._emit(lock, EventName.DOOR_LOCKED if locked else EventName.DOOR_UNLOCKED, details)
        if locked:
            self._cancel_relock(lock)
        else:
            self._arm_relock(lock)

    def _arm_relock(self, lock: SimLock) -> None:
        if self._config.auto_relock_s > 0 and self._timers is not None:
            device_id = lock.device_id
            self._timers.call_later(
                ("relock", device_id), self._config.auto_relock_s, lambda: self._relock(device_id)
            )

    def _cancel_relock(self, lock: SimLock) -> None:
        if self._timers is not None:
            self._timers.cancel(("relock", lock.device_id))

    def _relock(self, device_id: str) -> None:
        lock = self._locks.get(device_id)
        # An open door or a jammed bolt keeps it unlocked; closing the door re-arms the timer.
        if lock is None or lock.locked or lock.jammed or lock.door_open:
            return
        self._move_bolt(lock, locked=True, method=Method.AUTO)

    def _report(self, lock: SimLock, *, force: bool = False) -> None:
        """device_updated — unless the lock is offline, when nothing it does is heard."""
        if self._sink is not None and (lock.online or force):
            self._sink.device_updated(self._device(lock))

    def _emit(
        self, lock: SimLock, name: EventName, details: Mapping[str, Any], *, force: bool = False
    ) -> None:
        if self._sink is not None and (lock.online or force):
            self._sink.door_event(DoorEvent(lock.device_id, name, dict(details)))

    def _device(self, lock: SimLock) -> Device:
        return Device(
            id=lock.device_id,
            native_id=lock.native_id,
            protocol="sim",
            name=f"Simulated lock {lock.native_id}",
            manufacturer="gatewayd",
            model="SimLock",
            codes=lock.codes,
            properties=lock.properties(),
        )

    # ------------------------------------------------------------------ lookups
    def _lock(self, device_id: str) -> SimLock:
        if self._state is not DriverState.READY:
            raise DeviceError("the sim driver is stopped")
        lock = self._locks.get(device_id)
        if lock is None:
            raise DeviceNotFound(f"no simulated lock {device_id}")
        return lock

    def _online_lock(self, device_id: str) -> SimLock:
        lock = self._lock(device_id)
        if not lock.online:
            raise DeviceOffline(f"simulated lock {device_id} is offline")
        return lock

    def _running_timers(self) -> Timers:
        if self._state is not DriverState.READY or self._timers is None:
            raise DeviceError("the sim driver is stopped")
        return self._timers

    # ------------------------------------------------------------------ inventory
    def _inventory_path(self) -> Path:
        return self._ctx.state_dir / INVENTORY_FILE

    def _load_inventory(self) -> tuple[list[str], bool]:
        """Native ids of the locks that exist, and whether they were seeded from config.locks
        (on first start, or with a changed count) rather than read from the file."""
        seed = self._config.locks
        try:
            data = json.loads(self._inventory_path().read_text())
            if data.get("seed") == seed:
                ids = [str(i) for i in data["locks"]]
                self._next = int(data["next"])
                return ids, False
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "sim.inventory_unreadable", path=str(self._inventory_path()), error=str(exc)
            )
        self._next = seed + 1
        return [native_id(n) for n in range(1, seed + 1)], True

    def _save_inventory(self) -> None:
        path = self._inventory_path()
        data = {
            "seed": self._config.locks,
            "next": self._next,
            "locks": [lock.native_id for lock in self._locks.values()],
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except OSError as exc:
            self._last_error = f"cannot save {path}: {exc.strerror}"
            log.warning("sim.inventory_not_saved", path=str(path), error=exc.strerror)


def _int_param(params: Mapping[str, Any], key: str) -> int:
    value = params.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{key} must be an integer", {key: "required integer"})
    return value


def _float_param(params: Mapping[str, Any], key: str) -> float:
    value = params.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidInput(f"{key} must be a number", {key: "required number"})
    return float(value)
