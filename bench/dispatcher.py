"""Dispatcher benchmark: actions through a daemon-wired dispatcher, store (SQLite WAL on disk in
a temp dir), registry and a zero-latency sim driver; baseline: the same driver called directly.

Phases, all in one run and one process (so the peak RSS is the daemon's):
  baseline    20,000 `SimDriver.execute` calls on a driver whose sink drops everything
  latency     10,000 actions over 50 locks, one at a time: submit -> terminal status callback
  throughput  10,000 actions over 50 locks, up to WINDOW in flight per lock; THROUGHPUT_TRIALS
              runs, the median reported with the slowest and fastest

Run: .venv/bin/python -m bench.dispatcher  (writes bench/results/dispatcher.json)
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio

from bench.common import (
    Figure,
    device_request,
    median_trial,
    pct,
    peak_rss_mib,
    print_figures,
    quiet_logs,
    write_results,
)
from drivers.sim.driver import SimDriver
from gatewayd.actions import StatusUpdate
from gatewayd.config import parse_config
from gatewayd.daemon import Daemon
from gatewayd.driver import DriverContext, SimConfig
from gatewayd.model import Device, DoorEvent, Lock, Unlock

LOCKS = 50
ACTIONS = 10_000
BASELINE_CALLS = 20_000
THROUGHPUT_TRIALS = 5  # the throughput is the median of this many runs (one swings with load)
WINDOW = 4  # actions in flight per lock in the throughput phase (the queue holds 100)
TARGET_RATE = 20_000.0
TARGET_P99_US = 1_000.0


def config_text(state_dir: Path) -> str:
    return f"""
[gateway]
state_dir = "{state_dir}"
[status]
listen = "127.0.0.1:0"
[log]
level = "warning"
[drivers.sim]
enabled = true
locks = {LOCKS}
latency_ms = 0
"""


class _NullSink:
    """A driver sink that keeps nothing: the baseline measures the driver alone."""

    def __init__(self) -> None:
        self.n = 0

    def device_id(self, native_id: str) -> str:
        self.n += 1
        return f"dev-{native_id}"

    def device_added(self, device: Device) -> None:
        pass

    def device_updated(self, device: Device) -> None:
        pass

    def device_removed(self, device_id: str) -> None:
        pass

    def door_event(self, event: DoorEvent) -> None:
        pass


async def _baseline(state_dir: Path) -> dict[str, float]:
    """Direct driver calls: what an action costs with no dispatcher, store or registry."""
    async with anyio.create_task_group() as tg:

        def spawn(name: str, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
            tg.start_soon(task, name=name)

        driver = SimDriver(
            SimConfig(enabled=True, locks=LOCKS, latency_ms=0),
            DriverContext(state_dir=state_dir, spawn=spawn),
        )
        await driver.start(_NullSink())
        ids = [d.id for d in driver.devices()]
        samples: list[float] = []
        t0 = time.perf_counter()
        for i in range(BASELINE_CALLS):
            s = time.perf_counter()
            await driver.execute(ids[i % LOCKS], Unlock() if (i // LOCKS) % 2 == 0 else Lock())
            samples.append(time.perf_counter() - s)
        elapsed = time.perf_counter() - t0
        await driver.stop()
        tg.cancel_scope.cancel()
    return {
        "calls_per_s": BASELINE_CALLS / elapsed,
        "p50_us": pct(samples, 0.5) * 1e6,
        "p99_us": pct(samples, 0.99) * 1e6,
    }


class _Probe:
    """Submits actions and times each one to its terminal status callback."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.submitted: dict[str, float] = {}
        self.latencies: list[float] = []
        self.failed = 0
        self.on_done: Callable[[str], None] = lambda _id: None
        self._n = 0
        daemon.status_listeners.append(self._status)

    def _status(self, update: StatusUpdate) -> None:
        if not update.status.terminal:
            return
        t = time.perf_counter()
        began = self.submitted.pop(update.action_request_id, None)
        if began is None:
            return
        self.latencies.append(t - began)
        if update.status != "completed":
            self.failed += 1
        self.on_done(update.action_request_id)

    def submit(self, device_id: str, action: str) -> str:
        self._n += 1
        request = device_request(f"ar-{self._n:08d}", device_id, action, 120)
        self.submitted[request.id] = time.perf_counter()
        assert self.daemon.submit(request)
        return request.id

    def reset(self) -> None:
        self.latencies = []
        self.failed = 0


