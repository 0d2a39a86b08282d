"""The tunnel against real peers: revocation, rotation, a hostile cloud, a dead link, and TLS."""

from __future__ import annotations

import json
import shutil
import sqlite3
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import trustme
from aiohttp import web
from structlog.testing import capture_logs

from devcloud.app import create_app
from devcloud.settings import Settings
from gatewayd import protocol
from gatewayd.daemon import Daemon
from gatewayd.driver import Simulation
from gatewayd.model import utcnow
from gatewayd.store import Store
from gatewayd.tunnel import Tunnel
from tests.cloudkit import API_KEY
from tests.e2e.conftest import CloudFactory, claim, tunnel_url, wait_action
from tests.proxy import FaultProxy
from tests.support import TunnelServer, free_port, running_daemon, wait_until

pytestmark = pytest.mark.stack


async def upgrade_status(url: str, credential: str) -> int:
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {credential}"})
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


async def test_revoked_credential_returns_the_gateway_to_unclaimed(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    cloud = await cloud_factory()
    url = tunnel_url(cloud.server.port)
    async with running_daemon(tmp_path / "gw", cloud_url=url) as daemon:
        store, tunnel = daemon.store, daemon.tunnel
        assert store is not None
        assert tunnel is not None
        _, gateway_id = await claim(cloud, daemon)
        old = store.identity()
        assert old.credential is not None
        status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/revoke_credential")
        assert status == 200
        await wait_until(lambda: not store.identity().claimed and tunnel.state == "unclaimed", 15)
        fresh = store.identity()
        assert fresh.registration_token != old.registration_token
        assert await upgrade_status(url, old.credential) == 401
        # and it can be claimed again with its new token
        await claim(cloud, daemon)
        assert store.identity().gateway_id is not None


async def test_a_gateway_claimed_again_after_a_revoke_keeps_its_locks(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """Claimed again after a revoke, the box is a new gateway to the cloud. Its locks stayed
    under the revoked one: not listed under the new gateway, every lock/unlock answered
    `gateway_failure` (its gateway offline), and each door event dropped as `foreign_device`.
    The gateway now reports its devices again on a claim, and the cloud moves a revoked
    gateway's devices to the gateway that reports them."""
    cloud = await cloud_factory()
    db = cloud.state.db
    async with running_daemon(tmp_path / "gw", cloud_url=tunnel_url(cloud.server.port)) as daemon:
        store, tunnel, registry = daemon.store, daemon.tunnel, daemon.registry
        assert store is not None
        assert tunnel is not None
        assert registry is not None
        _, old_id = await claim(cloud, daemon)
        locks = sorted(d.id for d in registry.devices())
        assert len(locks) == 2

        def listed(gateway_id: str) -> list[str]:
            return sorted(d["id"] for d in db.devices(gateway_id))

        await wait_until(lambda: listed(old_id) == locks, 15)
        status, _ = await cloud.post(f"/v1/gateways/{old_id}/actions/revoke_credential")
        assert status == 200
        await wait_until(lambda: not store.identity().claimed and tunnel.state == "unclaimed", 15)
        _, new_id = await claim(cloud, daemon)
        assert new_id != old_id
        await wait_until(lambda: listed(new_id) == locks, 15)
        assert listed(old_id) == []
        shown = await cloud.get(f"/v1/gateways/{new_id}")
        assert sorted(d["id"] for d in shown["devices"]) == locks
        status, ar = await cloud.post(f"/v1/devices/{locks[0]}/actions/unlock", {})
        assert status == 200, ar
        done = await wait_action(cloud, ar["id"])
        assert done["status"] == "completed", done
        await registry.drivers["sim"].simulate(locks[1], Simulation.MANUAL_LOCK, {})

        def manual_events() -> list[str]:
            return [
                e["event_name"]
                for e in db.events(locks[1], None, None, 100)
                if e["details"].get("method") == "manual"
            ]

        await wait_until(lambda: manual_events() == ["door locked"], 15)


@asynccontextmanager
async def proxied_daemon(
    tmp_path: Path, cloud: Any
) -> AsyncIterator[tuple[Daemon, Store, Tunnel, FaultProxy]]:
    """A daemon whose tunnel reaches `cloud` through a FaultProxy; its store, tunnel, proxy."""
    proxy = await FaultProxy(cloud.server.port).start()
    try:
        async with running_daemon(tmp_path / "gw", cloud_url=tunnel_url(proxy.port)) as daemon:
            store, tunnel = daemon.store, daemon.tunnel
            assert store is not None
            assert tunnel is not None
            yield daemon, store, tunnel, proxy
    finally:
        await proxy.close()


@contextmanager
def store_locked(path: Path) -> Iterator[None]:
    """Another connection holds the database under BEGIN EXCLUSIVE: every write fails."""
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


async def _register(cloud: Any, daemon: Daemon) -> str:
    """POST register_gateway for the daemon's token; the gateway id (the claim may not land)."""
    assert daemon.store is not None
    location_id = await cloud.location()
    status, gateway = await cloud.post(
        f"/v1/locations/{location_id}/register_gateway",
        {"registration_token": daemon.store.identity().registration_token, "name": "gw"},
    )
    assert status == 200, gateway
    return str(gateway["id"])


async def _unlock_completes(cloud: Any, daemon: Daemon) -> None:
    assert daemon.registry is not None
    assert daemon.store is not None
    store = daemon.store
    await wait_until(lambda: store.outbox_backlog() == 0, 15)  # the cloud knows the locks
    device = daemon.registry.devices()[0].id
    status, ar = await cloud.post(f"/v1/devices/{device}/actions/unlock", {})
    assert status == 200, ar
    await wait_until(lambda: cloud.state.db.action(ar["id"])["status"] == "completed", 15)


async def test_a_claimed_frame_lost_on_the_wire_is_sent_again(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """The cloud claimed the gateway, but its `claimed` frame died with the socket: the
    gateway redials with its registration token and is sent `claimed` again."""
    cloud = await cloud_factory()
    async with proxied_daemon(tmp_path, cloud) as (daemon, store, tunnel, proxy):
        await wait_until(lambda: tunnel.state == "unclaimed", 15)
        proxy.blackhole = True  # `claimed` goes nowhere
        gateway_id = await _register(cloud, daemon)
        await wait_until(lambda: proxy.dropped_down > 0, 15)  # `claimed`, swallowed
        assert not store.identity().claimed
        proxy.cut()
        proxy.blackhole = False
        await wait_until(lambda: tunnel.state == "connected", 15)
        assert store.identity().gateway_id == gateway_id
        await _unlock_completes(cloud, daemon)


async def test_a_claim_the_store_cannot_write_is_taken_when_sent_again(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """The store refuses the claim (here: another connection holds the database locked):
    the session ends instead of the daemon, and the claim sent again is stored."""
    cloud = await cloud_factory()
    async with running_daemon(tmp_path / "gw", cloud_url=tunnel_url(cloud.server.port)) as daemon:
        store, tunnel = daemon.store, daemon.tunnel
        assert store is not None
        assert tunnel is not None
        await wait_until(lambda: tunnel.state == "unclaimed", 15)
        with store_locked(store.path):
            gateway_id = await _register(cloud, daemon)
            await wait_until(lambda: "could not store the claim" in (tunnel.last_error or ""))
            assert not store.identity().claimed
        await wait_until(lambda: tunnel.state == "connected", 15)
        assert store.identity().gateway_id == gateway_id
        await _unlock_completes(cloud, daemon)


async def test_a_revocation_the_store_cannot_record_is_recorded_at_the_next_refusal(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """The cloud revoked the credential but the store refuses the new registration token (here:
    another connection holds the database locked): the gateway keeps its identity, /status
    says why, and the next 401 once the store writes again takes the new token."""
    cloud = await cloud_factory()
    async with running_daemon(tmp_path / "gw", cloud_url=tunnel_url(cloud.server.port)) as daemon:
        store, tunnel = daemon.store, daemon.tunnel
        assert store is not None
        assert tunnel is not None
        _, gateway_id = await claim(cloud, daemon)
        old = store.identity()
        with store_locked(store.path):
            status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/revoke_credential")
            assert status == 200
            await wait_until(lambda: "could not be stored" in (tunnel.last_error or ""), 15)
            assert "401" in (tunnel.last_error or "")
            assert "could not be stored" in str(daemon.snapshot()["tunnel"])
            assert store.identity() == old
            sessions = tunnel.sessions
            await wait_until(lambda: tunnel.sessions > sessions, 15)  # it goes on dialling
            assert store.identity() == old
        await wait_until(lambda: not store.identity().claimed and tunnel.state == "unclaimed", 30)
        assert store.identity().registration_token != old.registration_token
        await claim(cloud, daemon)
        await _unlock_completes(cloud, daemon)


async def test_an_identity_the_store_cannot_read_fails_the_session_not_the_daemon(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """A real SQLite error where the tunnel reads the identity to dial (here: the table is
    gone): each dial fails and says so, the daemon and its tunnel go on, and once the store
    answers again the gateway reconnects as itself."""
    cloud = await cloud_factory()
    async with proxied_daemon(tmp_path, cloud) as (daemon, store, tunnel, proxy):
        _, gateway_id = await claim(cloud, daemon)
        other = sqlite3.connect(store.path, isolation_level=None)
        try:
            other.execute("ALTER TABLE identity RENAME TO identity_away")
            sessions = tunnel.sessions
            proxy.cut()
            await wait_until(lambda: "no such table" in (tunnel.last_error or ""), 15)
            assert (tunnel.last_error or "").startswith("store: OperationalError")
            await wait_until(lambda: tunnel.sessions > sessions + 1, 15)  # dials again
        finally:
            other.execute("ALTER TABLE identity_away RENAME TO identity")
            other.close()
        await wait_until(lambda: tunnel.state == "connected", 30)
        assert store.identity().gateway_id == gateway_id
        await _unlock_completes(cloud, daemon)


async def test_an_expired_registration_token_is_renewed_and_the_new_one_claims(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """Nobody claimed the box within the token's lifetime: the cloud closes the session and
    refuses the token; the gateway takes a new one instead of staying unclaimable."""
    cloud = await cloud_factory(token_ttl_s=3.0)
    async with running_daemon(tmp_path / "gw", cloud_url=tunnel_url(cloud.server.port)) as daemon:
        store, tunnel = daemon.store, daemon.tunnel
        assert store is not None
        assert tunnel is not None
        await wait_until(lambda: tunnel.state == "unclaimed", 15)
        old = store.identity().registration_token
        await wait_until(
            lambda: store.identity().registration_token != old and tunnel.state == "unclaimed",
            20,
        )
        _, gateway_id = await claim(cloud, daemon)
        assert store.identity().gateway_id == gateway_id
        location_id = await cloud.location()
        status, body = await cloud.post(
            f"/v1/locations/{location_id}/register_gateway",
            {"registration_token": old, "name": "again"},
        )
        assert status == 404, body


async def test_a_store_restored_from_before_its_claim_gets_a_new_token(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """A box restored from a backup taken before it was claimed comes back with a token the
    cloud already spent: refused `registration_token_used`, it takes a new one and can be
    claimed again instead of redialling with the spent one forever."""
    cloud = await cloud_factory()
    state, backup = tmp_path / "gw", tmp_path / "backup"
    url = tunnel_url(cloud.server.port)
    async with running_daemon(state, cloud_url=url) as daemon:
        assert daemon.tunnel is not None
        await wait_until(lambda: daemon.tunnel is not None and daemon.tunnel.state == "unclaimed")
    shutil.copytree(state, backup)
    async with running_daemon(state, cloud_url=url) as daemon:
        await claim(cloud, daemon)
        # connected with its credential: the cloud takes the token as spent from here on
        await wait_until(lambda: daemon.tunnel is not None and daemon.tunnel.state == "connected")
    shutil.rmtree(state)
    shutil.copytree(backup, state)
    async with running_daemon(state, cloud_url=url) as daemon:
        store, tunnel = daemon.store, daemon.tunnel
        assert store is not None
        assert tunnel is not None
        spent = store.identity().registration_token
        await wait_until(
            lambda: store.identity().registration_token != spent and tunnel.state == "unclaimed",
            20,
        )
        await claim(cloud, daemon)


@pytest.mark.parametrize("lose_frame", [False, True], ids=["delivered", "claimed-frame-lost"])
async def test_rotated_credential_replaces_the_old_one(
    tmp_path: Path, cloud_factory: CloudFactory, lose_frame: bool
) -> None:
    cloud = await cloud_factory()
    url = tunnel_url(cloud.server.port)
    async with proxied_daemon(tmp_path, cloud) as (daemon, store, tunnel, proxy):
        _, gateway_id = await claim(cloud, daemon)
        # claim() returns once the credential is stored, maybe before the redial with it: a
        # rotation needs the claimed session up (and the blackhole must not catch the redial)
        await wait_until(lambda: tunnel.state == "connected", 15)
        old = store.identity().credential
        assert old is not None
        sessions = tunnel.sessions
        proxy.blackhole = lose_frame  # the new credential goes nowhere
        status, _ = await cloud.post(f"/v1/gateways/{gateway_id}/actions/rotate_credential")
        assert status == 200
        if lose_frame:
            # the cloud wrote `claimed` before answering; wait until it reached the proxy
            await wait_until(lambda: proxy.dropped_down > 0, 15)
            assert store.identity().credential == old
            proxy.cut()
            proxy.blackhole = False
        await wait_until(
            lambda: (
                store.identity().credential != old
                and tunnel.state == "connected"
                and tunnel.sessions > sessions + (1 if lose_frame else 0)
            ),
            15,
        )
        assert store.identity().gateway_id == gateway_id  # never fell back to unclaimed
        assert await upgrade_status(url, old) == 401
        new = store.identity().credential
        assert new is not None
        status, ar = await cloud.post(
            f"/v1/devices/{daemon.registry.devices()[0].id}/actions/unlock",
            {},  # type: ignore[union-attr]
        )
        assert status == 200
        await wait_until(lambda: cloud.state.db.action(ar["id"])["status"] == "completed")


class HostileCloud(TunnelServer):
    """A tunnel server that welcomes the gateway and then sends it garbage."""

    def __init__(
        self,
        acked_seq: int = 0,
        early: tuple[str, ...] = (),
        server_time: str | None = None,
        heartbeat_s: float = 60,
        before: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.before = before  # frames sent after the hello, before the welcome
        self.received: list[dict[str, Any]] = []
        self.acked_seq = acked_seq
        self.server_time = server_time  # welcome.server_time
        self.heartbeat_s = heartbeat_s
        self.early = early  # frames sent right after welcome, before anything arrived

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        await ws.receive()  # hello
        await ws.send_bytes(b"\x00\x01binary")
        for frame in self.before:
            await ws.send_str(frame)
        await ws.send_str(
            protocol.encode(
                protocol.Welcome(
                    protocol=1,
                    gateway_id="gw-h",
                    acked_seq=self.acked_seq,
                    heartbeat_s=self.heartbeat_s,
                    server_time=self.server_time,
                )
            ).decode()
        )
        for frame in self.early:
            await ws.send_str(frame)
        now = utcnow().isoformat()
        for frame in [
            "{not json",
            '{"type": "teleport", "x": 1}',
            '{"type": "ack"}',
            '{"type": "ack", "seq": -5}',
            "[" * 100_000 + "]" * 100_000,
            '{"type": "action_request", "id": "x"}',
            "x" * (200 * 1024),
            '{"type": "welcome", "protocol": 1, "gateway_id": null, "acked_seq": 0,'
            ' "heartbeat_s": 1}',
            '{"type": "action_request", "id": "bad-ts", "entity_type": "Device", "entity_id": "d",'
            ' "action": "unlock", "inputs": {}, "created_at": "yesterday", "deadline": "soon"}',
        ]:
            await ws.send_str(frame)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                body = protocol.to_dict(protocol.decode(msg.data))
                self.received.append(body)
                if "seq" in body:
                    await ws.send_str(protocol.encode(protocol.Ack(seq=body["seq"])).decode())
        del now
        return ws

    def failed(self, action_id: str) -> list[dict[str, Any]]:
        """The `failed` reports received for action `action_id`."""
        return [
            b
            for b in self.received
            if b.get("action_request_id") == action_id and b["status"] == "failed"
        ]


@asynccontextmanager
async def claimed_daemon(state_dir: Path, cloud: HostileCloud) -> AsyncIterator[Daemon]:
    """A daemon whose store says it was claimed as gw-h, connected to `cloud`."""
    pre = Store.open(state_dir / "gatewayd.db")
    pre.set_claimed("gw-h", "credential-h")
    pre.close()
    async with running_daemon(state_dir, cloud_url=tunnel_url(cloud.port)) as daemon:
        yield daemon


@asynccontextmanager
async def hostile_gateway(
    state_dir: Path, **cloud: Any
) -> AsyncIterator[tuple[HostileCloud, Daemon, Tunnel, Store]]:
    """A HostileCloud(**cloud) and a daemon claimed as gw-h connected to it."""
    hostile = HostileCloud(**cloud)
    await hostile.start()
    try:
        async with claimed_daemon(state_dir, hostile) as daemon:
            assert daemon.tunnel is not None
            assert daemon.store is not None
            yield hostile, daemon, daemon.tunnel, daemon.store
    finally:
        await hostile.close()


async def test_an_unclaimed_gateway_executes_nothing(tmp_path: Path) -> None:
    hostile = HostileCloud()
    await hostile.start()
    try:
        async with running_daemon(tmp_path / "gw", cloud_url=tunnel_url(hostile.port)) as daemon:
            tunnel = daemon.tunnel
            assert tunnel is not None
            await wait_until(lambda: tunnel.frames_skipped >= 8, 15)
            await anyio.sleep(0.3)
            assert daemon.dispatcher is not None
            assert daemon.dispatcher.counts == {}  # the action requests were not even received
            assert hostile.received == []  # and nothing went upstream before a claim
            assert tunnel.state == "unclaimed"
    finally:
        await hostile.close()


async def test_garbage_from_the_cloud_is_logged_and_skipped(tmp_path: Path) -> None:
    hostile = HostileCloud()
    await hostile.start()
    try:
        async with claimed_daemon(tmp_path / "gw", hostile) as daemon:
            tunnel = daemon.tunnel
            assert tunnel is not None
            await wait_until(lambda: tunnel.frames_skipped >= 7, 15)

            await wait_until(lambda: bool(hostile.failed("bad-ts")), 10)
            assert hostile.failed("bad-ts")[0]["error"]["type"] == "invalid_input"
            assert daemon.ready
            assert tunnel.sessions == 1  # skipped, not disconnected
    finally:
        await hostile.close()


async def test_a_welcome_acked_seq_out_of_range_is_refused_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """A cloud that claims to hold seq 2**63-1: following it (Store.rebase) would run the seqs
    out of range, so the session is refused, retried, and the outbox kept as it was."""
    async with hostile_gateway(tmp_path / "gw", acked_seq=2**63 - 1) as (
        hostile,
        daemon,
        tunnel,
        store,
    ):
        await wait_until(lambda: tunnel.sessions >= 2, 15)  # refused, and tried again
        assert "beyond any gateway's" in (tunnel.last_error or "")
        assert store.acked_seq == 0
        assert store.outbox_backlog() >= 2  # the two sim locks' device frames, kept
        assert hostile.received == []
        assert daemon.ready


@pytest.mark.parametrize(
    "credential", ["x\r\nX-Injected: 1", "trailing-newline\n", "", "a b", "é" * 20, "x" * 5000]
)
async def test_a_claimed_frame_with_an_unusable_credential_is_skipped(
    tmp_path: Path, credential: str
) -> None:
    """A credential goes into the upgrade's Authorization header. One that is no bearer
    token (a CR LF in it made aiohttp raise ValueError at the next dial, which took the daemon
    down, at every restart) is refused like any invalid frame: the old credential is kept."""
    claimed = json.dumps({"type": "claimed", "gateway_id": "gw-evil", "credential": credential})
    async with hostile_gateway(tmp_path / "gw", early=(claimed,)) as (_, _, tunnel, store):
        await wait_until(lambda: tunnel.frames_skipped >= 1 and store.outbox_backlog() == 0)
        ident = store.identity()
        assert (ident.gateway_id, ident.credential) == ("gw-h", "credential-h")
        assert tunnel.sessions == 1
        assert tunnel.up


async def test_a_stored_credential_that_is_no_bearer_token_leaves_the_gateway_unclaimed(
    tmp_path: Path,
) -> None:
    """A credential in the store that could never authenticate (written before the protocol
    checked it, or edited by hand) is treated as refused: the gateway goes back to
    unclaimed with a new registration token instead of failing at every dial."""
    state = tmp_path / "gw"
    state.mkdir(mode=0o700)
    pre = Store.open(state / "gatewayd.db")
    pre.set_claimed("gw-h", "bad\r\ncredential")
    old_token = pre.identity().registration_token
    pre.close()
    hostile = HostileCloud()
    await hostile.start()
    try:
        async with running_daemon(state, cloud_url=tunnel_url(hostile.port)) as daemon:
            tunnel, store = daemon.tunnel, daemon.store
            assert tunnel is not None
            assert store is not None
            await wait_until(lambda: tunnel.state == "unclaimed", 15)
            ident = store.identity()
            assert not ident.claimed
            assert ident.registration_token != old_token
            assert tunnel.sessions == 2  # the refused dial, then the unclaimed session
    finally:
        await hostile.close()


async def test_a_cloud_clock_at_the_end_of_the_calendar_fails_requests_not_the_daemon(
    tmp_path: Path,
) -> None:
    """welcome.server_time 9999-12-31T23:59:59.999999Z: reading a request's deadline on that clock
    overflowed datetime, which took the daemon down. The request is failed instead."""
    now = utcnow()
    request = {
        "type": "action_request",
        "id": "ar-end-of-time",
        "entity_type": "Device",
        "entity_id": "nowhere",
        "action": "unlock",
        "inputs": {},
        "created_at": now.isoformat(),
        "deadline": (now + timedelta(seconds=30)).isoformat(),
    }
    end_of_time = "9999-12-31T23:59:59.999999Z"
    early = (json.dumps(request),)
    async with hostile_gateway(tmp_path / "gw", early=early, server_time=end_of_time) as (
        hostile,
        _,
        tunnel,
        _,
    ):
        await wait_until(lambda: bool(hostile.failed("ar-end-of-time")), 15)
        assert hostile.failed("ar-end-of-time")[0]["error"]["type"] == "invalid_input"
        assert tunnel.up


async def test_a_deadline_offset_past_the_end_of_the_calendar_fails_the_request_not_the_daemon(
    tmp_path: Path,
) -> None:
    """`9999-12-31T23:59:59-05:00` is ISO-8601, but in UTC it falls in the year 10000: putting
    it on UTC raised OverflowError, which took the tunnel, and the daemon with it, down (again
    at each restart, while the cloud kept sending it). It is failed as an unreadable time."""
    request = {
        "type": "action_request",
        "id": "ar-year-10000",
        "entity_type": "Device",
        "entity_id": "nowhere",
        "action": "unlock",
        "inputs": {},
        "created_at": utcnow().isoformat(),
        "deadline": "9999-12-31T23:59:59.000-05:00",
    }
    async with hostile_gateway(tmp_path / "gw", early=(json.dumps(request),)) as (
        hostile,
        daemon,
        tunnel,
        _,
    ):
        await wait_until(lambda: bool(hostile.failed("ar-year-10000")), 15)
        assert hostile.failed("ar-year-10000")[0]["error"]["type"] == "invalid_input"
        assert tunnel.up
        assert tunnel.sessions == 1
        assert daemon.ready


async def test_a_failure_that_would_quote_the_request_at_length_still_goes_upstream(
    tmp_path: Path,
) -> None:
    """A legal request frame (under 64 KiB) with 5,700 unknown inputs: its `failed` report,
    naming each one, came to 143 KB and could not be encoded. The report was lost, the action
    stayed `gateway_received` in the cloud, the session ended, and the seq the report had
    taken left a gap the send loop spun on for good, freezing the daemon. The report now
    names the first 20 and counts the rest; the session and the seqs go on."""
    request = {
        "type": "action_request",
        "id": "ar-many-inputs",
        "entity_type": "Gateway",
        "entity_id": "gw-h",
        "action": "pair_devices",
        "inputs": {"duration": 30} | {f"k{i:05d}": 0 for i in range(5700)},
        "created_at": utcnow().isoformat(),
        "deadline": (utcnow() + timedelta(seconds=30)).isoformat(),
    }
    frame = json.dumps(request, separators=(",", ":"))
    assert len(frame) < protocol.MAX_FRAME_BYTES
    async with hostile_gateway(tmp_path / "gw", early=(frame,)) as (hostile, daemon, tunnel, store):
        await wait_until(lambda: bool(hostile.failed("ar-many-inputs")), 15)
        error = hostile.failed("ar-many-inputs")[0]["error"]
        assert error["type"] == "invalid_input"
        assert len(error["validation_errors"]) == 21
        assert error["validation_errors"]["…"] == "and 5680 more"
        sim = daemon.registry.drivers["sim"]  # type: ignore[union-attr]
        await sim.simulate(sim.devices()[0].id, Simulation.MANUAL_UNLOCK, {})
        await wait_until(
            lambda: (
                any(b["type"] == "event" for b in hostile.received) and store.outbox_backlog() == 0
            ),
            15,
        )
        seqs = [b["seq"] for b in hostile.received if "seq" in b]
        assert seqs == list(range(1, len(seqs) + 1))  # every frame, in order, no gap
        assert tunnel.sessions == 1
        assert daemon.ready


@pytest.mark.parametrize(("announced", "used"), [(1e-9, 1.0), (1e308, 3600.0), (-5, 60.0)])
async def test_a_heartbeat_out_of_bounds_is_brought_within_them(
    tmp_path: Path, announced: float, used: float
) -> None:
    """1e-9 s had the link called dead at once, in a loop; 1e308 s would never call a dead
    link dead."""
    async with hostile_gateway(tmp_path / "gw", heartbeat_s=announced) as (_, _, tunnel, store):
        await wait_until(lambda: store.outbox_backlog() == 0 and tunnel.up)
        await anyio.sleep(0.3)
        assert tunnel.heartbeat_s == used
        assert tunnel.sessions == 1


@pytest.mark.timeout(60)  # before the fix the send loop spun without yielding: a frozen loop
async def test_an_ack_beyond_what_was_sent_drops_nothing_unsent(tmp_path: Path) -> None:
    """A cloud that acks seq 1,000,000 before it has been sent anything: the frames the
    gateway had committed are still sent, each once, and the daemon goes on working."""
    state = tmp_path / "gw"
    state.mkdir(mode=0o700)
    pre = Store.open(state / "gatewayd.db")
    for n in range(5):  # committed before the session: nothing of them has been sent
        pre.outbox_put(
            lambda seq, n=n: protocol.encode(
                protocol.DeviceRemovedMsg(seq=seq, device_id=f"gone-{n}")
            )
        )
    pre.close()
    early = ('{"type": "ack", "seq": 1000000}',)
    async with hostile_gateway(state, early=early) as (hostile, daemon, _, store):
        await wait_until(lambda: store.outbox_backlog() == 0 and daemon.ready, 15)
        seqs = [body["seq"] for body in hostile.received if "seq" in body]
        assert seqs == list(range(1, len(seqs) + 1))
        removed = [b["device_id"] for b in hostile.received if b["type"] == "device_removed"]
        assert removed == [f"gone-{n}" for n in range(5)]
        assert store.acked_seq == len(seqs) >= 7  # and the two sim locks' device frames


async def test_a_dead_link_is_detected_by_the_heartbeat(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    # 2 s, not the 1 s minimum: a ping's pong then has 0.75 s to come back, and a loaded CI box
    # that stalls the event loop (cloud, proxy and daemon share it) does not end the session
    cloud = await cloud_factory(heartbeat_s=2.0)
    async with proxied_daemon(tmp_path, cloud) as (daemon, _, tunnel, proxy):
        await claim(cloud, daemon)
        assert tunnel.heartbeat_s == 2.0
        session, since = tunnel.sessions, tunnel.connected_since
        assert since is not None
        # idle but alive for 2.5 heartbeats, timed from the session's start: pings keep it up
        await wait_until(
            lambda: tunnel.connected_since != since or utcnow() - since >= timedelta(seconds=5),
            15,
        )
        assert (tunnel.sessions, tunnel.connected_since) == (session, since)
        assert tunnel.up
        proxy.blackhole = True  # the link silently stops carrying anything
        await wait_until(lambda: not tunnel.up, 5)
        assert tunnel.last_error is not None
        proxy.blackhole = False
        await wait_until(lambda: tunnel.up, 15)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def tls_cloud(tmp_path: Path, cert: trustme.LeafCert) -> tuple[web.AppRunner, int]:
    settings = Settings(api_key=API_KEY, db_path=str(tmp_path / "tls.db"))
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    return runner, port


@pytest.mark.parametrize(
    ("scheme", "names", "valid_from_days", "trusted", "ok", "error"),
    [
        ("wss", ("localhost",), -1, True, True, None),
        ("wss", ("localhost",), -1, False, False, "CERTIFICATE_VERIFY_FAILED"),
        ("wss", ("cloud.example.org",), -1, True, False, "match"),
        # as a box with a clock a day slow, or two years fast, sees a good certificate
        ("wss", ("localhost",), 1, True, False, "certificate is not valid yet by this box's clock"),
        ("wss", ("localhost",), -800, True, False, "certificate has expired by this box's clock"),
        # schemes are case-insensitive (check-config took WSS:// as wss): the tunnel looked for
        # a lowercase "wss://", found none, and dialled TLS with verification off
        ("WSS", ("localhost",), -1, False, False, "CERTIFICATE_VERIFY_FAILED"),
        ("Wss", ("localhost",), -1, False, False, "CERTIFICATE_VERIFY_FAILED"),
    ],
    ids=[
        "trusted",
        "untrusted-ca",
        "hostname-mismatch",
        "clock-behind",
        "clock-ahead",
        "untrusted-ca-WSS",
        "untrusted-ca-Wss",
    ],
)
async def test_tls_certificates_are_verified(
    tmp_path: Path,
    ca: trustme.CA,
    scheme: str,
    names: tuple[str, ...],
    valid_from_days: int,
    trusted: bool,
    ok: bool,
    error: str | None,
) -> None:
    start = datetime.now(UTC) + timedelta(days=valid_from_days)
    cert = ca.issue_cert(*names, not_before=start, not_after=start + timedelta(days=365))
    runner, port = await tls_cloud(tmp_path, cert)
    ca_file = tmp_path / "ca.pem"
    (ca if trusted else trustme.CA()).cert_pem.write_to_path(str(ca_file))
    try:
        async with running_daemon(
            tmp_path / "gw",
            cloud_url=f"{scheme}://localhost:{port}/v1/gateway/tunnel",
            extra="",
            cloud_ca_file=str(ca_file),
        ) as daemon:
            tunnel = daemon.tunnel
            assert tunnel is not None
            if ok:
                await wait_until(lambda: tunnel.up, 10)
                assert tunnel.state == "unclaimed"
            else:
                await wait_until(lambda: tunnel.last_error is not None or tunnel.up, 10)
                assert error is not None
                assert error in tunnel.last_error
                assert not tunnel.up
    finally:
        await runner.cleanup()


class RefusingCloud(TunnelServer):
    """Answers every hello with an `error` frame of the largest size a frame may have."""

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # hello
        refusal = protocol.ErrorMsg(code="c" * 1000, message="m" * 60_000)
        await ws.send_str(protocol.encode(refusal).decode())
        await ws.close()
        return ws


async def test_a_refusal_at_the_hello_is_clipped_on_status_and_in_the_log(tmp_path: Path) -> None:
    """A cloud's `error` answer to the hello went whole (61 KB here) into `last_error` on
    /status and into each dial's log line, on every retry. An error after the welcome was
    already clipped to 200 characters; so is this one now."""
    cloud = await RefusingCloud().start()
    try:
        with capture_logs() as logs:
            async with claimed_daemon(tmp_path / "gw", cloud) as daemon:
                tunnel = daemon.tunnel
                assert tunnel is not None
                await wait_until(lambda: "cloud refused" in (tunnel.last_error or ""), 15)
                error = tunnel.last_error or ""
                assert error.startswith("CloudRefused: cloud refused: ccc")
                assert "mmm" in error
                assert len(error) < 400
                assert daemon.snapshot()["tunnel"]["last_error"] == error
    finally:
        await cloud.close()
    logged = [e["error"] for e in logs if e["event"] == "tunnel.disconnected"]
    assert any("cloud refused" in line for line in logged)
    assert all(len(line) < 400 for line in logged)


async def test_a_frame_of_a_newer_type_before_the_welcome_is_skipped(tmp_path: Path) -> None:
    """A newer cloud that sends a frame of a type this gateway does not know before its
    welcome: skipped, as after the welcome. Before, it ended every session at the hello, and
    the gateway never connected again until it was upgraded."""
    notice = json.dumps({"type": "maintenance_notice", "text": "back at 3"})
    async with hostile_gateway(tmp_path / "gw", before=(notice,)) as (hostile, _, tunnel, store):
        await wait_until(lambda: store.outbox_backlog() == 0 and len(hostile.received) >= 2, 15)
        assert tunnel.sessions == 1
        assert tunnel.up
        assert tunnel.frames_skipped >= 1


async def test_a_malformed_welcome_still_ends_the_session(tmp_path: Path) -> None:
    """What is skipped before the welcome is a frame of an unknown type only: a welcome with
    a field of the wrong type is still refused at once, named on /status."""
    bad = json.dumps({"type": "welcome", "protocol": 1, "gateway_id": 7, "acked_seq": "x"})
    async with hostile_gateway(tmp_path / "gw", before=(bad,)) as (hostile, _, tunnel, _s):
        await wait_until(lambda: (tunnel.last_error or "").startswith("protocol: "), 15)
        assert hostile.received == []


async def test_why_the_cloud_closed_a_session_is_what_status_shows(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """After its welcome the cloud says why it ends a session in an `error` frame, then closes
    (here: another box dialled with this gateway's credential). The close that follows replaced
    that reason on /status and in the log with "tunnel closed (code 1008)"."""
    cloud = await cloud_factory()
    url = tunnel_url(cloud.server.port)
    async with running_daemon(tmp_path / "gw", cloud_url=url) as daemon:
        store, tunnel = daemon.store, daemon.tunnel
        assert store is not None
        assert tunnel is not None
        await claim(cloud, daemon)
        await wait_until(lambda: tunnel.state == "connected", 15)
        credential = store.identity().credential
        assert credential is not None
        sessions = tunnel.sessions
        with capture_logs() as logs:
            async with aiohttp.ClientSession() as http:
                headers = {"Authorization": f"Bearer {credential}"}
                async with http.ws_connect(url, headers=headers) as other:
                    hello = protocol.Hello(
                        protocol=1, software_version="0", hardware="clone", drivers=[]
                    )
                    await other.send_str(protocol.encode(hello).decode())
                    welcome = protocol.decode((await other.receive()).data)
                    assert isinstance(welcome, protocol.Welcome)
                    await wait_until(lambda: tunnel.sessions > sessions, 15)
        ended = [e["error"] for e in logs if e["event"] == "tunnel.disconnected"]
        assert ended, logs
        assert "replaced: a newer connection took over" in ended[0]
        await wait_until(lambda: tunnel.state == "connected", 15)  # and it takes over again
