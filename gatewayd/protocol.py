"""Tunnel protocol v1: the JSON frames the gateway and the cloud exchange over one websocket.

This is the only module shared by the daemon and devcloud. Every frame is one JSON object whose
`type` picks the message class. `decode` never raises anything but `ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec

__all__ = [
    "MAX_FRAME_BYTES",
    "MESSAGE_TYPES",
    "OUTBOX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "ActionCancel",
    "ActionRequestMsg",
    "ActionStatusMsg",
    "Claimed",
    "DeviceMsg",
    "DeviceRemovedMsg",
    "ErrorMsg",
    "EventMsg",
    "Hello",
    "Message",
    "ProtocolError",
    "Welcome",
    "check_version",
    "decode",
    "encode",
    "to_dict",
]

PROTOCOL_VERSION: Final = 1
MAX_FRAME_BYTES: Final = 64 * 1024
# A gateway's outbox frame leaves room for the digits of any seq it may be renumbered to
# (Store.rebase; a seq stays under 2**54, 17 digits): it must still fit a frame then.
OUTBOX_FRAME_BYTES: Final = MAX_FRAME_BYTES - 24

_MASK: Final = "****"
# Action inputs that are secrets: a lock's PIN code, a Z-Wave device's DSK PIN
SECRET_INPUTS: Final = frozenset({"code", "dsk_pin"})


def mask_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Action inputs as they may be shown or stored: each secret one replaced by `****`."""
    return {k: (_MASK if k in SECRET_INPUTS else v) for k, v in inputs.items()}


# Sequence numbers fit an SQLite INTEGER on both ends.
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# A credential goes into `Authorization: Bearer …`: RFC 6750's b64token, so that no credential
# a cloud sends can break (or inject into) the upgrade request's headers.
BEARER_SYNTAX: Final = r"\A[A-Za-z0-9._~+/-]+=*\Z"  # \Z: no trailing newline, unlike $
Credential = Annotated[str, msgspec.Meta(pattern=BEARER_SYNTAX, max_length=4096)]
# Ids are UUIDs and action names short words; a frame may be 64 KiB, but the gateway keeps and
# quotes what it is sent (its id window, the action log, the reports), so each is bounded.
Ident = Annotated[str, msgspec.Meta(max_length=128)]
# the cloud's id for the gateway: shown on /status, in `gatewayd token`, in systemd's STATUS=
GatewayId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]
Name = Annotated[str, msgspec.Meta(max_length=64)]


