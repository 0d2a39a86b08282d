"""The tunnel's cloud end for bench/tunnel.py: enough of the server side of the protocol for the
benchmarks (hello -> welcome, cumulative acks coalesced to one per loop turn, action requests on
demand), a websocket echo endpoint, and the timed phases that run at the cloud end.

bench/tunnel.py runs it in a process of its own for the echo, full-loop and pipelined phases, as
a cloud is another machine: the gateway's figures then carry only the gateway's own work, and
each end has a core. Control endpoints (loopback only, for the benchmark):

  GET  /bench/devices    how many devices the gateway has reported
  POST /bench/full_loop  {"rounds", "warmup", "locks"}: sequential unlocks, latencies
  POST /bench/pipelined  {"count", "locks"}: requests sent back to back, completions/s

Run by bench/tunnel.py as `python -m bench.cloud_end`; it prints its port as one JSON line and
exits when its stdin closes (when the benchmark process ends, however it ends).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from datetime import timedelta

import anyio
from aiohttp import WSMsgType, web

from bench.common import pct
from gatewayd import protocol
from gatewayd.model import iso, utcnow

DEFAULT_HEARTBEAT_S = 60.0  # devcloud's default, announced in `welcome`
GATEWAY_ID = "gw-bench"
CREDENTIAL = "bench-credential"


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

    async def start(self, control: bool = False) -> None:
        """Serve on a free loopback port; `control` adds the /bench endpoints."""
        app = web.Application()
        app.router.add_get("/v1/gateway/tunnel", self._tunnel)
        app.router.add_get("/echo", _echo)
        if control:
            app.router.add_get("/bench/devices", self._devices)
            app.router.add_post("/bench/full_loop", self._full_loop)
            app.router.add_post("/bench/pipelined", self._pipelined)
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

    # ------------------------------------------------------------------ control endpoints

    async def _devices(self, _request: web.Request) -> web.Response:
        return web.json_response({"devices": len(self.devices)})

    async def _full_loop(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            await full_loop(self, int(body["rounds"]), int(body["warmup"]), int(body["locks"]))
        )

    async def _pipelined(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(await pipelined(self, int(body["count"]), int(body["locks"])))


async def _echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


def _action(i: int, locks: int) -> str:
    """Round i over `locks` locks: unlock them all, then lock them all, and so on."""
    return "unlock" if (i // locks) % 2 == 0 else "lock"


async def full_loop(cloud: Cloud, rounds: int, warmup: int, locks: int) -> dict[str, float]:
    """(b) Sequential unlocks/locks, timed at the cloud end; warm-up rounds are not counted."""
    done = anyio.Event()
    cloud.on_done = lambda _id: done.set()
    samples: list[float] = []
    failed = 0
    for i in range(rounds + warmup):
        done = anyio.Event()
        device = cloud.devices[i % locks]
        action_id = await cloud.request(device, _action(i, locks))
        await done.wait()
        if i >= warmup:
            samples.append(cloud.done_at[action_id] - cloud.sent_at[action_id])
            failed += cloud.statuses[action_id] != "completed"
    return {
        "p50_us": pct(samples, 0.5) * 1e6,
        "p99_us": pct(samples, 0.99) * 1e6,
        "failed": failed,
    }


async def pipelined(cloud: Cloud, count: int, locks: int) -> dict[str, float]:
    """(c) `count` requests sent back to back over `locks` locks; completions/s."""
    remaining = count
    all_done = anyio.Event()

    def one_done(_id: str) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            all_done.set()

    cloud.on_done = one_done
    ids: list[str] = []
    t0 = time.perf_counter()
    for i in range(count):
        ids.append(await cloud.request(cloud.devices[i % locks], _action(i, locks)))
    sent = time.perf_counter() - t0
    with anyio.fail_after(300):
        await all_done.wait()
    elapsed = max(cloud.done_at[i] for i in ids) - t0
    return {
        "actions_per_s": count / elapsed,
        "send_s": sent,
        "elapsed_s": elapsed,
        "failed": sum(cloud.statuses[i] != "completed" for i in ids),
    }


async def _serve() -> None:
    cloud = Cloud()
    await cloud.start(control=True)
    print(json.dumps({"port": cloud.port}), flush=True)
    try:
        # The benchmark process holds our stdin: when it ends, however it ends, so do we.
        await anyio.to_thread.run_sync(sys.stdin.read)
    finally:
        await cloud.close()


if __name__ == "__main__":
    anyio.run(_serve)
