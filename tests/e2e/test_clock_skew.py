"""A box whose wall clock is an hour off the cloud's: deadlines follow the cloud's clock, sent in
`welcome.server_time`, so actions neither fail at once (box ahead) nor run late (box behind)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gatewayd import protocol
from gatewayd.daemon import Daemon
from gatewayd.model import iso, utcnow
from gatewayd.store import Store
from tests.cloudkit import CloudFactory, SteppedClock
from tests.e2e.conftest import claim, tunnel_url, wait_action
from tests.support import TunnelServer, running_daemon, wait_until

pytestmark = pytest.mark.stack


class SkewedCloud(TunnelServer):
    """A tunnel server whose clock reads `skew` away from this machine's: it welcomes the
    gateway with its time, acks every frame, stamps action requests on its own clock and keeps
    the statuses reported for them."""

    def __init__(
        self, skew: timedelta, send_time: bool = True, stale: timedelta = timedelta(0)
    ) -> None:
        super().__init__()
        self.skew = skew
        self.send_time = send_time
        self.stale = stale  # welcome's server_time is this much behind the cloud's clock
        self.devices: list[str] = []
        self.statuses: dict[str, list[str]] = {}
        self.errors: dict[str, dict[str, Any]] = {}
        self.stamps: list[str] = []  # `at` of every status report, `date_created` of events
        self._ws: web.WebSocketResponse | None = None

    def now(self) -> Any:
        return utcnow() + self.skew

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # hello
        welcome = protocol.Welcome(
            protocol=1,
            gateway_id="gw-skew",
            acked_seq=0,
            heartbeat_s=60,
            server_time=iso(self.now() - self.stale) if self.send_time else None,
        )
        await ws.send_str(protocol.encode(welcome).decode())
        self._ws = ws
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = protocol.decode(msg.data)
            if isinstance(frame, protocol.DeviceMsg):
                self.devices.append(frame.device["id"])
            elif isinstance(frame, protocol.EventMsg):
                self.stamps.append(frame.event["date_created"])
            elif isinstance(frame, protocol.ActionStatusMsg):
                self.stamps.append(frame.at)
                self.statuses.setdefault(frame.action_request_id, []).append(frame.status)
                if frame.error is not None:
                    self.errors[frame.action_request_id] = frame.error
            seq = getattr(frame, "seq", None)
            if seq is not None:
                await ws.send_str(protocol.encode(protocol.Ack(seq=seq)).decode())
        return ws

    async def request(self, device_id: str, action: str, timeout_s: float) -> str:
        assert self._ws is not None
        now = self.now()
        msg = protocol.ActionRequestMsg(
            id=str(uuid.uuid4()),
            entity_type="Device",
            entity_id=device_id,
            action=action,
            inputs={},
            created_at=iso(now),
            deadline=iso(now + timedelta(seconds=timeout_s)),
        )
        await self._ws.send_str(protocol.encode(msg).decode())
        return msg.id

    def ended(self, action_id: str) -> str | None:
        seen = self.statuses.get(action_id, [])
        return seen[-1] if seen and seen[-1] in ("completed", "failed") else None


@asynccontextmanager
async def _gateway(tmp_path: Path, cloud: SkewedCloud, **kw: Any) -> AsyncIterator[Daemon]:
    """A claimed daemon with two sim locks on `cloud`, once the cloud has seen both locks;
    the cloud is closed on the way out."""
    try:
        async with running_daemon(
            _claimed(tmp_path / "gw"), cloud_url=tunnel_url(cloud.port), **kw
        ) as daemon:
            await wait_until(lambda: len(cloud.devices) >= 2, 15)
            yield daemon
    finally:
        await cloud.close()


def _claimed(state_dir: Path) -> Path:
    state_dir.mkdir(mode=0o700)
    store = Store.open(state_dir / "gatewayd.db")
    store.set_claimed("gw-skew", "credential-for-the-skew-test")
    store.close()
    return state_dir


async def test_a_box_an_hour_ahead_still_runs_actions(tmp_path: Path) -> None:
    """Read on the box's clock, every deadline the cloud sets would have passed an hour ago."""
    cloud = await SkewedCloud(timedelta(hours=-1)).start()
    async with _gateway(tmp_path, cloud) as daemon:
        skew = daemon.snapshot()["tunnel"]["clock_skew_s"]  # as /status shows it
        assert abs(skew + 3600) < 5  # the cloud's clock is an hour behind this box's
        action_id = await cloud.request(cloud.devices[0], "unlock", 10)
        await wait_until(lambda: cloud.ended(action_id) is not None, 15)
    assert cloud.statuses[action_id] == ["gateway_received", "processing", "completed"]
    # what went upstream after the welcome is on the cloud's clock, not this box's
    assert len(cloud.stamps) >= 4  # three reports and the door event
    for stamp in cloud.stamps:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert abs((when - cloud.now()).total_seconds()) < 30, stamp