class ProtocolError(Exception):
    """A frame that cannot be used. `code` is what goes into the `error` frame; `frame_type`
    is the frame's `type`, when it is a known one."""

    CODES: Final = frozenset(
        {"malformed", "unknown_type", "too_large", "invalid", "unsupported_protocol"}
    )

    def __init__(self, code: str, message: str, frame_type: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_type = frame_type


class _Msg(msgspec.Struct, frozen=True, tag_field="type", kw_only=True):
    """Base of every tunnel message; unknown fields are ignored for forward compatibility."""


def _masked_repr(obj: _Msg, masked: dict[str, Any]) -> str:
    fields = ", ".join(
        f"{name}={masked.get(name, getattr(obj, name))!r}" for name in obj.__struct_fields__
    )
    return f"{type(obj).__name__}({fields})"


class Hello(_Msg, frozen=True, tag="hello"):
    """gw→cloud, first frame: who the gateway is; `registration_token` only while unclaimed."""

    protocol: int
    software_version: str
    hardware: str
    drivers: list[str]
    registration_token: str | None = None
    last_cloud_seq: Seq = 0

    def __repr__(self) -> str:
        token = None if self.registration_token is None else _MASK
        return _masked_repr(self, {"registration_token": token})

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        masked = None if self.registration_token is None else _MASK
        return [
            (n, masked if n == "registration_token" else getattr(self, n))
            for n in self.__struct_fields__
        ]


class Welcome(_Msg, frozen=True, tag="welcome"):
    """cloud→gw: the session is open; resend everything above `acked_seq`.

    `cancelled`: action requests the cloud has given up on (reported `gateway_failure`) whose
    deadline has not passed yet: the gateway must not execute them, even if it holds them.
    `server_time`: the cloud's clock (ISO-8601) when it sent this; the gateway reads action
    deadlines on it, so a box whose own clock is wrong neither runs actions late nor fails them.
    """

    protocol: int
    gateway_id: GatewayId | None
    acked_seq: Seq
    heartbeat_s: float
    # ids bounded like an action_cancel's; their number by the frame's size (a cap on it
    # would refuse every session while the cloud's list stays longer: no cancel would get in)
    cancelled: list[Ident] = []
    server_time: str | None = None


class Claimed(_Msg, frozen=True, tag="claimed"):
    """cloud→gw: the gateway now belongs to an account; store `credential` and use it."""

    gateway_id: GatewayId
    credential: Credential

    def __repr__(self) -> str:
        return _masked_repr(self, {"credential": _MASK})

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [("gateway_id", self.gateway_id), ("credential", _MASK)]


class ActionRequestMsg(_Msg, frozen=True, tag="action_request"):
    """cloud→gw: perform `action` on a Device or on the Gateway itself before `deadline`."""

    id: Ident
    entity_type: Name
    entity_id: Ident
    action: Name
    inputs: dict[str, Any]
    created_at: Name
    deadline: Name

    def masked_inputs(self) -> dict[str, Any]:
        """The inputs with any PIN code or DSK PIN replaced by `****`."""
        return mask_inputs(self.inputs)

    def __repr__(self) -> str:
        return _masked_repr(self, {"inputs": self.masked_inputs()})

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [
            (n, self.masked_inputs() if n == "inputs" else getattr(self, n))
            for n in self.__struct_fields__
        ]


class ActionCancel(_Msg, frozen=True, tag="action_cancel"):
    """cloud→gw: do not execute this action request; the cloud already reported it failed.

    Sent when a `gateway_received` arrives after the cloud's hand-off timeout, always before
    the `ack` that covers it: a gateway executes a cloud action only once that ack arrived.
    """

    action_request_id: Ident
    reason: str


class ActionStatusMsg(_Msg, frozen=True, tag="action_status"):
    """gw→cloud: an action request moved to `status` at `at`; `error` is `{type, message}`."""

    seq: Seq
    action_request_id: str
    status: str
    error: dict[str, Any] | None
    at: str


class EventMsg(_Msg, frozen=True, tag="event"):
    """gw→cloud: a door event, as `DoorEvent.to_dict()` writes it."""

    seq: Seq
    event: dict[str, Any]


class DeviceMsg(_Msg, frozen=True, tag="device"):
    """gw→cloud: a device was added or changed; `device` is its full upstream object."""

    seq: Seq
    device: dict[str, Any]


class DeviceRemovedMsg(_Msg, frozen=True, tag="device_removed"):
    """gw→cloud: a device left the gateway's network."""

    seq: Seq
    device_id: str


class Ack(_Msg, frozen=True, tag="ack"):
    """cloud→gw: every gateway message up to and including `seq` is stored (cumulative)."""

    seq: Seq


class ErrorMsg(_Msg, frozen=True, tag="error"):
    """Either way: the sender refuses the session; it closes the socket after this frame."""

    code: str
    message: str


Message = (
    Hello
    | Welcome
    | Claimed
    | ActionRequestMsg
    | ActionCancel
    | ActionStatusMsg
    | EventMsg
    | DeviceMsg
    | DeviceRemovedMsg
    | Ack
    | ErrorMsg
)

MESSAGE_TYPES: Final[dict[str, type[_Msg]]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Hello,
        Welcome,
        Claimed,
        ActionRequestMsg,
        ActionCancel,
        ActionStatusMsg,
        EventMsg,
        DeviceMsg,
        DeviceRemovedMsg,
        Ack,
        ErrorMsg,
    )
}


