"""The tunnel server: hello/welcome, claiming, acks and dedupe, bad frames, credentials."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from devcloud.db import secret_hash
from devcloud.hub import Connection
from gatewayd import protocol as p
from tests.cloudkit import API_KEY, TunnelClient, assert_welcome
from tests.devcloud.conftest import DEVICE_ID, Cloud, CloudFactory, device_body


async def test_claim_flow_registers_a_connected_gateway(cloud: Cloud) -> None:
    _tunnel, gateway_id, credential = await cloud.claimed_gateway()
    gateway = await cloud.get(f"/v1/gateways/{gateway_id}")
    assert gateway == {
        "id": gateway_id,
        "devices": [
            {
                "id": DEVICE_ID,
                "name": "Kwikset914 5c:a1:0",
                "manufacturer": "Kwikset",
                "model": "914",
            }
        ],
        "name": "my first gateway",
        "status": "online",
    }
    assert await cloud.get(f"/v1/devices/{DEVICE_ID}") == device_body()
    # Only a hash of the credential is stored.
    dump = "\n".join(sqlite3.connect(cloud.state.settings.db_path).iterdump())
    assert credential not in dump
    assert "calm-haiku-42" not in dump


async def test_the_registration_response_comes_only_for_a_connected_gateway(cloud: Cloud) -> None:
    location_id = await cloud.location()
    status, body = await cloud.post(
        f"/v1/locations/{location_id}/register_gateway",
        {"registration_token": "calm-haiku-42", "name": "gw"},
    )
    assert status == 404
    assert body["ok"] is False
    assert body["error"]["type"] == "gateway_not_found"
    assert "calm-haiku-42" not in body["error"]["message"]


async def test_a_registration_token_is_single_use(cloud: Cloud) -> None:
    await cloud.claimed_gateway(token="brave-otter-7")
    again = await cloud.tunnel()
    refusal = await again.hello("brave-otter-7")
    assert refusal == p.ErrorMsg(
        code="registration_token_used", message="this registration token was already used"
    )
    assert await again.closed()


async def test_a_registration_answered_404_does_not_claim_the_gateway_later(
    cloud: Cloud,
) -> None:
    """The socket dies under the `claimed` frame: REST answers 404, so nothing is claimed; the
    gateway redials unclaimed and the same token registers it."""
    location_id = await cloud.location()
    dying = await cloud.tunnel()
    assert isinstance(await dying.hello("short-lived-6"), p.Welcome)
    server_end = cloud.state.hub.unclaimed[secret_hash("short-lived-6")]

    async def reset(_: str) -> None:
        raise ConnectionResetError

    server_end.ws.send_str = reset  # type: ignore[method-assign]
    register = {"registration_token": "short-lived-6", "name": "gw"}
    status, body = await cloud.post(f"/v1/locations/{location_id}/register_gateway", register)
    assert status == 404
    assert body["error"]["type"] == "gateway_not_found"
    await dying.ws.close()
    assert await cloud.get("/v1/gateways") == []
    again = await cloud.tunnel()
    assert isinstance(await again.hello("short-lived-6"), p.Welcome)
    with pytest.raises(TimeoutError):
        await again.recv(timeout=0.3)  # no `claimed`: it waits to be registered
    status, gw = await cloud.post(f"/v1/locations/{location_id}/register_gateway", register)
    assert status == 200, gw
    claimed = await again.recv()
    assert isinstance(claimed, p.Claimed)
    assert claimed.gateway_id == gw["id"]
    assert [g["id"] for g in await cloud.get("/v1/gateways")] == [gw["id"]]


async def _claim_lost(cloud: Cloud, token: str) -> tuple[str, str]:
    """Claim the gateway holding `token`; its `claimed` frame never gets used (as if lost on a
    dying socket). Returns (gateway_id, the lost credential)."""
    gw, lost = await cloud.register(token, "gw")
    return gw["id"], lost.credential


async def test_a_lost_claimed_frame_is_sent_again_until_the_credential_is_used(
    cloud: Cloud,
) -> None:
    gateway_id, lost = await _claim_lost(cloud, "lost-frame-9")
    again = await cloud.tunnel()
    welcome = await again.hello("lost-frame-9")
    assert isinstance(welcome, p.Welcome)
    assert welcome.gateway_id is None
    resent = await again.recv()
    assert isinstance(resent, p.Claimed)
    assert resent.gateway_id == gateway_id
    assert resent.credential != lost
    await again.ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await cloud.tunnel(lost)  # a credential re-sent replaces the lost one
    assert refused.value.status == 401
    tunnel = await cloud.tunnel(resent.credential)
    assert isinstance(await tunnel.hello(), p.Welcome)
    assert (await cloud.get(f"/v1/gateways/{gateway_id}"))["status"] == "online"
    # used now: the token claims nothing any more
    late = await cloud.tunnel()
    assert await late.hello("lost-frame-9") == p.ErrorMsg(
        code="registration_token_used", message="this registration token was already used"
    )


async def test_a_lost_claimed_frame_is_not_sent_again_once_the_token_expired(
    make_cloud: CloudFactory,
) -> None:
    cloud = await make_cloud(token_ttl_s=0.5)
    await _claim_lost(cloud, "slow-gateway-3")
    await asyncio.sleep(0.6)
    again = await cloud.tunnel()
    refusal = await again.hello("slow-gateway-3")
    assert isinstance(refusal, p.ErrorMsg)
    assert refusal.code == "registration_token_expired"


async def test_an_unclaimed_session_is_closed_when_its_token_expires(
    make_cloud: CloudFactory,
) -> None:
    cloud = await make_cloud(token_ttl_s=0.5)
    tunnel = await cloud.tunnel()
    assert isinstance(await tunnel.hello("waiting-long-5"), p.Welcome)
    refusal = await asyncio.wait_for(tunnel.recv(), 5)
    assert refusal == p.ErrorMsg(
        code="registration_token_expired", message="this registration token has expired"
    )
    assert await tunnel.closed()


async def test_an_expired_registration_token_is_refused(make_cloud: CloudFactory) -> None:
    cloud = await make_cloud(token_ttl_s=0.0)
    first = await cloud.tunnel()
    assert isinstance(await first.hello("old-token-1"), p.Welcome)
    await asyncio.sleep(0.05)
    second = await cloud.tunnel()
    refusal = await second.hello("old-token-1")
    assert isinstance(refusal, p.ErrorMsg)
    assert refusal.code == "registration_token_expired"


async def test_claims_are_rate_limited(make_cloud: CloudFactory) -> None:
    cloud = await make_cloud(claim_limit=3)
    location_id = await cloud.location()
    statuses = []
    for n in range(5):
        status, body = await cloud.post(
            f"/v1/locations/{location_id}/register_gateway",
            {"registration_token": f"guess-{n}", "name": "gw"},
        )
        statuses.append(status)
    assert statuses == [404, 404, 404, 429, 429]
    assert body["error"]["type"] == "rate_limited"
    assert body["ok"] is False
    assert "request_id" in body["error"]
    # and says when to come back: when the oldest of the window's claims leaves it
    async with cloud.http.post(
        cloud.url(f"/v1/locations/{location_id}/register_gateway"),
        json={"registration_token": "guess-5", "name": "gw"},
        headers={"Authorization": aiohttp.encode_basic_auth(API_KEY)},
    ) as resp:
        assert resp.status == 429
        assert 1 <= int(resp.headers["Retry-After"]) <= 60


async def test_new_registration_tokens_are_rate_limited_per_address(
    make_cloud: CloudFactory,
) -> None:
    cloud = await make_cloud(claim_limit=3)
    replies = []
    for n in range(5):
        tunnel = await cloud.tunnel()
        replies.append(await tunnel.hello(f"invented-token-{n}"))
    assert [type(r) for r in replies] == [p.Welcome] * 3 + [p.ErrorMsg] * 2
    assert replies[-1] == p.ErrorMsg(
        code="rate_limited", message="too many new registration tokens; try again later"
    )
    with sqlite3.connect(cloud.state.settings.db_path) as db:
        assert db.execute("SELECT count(*) FROM registration_tokens").fetchone() == (3,)
    # a token already seen still gets through: a gateway redialing is not held back
    again = await cloud.tunnel()
    assert isinstance(await again.hello("invented-token-0"), p.Welcome)


async def test_action_request_round_trip_records_every_transition(cloud: Cloud) -> None:
    tunnel, _gateway_id, _ = await cloud.claimed_gateway()
    status, created = await cloud.post(
        f"/v1/devices/{DEVICE_ID}/actions/set_code", {"data": {"code": "0123", "slot_id": 3}}
    )
    assert status == 200, created
    assert created["status"] == "pending"
    assert created["data"] == {"set_code": {"code": "****", "slot_id": 3}}
    sent = await tunnel.recv()
    assert isinstance(sent, p.ActionRequestMsg)
    assert (sent.id, sent.entity_type, sent.entity_id, sent.action) == (
        created["id"],
        "Device",
        DEVICE_ID,
        "set_code",
    )
    assert sent.inputs == {"code": "0123", "slot_id": 3}
    for status_name in ("gateway_received", "processing", "completed"):
        seq = tunnel.next_seq()
        await tunnel.send(
            p.ActionStatusMsg(
                seq=seq, action_request_id=sent.id, status=status_name, error=None, at="x"
            )
        )
        assert await tunnel.recv() == p.Ack(seq=seq)
    shown = await cloud.get(f"/v1/action_requests/{sent.id}")
    assert shown["status"] == "completed"
    assert shown["data"] == {"set_code": {"code": "****", "slot_id": 3}}
    history = cloud.state.db.transitions(sent.id)
    assert [s for s, _, _ in history] == ["pending", "gateway_received", "processing", "completed"]
    assert [at for _, at, _ in history] == sorted(at for _, at, _ in history)
    dump = "\n".join(sqlite3.connect(cloud.state.settings.db_path).iterdump())
    assert "0123" not in dump


async def test_a_failed_action_shows_the_gateway_error(cloud: Cloud) -> None:
    tunnel, _, _ = await cloud.claimed_gateway()
    _, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock")
    sent = await tunnel.recv()
    assert isinstance(sent, p.ActionRequestMsg)
    error = {"type": "timeout", "message": "the lock did not answer"}
    for n, status_name in enumerate(("gateway_received", "processing", "failed"), start=2):
        await tunnel.send(
            p.ActionStatusMsg(
                seq=n, action_request_id=sent.id, status=status_name, error=error, at="x"
            )
        )
        assert await tunnel.recv() == p.Ack(seq=n)
    shown = await cloud.get(f"/v1/action_requests/{created['id']}")
    assert (shown["status"], shown["error"]) == ("failed", error)


async def _shown_error(cloud: Cloud, tunnel: TunnelClient, error: dict[str, Any]) -> Any:
    """Have the gateway fail a new unlock with `error`; return the error the cloud shows."""
    _, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock")
    sent = await tunnel.recv()
    assert isinstance(sent, p.ActionRequestMsg)
    for status_name in ("gateway_received", "failed"):
        seq = tunnel.next_seq()
        await tunnel.send(
            p.ActionStatusMsg(
                seq=seq, action_request_id=sent.id, status=status_name, error=error, at="x"
            )
        )
        assert await tunnel.recv() == p.Ack(seq=seq)
    return (await cloud.get(f"/v1/action_requests/{created['id']}"))["error"]


async def test_a_pin_in_a_failed_actions_error_is_masked_and_error_texts_are_kept(
    cloud: Cloud,
) -> None:
    """A gateway may echo a code in its error; the cloud shows and stores it masked. The
    error texts gatewayd and its drivers send (lengths, slots, ports) come through as sent."""
    tunnel, _, _ = await cloud.claimed_gateway()
    leaky: dict[str, Any] = {
        "type": "invalid_input",
        "message": "code 0481234 is not accepted by this lock",
        "validation_errors": {"code": "7-digit 0481234 is too long", "slot_id": "must be 2..11"},
    }
    legitimate: list[dict[str, Any]] = [
        {
            "type": "invalid_input",
            "message": "invalid inputs for set_code",
            "validation_errors": {"code": "must be 4 to 8 digits", "slot_id": "must be 2 to 11"},
        },
        {
            "type": "invalid_input",
            "message": "code must be 4-8 digits on this lock",
            "validation_errors": {"code": "must be 4-8 digits", "dsk_pin": "must be 5 digits"},
        },
        {
            "type": "code_not_confirmed",
            "message": "slot 1024: the lock reads back a different code",
        },
        {"type": "device_error", "message": "zwave-server unreachable: host 127.0.0.1:3000"},
        {"type": "device_error", "message": "write user code (slot 3) failed (zwave error 204)"},
    ]
    shown = [await _shown_error(cloud, tunnel, error) for error in [leaky, *legitimate]]
    assert shown[0] == {
        "type": "invalid_input",
        "message": "code **** is not accepted by this lock",
        "validation_errors": {"code": "7-digit **** is too long", "slot_id": "must be 2..11"},
    }
    assert shown[1:] == legitimate
    dump = "\n".join(sqlite3.connect(cloud.state.settings.db_path).iterdump())
    assert "0481234" not in dump


async def test_a_pin_echoed_under_the_user_code_names_of_zwave_js_is_masked(
    cloud: Cloud,
) -> None:
    """`userCode` (zwave-js's name for a slot's code) and `usercode`, which the event masking
    already counts as PIN keys, were not code words to the error masking: a failed action's
    error showed the PIN echoed under them."""
    tunnel, _, _ = await cloud.claimed_gateway()
    error = {
        "type": "invalid_input",
        "message": "userCode 0481234 was refused by the lock",
        "validation_errors": {"userCode": "0481234 is too long", "usercode": ["5550199"]},
    }
    assert await _shown_error(cloud, tunnel, error) == {
        "type": "invalid_input",
        "message": "userCode **** was refused by the lock",
        "validation_errors": {"userCode": "**** is too long", "usercode": ["****"]},
    }
    dump = "\n".join(sqlite3.connect(cloud.state.settings.db_path).iterdump())
    assert "0481234" not in dump
    assert "5550199" not in dump


async def test_a_pin_in_an_error_text_without_a_code_word_is_masked(cloud: Cloud) -> None:
    """Digits were masked only in texts that named a code or PIN: a driver that echoed the
    code in other words showed it to every API user. Ids, times, ports, hex statuses, slot and
    node numbers in the same texts stay readable."""
    tunnel, _, _ = await cloud.claimed_gateway()
    error = {
        "type": "code_not_confirmed",
        "message": "the lock answered 48213 for slot 3 (node 12, status 0x0086) at"
        f" 2026-12-05T23:08:45.123456Z; device {DEVICE_ID} via ws://127.0.0.1:3000",
        "validation_errors": {"slot_id": ["read back 5550199", "slot 1024 is free"]},
    }
    assert await _shown_error(cloud, tunnel, error) == {
        "type": "code_not_confirmed",
        "message": "the lock answered **** for slot 3 (node 12, status 0x0086) at"
        f" 2026-12-05T23:08:45.123456Z; device {DEVICE_ID} via ws://127.0.0.1:3000",
        "validation_errors": {"slot_id": ["read back ****", "slot 1024 is free"]},
    }
    dump = "\n".join(sqlite3.connect(cloud.state.settings.db_path).iterdump())
    assert "48213" not in dump
    assert "5550199" not in dump


async def test_a_resent_seq_is_acked_but_stored_once(cloud: Cloud) -> None:
    tunnel, gateway_id, credential = await cloud.claimed_gateway()
    event = {
        "id": "5d9f3c1e-0000-4000-8000-000000000001",
        "type": "device_event",
        "device_id": DEVICE_ID,
        "event_name": "door unlocked",
        "details": {"method": "pin_code", "slot_id": 3},
        "date_created": "2020-06-11T21:08:36.000Z",
    }
    await tunnel.send(p.EventMsg(seq=2, event=event))
    assert await tunnel.recv() == p.Ack(seq=2)
    await tunnel.send(p.EventMsg(seq=2, event={**event, "id": "different"}))
    assert await tunnel.recv() == p.Ack(seq=2)
    await tunnel.send(p.EventMsg(seq=1, event={**event, "id": "older"}))
    assert await tunnel.recv() == p.Ack(seq=2)
    assert await cloud.get("/v1/events") == [event]
    # After a reconnect, welcome says how far the cloud got.
    await tunnel.ws.close()
    again = await cloud.tunnel(credential)
    welcome = await again.hello()
    assert_welcome(welcome, gateway_id=gateway_id, acked_seq=2)
    device = await cloud.get(f"/v1/devices/{DEVICE_ID}")
    assert device["properties"]["locked"] is False


async def test_event_ids_are_deduplicated_per_gateway(cloud: Cloud) -> None:
    """A gateway cannot shadow another's event by sending its id first; a gateway's own
    event sent again under a new seq is still stored once."""
    other_lock = "6d0e2f11-1b1c-4f37-9a43-0c0ffee00002"
    first, _, _ = await cloud.claimed_gateway(token="first-gw-1")
    second, _, _ = await cloud.claimed_gateway(token="second-gw-2", device=device_body(other_lock))
    event = {
        "id": "5d9f3c1e-0000-4000-8000-0000000000aa",
        "type": "device_event",
        "device_id": DEVICE_ID,
        "event_name": "door unlocked",
        "details": {"method": "keypad"},
        "date_created": "2020-06-11T21:08:36.000Z",
    }
    theirs = {**event, "device_id": other_lock, "date_created": "2020-06-11T21:09:00.000Z"}
    await first.send(p.EventMsg(seq=2, event=event))
    assert await first.recv() == p.Ack(seq=2)
    await second.send(p.EventMsg(seq=2, event=theirs))
    assert await second.recv() == p.Ack(seq=2)
    await first.send(p.EventMsg(seq=3, event=event))  # its own event again, under a new seq
    assert await first.recv() == p.Ack(seq=3)
    assert await cloud.get("/v1/events") == [event, theirs]


async def test_events_are_stored_in_the_seeds_shape_whatever_the_gateway_wrote(
    cloud: Cloud,
) -> None:
    """The list and the webhooks show `type: device_event` and a UTC time with milliseconds
    (the one they are sorted and filtered by), not a gateway's own offset, precision or type."""
    tunnel, _, _ = await cloud.claimed_gateway()
    base = {
        "device_id": DEVICE_ID,
        "event_name": "door locked",
        "details": {"method": "manual"},
    }
    sent = [
        {
            **base,
            "id": "e-offset",
            "type": "device_event",
            "date_created": "2020-06-11T23:00:00+01:00",
        },
        {
            **base,
            "id": "e-micro",
            "type": "something_else",
            "date_created": "2020-06-11T22:30:00.123456Z",
        },
    ]
    for seq, event in enumerate(sent, start=2):
        await tunnel.send(p.EventMsg(seq=seq, event=event))
        assert await tunnel.recv() == p.Ack(seq=seq)
    listed = await cloud.get("/v1/events")
    assert [(e["id"], e["type"], e["date_created"]) for e in listed] == [
        ("e-offset", "device_event", "2020-06-11T22:00:00.000Z"),
        ("e-micro", "device_event", "2020-06-11T22:30:00.123Z"),
    ]