async def _late_behind_a_slow_one(tmp_path: Path, cloud: SkewedCloud) -> str:
    """An unlock that takes 1.5 s, then a lock due in 0.5 s queued behind it; the lock's id."""
    async with _gateway(tmp_path, cloud, latency_ms=1500):
        slow = await cloud.request(cloud.devices[0], "unlock", 10)
        await wait_until(lambda: "processing" in cloud.statuses.get(slow, []), 10)
        late = await cloud.request(cloud.devices[0], "lock", 0.5)
        await wait_until(lambda: None not in (cloud.ended(late), cloud.ended(slow)), 15)
    assert cloud.statuses[slow][-1] == "completed"
    return late


async def test_a_box_an_hour_behind_never_runs_an_action_late(tmp_path: Path) -> None:
    """Read on the box's clock, a deadline one second away would be an hour away: an action
    queued behind a slow one must still fail at its real deadline, without moving the lock."""
    cloud = await SkewedCloud(timedelta(hours=1)).start()
    late = await _late_behind_a_slow_one(tmp_path, cloud)
    assert cloud.statuses[late] == ["gateway_received", "failed"]  # never processing
    assert cloud.errors[late]["type"] == "timeout"


async def test_a_request_stamp_is_a_floor_for_the_clouds_time(tmp_path: Path) -> None:
    """Over days, a monotonic clock without NTP can fall behind the cloud's (here: a welcome
    whose time is 30 s stale stands for it); each request's `created_at` is a floor for the
    cloud's time, so a deadline is still never read later than the cloud meant."""
    cloud = await SkewedCloud(timedelta(0), stale=timedelta(seconds=30)).start()
    late = await _late_behind_a_slow_one(tmp_path, cloud)
    assert cloud.statuses[late] == ["gateway_received", "failed"]


async def test_without_the_clouds_time_the_box_trusts_its_own_clock(tmp_path: Path) -> None:
    """A cloud that sends no `server_time`: deadlines are read on the box's clock, as before."""
    cloud = await SkewedCloud(timedelta(0), send_time=False).start()
    async with _gateway(tmp_path, cloud) as daemon:
        assert daemon.snapshot()["tunnel"]["clock_skew_s"] is None
        action_id = await cloud.request(cloud.devices[1], "unlock", 10)
        await wait_until(lambda: cloud.ended(action_id) is not None, 15)
    assert cloud.statuses[action_id][-1] == "completed"


async def test_the_skew_is_logged_and_on_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud = await SkewedCloud(timedelta(minutes=-10)).start()
    async with _gateway(tmp_path, cloud) as daemon:
        snapshot = daemon.snapshot()
    assert abs(snapshot["tunnel"]["clock_skew_s"] + 600) < 5
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if "tunnel.clock_skew" in line]
    assert len(lines) == 1, lines
    assert "skew_s" in lines[0]
    assert "-600" in lines[0] or "-599" in lines[0]


async def test_the_clouds_clock_stepping_back_after_the_welcome_fails_no_action(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """devcloud's wall clock stepped back an hour (NTP) after the gateway connected: the
    gateway reads deadlines on the welcome's time carried on, so every request devcloud sent,
    stamped on the stepped clock, was an hour past its deadline and failed `timeout` until the
    gateway reconnected."""
    clock = SteppedClock()
    cloud = await cloud_factory(clock=clock)
    async with running_daemon(tmp_path / "gw", cloud_url=tunnel_url(cloud.server.port)) as daemon:
        await claim(cloud, daemon)
        await wait_until(lambda: len(cloud.state.db.devices()) == 2)
        device = cloud.state.db.devices()[0]["id"]
        assert daemon.tunnel is not None
        sessions = daemon.tunnel.sessions
        clock.step = timedelta(hours=-1)
        status, created = await cloud.post(f"/v1/devices/{device}/actions/unlock", {})
        assert status == 200, created
        done = await wait_action(cloud, created["id"])
        assert daemon.tunnel.sessions == sessions  # it did not need to redial
    assert done["status"] == "completed", done.get("error")
    # the API's timestamps are still the cloud's wall clock, stepped
    shown = datetime.fromisoformat(done["created_at"].replace("Z", "+00:00"))
    assert abs((shown - clock()).total_seconds()) < 60