class _Envelope(msgspec.Struct):
    type: str


_encoder: Final = msgspec.json.Encoder()
_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_decoder: Final = msgspec.json.Decoder(Message)


def encode(msg: Message, limit: int = MAX_FRAME_BYTES) -> bytes:
    """One frame's JSON bytes; ProtocolError("too_large") rather than one over `limit`."""
    data = _encoder.encode(msg)
    if len(data) > limit:
        raise ProtocolError("too_large", f"frame of {len(data)} bytes exceeds {limit}")
    return data


def to_dict(msg: Message) -> dict[str, Any]:
    """The message as plain JSON-compatible builtins (with its `type`)."""
    out: dict[str, Any] = msgspec.to_builtins(msg)
    return out


def decode(frame: bytes | str) -> Message:
    """Parse one frame. Raises ProtocolError and nothing else, whatever the input."""
    try:
        return _decode(frame)
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract is "ProtocolError, never anything else"
        raise ProtocolError(
            "malformed", f"frame could not be parsed ({type(exc).__name__})"
        ) from None


def readable_action_request(frame: bytes | str) -> dict[str, str] | None:
    """The id, target and action of an `action_request` frame `decode` refused (a field of
    the wrong type), if they can be read: the gateway answers it `failed` rather than leave the
    cloud waiting for its deadline. None for anything else."""
    try:
        raw = msgspec.json.decode(frame)
    except Exception:  # noqa: BLE001 - unreadable is the answer, whatever the reason
        return None
    if not isinstance(raw, dict) or raw.get("type") != "action_request":
        return None
    out: dict[str, str] = {}
    for key, default in (
        ("id", None),
        ("entity_type", "Device"),
        ("entity_id", ""),
        ("action", ""),
    ):
        value = raw.get(key, default)
        if not isinstance(value, str) or len(value) > 128:
            if default is None:
                return None
            value = default
        out[key] = value
    return out if out["id"] else None


def _decode(frame: bytes | str) -> Message:
    if isinstance(frame, str):
        if len(frame) > MAX_FRAME_BYTES:
            raise ProtocolError("too_large", f"frame exceeds {MAX_FRAME_BYTES} bytes")
        frame = frame.encode("utf-8", errors="surrogatepass")
    elif not isinstance(frame, bytes | bytearray | memoryview):
        raise ProtocolError("malformed", "a frame is text or bytes")
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        envelope = _envelope_decoder.decode(frame)
    except msgspec.ValidationError:
        raise ProtocolError("invalid", "a frame is a JSON object with a string `type`") from None
    except (msgspec.DecodeError, RecursionError):
        raise ProtocolError("malformed", "frame is not valid JSON") from None
    if envelope.type not in MESSAGE_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {envelope.type[:40]!r}")
    try:
        msg: Message = _decoder.decode(frame)
    except msgspec.ValidationError as exc:
        raise ProtocolError("invalid", _one_line(str(exc)), envelope.type) from None
    except (msgspec.DecodeError, RecursionError):
        raise ProtocolError("malformed", "frame is not valid JSON") from None
    return msg


def renumber(frame: bytes, seq: int) -> bytes:
    """A gateway frame from the outbox again, under another `seq`."""
    msg = decode(frame)
    if not isinstance(msg, ActionStatusMsg | EventMsg | DeviceMsg | DeviceRemovedMsg):
        raise ProtocolError("invalid", f"a {type(msg).__name__} frame carries no seq")
    return encode(msgspec.structs.replace(msg, seq=seq))


def check_version(protocol: int) -> None:
    """Refuse a peer that speaks another major version of this protocol."""
    if protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_protocol",
            f"protocol {protocol} is not supported; this end speaks {PROTOCOL_VERSION}",
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
