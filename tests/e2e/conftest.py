"""End-to-end fixtures: devcloud on a real loopback socket, webhook receiver, claim helper."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gatewayd.daemon import Daemon
from tests.cloudkit import Cloud, CloudFactory, clouds
from tests.support import wait_until

WEBHOOK_SECRET = "whsec_e2e"


@dataclass
class Receiver:
    """A webhook receiver that checks Basic auth and the Seam-Signature of every delivery."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    bad_auth: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if request.headers.get("Authorization") != aiohttp.encode_basic_auth("hook", "hookpw"):
            self.bad_auth += 1
            return web.Response(status=401)
        parts = dict(p.split("=", 1) for p in request.headers["Seam-Signature"].split(","))
        expected = hmac.new(
            WEBHOOK_SECRET.encode(), f"{parts['t']}.".encode() + raw, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, parts["v1"]):
            self.bad_signatures += 1
            return web.Response(status=400)
        self.bodies.append(await request.json())
        return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    rec.url = f"http://hook:hookpw@127.0.0.1:{server.port}/hook"
    yield rec
    await server.close()


@pytest.fixture
async def cloud_factory(tmp_path: Path) -> AsyncIterator[CloudFactory]:
    async with clouds(tmp_path, handoff_timeout_s=3.0, webhook_secret=WEBHOOK_SECRET) as start:
        yield start


def tunnel_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/gateway/tunnel"


async def claim(cloud: Cloud, daemon: Daemon) -> tuple[str, str]:
    """Claim a running daemon through the REST API; returns (location_id, gateway_id)."""
    assert daemon.store is not None
    await wait_until(lambda: daemon.tunnel is not None and daemon.tunnel.up, 30)
    location_id = await cloud.location()
    token = daemon.store.identity().registration_token
    status, gateway = await cloud.post(
        f"/v1/locations/{location_id}/register_gateway",
        {"registration_token": token, "name": "front office"},
    )
    assert status == 200, gateway
    # the session of the credential: the unclaimed one is still up while the gateway redials,
    # and a rotation or a link fault timed on it would hit the redial
    await wait_until(
        lambda: (
            daemon.store is not None
            and daemon.store.identity().claimed
            and daemon.tunnel is not None
            and daemon.tunnel.state == "connected"
        ),
        15,
    )
    return location_id, str(gateway["id"])


async def wait_action(cloud: Cloud, action_id: str, timeout: float = 15) -> dict[str, Any]:
    """Poll GET /v1/action_requests/{id} until it is terminal."""
    import anyio

    with anyio.fail_after(timeout):
        while True:
            body = await cloud.get(f"/v1/action_requests/{action_id}")
            ar = body.get("action_request", body)
            if ar["status"] in ("completed", "failed", "gateway_failure"):
                return dict(ar)
            await anyio.sleep(0.05)


def transitions(cloud: Cloud, action_id: str) -> list[str]:
    """The statuses devcloud recorded for an action request, in order."""
    return [status for status, _, _ in cloud.state.db.transitions(action_id)]


class Rest:
    """devcloud's REST API, keeping every response body so the test can look for the PIN."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.bodies: list[str] = []

    async def get(self, path: str, **kw: Any) -> Any:
        body = await self.cloud.get(path, **kw)
        self.bodies.append(json.dumps(body))
        return body

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        status, answer = await self.cloud.post(path, body)
        self.bodies.append(json.dumps(answer))
        return status, answer

    async def act(self, device_id: str, action: str, data: Any = None) -> dict[str, Any]:
        """POST an action, check it was accepted, and wait for its terminal state."""
        status, ar = await self.post(
            f"/v1/devices/{device_id}/actions/{action}", {} if data is None else {"data": data}
        )
        assert status == 200, ar
        done = await wait_action(self.cloud, ar["id"])
        self.bodies.append(json.dumps(done))
        return done

    async def events(self, device_id: str, name: str) -> list[dict[str, Any]]:
        events = await self.get("/v1/events", params={"device_id": device_id})
        return [e for e in events if e["event_name"] == name]
