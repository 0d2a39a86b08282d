"""Helpers shared by the benchmarks: percentiles, peak RSS, figures with targets, JSON results."""

from __future__ import annotations

import json
import logging
import resource
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gatewayd import logging as gwlog

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
