"""`claimed` frames from a cloud that misbehaves, against a scripted cloud end on loopback: one
that sends `claimed` in every session, one that rotates to a credential it then refuses, one
that "rotates" the gateway to another id."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gatewayd import protocol
from gatewayd.config import CloudConfig
from gatewayd.model import iso, utcnow
from gatewayd.store import Store
from gatewayd.tunnel import Tunnel

GATEWAY_ID = "gw-claims"
OLD = "credential-old-0001"

# After its welcome, what the cloud sends in session n (1-based): a frame (or its raw text), a
# list of them, or None.
Frame = protocol.Message | str
Script = Callable[[int], Frame | list[Frame] | None]


class ScriptedCloud:
    def __init__(self, accepted: set[str], script: Script) -> None:
        self.accepted = accepted
        self.script = script
        self.sessions: list[str] = []  # the bearer each session dialled with
        self.refused: list[str] = []
        self.port = 0
        self.before_welcome: str | None = None  # raw text sent before the welcome
        self.acked_seq: dict[int, int] = {}  # welcome.acked_seq by session (else 0)
        self.received: list[protocol.Message] = []  # every frame after the hellos

    async def tunnel(self, request: web.Request) -> web.StreamResponse:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if bearer not in self.accepted:
            self.refused.append(bearer)
            return web.Response(status=401)
        self.sessions.append(bearer)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        hello = protocol.decode((await ws.receive()).data)
        assert isinstance(hello, protocol.Hello)
        if self.before_welcome is not None:
            await ws.send_str(self.before_welcome)
        welcome = protocol.Welcome(
            protocol=1,
            gateway_id=GATEWAY_ID,
            acked_seq=self.acked_seq.get(len(self.sessions), 0),
            heartbeat_s=60.0,
            server_time=iso(utcnow()),
        )
        await ws.send_str(protocol.encode(welcome).decode())
        sent = self.script(len(self.sessions))
        for frame in sent if isinstance(sent, list) else [] if sent is None else [sent]:
            await ws.send_str(frame if isinstance(frame, str) else protocol.encode(frame).decode())
        async for msg in ws:
            self.received.append(protocol.decode(msg.data))
        return ws


@asynccontextmanager
async def running(cloud: ScriptedCloud) -> AsyncIterator[None]:
    app = web.Application()
    app.router.add_get("/v1/gateway/tunnel", cloud.tunnel)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    cloud.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield
    finally:
        await runner.cleanup()


def claimed_store(tmp_path: Path) -> Store:
    store = Store.open(tmp_path / "gatewayd.db")
    store.set_claimed(GATEWAY_ID, OLD)
    return store


def tunnel_to(cloud: ScriptedCloud, store: Store, sleeps: list[float]) -> Tunnel:
    async def recorded(delay: float) -> None:
        sleeps.append(delay)
        await anyio.lowlevel.checkpoint()

    return Tunnel(
        CloudConfig(url=f"ws://127.0.0.1:{cloud.port}/v1/gateway/tunnel", connect_timeout_s=2),
        store,
        lambda _request: None,
        lambda: {"software_version": "0", "hardware": "test", "drivers": ["sim"]},
        sleep=recorded,
    )


async def run_until(tunnel: Tunnel, done: Callable[[], bool], at_most_s: float = 10) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(tunnel.run)
        with anyio.fail_after(at_most_s):
            while not done():
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


async def test_a_claimed_that_changes_nothing_is_neither_stored_nor_redialled(
    tmp_path: Path,
) -> None:
    store = claimed_store(tmp_path)
    cloud = ScriptedCloud({OLD}, lambda _n: protocol.Claimed(gateway_id=GATEWAY_ID, credential=OLD))
    sleeps: list[float] = []
    async with running(cloud):
        tunnel = tunnel_to(cloud, store, sleeps)
        async with anyio.create_task_group() as tg:
            tg.start_soon(tunnel.run)
            with anyio.fail_after(10):
                while tunnel.state != "connected":
                    await anyio.sleep(0.01)
            await anyio.sleep(0.5)  # the claimed frame has come and gone
            assert tunnel.state == "connected"
            tg.cancel_scope.cancel()
    store.close()
    assert cloud.sessions == [OLD]
    assert sleeps == []


async def test_a_cloud_sending_claimed_in_every_session_meets_the_backoff(tmp_path: Path) -> None:
    """It got a redial at once after every welcome: 73 sessions a second, an fsync each."""
    store = claimed_store(tmp_path)
    rotated = [f"credential-new-{n:04d}" for n in range(1, 50)]
    cloud = ScriptedCloud(
        {OLD, *rotated},
        lambda n: protocol.Claimed(gateway_id=GATEWAY_ID, credential=rotated[n - 1]),
    )
    sleeps: list[float] = []
    async with running(cloud):
        tunnel = tunnel_to(cloud, store, sleeps)
        await run_until(tunnel, lambda: len(cloud.sessions) >= 6)
    store.close()
    assert cloud.sessions[:2] == [OLD, rotated[0]]  # the first rotation: redialled at once
    assert len(sleeps) >= 4  # every later one within 10 s of it: after a backoff


async def test_a_rotated_credential_the_cloud_refuses_gives_the_previous_one_back(
    tmp_path: Path,
) -> None:
    """The gateway overwrote its credential, got 401 with the new one, and unclaimed itself
    with a new token: a box a cloud's lost rotation had to be claimed again by hand."""
    store = claimed_store(tmp_path)
    cloud = ScriptedCloud(
        {OLD},
        lambda n: (
            protocol.Claimed(gateway_id=GATEWAY_ID, credential="credential-lost-1")
            if n == 1
            else None
        ),
    )
    sleeps: list[float] = []
    with capture_logs() as logs:
        async with running(cloud):
            tunnel = tunnel_to(cloud, store, sleeps)
            await run_until(
                tunnel, lambda: len(cloud.sessions) == 2 and tunnel.state == "connected"
            )
    ident = store.identity()
    store.close()
    assert cloud.refused == ["credential-lost-1"]
    assert cloud.sessions == [OLD, OLD]
    assert (ident.claimed, ident.gateway_id, ident.credential) == (True, GATEWAY_ID, OLD)
    events = [e["event"] for e in logs]
    assert "tunnel.rotated_credential_rejected" in events
    assert "tunnel.credential_rejected" not in events
    assert all("credential-lost-1" not in str(e) and OLD not in str(e) for e in logs)