@pytest.mark.parametrize("field", ["name", "manufacturer", "model"])
@pytest.mark.parametrize("value", [None, 5, "absent"])
async def test_a_device_without_the_seeds_string_fields_is_refused(
    cloud: Cloud, field: str, value: Any
) -> None:
    tunnel, _, _ = await cloud.claimed_gateway()
    other = "6d0e2f11-1b1c-4f37-9a43-0c0ffee00003"
    body = device_body(other)
    if value == "absent":
        del body[field]
    else:
        body[field] = value
    with capture_logs() as logs:
        await tunnel.send(p.DeviceMsg(seq=2, device=body))
        assert await tunnel.recv() == p.Ack(seq=2)  # acked: sending it again would not help
    assert {"event": "device.rejected", "reason": "bad_fields"}.items() <= next(
        e for e in logs if e["event"] == "device.rejected"
    ).items()
    assert other not in [d["id"] for d in await cloud.get("/v1/devices")]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "malformed"),
        ('{"type": "launch"}', "unknown_type"),
        ('{"type": "event", "seq": "x", "event": {}}', "invalid"),
        ('{"type": "ack", "seq": 1, "pad": "' + "x" * (70 * 1024) + '"}', "too_large"),
        ('{"type": "claimed", "gateway_id": "g", "credential": "c"}', "invalid"),
    ],
)
async def test_a_bad_frame_gets_an_error_and_close_and_others_are_unaffected(
    cloud: Cloud, frame: str, code: str
) -> None:
    good, gateway_id, _ = await cloud.claimed_gateway()
    bad = await cloud.tunnel()
    assert isinstance(await bad.hello("bad-actor-1"), p.Welcome)
    await bad.ws.send_str(frame)
    refusal = await bad.recv()
    assert isinstance(refusal, p.ErrorMsg)
    assert refusal.code == code
    assert await bad.closed()
    # The claimed gateway's tunnel and the REST API still work.
    await good.send(p.DeviceRemovedMsg(seq=2, device_id=DEVICE_ID))
    assert await good.recv() == p.Ack(seq=2)
    gateway = await cloud.get(f"/v1/gateways/{gateway_id}")
    assert (gateway["status"], gateway["devices"]) == ("online", [])


