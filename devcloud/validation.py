"""Strict validation of REST bodies, reporting problems the way seed 003 does.

`validation_errors` is `{"_errors": [...], "<field>": {"_errors": [...]}}`. Messages name the field
and the rule, never the value.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from devcloud.errors import ApiError
from gatewayd import protocol

_DIGITS: Final = re.compile(r"[0-9]+")
DEFAULT_CODE_LENGTHS: Final = (4, 5, 6, 7, 8)
DEFAULT_SLOTS: Final = (1, 11)
# a lock that has not told its code lengths (`supported_code_lengths: null`): any the gateway
# tries, and the lock refuses one it does not take
UNKNOWN_CODE_LENGTHS: Final = tuple(range(1, 17))
UNKNOWN_MAX_SLOT: Final = 65_534  # the largest Zigbee user id (0xFFFF: all users, no slot)


class Problems:
    """Collects what is wrong with one body; `check()` raises a 400 if anything is."""

    def __init__(self) -> None:
        self.root: list[str] = []
        self.fields: dict[str, list[str]] = {}

    def add(self, field: str | None, message: str) -> None:
        if field is None:
            self.root.append(message)
        else:
            self.fields.setdefault(field, []).append(message)

    def check(self) -> None:
        if not self.root and not self.fields:
            return
        errors: dict[str, Any] = {"_errors": list(self.root)}
        for name, messages in self.fields.items():
            errors[name] = {"_errors": messages}
        if self.fields:
            name, messages = next(iter(self.fields.items()))
            message = f'{messages[0]} for provided "{name}"'
        else:
            message = self.root[0]
        raise ApiError(400, "invalid_input", message, validation_errors=errors)


def as_object(value: Any, problems: Problems, field: str | None = None) -> dict[str, Any]:
    """The value as a JSON object (None counts as empty), or a problem."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(field, "Expected object")
        return {}
    return value


def no_extra(body: dict[str, Any], allowed: set[str], problems: Problems) -> None:
    for key in body:
        if key not in allowed:
            problems.add(key[:64], "Unrecognized field")


def take_str(
    body: dict[str, Any],
    key: str,
    problems: Problems,
    *,
    required: bool = True,
    min_len: int = 1,
    max_len: int = 200,
) -> str | None:
    if key not in body or body[key] is None:
        if required:
            problems.add(key, "Required")
        return None
    value = body[key]
    if not isinstance(value, str):
        problems.add(key, "Expected string")
        return None
    if not min_len <= len(value) <= max_len:
        problems.add(key, f"Must be between {min_len} and {max_len} characters")
        return None
    return value


def take_int(
    body: dict[str, Any], key: str, problems: Problems, *, required: bool, lo: int, hi: int
) -> int | None:
    if key not in body or body[key] is None:
        if required:
            problems.add(key, "Required")
        return None
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(key, "Expected integer")
        return None
    if not lo <= value <= hi:
        problems.add(key, f"Must be between {lo} and {hi}")
        return None
    return value


def body_data(body: Any, problems: Problems) -> dict[str, Any]:
    """The `data` object of an action body (`{"data": {...}}`); an empty body is `{}`."""
    outer = as_object(body, problems)
    no_extra(outer, {"data"}, problems)
    return as_object(outer.get("data"), problems, "data")


def code_rules(device: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, int]]:
    """This lock's accepted code lengths and slot range, from its reported properties."""
    props = device.get("properties")
    props = props if isinstance(props, dict) else {}
    lengths: tuple[int, ...] = DEFAULT_CODE_LENGTHS
    raw = props.get("supported_code_lengths")
    if isinstance(raw, list) and raw and all(_is_int(n) and 0 < n <= 32 for n in raw):
        lengths = tuple(sorted(set(raw)))
    elif raw is None and "supported_code_lengths" in props:
        lengths = UNKNOWN_CODE_LENGTHS
    slots = DEFAULT_SLOTS
    raw_slots = props.get("code_slots")
    if isinstance(raw_slots, dict):
        lo, hi = raw_slots.get("min"), raw_slots.get("max")
        if _is_int(lo) and _is_int(hi) and isinstance(lo, int) and isinstance(hi, int):
            slots = (lo, hi) if 0 <= lo <= hi <= 10_000 else slots
        elif isinstance(lo, int) and _is_int(lo) and "max" in raw_slots and hi is None:
            # the lock has not told its slot count yet: tried, and it refuses a slot it lacks
            slots = (lo, UNKNOWN_MAX_SLOT) if 0 <= lo <= UNKNOWN_MAX_SLOT else slots
    return lengths, slots


def device_action_inputs(action: str, device: dict[str, Any], body: Any) -> dict[str, Any]:
    """Validate the inputs of lock/unlock/set_code/clear_code against this lock's constraints."""
    problems = Problems()
    data = body_data(body, problems)
    problems.check()
    lengths, (slot_lo, slot_hi) = code_rules(device)
    inputs: dict[str, Any] = {}
    if action in ("lock", "unlock"):
        no_extra(data, set(), problems)
    elif action == "set_code":
        no_extra(data, {"code", "slot_id"}, problems)
        code = data.get("code")
        if code is None:
            problems.add("code", "Required")
        elif not isinstance(code, str):
            problems.add("code", "Expected string")
        elif not _DIGITS.fullmatch(code) or not code.isascii():
            problems.add("code", "Must contain digits only")
        elif len(code) not in lengths:
            problems.add("code", f"Length must be one of {', '.join(map(str, lengths))}")
        else:
            inputs["code"] = code
        slot = _slot(data, problems, slot_lo, slot_hi, default=1)
        if slot is not None:
            inputs["slot_id"] = slot
    elif action == "clear_code":
        no_extra(data, {"slot_id"}, problems)
        slot = _slot(data, problems, slot_lo, slot_hi, default=None)
        if slot is not None:
            inputs["slot_id"] = slot
    problems.check()
    return inputs