async def test_a_rotation_to_another_gateway_id_is_refused(tmp_path: Path) -> None:
    store = claimed_store(tmp_path)
    cloud = ScriptedCloud(
        {OLD}, lambda _n: protocol.Claimed(gateway_id="gw-someone-else", credential="credential-x")
    )
    sleeps: list[float] = []
    async with running(cloud):
        tunnel = tunnel_to(cloud, store, sleeps)
        await run_until(tunnel, lambda: tunnel.frames_skipped == 1)
    ident = store.identity()
    store.close()
    assert (ident.gateway_id, ident.credential) == (GATEWAY_ID, OLD)
    assert cloud.sessions == [OLD]


@pytest.mark.parametrize(
    "gateway_id", ["", "g" * 129, "gw-1\nWATCHDOG=trigger", "gw-1\x1b[2J", "-gw", "gw 1"]
)
def test_a_claimed_gateway_id_must_be_1_to_128_characters(gateway_id: str) -> None:
    frame = protocol.encode(protocol.Claimed(gateway_id=gateway_id, credential=OLD))
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(frame)


async def test_an_unclaimed_session_takes_no_ack_from_its_welcome(tmp_path: Path) -> None:
    """The welcome of an unclaimed session acked the outbox: frames from before the claim
    (door events, statuses) that no cloud held were dropped, never sent after the claim."""
    store = Store.open(tmp_path / "gatewayd.db")
    for _ in range(3):
        store.outbox_put(
            lambda seq: protocol.encode(protocol.DeviceRemovedMsg(seq=seq, device_id=f"d-{seq}"))
        )
    assert store.flush()
    store.close()
    store = Store.open(tmp_path / "gatewayd.db")  # the frames are from before this run
    new = "credential-new-0001"
    cloud = ScriptedCloud(
        {"", new},
        lambda n: protocol.Claimed(gateway_id=GATEWAY_ID, credential=new) if n == 1 else None,
    )
    cloud.acked_seq[1] = 10  # past every frame the gateway holds
    sleeps: list[float] = []
    async with running(cloud):
        tunnel = tunnel_to(cloud, store, sleeps)
        with capture_logs() as logs:
            await run_until(
                tunnel,
                # all three sent, or none left to send in the claimed session (they were dropped)
                lambda: (
                    len(cloud.received) >= 3
                    or (tunnel.state == "connected" and store.outbox_backlog() == 0)
                ),
            )
    store.close()
    assert cloud.sessions == ["", new]
    assert [m.seq for m in cloud.received if isinstance(m, protocol.DeviceRemovedMsg)] == [1, 2, 3]
    (ignored,) = [e for e in logs if e["event"] == "tunnel.unclaimed_welcome_ignored"]
    assert ignored["acked_seq"] == 10