async def test_an_unknown_protocol_version_is_refused(cloud: Cloud) -> None:
    tunnel = await cloud.tunnel()
    refusal = await tunnel.hello("calm-haiku-42", protocol=2)
    assert isinstance(refusal, p.ErrorMsg)
    assert refusal.code == "unsupported_protocol"
    assert await tunnel.closed()


async def test_an_unclaimed_gateway_may_not_report(cloud: Cloud) -> None:
    tunnel = await cloud.tunnel()
    assert isinstance(await tunnel.hello("calm-haiku-42"), p.Welcome)
    await tunnel.send(p.DeviceMsg(seq=1, device=device_body()))
    refusal = await tunnel.recv()
    assert isinstance(refusal, p.ErrorMsg)
    assert refusal.code == "unauthorized"
    assert await cloud.get("/v1/devices") == []


async def test_a_wrong_credential_gets_401_at_the_upgrade(cloud: Cloud) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await cloud.tunnel("not-a-credential")
    assert info.value.status == 401


async def test_revocation_closes_the_tunnel_and_the_credential_stops_working(
    cloud: Cloud,
) -> None:
    tunnel, gateway_id, credential = await cloud.claimed_gateway()
    status, gateway = await cloud.post(f"/v1/gateways/{gateway_id}/actions/revoke_credential")
    assert status == 200
    assert gateway["status"] == "offline"
    refusal = await tunnel.recv()
    assert refusal == p.ErrorMsg(code="revoked", message="the gateway credential was revoked")
    assert await tunnel.closed()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await cloud.tunnel(credential)
    assert info.value.status == 401


