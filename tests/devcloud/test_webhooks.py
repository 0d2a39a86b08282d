"""Webhooks: every event reaches the receiver signed, with Basic auth, retried after a failure."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs
from yarl import URL

from devcloud.db import secret_hash
from gatewayd import protocol as p
from tests.devcloud.conftest import DEVICE_ID, CloudFactory

SECRET = "whsec_test"


class Receiver:
    """A webhook endpoint that fails the first `failures` deliveries with a 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.accepted: list[dict[str, Any]] = []
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        if len(self.requests) <= self.failures:
            return web.Response(status=500)
        self.accepted.append(json.loads(body))
        self.got.set()
        return web.json_response({"received": True})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    recv = Receiver(failures=1)
    app = web.Application()
    app.router.add_post("/webhooks", recv.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = server.make_url("/webhooks").with_user("hook").with_password("a_strong_password")
    yield recv, str(url)
    await server.close()


def verify(headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does with `Seam-Signature`, per the seed."""
    parts = dict(item.split("=", 1) for item in headers["Seam-Signature"].split(","))
    expected = hmac.new(
        SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


def device_event(event_id: str, name: str, details: dict[str, Any], at: str) -> dict[str, Any]:
    """A door event as the gateway sends it upstream."""
    return {
        "id": event_id,
        "type": "device_event",
        "device_id": DEVICE_ID,
        "event_name": name,
        "details": details,
        "date_created": at,
    }


async def send_event(tunnel: Any, seq: int, event: dict[str, Any]) -> None:
    """Send one event frame and check the cloud acks it."""
    await tunnel.send(p.EventMsg(seq=seq, event=event))
    assert await tunnel.recv() == p.Ack(seq=seq)


async def test_an_event_is_delivered_signed_after_a_retry(
    make_cloud: CloudFactory, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    cloud = await make_cloud(webhook_urls=(url,), webhook_secret=SECRET)
    tunnel, _, _ = await cloud.claimed_gateway()
    event = device_event(
        "ev-1", "door unlocked", {"method": "pin_code"}, "2020-06-11T21:08:36.000Z"
    )
    await tunnel.send(p.EventMsg(seq=2, event=event))
    # The tunnel is acked at once, while the first delivery is still failing.
    assert await tunnel.recv() == p.Ack(seq=2)
    await asyncio.wait_for(recv.got.wait(), timeout=10)
    assert recv.accepted == [event]
    assert len(recv.requests) == 2
    for headers, body in recv.requests:
        assert verify(headers, body)
        assert headers["Content-Type"] == "application/json"
        user, _, password = base64.b64decode(headers["Authorization"][6:]).decode().partition(":")
        assert (user, password) == ("hook", "a_strong_password")
    tampered_headers, body = recv.requests[1]
    assert not verify(tampered_headers, body.replace(b"unlocked", b"locked"))


async def test_a_duplicate_event_is_not_delivered_twice(
    make_cloud: CloudFactory, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    recv.failures = 0
    cloud = await make_cloud(webhook_urls=(url,), webhook_secret=SECRET)
    tunnel, _, _ = await cloud.claimed_gateway()
    event = device_event("ev-2", "door locked", {"method": "manual"}, "2020-06-11T21:12:20.000Z")
    await send_event(tunnel, 2, event)
    await tunnel.send(p.EventMsg(seq=3, event=event))  # same event id, new seq
    assert await tunnel.recv() == p.Ack(seq=3)
    await asyncio.wait_for(recv.got.wait(), timeout=10)
    await asyncio.sleep(0.2)
    assert [e["id"] for e in recv.accepted] == ["ev-2"]
    assert recv.accepted[0]["type"] == "device_event"


async def test_a_receiver_given_twice_gets_each_event_once(
    make_cloud: CloudFactory, receiver: tuple[Receiver, str]
) -> None:
    """The same URL twice (or with other credentials) shares one outbox: two workers took the
    same rows and delivered every event twice."""
    recv, url = receiver
    recv.failures = 0
    other = str(URL(url).with_password("another_password"))
    cloud = await make_cloud(webhook_urls=(url, other, url), webhook_secret=SECRET)
    tunnel, _, _ = await cloud.claimed_gateway()
    for n in range(3):
        at = f"2020-06-11T21:12:2{n}.000Z"
        await send_event(tunnel, 2 + n, device_event(f"ev-{n}", "door locked", {}, at))
    for _ in range(200):
        if len(recv.accepted) >= 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert [e["id"] for e in recv.accepted] == ["ev-0", "ev-1", "ev-2"]


async def test_a_pin_in_an_event_is_masked_in_the_list_the_store_and_the_webhook(
    make_cloud: CloudFactory, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    recv.failures = 0
    cloud = await make_cloud(webhook_urls=(url,), webhook_secret=SECRET)
    tunnel, _, _ = await cloud.claimed_gateway()
    event = device_event(
        "ev-3",
        "code set on device",
        {"slot_id": 3, "code": "48213", "programmed": [{"user_code": "90517"}]},
        "2020-06-11T21:12:20.000Z",
    )
    await send_event(tunnel, 2, event)
    await asyncio.wait_for(recv.got.wait(), timeout=10)
    masked = {"slot_id": 3, "code": "****", "programmed": [{"user_code": "****"}]}
    assert [e["details"] for e in await cloud.get("/v1/events")] == [masked]
    assert [e["details"] for e in recv.accepted] == [masked]
    dump = "\n".join(sqlite3.connect(cloud.state.settings.db_path).iterdump())
    for pin in ("48213", "90517"):
        assert pin not in dump
        assert all(pin.encode() not in body for _, body in recv.requests)


async def test_an_undelivered_event_survives_a_restart_of_the_cloud(
    make_cloud: CloudFactory, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    recv, url = receiver
    recv.failures = 10**6  # down until the cloud restarts
    db_path = str(tmp_path / "restarted.db")
    cloud = await make_cloud(db_path=db_path, webhook_urls=(url,), webhook_backoff_s=5.0)
    tunnel, _, _ = await cloud.claimed_gateway()
    event = device_event("ev-4", "door unlocked", {"method": "keypad"}, "2020-06-11T21:12:20.000Z")
    await tunnel.send(p.EventMsg(seq=2, event=event))
    assert await tunnel.recv() == p.Ack(seq=2)  # the gateway will not send it again
    while not recv.requests:
        await asyncio.sleep(0.01)
    await tunnel.ws.close()
    await cloud.server.close()
    recv.failures = 0
    await make_cloud(db_path=db_path, webhook_urls=(url,))
    await asyncio.wait_for(recv.got.wait(), timeout=10)
    assert recv.accepted == [event]
    assert all(verify(headers, body) for headers, body in recv.requests)


async def test_deliveries_owed_to_a_receiver_no_longer_configured_are_dropped_at_start(
    make_cloud: CloudFactory, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    recv, url = receiver
    recv.failures = 10**6  # never accepts: the delivery stays owed
    db_path = str(tmp_path / "reconfigured.db")
    cloud = await make_cloud(db_path=db_path, webhook_urls=(url,), webhook_backoff_s=5.0)
    tunnel, _, _ = await cloud.claimed_gateway()
    event = device_event("ev-5", "door locked", {"method": "manual"}, "2020-06-11T21:12:20.000Z")
    await send_event(tunnel, 2, event)
    await tunnel.ws.close()
    await cloud.server.close()
    with capture_logs() as logs:
        await make_cloud(db_path=db_path)  # the receiver was removed from the configuration
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT count(*) FROM webhook_outbox").fetchone() == (0,)
    assert {"event": "webhook.outbox_dropped", "rows": 1, "log_level": "warning"} in logs


async def test_events_sent_while_the_receiver_is_down_for_many_retries_all_arrive_in_order(
    make_cloud: CloudFactory, receiver: tuple[Receiver, str]
) -> None:
    """A receiver down for far more retries than a short outage takes (a redeploy, an
    afternoon) misses nothing: deliveries are retried until taken, in order."""
    recv, url = receiver
    recv.failures = 40
    cloud = await make_cloud(
        webhook_urls=(url,),
        webhook_secret=SECRET,
        webhook_backoff_s=0.001,
        webhook_backoff_max_s=0.005,
    )
    tunnel, _, _ = await cloud.claimed_gateway()
    events = [
        device_event(f"ev-out-{i}", "door locked", {"method": "manual"}, "2020-06-11T21:12:20.000Z")
        for i in range(3)
    ]
    for seq, event in enumerate(events, start=2):
        await send_event(tunnel, seq, event)
    while len(recv.accepted) < len(events):
        await asyncio.wait_for(recv.got.wait(), timeout=10)
        recv.got.clear()
    assert [e["id"] for e in recv.accepted] == [e["id"] for e in events]
    assert len(recv.requests) == 40 + len(events)


async def test_a_delivery_refused_for_longer_than_the_give_up_time_is_dropped_and_the_next_sent(
    make_cloud: CloudFactory, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    recv.failures = 10**6
    cloud = await make_cloud(
        webhook_urls=(url,),
        webhook_secret=SECRET,
        webhook_backoff_s=0.01,
        webhook_backoff_max_s=0.02,
        webhook_give_up_s=0.3,
    )
    tunnel, _, _ = await cloud.claimed_gateway()
    with capture_logs() as logs:
        await send_event(
            tunnel, 2, device_event("ev-lost", "door locked", {}, "2020-06-11T21:12:20.000Z")
        )
        while not any(e["event"] == "webhook.gave_up" for e in logs):
            await asyncio.sleep(0.01)
    gave_up = next(e for e in logs if e["event"] == "webhook.gave_up")
    assert gave_up["reason"] == "http_500"
    assert gave_up["failing_for_s"] >= 0.25  # it kept trying until the give-up time
    recv.failures = 0
    kept = device_event("ev-kept", "door unlocked", {}, "2020-06-11T21:12:21.000Z")
    await send_event(tunnel, 3, kept)
    await asyncio.wait_for(recv.got.wait(), timeout=10)
    assert [e["id"] for e in recv.accepted] == ["ev-kept"]


async def test_a_redirect_is_not_taken_for_a_delivery(make_cloud: CloudFactory) -> None:
    """A receiver that answers 301 (http to https, a trailing slash) has not taken the event:
    following it turned the POST into a GET without the body, whose 200 counted as delivered
    and dropped the event from the outbox. The delivery is retried as a failure instead."""
    got: list[tuple[str, str, bytes]] = []

    async def moved(request: web.Request) -> web.Response:
        got.append((request.method, request.path, await request.read()))
        raise web.HTTPMovedPermanently("/webhooks/")

    async def page(request: web.Request) -> web.Response:
        got.append((request.method, request.path, await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhooks", moved)
    app.router.add_route("*", "/webhooks/", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/webhooks"))
    try:
        cloud = await make_cloud(webhook_urls=(url,), webhook_secret=SECRET)
        tunnel, _, _ = await cloud.claimed_gateway()
        with capture_logs() as logs:
            await send_event(
                tunnel, 2, device_event("ev-301", "door unlocked", {}, "2020-06-11T21:12:20.000Z")
            )
            async with asyncio.timeout(10):
                while len(got) < 2:
                    await asyncio.sleep(0.01)
        assert [(method, path) for method, path, _ in got[:2]] == [("POST", "/webhooks")] * 2
        assert all(body for _, _, body in got)
        assert cloud.state.webhooks.delivered == 0
        assert cloud.state.db.webhook_backlog(secret_hash(url)) == 1  # still owed
        failed = [e["reason"] for e in logs if e["event"] == "webhook.attempt_failed"]
        assert failed[:1] == ["http_301"]  # retried as a failure, and said so
    finally:
        await server.close()


async def test_a_token_in_a_webhook_urls_path_reaches_no_log_line(
    make_cloud: CloudFactory,
) -> None:
    """Many receivers carry their secret in the path (`/services/T…/B…/<token>`, as chat
    webhooks do): every delivery and every retry logged it as the receiver's label."""
    token = "zQ8vN3kLr7TtW2pXy5"
    got = asyncio.Event()
    calls = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=500)
        got.set()
        return web.json_response({"received": True})

    app = web.Application()
    app.router.add_post(f"/services/T01/B02/{token}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(
            server.make_url(f"/services/T01/B02/{token}").with_user("hook").with_password("pw9")
        )
        with capture_logs() as logs:
            cloud = await make_cloud(webhook_urls=(url,), webhook_backoff_s=0.01)
            tunnel, _, _ = await cloud.claimed_gateway()
            await tunnel.send(
                p.EventMsg(
                    seq=2,
                    event=device_event(
                        "e1", "door locked", {"method": "manual"}, "2020-06-11T21:08:36.000Z"
                    ),
                )
            )
            assert await tunnel.recv() == p.Ack(seq=2)
            await asyncio.wait_for(got.wait(), timeout=10)
            for _ in range(100):
                if any(e["event"] == "webhook.delivered" for e in logs):
                    break
                await asyncio.sleep(0.01)
    finally:
        await server.close()
    webhook_logs = [e for e in logs if e["event"].startswith("webhook.")]
    assert {e["event"] for e in webhook_logs} >= {"webhook.attempt_failed", "webhook.delivered"}
    assert token not in repr(logs)
    assert "pw9" not in repr(logs)
    # receivers stay told apart: one label each, and on the same host and port
    assert all(e["receiver"] == webhook_logs[0]["receiver"] for e in webhook_logs)
