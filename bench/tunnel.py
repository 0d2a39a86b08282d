"""Tunnel benchmarks, all on loopback in one run:

  (a) baseline: raw aiohttp websocket echo RTT, client here, server in the cloud-end process
  (b) full loop: 2,000 sequential unlocks timed at the cloud end, from its send of
      `action_request` to its receipt of `action_status completed`, through a real Daemon +
      Tunnel, the on-disk store and a zero-latency sim driver
  (c) pipelined: N action requests sent without waiting; completions/s seen by the cloud
  (d) outbox drain: 100,000 frames committed while disconnected, then connect; time until the
      gateway's store holds the cloud's ack of the last one
  (e) idle traffic: bytes through a counting loopback TCP proxy while nothing happens, with a
      short heartbeat, scaled linearly to the default 60 s heartbeat (every idle byte is
      heartbeat-driven and every heartbeat timer is proportional to heartbeat_s)

The cloud end (bench/cloud_end.py) runs in a process of its own for (a)-(c), as a cloud is
another machine: each end has its own core, and the gateway's figures carry only the gateway's
work. The daemon runs in this process. (a) and (c) are also run, for comparison, with the cloud
end in the daemon's own event loop: an echo that crosses no process boundary (no wake-up of a
sleeping process, so a smaller baseline), and a cloud whose decoding and acking take the
gateway's CPU. (d) and (e) keep the cloud end in this process: neither is bound by CPU.

Run: .venv/bin/python -m bench.tunnel
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from bench.cloud_end import CREDENTIAL, DEFAULT_HEARTBEAT_S, GATEWAY_ID, Cloud, pipelined
from bench.common import (
    Figure,
    median_trial,
    pct,
    peak_rss_mib,
    print_figures,
    quiet_logs,
    running_daemon,
    write_results,
)
from gatewayd import protocol
from gatewayd.model import DoorEvent, EventName, iso, utcnow
from gatewayd.store import Store
from gatewayd.upstream import Upstream

ECHO_ROUNDS = 2_000
LOOP_ROUNDS = 2_000
PIPELINED = 10_000
PIPELINED_TRIALS = 5  # (c) is the median of this many runs: one run swings with the VM's load
BACKLOG = 100_000
IDLE_WINDOW_S = 30.0
IDLE_HEARTBEAT_S = 2.0
LOCKS = 50
ROOT = Path(__file__).resolve().parents[1]
TCP_OVERHEAD = 66  # Ethernet 14 + IPv4 20 + TCP 20 + timestamps 12, per segment

TARGET_LOOP_RATIO = 3.0
TARGET_PIPELINED = 5_000.0
TARGET_DRAIN = 20_000.0
TARGET_IDLE_KB_H = 50.0


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
        async with running_daemon(_config(state_dir, cloud.port), devices=0) as daemon:
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
        async with running_daemon(_config(state_dir, proxy.port), devices=0):
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


class _Remote:
    """The cloud-end process: its port, and its control endpoints (bench/cloud_end.py)."""

    def __init__(self, port: int, http: aiohttp.ClientSession) -> None:
        self.port = port
        self._http = http

    async def wait_devices(self, count: int) -> None:
        with anyio.fail_after(60):
            while True:
                async with self._http.get("/bench/devices") as resp:
                    if (await resp.json())["devices"] >= count:
                        return
                await anyio.sleep(0.05)

    async def run(self, phase: str, **body: int) -> dict[str, Any]:
        async with self._http.post(f"/bench/{phase}", json=body) as resp:
            resp.raise_for_status()
            result: dict[str, Any] = await resp.json()
            return result


@asynccontextmanager
async def _cloud_process() -> AsyncIterator[_Remote]:
    """bench/cloud_end.py in a process of its own, stopped (its stdin closed) on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cloud_end"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
        port = int(json.loads(line)["port"])
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            yield _Remote(port, http)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _same_loop(state_dir: Path) -> dict[str, dict[str, float]]:
    """(a) and (c) again with the cloud end in this event loop, next to the daemon (for
    comparison: no process boundary in the echo, the cloud's work on the gateway's core)."""
    _claim(state_dir).close()
    cloud = Cloud()
    await cloud.start()
    try:
        echo = await _echo_rtt(cloud.port)
        async with running_daemon(_config(state_dir, cloud.port), devices=0):
            await cloud.connected.wait()
            await _wait(lambda: len(cloud.devices) >= LOCKS)
            return {"echo": echo, "pipelined": await pipelined(cloud, PIPELINED, LOCKS)}
    finally:
        await cloud.close()


async def _run() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp:
        root = Path(tmp)
        async with _cloud_process() as remote:
            out["echo"] = await _echo_rtt(remote.port)
            _claim(root / "loop").close()
            async with running_daemon(_config(root / "loop", remote.port), devices=0):
                await remote.wait_devices(LOCKS)
                out["full_loop"] = await remote.run(
                    "full_loop", rounds=LOOP_ROUNDS, warmup=50, locks=LOCKS
                )
                trials = [
                    await remote.run("pipelined", count=PIPELINED, locks=LOCKS)
                    for _ in range(PIPELINED_TRIALS)
                ]
                out["pipelined_trials"] = trials
                out["pipelined"] = median_trial(trials, "actions_per_s")
        out["same_loop"] = await _same_loop(root / "same")
        out["drain"] = await _drain(root / "drain")
        out["idle"] = await _idle(root / "idle")
    out["peak_rss_mib"] = peak_rss_mib()
    out["pid"] = os.getpid()
    return out


def main() -> dict[str, Any]:
    quiet_logs()
    r = anyio.run(_run)
    echo, loop, pipe, drain, idle = r["echo"], r["full_loop"], r["pipelined"], r["drain"], r["idle"]
    same = r["same_loop"]
    ratio50 = loop["p50_us"] / echo["p50_us"]
    rates = [t["actions_per_s"] for t in r["pipelined_trials"]]
    ratio99 = loop["p99_us"] / echo["p99_us"]
    figures = [
        Figure("(a) ws echo RTT p50 (baseline)", echo["p50_us"], "us"),
        Figure("(a) ws echo RTT p99 (baseline)", echo["p99_us"], "us"),
        Figure("(a) the same, both ends in one event loop, p50", same["echo"]["p50_us"], "us"),
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
            f"(c) pipelined ({PIPELINED:,} requests), median of {PIPELINED_TRIALS} runs",
            pipe["actions_per_s"],
            "actions/s",
            f">= {TARGET_PIPELINED:,.0f}",
            pipe["actions_per_s"] >= TARGET_PIPELINED,
        ),
        Figure("(c) slowest run", min(rates), "actions/s"),
        Figure("(c) fastest run", max(rates), "actions/s"),
        Figure(
            "(c) the same, cloud end in the daemon's event loop",
            same["pipelined"]["actions_per_s"],
            "actions/s",
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
        Figure("peak RSS (daemon; cloud end for (c)-(e))", r["peak_rss_mib"], "MiB"),
    ]
    failed = loop["failed"] + sum(t["failed"] for t in r["pipelined_trials"])
    failed += same["pipelined"]["failed"]
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