async def test_a_revoked_gateway_is_not_claimed_again_by_its_token(cloud: Cloud) -> None:
    gateway_id, _ = await _claim_lost(cloud, "second-thought-4")
    status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/revoke_credential")
    assert status == 200
    again = await cloud.tunnel()
    assert await again.hello("second-thought-4") == p.ErrorMsg(
        code="registration_token_used", message="this registration token was already used"
    )
    assert await again.closed()
    assert (await cloud.get(f"/v1/gateways/{gateway_id}"))["status"] == "offline"


async def test_a_credential_revoked_before_hello_opens_no_session(cloud: Cloud) -> None:
    tunnel, gateway_id, credential = await cloud.claimed_gateway()
    await tunnel.ws.close()
    dialing = await cloud.tunnel(credential)  # past the upgrade, hello not sent yet
    status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/revoke_credential")
    assert status == 200
    assert await dialing.hello() == p.ErrorMsg(
        code="revoked", message="the gateway credential was revoked"
    )
    assert await dialing.closed()
    assert (await cloud.get(f"/v1/gateways/{gateway_id}"))["status"] == "offline"
    status, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock")
    assert (status, created["status"]) == (200, "gateway_failure")


async def test_rotation_sends_a_new_credential_and_retires_the_old(cloud: Cloud) -> None:
    tunnel, gateway_id, old = await cloud.claimed_gateway()
    status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/rotate_credential")
    assert status == 200
    claimed = await tunnel.recv()
    assert isinstance(claimed, p.Claimed)
    assert claimed.gateway_id == gateway_id
    assert claimed.credential != old
    fresh = await cloud.tunnel(claimed.credential)
    welcome = await fresh.hello()
    assert isinstance(welcome, p.Welcome)
    assert welcome.gateway_id == gateway_id
    # Once the new credential has been used, the old one is refused.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await cloud.tunnel(old)
    assert refused.value.status == 401


