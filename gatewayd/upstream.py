"""Everything the gateway tells the cloud, committed to the durable outbox before it is sent."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final, cast

import msgspec
import structlog
from msgspec.structs import replace

from gatewayd import protocol
from gatewayd.actions import StatusUpdate
from gatewayd.model import ActionName, CodeConstraints, Device, DoorEvent, iso, utcnow
from gatewayd.store import Store

_DESCRIPTORS: dict[tuple[frozenset[ActionName], CodeConstraints], dict[str, Any]] = {}
# A box clock this far from the cloud's is treated as wrong: logged, and the times this gateway
# sends upstream are put on the cloud's clock.
CLOCK_SKEW_S: Final = 5.0
_YEAR: Final = timedelta(days=366)

log = structlog.get_logger(__name__)


def action_descriptors(device: Device) -> dict[str, Any]:
    """The seed's `actions` object, with the input constraints of this lock.

    Built once per (actions, code constraints) and shared: treat it as read-only.
    """
    key = (device.actions, device.codes)
    found = _DESCRIPTORS.get(key)
    if found is None:
        if len(_DESCRIPTORS) >= 256:
            _DESCRIPTORS.clear()
        found = _DESCRIPTORS[key] = _build_descriptors(device)
    return found


def _build_descriptors(device: Device) -> dict[str, Any]:
    codes = device.codes
    slot_input = {"title": "Slot ID", "description": codes.slot_range(), "type": "integer"}
    catalogue: dict[ActionName, dict[str, Any]] = {
        ActionName.LOCK: {"title": "Lock", "description": "Locks the Door Lock", "inputs": None},
        ActionName.UNLOCK: {
            "title": "Unlock",
            "description": "Unlocks the Door Lock",
            "inputs": None,
        },
        ActionName.SET_CODE: {
            "title": "Set Code",
            "description": "Set User Code for the Door Lock",
            "inputs": {
                "code": {
                    "title": "Code",
                    "description": (
                        "Pin Code, all numbers, can start with 0, must be between "
                        f"{codes.min_length} and {codes.max_length} digits in length"
                        + ("" if codes.lengths_known else " (this lock's are not read yet)")
                    ),
                    "type": "string",
                },
                "slot_id": slot_input,
            },
        },
        ActionName.CLEAR_CODE: {
            "title": "Clear Code",
            "description": "Clear a User Code for the Door Lock",
            "inputs": {"slot_id": slot_input},
        },
    }
    return {str(name): desc for name, desc in catalogue.items() if name in device.actions}


def device_dict(device: Device) -> dict[str, Any]:
    """The device as reported upstream and shown on /status."""
    return {**_fixed_fields(device), "properties": _properties(device)}


def _fixed_fields(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "name": device.name,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "protocol": device.protocol,
        "actions": action_descriptors(device),
    }


_encoder: Final = msgspec.json.Encoder()
# JSON of everything in device_dict before `properties` (which comes last), up to and with
# `"properties":`, by what it is made of: only properties change from one report to the next.
_PREFIXES: dict[tuple[Any, ...], bytes] = {}


def device_json(device: Device) -> bytes:
    """`device_dict(device)` as JSON, the same bytes, without re-encoding the parts that do
    not change between reports (the action descriptors are most of the object)."""
    key = (
        device.id,
        device.name,
        device.manufacturer,
        device.model,
        device.protocol,
        device.actions,
        device.codes,
    )
    prefix = _PREFIXES.get(key)
    if prefix is None:
        if len(_PREFIXES) >= 1024:
            _PREFIXES.clear()
        fixed = _encoder.encode(_fixed_fields(device))
        prefix = _PREFIXES[key] = fixed[:-1] + b',"properties":'
    return prefix + _encoder.encode(_properties(device)) + b"}"


def _properties(device: Device) -> dict[str, Any]:
    p = device.properties
    return {
        "locked": p.locked,
        "online": p.online,
        "door_open": p.door_open,
        "battery_level": p.battery_level,
        "battery": (
            None
            if p.battery_level is None
            else {"level": p.battery_level, "status": p.battery_status()}
        ),
        "jammed": p.jammed,
        "supported_code_lengths": _code_lengths(device.codes),
        "code_slots": {"min": device.codes.min_slot, "max": _max_slot(device.codes)},
        "firmware": p.firmware,
        "last_seen": iso(p.last_seen) if p.last_seen else None,
    }


def _code_lengths(codes: CodeConstraints) -> list[int] | None:
    """None while the lock has not told its code lengths: a guess would refuse codes it takes
    (an absent list is the cloud's 4..8 default)."""
    if not codes.lengths_known:
        return None
    return list(range(codes.min_length, codes.max_length + 1))


def _max_slot(codes: CodeConstraints) -> int | None:
    """None while the lock has not told its slot count: a guess would refuse slots it has."""
    return codes.max_slot if codes.slots_known else None


def _encode(msg: protocol.Message) -> bytes:
    """An outbox frame: small enough to stay a frame under any seq a rebase gives it."""
    return protocol.encode(msg, protocol.OUTBOX_FRAME_BYTES)


class Upstream:
    """Turns core happenings into protocol frames in the outbox (seq assigned by the store)."""

    def __init__(self, store: Store, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._monotonic = monotonic
        # (the cloud's clock minus ours at the welcome, our wall clock then, monotonic then)
        self._anchor: tuple[float, datetime, float] | None = None

    def cloud_clock(self, skew_s: float | None) -> None:
        """The cloud's clock minus ours (the tunnel measures it at each welcome). When it is
        off by CLOCK_SKEW_S or more, the times of status reports, door events and `last_seen`
        go upstream on the cloud's clock, so the account's history is not an hour off; the
        local log and /status keep this box's clock."""
        self._anchor = None if skew_s is None else (skew_s, utcnow(), self._monotonic())

    def _shift(self) -> timedelta | None:
        """What to add to a time on our wall clock, read now, for the cloud's: the welcome's
        skew less any step of our wall clock since (NTP stepping a box that booted an hour
        behind: with the welcome's skew kept, every time sent after the step was an hour in
        the future, and the history out of order)."""
        anchor = self._anchor
        if anchor is None:
            return None
        skew_s, wall_then, mono_then = anchor
        now = utcnow()
        stepped = (now - wall_then).total_seconds() - (self._monotonic() - mono_then)
        # below a second: the two clocks' reading noise and slewing, not a step
        skew = skew_s - stepped if abs(stepped) >= 1.0 else skew_s
        if abs(skew) < CLOCK_SKEW_S:
            return None
        try:
            shift = timedelta(seconds=skew)
            _ = (now + shift + _YEAR, now + shift - _YEAR)  # a year of room either way
        except OverflowError:
            # a cloud clock at an end of the calendar: times on it would not fit a datetime
            log.warning("upstream.cloud_clock_ignored", skew_s=skew_s)
            self._anchor = None
            return None
        return shift

    def action_status(self, update: StatusUpdate) -> int:
        shift = self._shift()
        at = (update.at_iso or iso(update.at)) if shift is None else iso(update.at + shift)

        def make(seq: int) -> bytes:
            msg = protocol.ActionStatusMsg(
                seq=seq,
                action_request_id=update.action_request_id,
                status=str(update.status),
                error=update.error,
                at=at,
            )
            try:
                return _encode(msg)
            except protocol.ProtocolError:
                if update.error is None:
                    raise
                # The cloud must hear of the transition even when its error does not fit (a
                # GatewayError's report always does; this is the net under other errors).
                error = {"type": update.error.get("type"), "message": "error details too large"}
                return _encode(replace(msg, error=error))

        return self._store.outbox_put(make)

    def event(self, event: DoorEvent) -> int:
        body = event.to_dict()
        shift = self._shift()
        if shift is not None:
            body["date_created"] = iso(event.date_created + shift)
        return self._store.outbox_put(lambda seq: _encode(protocol.EventMsg(seq=seq, event=body)))

    def device(self, device: Device, body: dict[str, Any] | bytes | None = None) -> int:
        """`body`: device_dict(device), or device_json(device), when the caller has it."""
        seen = device.properties.last_seen
        shift = None if seen is None else self._shift()
        if shift is not None and seen is not None:
            shifted = replace(device.properties, last_seen=seen + shift)
            body = device_json(replace(device, properties=shifted))
        elif body is None:
            body = device_json(device)
        # JSON already encoded goes into the frame as it is
        fields = cast(dict[str, Any], msgspec.Raw(body)) if isinstance(body, bytes) else body
        return self._store.outbox_put(
            lambda seq: _encode(protocol.DeviceMsg(seq=seq, device=fields))
        )

    def device_removed(self, device_id: str) -> int:
        return self._store.outbox_put(
            lambda seq: _encode(protocol.DeviceRemovedMsg(seq=seq, device_id=device_id))
        )
