"""Tunnel protocol v1: round trips, version refusal, and decode's "ProtocolError only" promise."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd import protocol as p
from gatewayd.model import DoorEvent, EventName, iso

EVENT = DoorEvent(device_id="d-1", event_name=EventName.DOOR_UNLOCKED, details={"method": "remote"})

DEVICE: dict[str, Any] = {
    "id": "70354027-dcfa-48aa-acb1-9b79fd56b485",
    "name": "Kwikset914 5c:a1:0",
    "manufacturer": "Kwikset",
    "model": "914",
    "protocol": "zwave",
    "actions": {"lock": {"title": "Lock", "description": "Locks the Door Lock", "inputs": None}},
    "properties": {
        "locked": True,
        "online": True,
        "door_open": None,
        "battery_level": 0.8,
        "battery": {"level": 0.8, "status": "full"},
        "jammed": False,
        "supported_code_lengths": [4, 5, 6, 7, 8],
        "code_slots": {"min": 1, "max": 11},
        "firmware": "1.2",
        "last_seen": "2020-06-11T21:08:36.000Z",
    },
}

EVERY_MESSAGE: list[p.Message] = [
    p.Hello(
        protocol=1,
        software_version="0.1.0",
        hardware="rpi4",
        drivers=["sim", "zwave"],
        registration_token="calm-haiku-42",
        last_cloud_seq=3,
    ),
    p.Welcome(protocol=1, gateway_id=None, acked_seq=0, heartbeat_s=20.0),
    p.Welcome(protocol=1, gateway_id="g-1", acked_seq=17, heartbeat_s=20.0),
    p.Claimed(gateway_id="g-1", credential="s3cr3t-credential"),
    p.ActionRequestMsg(
        id="a-1",
        entity_type="Device",
        entity_id="d-1",
        action="set_code",
        inputs={"code": "0123", "slot_id": 3},
        created_at="2020-02-10T01:33:19.955Z",
        deadline="2020-02-10T01:34:19.955Z",
    ),
    p.ActionStatusMsg(
        seq=5,
        action_request_id="a-1",
        status="failed",
        error={"type": "timeout", "message": "deadline passed"},
        at="2020-02-10T01:33:20.000Z",
    ),
    p.ActionStatusMsg(seq=6, action_request_id="a-1", status="completed", error=None, at="x"),
    p.EventMsg(seq=7, event=EVENT.to_dict()),
    p.DeviceMsg(seq=8, device=DEVICE),
    p.DeviceRemovedMsg(seq=9, device_id="d-1"),
    p.Ack(seq=9),
    p.ErrorMsg(code="malformed", message="frame is not valid JSON"),
    p.Welcome(protocol=1, gateway_id="g-1", acked_seq=17, heartbeat_s=20.0, cancelled=["a-0"]),
    p.ActionCancel(action_request_id="a-0", reason="received after the hand-off timeout"),
]


@pytest.mark.parametrize("msg", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_a_frame(msg: p.Message) -> None:
    frame = p.encode(msg)
    assert p.decode(frame) == msg
    assert p.decode(frame.decode()) == msg
    assert json.loads(frame)["type"] == type(msg).__struct_config__.tag


def test_frames_carry_the_documented_field_names() -> None:
    frame = json.loads(p.encode(p.EventMsg(seq=7, event=EVENT.to_dict())))
    assert frame == {"type": "event", "seq": 7, "event": EVENT.to_dict()}
    hello = json.loads(
        p.encode(p.Hello(protocol=1, software_version="1", hardware="h", drivers=[]))
    )
    assert hello == {
        "type": "hello",
        "protocol": 1,
        "software_version": "1",
        "hardware": "h",
        "drivers": [],
        "registration_token": None,
        "last_cloud_seq": 0,
    }


def test_a_newer_peer_may_add_fields_within_the_same_major_version() -> None:
    msg = p.decode(b'{"type": "ack", "seq": 4, "window": 10}')
    assert msg == p.Ack(seq=4)


def test_an_unknown_major_version_is_refused() -> None:
    hello = p.decode(
        b'{"type":"hello","protocol":2,"software_version":"9","hardware":"x","drivers":[]}'
    )
    assert isinstance(hello, p.Hello)
    with pytest.raises(p.ProtocolError) as info:
        p.check_version(hello.protocol)
    assert info.value.code == "unsupported_protocol"
    p.check_version(p.PROTOCOL_VERSION)


def request_frame(**fields: Any) -> bytes:
    """An `action_request` frame's bytes, `fields` replacing (or mistyping) its own."""
    body = {
        "type": "action_request",
        "id": "a-1",
        "entity_type": "Device",
        "entity_id": "d-1",
        "action": "unlock",
        "inputs": {},
        "created_at": "2026-01-01T00:00:00.000Z",
        "deadline": "2026-01-01T00:00:30.000Z",
    }
    return json.dumps(body | fields).encode()


