"""Tunnel benchmarks, all on loopback in one run and one process (one event loop):

  (a) baseline: raw aiohttp websocket echo RTT, client and server as in (b)
  (b) full loop: 2,000 sequential unlocks timed at the cloud end, from its send of
      `action_request` to its receipt of `action_status completed`, through a real Daemon +
      Tunnel, the on-disk store and a zero-latency sim driver
  (c) pipelined: N action requests sent without waiting; completions/s seen by the cloud
  (d) outbox drain: 100,000 frames committed while disconnected, then connect; time until the
      gateway's store holds the cloud's ack of the last one
  (e) idle traffic: bytes through a counting loopback TCP proxy while nothing happens, with a
      short heartbeat, scaled linearly to the default 60 s heartbeat (every idle byte is
      heartbeat-driven and every heartbeat timer is proportional to heartbeat_s)

The cloud end is a small protocol server here: hello -> welcome, cumulative acks (coalesced to
one per loop turn), action requests on demand. Run: .venv/bin/python -m bench.tunnel
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from aiohttp import WSMsgType, web

from bench.common import Figure, pct, peak_rss_mib, print_figures, quiet_logs, write_results
from gatewayd import protocol
from gatewayd.config import parse_config
from gatewayd.daemon import Daemon
from gatewayd.model import DoorEvent, EventName, iso, utcnow
from gatewayd.store import Store
from gatewayd.upstream import Upstream

ECHO_ROUNDS = 2_000
LOOP_ROUNDS = 2_000
PIPELINED = 10_000
BACKLOG = 100_000
IDLE_WINDOW_S = 30.0
IDLE_HEARTBEAT_S = 2.0
DEFAULT_HEARTBEAT_S = 60.0  # devcloud's default, announced in `welcome`
LOCKS = 50
TCP_OVERHEAD = 66  # Ethernet 14 + IPv4 20 + TCP 20 + timestamps 12, per segment

TARGET_LOOP_RATIO = 3.0
TARGET_PIPELINED = 5_000.0
TARGET_DRAIN = 20_000.0
TARGET_IDLE_KB_H = 50.0

GATEWAY_ID = "gw-bench"
CREDENTIAL = "bench-credential"


# --------------------------------------------------------------------------- cloud end


class Cloud:
    """The tunnel's server end, enough of it for the benchmarks."""

    def __init__(self, heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> None:
        self.heartbeat_s = heartbeat_s
        self.high = 0  # highest gateway seq held
        self.ws: web.WebSocketResponse | None = None
        self.connected = anyio.Event()
        self.devices: list[str] = []
        self.sent_at: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self.statuses: dict[str, str] = {}
        self.on_done: Callable[[str], None] = lambda _id: None
        self.frames_in = 0
        self._ack_wanted = asyncio.Event()
        self._n = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/gateway/tunnel", self._tunnel)
        app.router.add_get("/echo", _echo)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _tunnel(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {CREDENTIAL}":
            return web.Response(status=401)
        ws = web.WebSocketResponse(heartbeat=self.heartbeat_s, max_msg_size=4 * 65536)
        await ws.prepare(request)
        hello = protocol.decode((await ws.receive()).data)
        assert isinstance(hello, protocol.Hello)
        welcome = protocol.Welcome(
            protocol=1, gateway_id=GATEWAY_ID, acked_seq=self.high, heartbeat_s=self.heartbeat_s
        )
        await ws.send_frame(protocol.encode(welcome), WSMsgType.TEXT)
        self.ws = ws
        self.connected.set()
        acker = asyncio.create_task(self._acker(ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._frame(msg.data)
        finally:
            acker.cancel()
            self.ws = None
            self.connected = anyio.Event()
        return ws

    def _frame(self, data: str) -> None:
        t = time.perf_counter()
        self.frames_in += 1
        frame = protocol.decode(data)
        seq = getattr(frame, "seq", None)
        if seq is not None and seq > self.high:
            self.high = seq
            self._ack_wanted.set()
        if isinstance(frame, protocol.ActionStatusMsg):
            if frame.status in ("completed", "failed"):
                self.done_at[frame.action_request_id] = t
                self.statuses[frame.action_request_id] = frame.status
                self.on_done(frame.action_request_id)
        elif isinstance(frame, protocol.DeviceMsg) and frame.device["id"] not in self.devices:
            self.devices.append(frame.device["id"])

    async def _acker(self, ws: web.WebSocketResponse) -> None:
        """One cumulative ack per loop turn, whatever arrived in it."""
        acked = 0
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted.clear()
            await asyncio.sleep(0)
            if self.high > acked:
                acked = self.high
                await ws.send_frame(protocol.encode(protocol.Ack(seq=acked)), WSMsgType.TEXT)

    async def request(self, device_id: str, action: str) -> str:
        """Send one action_request; returns its id. The send time is taken before the send."""
        assert self.ws is not None
        self._n += 1
        now = utcnow()
        msg = protocol.ActionRequestMsg(
            id=f"ar-{self._n:08d}",
            entity_type="Device",
            entity_id=device_id,
            action=action,
            inputs={},
            created_at=iso(now),
            deadline=iso(now + timedelta(seconds=120)),
        )
        data = protocol.encode(msg)
        self.sent_at[msg.id] = time.perf_counter()
        await self.ws.send_frame(data, WSMsgType.TEXT)
        return msg.id


async def _echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


# --------------------------------------------------------------------------- gateway end


def _config(state_dir: Path, port: int) -> str:
    return f"""
[gateway]
state_dir = "{state_dir}"
[cloud]
url = "ws://127.0.0.1:{port}/v1/gateway/tunnel"
connect_timeout_s = 5
[status]
listen = "127.0.0.1:0"
[log]
level = "warning"
[actions]
max_queue_per_device = 1000
[drivers.sim]
enabled = true
locks = {LOCKS}
latency_ms = 0
"""


def _claim(state_dir: Path) -> Store:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = Store.open(state_dir / "gatewayd.db")
    store.set_claimed(GATEWAY_ID, CREDENTIAL)
    return store


@asynccontextmanager
async def _daemon(state_dir: Path, port: int) -> AsyncIterator[Daemon]:
    daemon = Daemon(parse_config(_config(state_dir, port)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.wait_started()
        try:
            yield daemon
        finally:
            daemon.stop()


async def _wait(predicate: Callable[[], bool], timeout: float = 60.0, step: float = 0.001) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(step)


# --------------------------------------------------------------------------- phases


async def _echo_rtt(port: int) -> dict[str, float]:
    """(a) Raw websocket RTT with a frame the size of an action_request."""
    payload = protocol.encode(
        protocol.ActionRequestMsg(
            id="ar-00000001",
            entity_type="Device",
            entity_id="6a0e6b4e-8f5c-4c43-a5a4-2f9d2a9c1e11",
            action="unlock",
            inputs={},
            created_at=iso(utcnow()),
            deadline=iso(utcnow()),
        )
    ).decode()
    samples: list[float] = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"http://127.0.0.1:{port}/echo") as ws,
    ):
        for i in range(ECHO_ROUNDS + 100):
            t0 = time.perf_counter()
            await ws.send_str(payload)
            await ws.receive()
            if i >= 100:  # warm-up rounds are not counted
                samples.append(time.perf_counter() - t0)
    return {
        "p50_us": pct(samples, 0.5) * 1e6,
        "p99_us": pct(samples, 0.99) * 1e6,
        "bytes": len(payload),
    }


async def _full_loop(cloud: Cloud) -> dict[str, float]:
    """(b) Sequential unlocks/locks, timed at the cloud end."""
    done = anyio.Event()
    cloud.on_done = lambda _id: done.set()
    samples: list[float] = []
    failed = 0
    for i in range(LOOP_ROUNDS + 50):
        done = anyio.Event()
        device = cloud.devices[i % LOCKS]
        action_id = await cloud.request(device, "unlock" if (i // LOCKS) % 2 == 0 else "lock")
        await done.wait()
        if i >= 50:  # warm-up rounds are not counted
            samples.append(cloud.done_at[action_id] - cloud.sent_at[action_id])
            failed += cloud.statuses[action_id] != "completed"
    return {
        "p50_us": pct(samples, 0.5) * 1e6,
        "p99_us": pct(samples, 0.99) * 1e6,
        "failed": failed,
    }


async def _pipelined(cloud: Cloud) -> dict[str, float]:
    """(c) PIPELINED requests sent back to back over the 50 locks; completions/s."""
    remaining = PIPELINED
    all_done = anyio.Event()

    def one_done(_id: str) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            all_done.set()

    cloud.on_done = one_done
    ids: list[str] = []
    t0 = time.perf_counter()
    for i in range(PIPELINED):
        action = "unlock" if (i // LOCKS) % 2 == 0 else "lock"
        ids.append(await cloud.request(cloud.devices[i % LOCKS], action))
    sent = time.perf_counter() - t0
    with anyio.fail_after(300):
        await all_done.wait()
    elapsed = max(cloud.done_at[i] for i in ids) - t0
    return {
        "actions_per_s": PIPELINED / elapsed,
        "send_s": sent,
        "elapsed_s": elapsed,
        "failed": sum(cloud.statuses[i] != "completed" for i in ids),
    }


async def _fill_outbox(state_dir: Path) -> int:
    """BACKLOG door events committed to the outbox of a store no tunnel is reading."""
    store = _claim(state_dir)
    upstream = Upstream(store)
    for i in range(BACKLOG):
        upstream.event(
            DoorEvent(f"device-{i % LOCKS:04d}", EventName.DOOR_UNLOCKED, {"method": "manual"})
        )
        if i % 1000 == 999:
            await anyio.sleep(0)  # let the store commit this batch
    store.close()
    return store.committed_seq


async def _drain(state_dir: Path) -> dict[str, float]:
    """(d) Connect with BACKLOG frames waiting; time until the last is acked into the store."""
    top = await _fill_outbox(state_dir)
    cloud = Cloud()
    await cloud.start()
    try:
        async with _daemon(state_dir, cloud.port) as daemon:
            store = daemon.store
            assert store is not None
            await cloud.connected.wait()
            t0 = time.perf_counter()
            await _wait(lambda: cloud.high >= top)
            received = time.perf_counter() - t0
            await _wait(lambda: store.acked_seq >= top)
            acked = time.perf_counter() - t0
    finally:
        await cloud.close()
    return {
        "frames": top,
        "received_s": received,
        "acked_s": acked,
        "msgs_per_s": top / acked,
    }


class _CountingProxy:
    """A loopback TCP proxy that counts payload bytes and read chunks in each direction."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.bytes = {"up": 0, "down": 0}
        self.chunks = {"up": 0, "down": 0}
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def reset(self) -> None:
        self.bytes = {"up": 0, "down": 0}
        self.chunks = {"up": 0, "down": 0}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, way: str) -> None:
            try:
                while data := await src.read(65536):
                    self.bytes[way] += len(data)
                    self.chunks[way] += 1
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, "up"), pipe(up_reader, writer, "down"))


async def _idle(state_dir: Path) -> dict[str, float]:
    """(e) Idle bytes with a short heartbeat, scaled to the default heartbeat."""
    _claim(state_dir).close()
    cloud = Cloud(heartbeat_s=IDLE_HEARTBEAT_S)
    await cloud.start()
    proxy = _CountingProxy(cloud.port)
    await proxy.start()
    try:
        async with _daemon(state_dir, proxy.port):
            await cloud.connected.wait()
            await _wait(lambda: len(cloud.devices) >= LOCKS)
            await anyio.sleep(1.0)  # inventory sent and acked: from here on nothing happens
            proxy.reset()
            frames_before = cloud.frames_in
            await anyio.sleep(IDLE_WINDOW_S)
            payload = proxy.bytes["up"] + proxy.bytes["down"]
            chunks = proxy.chunks["up"] + proxy.chunks["down"]
            data_frames = cloud.frames_in - frames_before
    finally:
        await proxy.close()
        await cloud.close()
    scale = (3600.0 / IDLE_WINDOW_S) * (IDLE_HEARTBEAT_S / DEFAULT_HEARTBEAT_S)
    # Upper estimate on the wire: every payload chunk is one segment with its own headers and
    # one pure ACK segment answering it (delayed ACKs and piggybacking only make it smaller).
    wire = payload + chunks * 2 * TCP_OVERHEAD
    return {
        "window_s": IDLE_WINDOW_S,
        "heartbeat_s": IDLE_HEARTBEAT_S,
        "payload_bytes": payload,
        "segments": chunks,
        "data_frames": data_frames,
        "payload_kb_per_hour": payload * scale / 1000,
        "wire_kb_per_hour": wire * scale / 1000,
        "exchanges_per_hour": chunks / 2 * scale,  # one ping up, one pong down
    }


async def _run() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp:
        root = Path(tmp)
        cloud = Cloud()
        await cloud.start()
        try:
            out["echo"] = await _echo_rtt(cloud.port)
            _claim(root / "loop").close()
            async with _daemon(root / "loop", cloud.port):
                await cloud.connected.wait()
                await _wait(lambda: len(cloud.devices) >= LOCKS)
                out["full_loop"] = await _full_loop(cloud)
                out["pipelined"] = await _pipelined(cloud)
        finally:
            await cloud.close()
        out["drain"] = await _drain(root / "drain")
        out["idle"] = await _idle(root / "idle")
    out["peak_rss_mib"] = peak_rss_mib()
    out["pid"] = os.getpid()
    return out


def main() -> dict[str, Any]:
    quiet_logs()
    r = anyio.run(_run)
    echo, loop, pipe, drain, idle = r["echo"], r["full_loop"], r["pipelined"], r["drain"], r["idle"]
    ratio50 = loop["p50_us"] / echo["p50_us"]
    ratio99 = loop["p99_us"] / echo["p99_us"]
    figures = [
        Figure("(a) ws echo RTT p50 (baseline)", echo["p50_us"], "us"),
        Figure("(a) ws echo RTT p99 (baseline)", echo["p99_us"], "us"),
        Figure("(b) full loop p50", loop["p50_us"], "us"),
        Figure("(b) full loop p99", loop["p99_us"], "us"),
        Figure(
            "(b)/(a) at p50",
            ratio50,
            "x",
            f"<= {TARGET_LOOP_RATIO:.0f}x",
            ratio50 <= TARGET_LOOP_RATIO,
        ),
        Figure("(b)/(a) at p99", ratio99, "x"),
        Figure(
            f"(c) pipelined ({PIPELINED:,} requests)",
            pipe["actions_per_s"],
            "actions/s",
            f">= {TARGET_PIPELINED:,.0f}",
            pipe["actions_per_s"] >= TARGET_PIPELINED,
        ),
        Figure(
            f"(d) outbox drain ({drain['frames']:,} frames)",
            drain["msgs_per_s"],
            "msg/s",
            f">= {TARGET_DRAIN:,.0f}",
            drain["msgs_per_s"] >= TARGET_DRAIN,
        ),
        Figure(
            "(e) idle, wire estimate (60 s heartbeat)",
            idle["wire_kb_per_hour"],
            "KB/h",
            f"< {TARGET_IDLE_KB_H:.0f}",
            idle["wire_kb_per_hour"] < TARGET_IDLE_KB_H,
        ),
        Figure("(e) idle, websocket payload only", idle["payload_kb_per_hour"], "KB/h"),
        Figure("peak RSS (daemon + bench cloud)", r["peak_rss_mib"], "MiB"),
    ]
    failed = loop["failed"] + pipe["failed"]
    if failed:
        figures.append(Figure("actions failed", failed, "", "0", False))
    print_figures(
        "tunnel: loopback, real Daemon + Tunnel, zero-latency sim, on-disk store", figures
    )
    print(
        f"  (e) measured over {idle['window_s']:.0f} s with heartbeat {idle['heartbeat_s']} s:"
        f" {idle['payload_bytes']} payload bytes in {idle['segments']} segments,"
        f" {idle['data_frames']} protocol frames;"
        f" scaled x{DEFAULT_HEARTBEAT_S / IDLE_HEARTBEAT_S:.0f}"
        f" to heartbeat {DEFAULT_HEARTBEAT_S:.0f} s"
    )
    write_results("tunnel", figures, r)
    return r


if __name__ == "__main__":
    main()