@pytest.mark.parametrize("gap_s", [0.0, 0.3])
async def test_an_action_posted_during_a_rotation_goes_to_the_session_that_follows(
    cloud: Cloud, gap_s: float
) -> None:
    """After `claimed` the gateway stores the credential and redials, reading nothing more on
    that session: an unlock posted in that window went out on it, unread, and ended
    `gateway_timeout`. It waits for the next session now (also while none is open yet)."""
    tunnel, gateway_id, _ = await cloud.claimed_gateway()
    status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/rotate_credential")
    assert status == 200
    claimed = await tunnel.recv()
    assert isinstance(claimed, p.Claimed)
    if gap_s:
        await tunnel.ws.close()
    posting = asyncio.create_task(cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock"))
    await asyncio.sleep(gap_s or 0.2)
    assert not posting.done()  # held until the gateway is back
    await tunnel.ws.close()
    fresh = await cloud.tunnel(claimed.credential)
    assert isinstance(await fresh.hello(), p.Welcome)
    status, created = await posting
    assert (status, created["status"]) == (200, "pending")
    request = await fresh.recv()
    assert isinstance(request, p.ActionRequestMsg)
    assert request.id == created["id"]


async def test_a_rotation_posted_while_the_gateway_redials_after_its_claim_waits_for_it(
    cloud: Cloud,
) -> None:
    """The gateway stores `claimed` and redials: a rotation posted in that window, right after
    the claim, was answered 400 `gateway_offline`. It waits for the session that follows."""
    gw, claimed = await cloud.register("calm-haiku-42", "my first gateway")  # and hung up
    rotating = asyncio.create_task(cloud.post(f"/v1/gateways/{gw['id']}/actions/rotate_credential"))
    await asyncio.sleep(0.2)  # the rotation is posted before the redial
    tunnel = await cloud.tunnel(claimed.credential)
    assert isinstance(await tunnel.hello(), p.Welcome)
    status, body = await rotating
    assert status == 200, body
    rotated = await tunnel.recv()
    assert isinstance(rotated, p.Claimed)
    assert rotated.credential != claimed.credential
    assert isinstance(await (await cloud.tunnel(rotated.credential)).hello(), p.Welcome)


async def test_a_gateway_that_missed_its_rotation_gets_a_fresh_credential(cloud: Cloud) -> None:
    tunnel, gateway_id, old = await cloud.claimed_gateway()
    status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/rotate_credential")
    assert status == 200
    await tunnel.ws.close()  # the `claimed` frame never reached the gateway
    again = await cloud.tunnel(old)
    assert isinstance(await again.hello(), p.Welcome)
    reissued = await again.recv()
    assert isinstance(reissued, p.Claimed)
    assert reissued.credential not in (old,)
    newest = await cloud.tunnel(reissued.credential)
    assert isinstance(await newest.hello(), p.Welcome)
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await cloud.tunnel(old)


async def test_a_second_rotation_before_the_first_is_used_cannot_lock_the_gateway_out(
    cloud: Cloud,
) -> None:
    """The gateway stores each `claimed` and redials; a second rotation in that window would
    leave the credential it stored neither current nor previous."""
    tunnel, gateway_id, _ = await cloud.claimed_gateway()
    status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/rotate_credential")
    assert status == 200
    first = await tunnel.recv()
    assert isinstance(first, p.Claimed)
    status, body = await cloud.post(f"/v1/gateways/{gateway_id}/actions/rotate_credential")
    # the credential the gateway stored still opens its tunnel
    again = await cloud.tunnel(first.credential)
    assert isinstance(await again.hello(), p.Welcome)
    assert status == 409
    assert body["ok"] is False
    assert body["error"]["type"] == "credential_rotation_pending"
    assert set(body["error"]) == {"type", "message", "request_id"}
    assert first.credential not in json.dumps(body)
    # used now: the next rotation goes ahead
    status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/rotate_credential")
    assert status == 200
    assert isinstance(await again.recv(), p.Claimed)


async def test_a_newer_connection_replaces_the_older(cloud: Cloud) -> None:
    first, gateway_id, credential = await cloud.claimed_gateway()
    second = await cloud.tunnel(credential)
    assert isinstance(await second.hello(), p.Welcome)
    refusal = await first.recv()
    assert isinstance(refusal, p.ErrorMsg)
    assert refusal.code == "replaced"
    _, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/lock")
    sent = await second.recv()
    assert isinstance(sent, p.ActionRequestMsg)
    assert sent.id == created["id"]
    assert (await cloud.get(f"/v1/gateways/{gateway_id}"))["status"] == "online"


async def test_an_offline_gateway_means_gateway_failure(cloud: Cloud) -> None:
    tunnel, gateway_id, _ = await cloud.claimed_gateway()
    await tunnel.ws.close()
    for _ in range(100):
        if (await cloud.get(f"/v1/gateways/{gateway_id}"))["status"] == "offline":
            break
        await asyncio.sleep(0.02)
    status, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock")
    assert status == 200
    assert created["status"] == "gateway_failure"
    assert created["error"]["type"] == "gateway_offline"
    history = [s for s, _, _ in cloud.state.db.transitions(created["id"])]
    assert history == ["pending", "gateway_failure"]


async def test_no_hand_off_in_time_means_gateway_failure(make_cloud: CloudFactory) -> None:
    cloud = await make_cloud(handoff_timeout_s=0.2)
    tunnel, _, _ = await cloud.claimed_gateway()
    _, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/lock")
    assert created["status"] == "pending"
    assert isinstance(await tunnel.recv(), p.ActionRequestMsg)  # received, never acknowledged
    shown = created
    for _ in range(200):
        shown = await cloud.get(f"/v1/action_requests/{created['id']}")
        if shown["status"] != "pending":
            break
        await asyncio.sleep(0.02)
    assert shown["status"] == "gateway_failure"
    assert shown["error"]["type"] == "gateway_timeout"


async def test_gateway_received_in_time_prevents_gateway_failure(
    make_cloud: CloudFactory,
) -> None:
    cloud = await make_cloud(handoff_timeout_s=0.2)
    tunnel, _, _ = await cloud.claimed_gateway()
    _, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/lock")
    sent = await tunnel.recv()
    assert isinstance(sent, p.ActionRequestMsg)
    await tunnel.send(
        p.ActionStatusMsg(
            seq=2, action_request_id=sent.id, status="gateway_received", error=None, at="x"
        )
    )
    assert await tunnel.recv() == p.Ack(seq=2)
    await asyncio.sleep(0.4)
    shown = await cloud.get(f"/v1/action_requests/{created['id']}")
    assert shown["status"] == "gateway_received"


async def test_a_late_receipt_is_cancelled_before_it_is_acked(make_cloud: CloudFactory) -> None:
    cloud = await make_cloud(handoff_timeout_s=0.2)
    tunnel, _, credential = await cloud.claimed_gateway()
    _, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock")
    sent = await tunnel.recv()
    assert isinstance(sent, p.ActionRequestMsg)
    for _ in range(200):  # the cloud gives up and tells its user
        if (await cloud.get(f"/v1/action_requests/{created['id']}"))["status"] != "pending":
            break
        await asyncio.sleep(0.02)
    seq = tunnel.next_seq()
    await tunnel.send(
        p.ActionStatusMsg(
            seq=seq, action_request_id=sent.id, status="gateway_received", error=None, at="x"
        )
    )
    # the cancel comes first: a gateway runs a cloud action only after this ack
    assert await tunnel.recv() == p.ActionCancel(
        action_request_id=sent.id,
        reason="the gateway received it after the cloud's hand-off timeout",
    )
    assert await tunnel.recv() == p.Ack(seq=seq)
    seq = tunnel.next_seq()
    await tunnel.send(
        p.ActionStatusMsg(
            seq=seq, action_request_id=sent.id, status="completed", error=None, at="x"
        )
    )
    assert await tunnel.recv() == p.Ack(seq=seq)
    shown = await cloud.get(f"/v1/action_requests/{created['id']}")
    assert shown["status"] == "gateway_failure"  # what the user was told stays true
    assert [s for s, _, _ in cloud.state.db.transitions(created["id"])] == [
        "pending",
        "gateway_failure",
    ]
    # a cancel lost with the connection is repeated in the next welcome
    await tunnel.ws.close()
    again = await cloud.tunnel(credential)
    welcome = await again.hello()
    assert isinstance(welcome, p.Welcome)
    assert welcome.cancelled == [sent.id]
    assert welcome.acked_seq == seq


async def test_a_receipt_of_another_gateways_request_is_cancelled_before_it_is_acked(
    cloud: Cloud,
) -> None:
    """A box claimed again after a revoke is a new gateway, and resends from its outbox the
    receipt of a request its old identity got: acked without a cancel, that receipt was the
    go-ahead, and the box ran a request its user was told ended `gateway_failure`."""
    tunnel, old_id, _ = await cloud.claimed_gateway()
    _, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock")
    sent = await tunnel.recv()
    assert isinstance(sent, p.ActionRequestMsg)
    status, _ = await cloud.post(f"/v1/gateways/{old_id}/actions/revoke_credential")
    assert status == 200
    _, claimed = await cloud.register("fresh-token-7", "the same box")
    again = await cloud.tunnel(claimed.credential)
    assert isinstance(await again.hello(), p.Welcome)
    reason = "the request is another gateway's"
    for action_id in (sent.id, "local-action"):  # one the cloud never issued: no cancel
        seq = again.next_seq()
        await again.send(
            p.ActionStatusMsg(
                seq=seq, action_request_id=action_id, status="gateway_received", error=None, at="x"
            )
        )
        if action_id == sent.id:
            assert await again.recv() == p.ActionCancel(action_request_id=action_id, reason=reason)
        assert await again.recv() == p.Ack(seq=seq)
    shown = await cloud.get(f"/v1/action_requests/{created['id']}")
    assert shown["status"] == "pending"  # the hand-off timeout makes it gateway_failure


async def test_gateway_actions_go_to_the_gateway(cloud: Cloud) -> None:
    tunnel, gateway_id, _ = await cloud.claimed_gateway()
    status, created = await cloud.post(
        f"/v1/gateways/{gateway_id}/actions/unpair_devices",
        {"data": {"duration": 60, "device_id": DEVICE_ID}},
    )
    assert status == 200, created
    location_id = created["location_id"]
    assert created == {
        "id": created["id"],
        "entity_id": gateway_id,
        "entity_type": "Gateway",
        "location_id": location_id,
        "data": {"unpair_devices": {"duration": 60, "device_id": DEVICE_ID}},
        "status": "pending",
        "created_at": created["created_at"],
        "updated_at": created["updated_at"],
    }
    sent = await tunnel.recv()
    assert isinstance(sent, p.ActionRequestMsg)
    assert (sent.entity_type, sent.entity_id, sent.action, sent.inputs) == (
        "Gateway",
        gateway_id,
        "unpair_devices",
        {"duration": 60, "device_id": DEVICE_ID},
    )
    assert location_id in [loc["id"] for loc in await cloud.get("/v1/locations")]


DSK_PIN = "73915"  # distinctive: it must show up nowhere but in the frame to the gateway


async def test_a_dsk_pin_goes_to_the_gateway_and_is_masked_everywhere_else(
    cloud: Cloud, caplog: pytest.LogCaptureFixture
) -> None:
    tunnel, gateway_id, _ = await cloud.claimed_gateway()
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        status, created = await cloud.post(
            f"/v1/gateways/{gateway_id}/actions/pair_devices",
            {"data": {"duration": 60, "dsk_pin": DSK_PIN}},
        )
        assert status == 200, created
        assert created["data"] == {"pair_devices": {"duration": 60, "dsk_pin": "****"}}
        sent = await tunnel.recv()
        assert isinstance(sent, p.ActionRequestMsg)
        assert sent.inputs == {"duration": 60, "dsk_pin": DSK_PIN}
        assert DSK_PIN not in repr(sent)
        shown = await cloud.get(f"/v1/action_requests/{created['id']}")
    assert shown["data"] == {"pair_devices": {"duration": 60, "dsk_pin": "****"}}
    dump = "\n".join(sqlite3.connect(cloud.state.settings.db_path).iterdump())
    texts = [json.dumps(created), json.dumps(shown), dump, caplog.text]
    texts += [repr(e) for e in logs]
    assert [t for t in texts if DSK_PIN in t] == []


@pytest.mark.parametrize(
    "dsk_pin", ["7391", "739150", "7391a", 73915, "\uff17\uff13\uff19\uff11\uff15", ""]
)
async def test_a_dsk_pin_is_exactly_5_digits(cloud: Cloud, dsk_pin: object) -> None:
    tunnel, gateway_id, _ = await cloud.claimed_gateway()
    status, body = await cloud.post(
        f"/v1/gateways/{gateway_id}/actions/pair_devices",
        {"data": {"duration": 60, "dsk_pin": dsk_pin}},
    )
    assert status == 400, body
    assert body["error"]["type"] == "invalid_input"
    assert "dsk_pin" in body["error"]["validation_errors"]
    if dsk_pin:
        assert str(dsk_pin) not in json.dumps(body)
    # nothing went down the tunnel: the next frame is the ack of a new report
    await tunnel.send(p.DeviceRemovedMsg(seq=2, device_id="other"))
    assert await tunnel.recv() == p.Ack(seq=2)


async def test_unpair_devices_takes_no_dsk_pin(cloud: Cloud) -> None:
    _, gateway_id, _ = await cloud.claimed_gateway()
    status, body = await cloud.post(
        f"/v1/gateways/{gateway_id}/actions/unpair_devices",
        {"data": {"duration": 60, "dsk_pin": DSK_PIN}},
    )
    assert status == 400
    assert "dsk_pin" in body["error"]["validation_errors"]
    assert DSK_PIN not in json.dumps(body)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=st.text(max_size=300) | st.binary(max_size=300))
