"""Domain objects shared by the core and the drivers: devices, actions, events and errors."""

from __future__ import annotations

import enum
import itertools
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import msgspec


def utcnow() -> datetime:
    """Timezone-aware now, the only clock domain objects use."""
    return datetime.now(UTC)


_MILLIS: Final = tuple(f".{ms:03d}Z" for ms in range(1000))
_ISO_PREFIXES: dict[tuple[int, int, int, int, int, int], str] = {}  # per second, a few kept


def iso(ts: datetime) -> str:
    """ISO-8601 with milliseconds and a Z, as the seed's timestamps are written.

    Hot (several calls per action): the `YYYY-MM-DDTHH:MM:SS` part is formatted once per second.
    """
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    key = (ts.second, ts.minute, ts.hour, ts.day, ts.month, ts.year)
    prefix = _ISO_PREFIXES.get(key)
    if prefix is None:
        if len(_ISO_PREFIXES) >= 64:
            _ISO_PREFIXES.clear()
        # the year by hand: strftime("%Y") writes 999, not 0999, and ISO strings must sort
        prefix = _ISO_PREFIXES[key] = f"{ts.year:04d}" + ts.strftime("-%m-%dT%H:%M:%S")
    return prefix + _MILLIS[ts.microsecond // 1000]


_RANDOM_CHUNK: Final = 16 * 256
_random = bytearray()
_random_lock: Final = threading.Lock()


def new_uuid() -> str:
    """A random (version 4) UUID as text, like `str(uuid.uuid4())` at less than half the cost.

    The 16 bytes come from `os.urandom`, read 256 ids at a time rather than a syscall each.
    """
    global _random
    with _random_lock:  # two threads never take the same bytes
        if not _random:
            _random = bytearray(os.urandom(_RANDOM_CHUNK))
        raw = _random[-16:]
        del _random[-16:]
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --------------------------------------------------------------------------- secrets


class PinCode:
    """A PIN that cannot leak by accident: repr/str/format mask it; `reveal()` is explicit."""

    __slots__ = ("_digits",)

    def __init__(self, digits: str) -> None:
        self._digits = digits

    def reveal(self) -> str:
        return self._digits

    def __len__(self) -> int:
        return len(self._digits)

    def __repr__(self) -> str:
        return "PinCode('****')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "****"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PinCode) and other._digits == self._digits

    def __hash__(self) -> int:
        return hash(("PinCode", self._digits))

    def __reduce__(self) -> Any:
        raise TypeError("PinCode is not picklable")


# --------------------------------------------------------------------------- actions


class ActionStatus(enum.StrEnum):
    PENDING = "pending"
    GATEWAY_RECEIVED = "gateway_received"
    GATEWAY_FAILURE = "gateway_failure"  # set by the cloud only
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL: Final = frozenset(
    {ActionStatus.COMPLETED, ActionStatus.FAILED, ActionStatus.GATEWAY_FAILURE}
)

# Transitions the gateway may make. The cloud alone moves pending -> gateway_failure.
LEGAL_TRANSITIONS: Final[Mapping[ActionStatus, frozenset[ActionStatus]]] = {
    ActionStatus.PENDING: frozenset({ActionStatus.GATEWAY_RECEIVED}),
    ActionStatus.GATEWAY_RECEIVED: frozenset({ActionStatus.PROCESSING, ActionStatus.FAILED}),
    ActionStatus.PROCESSING: frozenset({ActionStatus.COMPLETED, ActionStatus.FAILED}),
    ActionStatus.COMPLETED: frozenset(),
    ActionStatus.FAILED: frozenset(),
    ActionStatus.GATEWAY_FAILURE: frozenset(),
}


def check_transition(current: ActionStatus, new: ActionStatus) -> None:
    """Raise IllegalTransition unless the gateway may move an action from current to new."""
    if new not in LEGAL_TRANSITIONS[current]:
        raise IllegalTransition(f"{current} -> {new} is not a legal transition")


class ActionName(enum.StrEnum):
    LOCK = "lock"
    UNLOCK = "unlock"
    SET_CODE = "set_code"
    CLEAR_CODE = "clear_code"
    PAIR_DEVICES = "pair_devices"
    UNPAIR_DEVICES = "unpair_devices"


DEVICE_ACTIONS: Final = frozenset(
    {ActionName.LOCK, ActionName.UNLOCK, ActionName.SET_CODE, ActionName.CLEAR_CODE}
)
GATEWAY_ACTIONS: Final = frozenset({ActionName.PAIR_DEVICES, ActionName.UNPAIR_DEVICES})


class Lock(msgspec.Struct, frozen=True):
    name: ClassVar[ActionName] = ActionName.LOCK


class Unlock(msgspec.Struct, frozen=True):
    name: ClassVar[ActionName] = ActionName.UNLOCK


class SetCode(msgspec.Struct, frozen=True):
    slot_id: int
    code: PinCode
    name: ClassVar[ActionName] = ActionName.SET_CODE


class ClearCode(msgspec.Struct, frozen=True):
    slot_id: int
    name: ClassVar[ActionName] = ActionName.CLEAR_CODE


Action = Lock | Unlock | SetCode | ClearCode
"""A validated device action, as a driver receives it."""


class ActionResult(msgspec.Struct, frozen=True):
    """What a driver returns when the device confirmed the action."""

    details: Mapping[str, Any] = msgspec.field(default_factory=dict)


class ActionRequest(msgspec.Struct, frozen=True):
    """One request to act, from the cloud or any other source; inputs are raw and unvalidated."""

    id: str
    entity_type: str  # "Device" | "Gateway"
    entity_id: str
    action: str
    inputs: Mapping[str, Any]
    created_at: datetime
    deadline: datetime


# --------------------------------------------------------------------------- devices


class CodeConstraints(msgspec.Struct, frozen=True):
    """What codes this lock accepts: digit-string lengths and the slot range.

    `slots_known` False: the lock has not told its slot count yet (not read yet). The cloud is
    shown no upper end, and a slot up to `max_slot` (then what the protocol allows) is tried:
    the lock itself refuses one it lacks. `lengths_known` False, likewise for its code lengths:
    the cloud is shown none, and any length from `min_length` to `max_length` (then what the
    protocol allows) is tried; a guess would refuse codes the lock takes."""

    min_length: int = 4
    max_length: int = 8
    min_slot: int = 1
    max_slot: int = 11
    slots_known: bool = True
    lengths_known: bool = True

    def has_slot(self, slot: int) -> bool:
        return self.min_slot <= slot <= self.max_slot

    def slot_range(self) -> str:
        if not self.slots_known:
            return f"{self.min_slot} or more (this lock's slot count is not read yet)"
        return f"{self.min_slot} through {self.max_slot}"

    def length_range(self) -> str:
        lengths = f"{self.min_length} to {self.max_length} digits"
        if not self.lengths_known:
            return f"{lengths} (this lock's code lengths are not read yet)"
        return lengths

    def errors(
        self, slot: int, length: int | None = None, *, digits: bool = True
    ) -> dict[str, str]:
        """What is wrong with a code of `length` digits (None: a clear; `digits` False: not all
        digits) for `slot` on this lock, by input name; empty if nothing. Names no code."""
        errors: dict[str, str] = {}
        if not self.has_slot(slot):
            errors["slot_id"] = f"must be {self.slot_range()}"
        if not digits:
            errors["code"] = "must contain digits 0-9 only"
        elif length is not None and not self.min_length <= length <= self.max_length:
            errors["code"] = f"must have {self.length_range()}"
        return errors

    def check(self, slot: int, code: PinCode | None = None) -> None:
        """A driver's own check of a set (`code`) or clear of `slot` before it reaches the lock:
        InvalidInput naming what `errors` finds."""
        pin = None if code is None else code.reveal()
        length = None if pin is None else len(pin)
        errors = self.errors(slot, length, digits=pin is None or (pin.isascii() and pin.isdigit()))
        if errors:
            raise InvalidInput("invalid input for this lock", errors)


class DeviceProperties(msgspec.Struct, frozen=True):
    locked: bool | None = None
    online: bool = True
    door_open: bool | None = None
    battery_level: float | None = None  # 0..1
    jammed: bool = False
    firmware: str | None = None
    last_seen: datetime | None = None

    def battery_status(self) -> str | None:
        if self.battery_level is None:
            return None
        if self.battery_level < 0.1:
            return "critical"
        if self.battery_level < 0.25:
            return "low"
        if self.battery_level < 0.6:
            return "good"
        return "full"


class Device(msgspec.Struct, frozen=True):
    """A lock as the core sees it. `id` is the gateway's stable UUID, `native_id` the radio's."""

    id: str
    native_id: str
    protocol: str  # "zwave" | "zigbee" | "sim"
    name: str
    manufacturer: str
    model: str
    actions: frozenset[ActionName] = DEVICE_ACTIONS
    codes: CodeConstraints = CodeConstraints()
    properties: DeviceProperties = DeviceProperties()

    def visible(self) -> tuple[Any, ...]:
        """Everything the cloud is shown of this device except `last_seen`: equal means
        unchanged, so a report that only refreshes `last_seen` need not travel."""
        p = self.properties
        return (
            self.name,
            self.manufacturer,
            self.model,
            self.protocol,
            self.actions,
            self.codes,
            p.locked,
            p.online,
            p.door_open,
            p.battery_level,
            p.jammed,
            p.firmware,
        )


# --------------------------------------------------------------------------- events


class EventName(enum.StrEnum):
    DOOR_LOCKED = "door locked"
    DOOR_UNLOCKED = "door unlocked"
    DOOR_JAMMED = "door jammed"
    DOOR_OPENED = "door opened"
    DOOR_CLOSED = "door closed"
    KEYPAD_INVALID_CODE = "keypad invalid code"
    LOW_BATTERY = "low battery"
    TAMPERED = "tampered"
    DEVICE_CONNECTED = "device connected"
    DEVICE_DISCONNECTED = "device disconnected"
    CODE_SET = "code set on device"
    CODE_REMOVED = "code removed from device"
    CODE_DROPPED = "code dropped by device"


class Method(enum.StrEnum):
    PIN_CODE = "pin_code"
    MANUAL = "manual"
    REMOTE = "remote"
    AUTO = "auto"
    KEYPAD = "keypad"
    RF = "rf"
    UNKNOWN = "unknown"


class DoorEvent(msgspec.Struct, frozen=True):
    """Something that happened at a door. `details` never holds a PIN."""

    device_id: str
    event_name: EventName
    details: Mapping[str, Any] = msgspec.field(default_factory=dict)
    id: str = msgspec.field(default_factory=new_uuid)
    date_created: datetime = msgspec.field(default_factory=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "device_event",
            "device_id": self.device_id,
            "event_name": str(self.event_name),
            "details": dict(self.details),
            "date_created": iso(self.date_created),
        }


# --------------------------------------------------------------------------- errors


# What an error report carries at most. Messages and field names can quote the request (an
# unknown action, an unknown input), and a request is the cloud's to make as large as a frame:
# its report must still fit in one (with room to spare), so what it quotes is cut short.
MAX_ERROR_TEXT: Final = 200
MAX_VALIDATION_ERRORS: Final = 20


def clip(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """`text`, or its first `limit` characters and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class GatewayError(Exception):
    """Base of every error that ends an action; `type` is what goes upstream."""

    type: str = "gateway_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """The error as reported: `{type, message}`, the message at most MAX_ERROR_TEXT long."""
        return {"type": self.type, "message": clip(self.message)}


class InvalidInput(GatewayError):
    type = "invalid_input"

    def __init__(self, message: str, validation_errors: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.validation_errors: dict[str, str] = dict(validation_errors or {})

    def to_dict(self) -> dict[str, Any]:
        """Also `validation_errors`: the first MAX_VALIDATION_ERRORS, and how many more."""
        errors = self.validation_errors
        shown = {
            clip(field, 64): clip(problem)
            for field, problem in itertools.islice(errors.items(), MAX_VALIDATION_ERRORS)
        }
        if len(errors) > MAX_VALIDATION_ERRORS:
            shown["…"] = f"and {len(errors) - MAX_VALIDATION_ERRORS} more"
        return {**super().to_dict(), "validation_errors": shown}


class DeviceNotFound(GatewayError):
    type = "device_not_found"


class ActionNotSupported(GatewayError):
    type = "action_not_supported"


class ActionTimeout(GatewayError):
    type = "timeout"


class DeviceError(GatewayError):
    type = "device_error"


class DeviceOffline(DeviceError):
    type = "device_offline"


class DuplicateCode(DeviceError):
    """The lock refused a code because another of its slots holds the same PIN."""

    type = "duplicate_code"

    @classmethod
    def in_slot(cls, slot: int) -> DuplicateCode:
        """The one message every driver gives: the slot asked for, never which one holds it."""
        return cls(f"slot {slot}: the lock refused the code: another slot holds it")


class CodeMemoryFull(DeviceError):
    """The lock refused a code because it has no room left for one."""

    type = "code_memory_full"


class CodeNotConfirmed(GatewayError):
    type = "code_not_confirmed"


class GatewayRestarted(GatewayError):
    type = "gateway_restarted"


class DuplicateAction(GatewayError):
    type = "duplicate_action"


class IllegalTransition(GatewayError):
    type = "illegal_transition"
