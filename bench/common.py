"""Helpers shared by the benchmarks: percentiles, peak RSS, figures with targets, JSON results."""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio

from gatewayd import logging as gwlog
from gatewayd.actions import StatusUpdate
from gatewayd.config import parse_config
from gatewayd.daemon import Daemon
from gatewayd.model import ActionRequest, utcnow

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Figure:
    """One printed number; `target` is a human rule ("<= 3x baseline"), `ok` None if none."""

    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None


def quiet_logs() -> None:
    """Benchmarks run the daemon at log level warning, as a busy box would."""
    gwlog.configure("warning", "json", sys.stderr)
    logging.getLogger("asyncio").setLevel(logging.ERROR)


def pct(samples: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) of samples."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median_trial[T: Mapping[str, Any]](trials: Sequence[T], key: str) -> T:
    """The trial whose `key` is the median (the lower middle one of an even count)."""
    ordered = sorted(trials, key=lambda trial: float(trial[key]))
    return ordered[(len(ordered) - 1) // 2]


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_results(name: str, figures: Sequence[Figure], details: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    body = {"benchmark": name, "figures": [asdict(f) for f in figures], "details": details}
    out.write_text(json.dumps(body, indent=2) + "\n")
    return out


def print_figures(title: str, figures: Sequence[Figure]) -> None:
    print(title)
    for f in figures:
        verdict = "" if f.ok is None else ("  PASS" if f.ok else "  FAIL")
        target = f"  (target {f.target})" if f.target else ""
        print(f"  {f.name:<44} {f.value:>12,.2f} {f.unit:<10}{target}{verdict}")


@asynccontextmanager
async def running_daemon(config_text: str, devices: int) -> AsyncIterator[Daemon]:
    """A daemon from `config_text`, once it runs and its registry holds `devices` devices;
    stopped on the way out."""
    daemon = Daemon(parse_config(config_text))
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(60):
            await daemon.wait_started()
            while daemon.registry is None or len(daemon.registry.devices()) < devices:
                await anyio.sleep(0.02)
        try:
            yield daemon
        finally:
            daemon.stop()


class ActionProbe:
    """Submits action requests and times each to its terminal status."""

    def __init__(self, daemon: Daemon, prefix: str) -> None:
        self.daemon = daemon
        self.began = 0.0
        self.elapsed = 0.0
        self.done = anyio.Event()
        self.status = ""
        self.n = 0
        self.prefix = (
            f"{prefix}-{uuid.uuid4().hex[:8]}"  # ids are never reused: the store remembers
        )
        daemon.status_listeners.append(self._status)

    def _status(self, update: StatusUpdate) -> None:
        if update.status.terminal and update.action_request_id == f"{self.prefix}-{self.n}":
            self.elapsed = time.perf_counter() - self.began
            self.status = str(update.status)
            self.done.set()

    async def run(self, device_id: str, action: str) -> float:
        self.n += 1
        self.done = anyio.Event()
        request = device_request(f"{self.prefix}-{self.n}", device_id, action, 60)
        self.began = time.perf_counter()
        assert self.daemon.submit(request)
        await self.done.wait()
        if self.status != "completed":
            raise RuntimeError(f"{action} ended {self.status}")
        return self.elapsed


def device_request(request_id: str, device_id: str, action: str, timeout_s: float) -> ActionRequest:
    """A device action request as the cloud would send it, due in `timeout_s`."""
    now = utcnow()
    return ActionRequest(
        id=request_id,
        entity_type="Device",
        entity_id=device_id,
        action=action,
        inputs={},
        created_at=now,
        deadline=now + timedelta(seconds=timeout_s),
    )


def compare_latencies(
    samples: dict[str, list[float]], direct: str, target_ratio: float
) -> tuple[dict[str, tuple[float, float]], list[Figure]]:
    """p50/p99 in ms of the `direct`, `daemon` and `driver` samples (seconds), and the
    daemon/direct ratios with the p50 target."""
    ms = {k: (pct(v, 0.5) * 1000, pct(v, 0.99) * 1000) for k, v in samples.items()}
    ratio = ms["daemon"][0] / ms["direct"][0]
    figures = [
        Figure(f"{direct} p50", ms["direct"][0], "ms"),
        Figure(f"{direct} p99", ms["direct"][1], "ms"),
        Figure("through the daemon p50", ms["daemon"][0], "ms"),
        Figure("through the daemon p99", ms["daemon"][1], "ms"),
        Figure("bare driver.execute p50", ms["driver"][0], "ms"),
        Figure("bare driver.execute p99", ms["driver"][1], "ms"),
        Figure(
            "ratio daemon / direct p50", ratio, "x", f"<= {target_ratio}", ratio <= target_ratio
        ),
        Figure("ratio daemon / direct p99", ms["daemon"][1] / ms["direct"][1], "x"),
    ]
    return ms, figures