async def test_arbitrary_first_frames_never_break_the_server(
    cloud: Cloud, frame: str | bytes
) -> None:
    tunnel = await cloud.tunnel()
    if isinstance(frame, bytes):
        await tunnel.ws.send_bytes(frame)
    else:
        await tunnel.ws.send_str(frame)
    raw = await tunnel.ws.receive(timeout=5)
    if raw.type == aiohttp.WSMsgType.TEXT:
        reply = p.decode(raw.data)
        assert isinstance(reply, p.ErrorMsg | p.Welcome)
    await tunnel.ws.close()
    assert await cloud.get("/v1/gateways") == []


async def test_a_frame_still_in_the_read_loop_at_revocation_changes_nothing(
    cloud: Cloud,
) -> None:
    """The session has taken a report off the socket but not yet handled it when the revoke
    commits: once revoked, nothing the gateway sent may reach the account, and it is not acked."""
    tunnel, gateway_id, _ = await cloud.claimed_gateway()
    server_end = cloud.state.hub.claimed[gateway_id]
    receive = server_end.ws.receive
    taken, go_on = asyncio.Event(), asyncio.Event()
    session: list[asyncio.Task[object]] = []

    async def held(timeout: float | None = None) -> aiohttp.WSMessage:
        msg = await receive(timeout=timeout)
        task = asyncio.current_task()
        assert task is not None
        session.append(task)
        taken.set()
        await go_on.wait()
        return msg

    server_end.ws.receive = held  # type: ignore[method-assign]
    # the receive already waiting is the unpatched one: one more frame, and the next is held
    await tunnel.send(p.DeviceMsg(seq=2, device=device_body()))
    assert await tunnel.recv() == p.Ack(seq=2)
    event = {
        "id": "5d9f3c1e-0000-4000-8000-0000000000bb",
        "type": "device_event",
        "device_id": DEVICE_ID,
        "event_name": "door unlocked",
        "details": {"method": "keypad"},
        "date_created": "2020-06-11T21:08:36.000Z",
    }
    await tunnel.send(p.EventMsg(seq=3, event=event))
    await asyncio.wait_for(taken.wait(), 5)
    revoke = asyncio.create_task(cloud.post(f"/v1/gateways/{gateway_id}/actions/revoke_credential"))
    # the revoke has committed once this is sent; the held frame goes on before the socket dies
    assert await tunnel.recv() == p.ErrorMsg(
        code="revoked", message="the gateway credential was revoked"
    )
    go_on.set()
    await asyncio.wait(session, timeout=5)
    assert session[0].done()
    assert not session[0].cancelled()
    assert await tunnel.closed()  # no ack came first
    status, _ = await revoke
    assert status == 200
    assert await cloud.get("/v1/events") == []
    assert (await cloud.get(f"/v1/devices/{DEVICE_ID}"))["properties"]["locked"] is True
    assert cloud.state.db.high_water(gateway_id) == 2