def test_a_request_with_ids_and_names_at_their_bounds_is_read() -> None:
    frame = request_frame(id="a" * 128, entity_id="d" * 128, action="u" * 64)
    msg = p.decode(frame)
    assert isinstance(msg, p.ActionRequestMsg)
    assert (len(msg.id), len(msg.entity_id), len(msg.action)) == (128, 128, 64)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"{not json", "malformed"),
        (b"", "malformed"),
        (b"[1, 2]", "invalid"),
        (b'{"seq": 1}', "invalid"),
        (b'{"type": "launch_missiles"}', "unknown_type"),
        (b'{"type": "ack"}', "invalid"),
        (b'{"type": "ack", "seq": "one"}', "invalid"),
        (b'{"type": "ack", "seq": -1}', "invalid"),
        (b'{"type": "event", "seq": 1, "event": []}', "invalid"),
        (b"\xff\xfe\x00", "malformed"),
        # ids and names the gateway keeps and quotes are bounded (a UUID is 36 characters)
        (request_frame(id="a" * 129), "invalid"),
        (request_frame(entity_id="d" * 129), "invalid"),
        (request_frame(action="u" * 65), "invalid"),
        (request_frame(deadline="9" * 65), "invalid"),
    ],
)
def test_bad_frames_are_refused_with_a_code(frame: bytes, code: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode(frame)
    assert info.value.code == code


def test_an_oversize_frame_is_too_large_both_ways() -> None:
    big = {"blob": "x" * p.MAX_FRAME_BYTES}
    with pytest.raises(p.ProtocolError) as info:
        p.encode(p.DeviceMsg(seq=1, device=big))
    assert info.value.code == "too_large"
    frame = msgspec.json.encode({"type": "device", "seq": 1, "device": big})
    for form in (frame, frame.decode()):
        with pytest.raises(p.ProtocolError) as info:
            p.decode(form)
        assert info.value.code == "too_large"


def test_secrets_do_not_appear_in_reprs() -> None:
    hello, claimed, action = EVERY_MESSAGE[0], EVERY_MESSAGE[3], EVERY_MESSAGE[4]
    assert "calm-haiku-42" not in repr(hello)
    assert "last_cloud_seq=3" in repr(hello)
    assert "s3cr3t-credential" not in repr(claimed)
    assert "s3cr3t-credential" not in str(claimed)
    assert "g-1" in repr(claimed)
    assert "0123" not in repr(action)
    assert "slot_id" in repr(action)
    for msg in (hello, claimed, action):
        rich = dict(msg.__rich_repr__())
        assert "calm-haiku-42" not in repr(rich)
        assert "s3cr3t-credential" not in repr(rich)
        assert "0123" not in repr(rich)
    # The wire still carries them: masking is for display only.
    assert b"0123" in p.encode(action)


def _expect_only_protocol_errors(frame: bytes | str) -> None:
    try:
        msg = p.decode(frame)
    except p.ProtocolError as exc:
        code = exc.code
    else:
        assert type(msg) in p.MESSAGE_TYPES.values()
        return
    assert code in p.ProtocolError.CODES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_decode(frame: bytes) -> None:
    _expect_only_protocol_errors(frame)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2048))
def test_arbitrary_text_never_crashes_decode(frame: str) -> None:
    _expect_only_protocol_errors(frame)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
_types = st.sampled_from([*p.MESSAGE_TYPES, "nope", ""])


@settings(max_examples=300, deadline=None)
@given(
    _types,
    st.dictionaries(
        st.sampled_from(["seq", "event", "device", "protocol", "code", "message", "inputs", "id"]),
        _json,
    ),
)
def test_arbitrary_json_objects_never_crash_decode(kind: str, fields: dict[str, Any]) -> None:
    _expect_only_protocol_errors(json.dumps({"type": kind, **fields}))


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=30_000), st.sampled_from(["[", '{"a":']))
def test_deep_nesting_never_crashes_decode(depth: int, opener: str) -> None:
    inner = opener * depth
    _expect_only_protocol_errors('{"type":"event","seq":1,"event":{"x":' + inner + "}")
    closer = "]" if opener == "[" else "}"
    _expect_only_protocol_errors(
        '{"type":"event","seq":1,"event":{"x":' + inner + "1" + closer * depth + "}}"
    )


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=p.MAX_FRAME_BYTES + 1, max_value=4 * p.MAX_FRAME_BYTES))
def test_oversize_input_is_always_too_large(size: int) -> None:
    frame = b'{"type":"ack","seq":1,"pad":"' + b"x" * size + b'"}'
    with pytest.raises(p.ProtocolError) as info:
        p.decode(frame)
    assert info.value.code == "too_large"


def test_renumber_moves_a_frame_to_another_seq_and_keeps_the_rest() -> None:
    frame = p.encode(p.EventMsg(seq=3, event={"event_id": "e-1", "event_type": "lock.unlocked"}))
    moved = p.renumber(frame, 41)
    assert p.decode(moved) == p.EventMsg(
        seq=41, event={"event_id": "e-1", "event_type": "lock.unlocked"}
    )
    with pytest.raises(p.ProtocolError):
        p.renumber(p.encode(p.Ack(seq=3)), 41)  # only the gateway's sequenced frames have one


@pytest.mark.parametrize("year", [1, 999, 1000, 2026, 9999])
def test_iso_times_sort_as_the_times_do(year: int) -> None:
    """Action-log deadlines are compared as ISO strings (pruning): the year is four digits."""
    ts = datetime(year, 6, 1, 12, 30, 5, 250_000, tzinfo=UTC)
    text = iso(ts)
    assert text == f"{year:04d}-06-01T12:30:05.250Z"
    assert datetime.fromisoformat(text) == ts
    assert (iso(ts) < iso(datetime(2026, 1, 1, tzinfo=UTC))) == (
        ts < datetime(2026, 1, 1, tzinfo=UTC)
    )
