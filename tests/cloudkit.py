"""devcloud on a real loopback socket with SQLite on disk, and a small tunnel client: the kit
the devcloud tests and the end-to-end tests share."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from devcloud.app import create_app
from devcloud.settings import Settings
from devcloud.state import STATE, State
from devcloud.timeutil import WallClock, utcnow
from gatewayd import protocol as p

API_KEY = "test-api-key"

DEVICE_ID = "9980a513-7a7b-434c-801f-27008fd0fcda"

SET_CODE = {
    "title": "Set Code",
    "description": "Set User Code for the Door Lock",
    "inputs": {
        "code": {
            "title": "Code",
            "description": "Pin Code, all numbers, can start with 0, 4 through 6 digits",
            "type": "string",
        },
        "slot_id": {"title": "Slot ID", "description": "2 through 11", "type": "integer"},
    },
}


def device_body(device_id: str = DEVICE_ID, **props: Any) -> dict[str, Any]:
    """A lock as the daemon reports it upstream."""
    return {
        "id": device_id,
        "name": "Kwikset914 5c:a1:0",
        "manufacturer": "Kwikset",
        "model": "914",
        "protocol": "sim",
        "actions": {
            "lock": {"title": "Lock", "description": "Locks the Door Lock", "inputs": None},
            "unlock": {"title": "Unlock", "description": "Unlocks the Door Lock", "inputs": None},
            "set_code": SET_CODE,
            "clear_code": {
                "title": "Clear Code",
                "description": "Clear a User Code for the Door Lock",
                "inputs": {"slot_id": SET_CODE["inputs"]["slot_id"]},  # type: ignore[index]
            },
        },
        "properties": {
            "locked": True,
            "online": True,
            "door_open": None,
            "battery_level": 0.9,
            "battery": {"level": 0.9, "status": "full"},
            "jammed": False,
            "supported_code_lengths": [4, 5, 6],
            "code_slots": {"min": 2, "max": 11},
            "firmware": "1.0",
            "last_seen": "2020-06-11T21:08:36.000Z",
            **props,
        },
    }


@dataclass
class TunnelClient:
    """The gateway's end of the tunnel, spoken with aiohttp and gatewayd.protocol."""

    ws: aiohttp.ClientWebSocketResponse
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def send(self, msg: p.Message) -> None:
        await self.ws.send_str(p.encode(msg).decode())

    async def recv(self, timeout: float = 5.0) -> p.Message:
        raw = await self.ws.receive(timeout=timeout)
        assert raw.type == aiohttp.WSMsgType.TEXT, raw
        return p.decode(raw.data)

    async def hello(self, token: str | None = None, protocol: int = 1) -> p.Message:
        await self.send(
            p.Hello(
                protocol=protocol,
                software_version="0.1.0",
                hardware="test",
                drivers=["sim"],
                registration_token=token,
            )
        )
        return await self.recv()

    async def closed(self, timeout: float = 5.0) -> bool:
        """Drain until the server closes; True if it did."""
        while True:
            raw = await self.ws.receive(timeout=timeout)
            if raw.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return True

    def next_seq(self) -> int:
        return next(self.seq)