async def test_a_claim_during_session_set_up_is_sent_once_after_the_welcome(
    cloud: Cloud,
) -> None:
    """The gateway redials with its token; the new session is held up closing the older one
    when the registration comes in. A gateway reads nothing before its welcome, so `claimed`
    must follow the welcome (which still says unclaimed), and come once."""
    location_id = await cloud.location()
    older = await cloud.tunnel()
    assert isinstance(await older.hello("slow-close-8"), p.Welcome)
    older_end = cloud.state.hub.unclaimed[secret_hash("slow-close-8")]
    newer, go_on = await _redial_held_in_set_up(cloud, older_end, token="slow-close-8")
    register = asyncio.create_task(
        cloud.post(
            f"/v1/locations/{location_id}/register_gateway",
            {"registration_token": "slow-close-8", "name": "gw"},
        )
    )
    await asyncio.wait([register], timeout=0.3)
    go_on.set()
    welcome = await newer.recv()
    assert isinstance(welcome, p.Welcome), welcome
    assert_welcome(welcome, gateway_id=None, acked_seq=0)
    claimed = await newer.recv()
    assert isinstance(claimed, p.Claimed)
    status, gw = await register
    assert status == 200, gw
    assert claimed.gateway_id == gw["id"]
    with pytest.raises(TimeoutError):
        await newer.recv(timeout=0.3)  # sent once
    await newer.ws.close()
    tunnel = await cloud.tunnel(claimed.credential)
    welcome = await tunnel.hello()
    assert isinstance(welcome, p.Welcome), welcome
    assert_welcome(welcome, gateway_id=gw["id"], acked_seq=0)
    assert (await cloud.get(f"/v1/gateways/{gw['id']}"))["status"] == "online"