def gateway_action_inputs(action: str, body: Any) -> dict[str, Any]:
    """Validate pair_devices {duration, dsk_pin?} / unpair_devices {duration, device_id?}."""
    problems = Problems()
    data = body_data(body, problems)
    problems.check()
    allowed = {"duration", "dsk_pin"} if action == "pair_devices" else {"duration", "device_id"}
    no_extra(data, allowed, problems)
    inputs: dict[str, Any] = {}
    duration = take_int(data, "duration", problems, required=True, lo=1, hi=255)
    if duration is not None:
        inputs["duration"] = duration
    if action == "pair_devices" and data.get("dsk_pin") is not None:
        # the PIN on a Z-Wave S2 device's label (the first block of its DSK); never echoed
        dsk_pin = data["dsk_pin"]
        if not isinstance(dsk_pin, str):
            problems.add("dsk_pin", "Expected string")
        elif len(dsk_pin) != 5 or not dsk_pin.isascii() or not _DIGITS.fullmatch(dsk_pin):
            problems.add("dsk_pin", "Must be exactly 5 digits")
        else:
            inputs["dsk_pin"] = dsk_pin
    if action == "unpair_devices":
        device_id = take_str(data, "device_id", problems, required=False, max_len=100)
        if device_id is not None:
            inputs["device_id"] = device_id
    problems.check()
    return inputs


def _slot(
    data: dict[str, Any], problems: Problems, lo: int, hi: int, default: int | None
) -> int | None:
    if data.get("slot_id") is None and default is not None:
        if lo <= default <= hi:
            return default
        problems.add("slot_id", f"Required: this lock's slots are {lo} through {hi}")
        return None
    return take_int(data, "slot_id", problems, required=True, lo=lo, hi=hi)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def mask(inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs as shown in responses and stored: any code or DSK PIN replaced by `****`
    (the gateway's own masking of the same frames: one list of secret inputs)."""
    return protocol.mask_inputs(inputs)


# Keys under which a gateway might put a PIN, at any depth of an event.
_PIN_KEYS: Final = frozenset(
    {"code", "pin", "pin_code", "pincode", "user_code", "usercode", "dsk_pin", "dskpin"}
)


def mask_pins(value: Any) -> Any:
    """A copy of what a gateway reported with the value of every PIN-like key replaced by
    `****`: the cloud stores, lists and sends to webhooks only that copy. Iterative: a frame
    may nest deeper than Python's recursion limit allows."""
    copy = msgspec.json.decode(msgspec.json.encode(value))
    stack = [copy]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(key, str) and key.lower() in _PIN_KEYS:
                node[key] = "****"
            elif isinstance(child, dict | list):
                stack.append(child)
    return copy


# A run of digits as long as a PIN (4 to 8 digits; longer too: a PIN typed with a digit too
# many), alone: not part of a longer run. Numbers that are no PIN come first and are kept whole:
# ids (UUIDs), ISO 8601 times, hex status codes (0x1234) and the port of an address
# (127.0.0.1:3000, [::1]:3000, localhost:3000, ws://zwave:3000, aiohttp's "host zwave:3000"),
# never the password of a URL.
_PIN_DIGITS: Final = re.compile(
    r"(?P<kept>(?<![0-9a-f])[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}(?![0-9a-f])"
    r"|(?<![0-9])[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9:.]+)?|\b0x[0-9a-f]+"
    r"|(?:(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}|\]|\blocalhost|://[a-z0-9.-]+"
    r"|\bhost [a-z0-9.-]+):[0-9]+(?![0-9@]))"
    r"|(?<![0-9])[0-9]{4,}(?![0-9])",
    re.I,
)
_SLOT_BEFORE: Final = re.compile(r"slot(?:_id)?\W*$", re.I)


def mask_pin_digits(text: str) -> str:
    """`text` with every run of four or more digits that could be a PIN replaced by `****`;
    a slot number (`slot 1024`), an id, a time or a port is kept."""

    def replace(match: re.Match[str]) -> str:
        # only the few characters before the run: a long text stays linear
        if match["kept"] or _SLOT_BEFORE.search(text, max(0, match.start() - 12), match.start()):
            return match.group()
        return "****"

    return _PIN_DIGITS.sub(replace, text)


def mask_error_pins(value: Any) -> Any:
    """A copy of a gateway's error texts (a string, or every string at any depth of its
    `validation_errors`) with the digits that could be a PIN masked (`mask_pin_digits`): a
    gateway or driver may echo a code in any words, not only next to the word "code".
    Iterative, like `mask_pins`."""
    if isinstance(value, str):
        return mask_pin_digits(value)
    copy = msgspec.json.decode(msgspec.json.encode(value))
    stack = [copy]
    while stack:
        node = stack.pop()
        items = list(node.items() if isinstance(node, dict) else enumerate(node))
        for key, child in items:
            if isinstance(child, str):
                node[key] = mask_pin_digits(child)
            elif isinstance(child, dict | list):
                stack.append(child)
    return copy