@dataclass
class Cloud:
    server: TestServer
    http: aiohttp.ClientSession
    tunnels: list[TunnelClient] = field(default_factory=list)

    @property
    def state(self) -> State:
        return self.server.app[STATE]

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        kw.setdefault("headers", {"Authorization": aiohttp.encode_basic_auth(API_KEY)})
        async with self.http.request(method, self.url(path), **kw) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str, **kw: Any) -> Any:
        status, body = await self.request("GET", path, **kw)
        assert status == 200, body
        return body

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        if body is not None:
            kw["json"] = body
        return await self.request("POST", path, **kw)

    async def tunnel(self, credential: str | None = None) -> TunnelClient:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        ws = await self.http.ws_connect(self.url("/v1/gateway/tunnel"), headers=headers)
        client = TunnelClient(ws)
        self.tunnels.append(client)
        return client

    async def location(self, name: str = "650 Valencia") -> str:
        status, body = await self.post("/v1/locations", {"name": name, "timezone": "UTC"})
        assert status == 200, body
        return str(body["id"])

    async def register(self, token: str, name: str) -> tuple[dict[str, Any], p.Claimed]:
        """Connect unclaimed with `token`, register it through REST, read the `claimed` frame
        and hang up. Returns (the gateway object, the claimed frame)."""
        location_id = await self.location()
        unclaimed = await self.tunnel()
        welcome = await unclaimed.hello(token)
        assert_welcome(welcome, gateway_id=None, acked_seq=0)
        status, gw = await self.post(
            f"/v1/locations/{location_id}/register_gateway",
            {"registration_token": token, "name": name},
        )
        assert status == 200, gw
        claimed = await unclaimed.recv()
        assert isinstance(claimed, p.Claimed)
        assert claimed.gateway_id == gw["id"]
        await unclaimed.ws.close()
        return gw, claimed

    async def claimed_gateway(
        self, token: str = "calm-haiku-42", device: dict[str, Any] | None = None
    ) -> tuple[TunnelClient, str, str]:
        """Register a gateway through the real claim flow; reconnect with its credential;
        report one device. Returns (tunnel, gateway_id, credential)."""
        gw, claimed = await self.register(token, "my first gateway")
        tunnel = await self.tunnel(claimed.credential)
        welcome = await tunnel.hello()
        assert isinstance(welcome, p.Welcome)
        assert welcome.gateway_id == gw["id"]
        seq = tunnel.next_seq()
        await tunnel.send(p.DeviceMsg(seq=seq, device=device or device_body()))
        assert await tunnel.recv() == p.Ack(seq=seq)
        return tunnel, gw["id"], claimed.credential


CloudFactory = Callable[..., Awaitable[Cloud]]


class SteppedClock:
    """A devcloud wall clock (`start(clock=...)`): this machine's, moved by `step` (as NTP
    steps a clock)."""

    def __init__(self) -> None:
        self.step = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.step


@asynccontextmanager
async def clouds(tmp_path: Path, **defaults: Any) -> AsyncIterator[CloudFactory]:
    """Start devclouds on demand (`await start(**overrides)`); all are closed on exit."""
    started: list[Cloud] = []

    async def start(clock: WallClock = utcnow, **overrides: Any) -> Cloud:
        """`clock`: devcloud's wall clock (a test steps it); `overrides`: of its settings."""
        settings = Settings(
            api_key=API_KEY,
            db_path=str(tmp_path / f"devcloud{len(started)}.db"),
            handoff_timeout_s=5.0,
            webhook_backoff_s=0.05,
            webhook_secret="whsec_test",
        )
        settings = replace(settings, **{**defaults, **overrides})
        server = TestServer(create_app(settings, clock), host="127.0.0.1")
        await server.start_server()
        cloud = Cloud(server=server, http=aiohttp.ClientSession())
        started.append(cloud)
        return cloud

    try:
        yield start
    finally:
        for cloud in started:
            for t in cloud.tunnels:
                await t.ws.close()
            await cloud.http.close()
            await cloud.server.close()


def assert_welcome(welcome: p.Welcome, *, gateway_id: str | None, acked_seq: int) -> None:
    """devcloud's welcome, with its clock (ISO-8601 UTC) within a few seconds of ours."""
    assert welcome == p.Welcome(
        protocol=1,
        gateway_id=gateway_id,
        acked_seq=acked_seq,
        heartbeat_s=60.0,
        server_time=welcome.server_time,
    )
    assert welcome.server_time is not None
    sent = datetime.fromisoformat(welcome.server_time.replace("Z", "+00:00"))
    assert sent.tzinfo is not None
    assert abs((datetime.now(UTC) - sent).total_seconds()) < 5