async def _sequential(probe: _Probe, ids: list[str]) -> dict[str, float]:
    done = anyio.Event()

    def finished(_id: str) -> None:
        done.set()

    probe.on_done = finished
    probe.reset()
    t0 = time.perf_counter()
    for i in range(ACTIONS):
        done = anyio.Event()
        probe.submit(ids[i % LOCKS], "unlock" if (i // LOCKS) % 2 == 0 else "lock")
        await done.wait()
    elapsed = time.perf_counter() - t0
    lat = probe.latencies
    return {
        "actions_per_s": ACTIONS / elapsed,
        "p50_us": pct(lat, 0.5) * 1e6,
        "p99_us": pct(lat, 0.99) * 1e6,
        "max_us": max(lat) * 1e6,
        "failed": probe.failed,
    }


async def _pipelined(probe: _Probe, ids: list[str]) -> dict[str, float]:
    """Every lock keeps WINDOW actions in flight until ACTIONS have completed."""
    per_lock = ACTIONS // LOCKS
    owner: dict[str, int] = {}
    in_flight = [0] * LOCKS
    wake = [anyio.Event() for _ in range(LOCKS)]
    all_done = anyio.Event()
    completed = 0

    def finished(action_id: str) -> None:
        nonlocal completed
        k = owner.pop(action_id)
        in_flight[k] -= 1
        wake[k].set()
        completed += 1
        if completed == ACTIONS:
            all_done.set()

    async def feed(k: int) -> None:
        for i in range(per_lock):
            while in_flight[k] >= WINDOW:
                wake[k] = anyio.Event()
                await wake[k].wait()
            in_flight[k] += 1
            owner[probe.submit(ids[k], "unlock" if i % 2 == 0 else "lock")] = k

    probe.on_done = finished
    probe.reset()
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(LOCKS):
            tg.start_soon(feed, k)
    await all_done.wait()
    elapsed = time.perf_counter() - t0
    lat = probe.latencies
    return {
        "actions_per_s": ACTIONS / elapsed,
        "p50_us": pct(lat, 0.5) * 1e6,
        "p99_us": pct(lat, 0.99) * 1e6,
        "failed": probe.failed,
    }


async def _daemon_phases(state_dir: Path) -> dict[str, Any]:
    daemon = Daemon(parse_config(config_text(state_dir)))
    out: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.wait_started()
        assert daemon.registry is not None
        assert daemon.store is not None
        ids = [d.id for d in daemon.registry.devices()]
        assert len(ids) == LOCKS, ids
        probe = _Probe(daemon)
        gc.collect()
        out["latency"] = await _sequential(probe, ids)
        trials = []
        for _ in range(THROUGHPUT_TRIALS):
            gc.collect()
            trials.append(await _pipelined(probe, ids))
        out["throughput_trials"] = trials
        out["throughput"] = median_trial(trials, "actions_per_s")
        out["store_commits"] = daemon.store.commits
        out["outbox_backlog"] = daemon.store.outbox_backlog()
        daemon.stop()
    return out


async def _run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-dispatcher-") as tmp:
        baseline = await _baseline(Path(tmp) / "baseline")
        phases = await _daemon_phases(Path(tmp) / "daemon")
    return {"baseline": baseline, **phases, "peak_rss_mib": peak_rss_mib()}


def main() -> dict[str, Any]:
    quiet_logs()
    r = anyio.run(_run)
    base, seq, thr = r["baseline"], r["latency"], r["throughput"]
    rates = [t["actions_per_s"] for t in r["throughput_trials"]]
    failed = seq["failed"] + sum(t["failed"] for t in r["throughput_trials"])
    figures = [
        Figure("baseline: SimDriver.execute direct", base["calls_per_s"], "calls/s"),
        Figure(
            f"throughput (50 locks, 4 in flight each), median of {THROUGHPUT_TRIALS} runs",
            thr["actions_per_s"],
            "actions/s",
            f">= {TARGET_RATE:,.0f}",
            thr["actions_per_s"] >= TARGET_RATE,
        ),
        Figure("  slowest run", min(rates), "actions/s"),
        Figure("  fastest run", max(rates), "actions/s"),
        Figure("throughput vs baseline", thr["actions_per_s"] / base["calls_per_s"], "x"),
        Figure("added latency p50 (one at a time)", seq["p50_us"], "us"),
        Figure(
            "added latency p99 (one at a time)",
            seq["p99_us"],
            "us",
            f"< {TARGET_P99_US:,.0f}",
            seq["p99_us"] < TARGET_P99_US,
        ),
        Figure("one-at-a-time rate", seq["actions_per_s"], "actions/s"),
        Figure("latency under load p50 (200 in flight)", thr["p50_us"], "us"),
        Figure("latency under load p99 (200 in flight)", thr["p99_us"], "us"),
        Figure("peak RSS (daemon wiring)", r["peak_rss_mib"], "MiB"),
    ]
    if failed:
        figures.append(Figure("actions failed", failed, "", "0", False))
    print_figures(f"dispatcher: {ACTIONS:,} actions over {LOCKS} locks, zero-latency sim", figures)
    write_results("dispatcher", figures, r)
    return r


if __name__ == "__main__":
    main()