def _hold_claimed_frames(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold devcloud's first `claimed` frame on a slow socket: returns (holding, go_on)."""
    send_str = web.WebSocketResponse.send_str
    holding, go_on = asyncio.Event(), asyncio.Event()

    async def slow(self: web.WebSocketResponse, data: str, compress: int | None = None) -> None:
        if isinstance(p.decode(data), p.Claimed) and not go_on.is_set():
            holding.set()
            await go_on.wait()
        await send_str(self, data, compress)

    monkeypatch.setattr(web.WebSocketResponse, "send_str", slow)
    return holding, go_on


async def test_a_revocation_while_a_lost_claim_is_resent_leaves_nothing_online(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token's holder is being sent `claimed` again when the gateway is revoked: the
    session must not go on to speak for the revoked gateway."""
    gateway_id, _ = await _claim_lost(cloud, "late-revoke-5")
    holding, go_on = _hold_claimed_frames(monkeypatch)
    again = await cloud.tunnel()
    welcome = await again.hello("late-revoke-5")
    assert isinstance(welcome, p.Welcome), welcome
    await asyncio.wait_for(holding.wait(), 5)
    status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/revoke_credential")
    assert status == 200
    go_on.set()
    assert isinstance(await again.recv(), p.Claimed)  # already on its way
    assert await again.recv() == p.ErrorMsg(
        code="revoked", message="the gateway credential was revoked"
    )
    assert await again.closed()
    assert (await cloud.get(f"/v1/gateways/{gateway_id}"))["status"] == "offline"


async def test_a_revocation_while_the_first_claim_is_sent_leaves_nothing_online(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    location_id = await cloud.location()
    holding, go_on = _hold_claimed_frames(monkeypatch)
    tunnel = await cloud.tunnel()
    assert isinstance(await tunnel.hello("quick-regret-2"), p.Welcome)
    register = asyncio.create_task(
        cloud.post(
            f"/v1/locations/{location_id}/register_gateway",
            {"registration_token": "quick-regret-2", "name": "gw"},
        )
    )
    await asyncio.wait_for(holding.wait(), 5)
    [listed] = await cloud.get("/v1/gateways")
    status, _ = await cloud.post(f"/v1/gateways/{listed['id']}/actions/revoke_credential")
    assert status == 200
    go_on.set()
    status, gw = await register
    assert (status, gw["id"], gw["status"]) == (200, listed["id"], "offline")
    assert isinstance(await tunnel.recv(), p.Claimed)  # already on its way
    await tunnel.send(p.DeviceMsg(seq=1, device=device_body()))
    refusal = await tunnel.recv()
    assert isinstance(refusal, p.ErrorMsg), refusal
    assert await cloud.get("/v1/devices") == []
    assert (await cloud.get(f"/v1/gateways/{listed['id']}"))["status"] == "offline"


async def _redial_held_in_set_up(
    cloud: Cloud, older_end: Connection, *, credential: str | None = None, token: str | None = None
) -> tuple[TunnelClient, asyncio.Event]:
    """The gateway dials again; its new session waits, before its welcome, for the close of the
    older session `older_end`, which is held until the returned event is set."""
    refuse = older_end.refuse
    closing, go_on = asyncio.Event(), asyncio.Event()

    async def slow_refuse(code: str, message: str) -> None:
        closing.set()
        await go_on.wait()
        await refuse(code, message)

    older_end.refuse = slow_refuse  # type: ignore[method-assign]
    newer = await cloud.tunnel(credential)
    await newer.send(
        p.Hello(
            protocol=1,
            software_version="0.1.0",
            hardware="test",
            drivers=["sim"],
            registration_token=token,
        )
    )
    await asyncio.wait_for(closing.wait(), 5)
    return newer, go_on


async def _newer_session_held_in_set_up(cloud: Cloud) -> tuple[TunnelClient, asyncio.Event]:
    """A claimed gateway dials again, its new session held in set-up (see above)."""
    _older, gateway_id, credential = await cloud.claimed_gateway()
    return await _redial_held_in_set_up(
        cloud, cloud.state.hub.claimed[gateway_id], credential=credential
    )


async def test_an_action_request_during_session_set_up_goes_after_the_welcome(
    cloud: Cloud,
) -> None:
    """A gateway drops whatever comes before its welcome: an action request sent then would
    end `gateway_failure` for a gateway that was online all along."""
    newer, go_on = await _newer_session_held_in_set_up(cloud)
    unlock = asyncio.create_task(cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock"))
    await asyncio.wait([unlock], timeout=0.3)
    go_on.set()
    welcome = await newer.recv()
    assert isinstance(welcome, p.Welcome), welcome
    sent = await newer.recv()
    assert isinstance(sent, p.ActionRequestMsg), sent
    status, created = await unlock
    assert (status, created["id"], created["status"]) == (200, sent.id, "pending")


async def test_the_hand_off_timeout_runs_while_the_request_waits_to_be_sent(
    make_cloud: CloudFactory,
) -> None:
    """The timer was armed only once the send returned: a request waiting for a session's
    welcome stayed `pending` past the hand-off timeout, for as long as the wait lasted."""
    cloud = await make_cloud(handoff_timeout_s=0.2)
    _newer, go_on = await _newer_session_held_in_set_up(cloud)
    unlock = asyncio.create_task(cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock"))
    await asyncio.wait([unlock], timeout=0.1)
    await asyncio.sleep(0.5)  # the welcome is still held: well past the 0.2-s hand-off
    go_on.set()
    status, created = await unlock
    assert status == 200
    assert created["status"] == "gateway_failure"
    assert created["error"]["type"] == "gateway_timeout"
    history = [s for s, _, _ in cloud.state.db.transitions(created["id"])]
    assert history == ["pending", "gateway_failure"]


async def test_actions_a_revoked_gateway_held_end_failed_not_processing_for_good(
    cloud: Cloud,
) -> None:
    """A revoked gateway's reports are refused, so what it had received stayed
    `gateway_received` or `processing` in the API for ever."""
    tunnel, gateway_id, _ = await cloud.claimed_gateway()
    ids = []
    for last in ("gateway_received", "processing", "completed"):
        _, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock")
        sent = await tunnel.recv()
        assert isinstance(sent, p.ActionRequestMsg)
        for step in ("gateway_received", "processing", "completed"):
            seq = tunnel.next_seq()
            await tunnel.send(
                p.ActionStatusMsg(
                    seq=seq, action_request_id=sent.id, status=step, error=None, at="x"
                )
            )
            assert await tunnel.recv() == p.Ack(seq=seq)
            if step == last:
                break
        ids.append(created["id"])
    status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/revoke_credential")
    assert status == 200
    shown = [await cloud.get(f"/v1/action_requests/{id_}") for id_ in ids]
    assert [s["status"] for s in shown] == ["failed", "failed", "completed"]
    for s in shown[:2]:
        assert s["error"]["type"] == "gateway_revoked"
        assert "may have moved" in s["error"]["message"]
    history = [s for s, _, _ in cloud.state.db.transitions(ids[1])]
    assert history == ["pending", "gateway_received", "processing", "failed"]


async def test_an_action_sent_just_after_a_rotation_s_claimed_goes_to_the_session_that_follows(
    cloud: Cloud,
) -> None:
    """The unlock took the session before the rotation's `claimed` had left on it, and went
    out right after that frame: the gateway, redialling, never read it (`gateway_timeout`)."""
    tunnel, gateway_id, _ = await cloud.claimed_gateway()
    conn = cloud.state.hub.claimed[gateway_id]
    async with conn._lock:  # the socket busy: each frame waits its turn, `claimed` first
        rotating = asyncio.create_task(
            cloud.post(f"/v1/gateways/{gateway_id}/actions/rotate_credential")
        )
        await asyncio.sleep(0.2)
        posting = asyncio.create_task(cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock"))
        await asyncio.sleep(0.2)
    status, _ = await rotating
    assert status == 200
    claimed = await tunnel.recv()
    assert isinstance(claimed, p.Claimed)
    await tunnel.ws.close()
    fresh = await cloud.tunnel(claimed.credential)
    assert isinstance(await fresh.hello(), p.Welcome)
    status, created = await posting
    assert (status, created["status"]) == (200, "pending")
    request = await fresh.recv()
    assert isinstance(request, p.ActionRequestMsg)
    assert request.id == created["id"]
