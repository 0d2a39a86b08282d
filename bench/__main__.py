"""`python -m bench`: every benchmark, each in its own process (so each peak RSS is its own),
then one table of the figures that have targets.

Benchmarks: every `bench/<name>.py` with a `main()` in BENCHMARKS order, then any other module
here with a `main()` (e.g. zwave_bench, zigbee_bench). Each writes bench/results/<name>.json;
results whose JSON carries `figures` (see bench.common) join the table.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BENCHMARKS = ("dispatcher", "tunnel")
NOT_BENCHMARKS = frozenset({"__init__", "__main__", "common", "cloud_end"})
TIMEOUT_S = 900


def _has_main(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def discover() -> list[str]:
    others = sorted(
        p.stem
        for p in HERE.glob("*.py")
        if p.stem not in NOT_BENCHMARKS and p.stem not in BENCHMARKS and _has_main(p)
    )
    return [name for name in BENCHMARKS if (HERE / f"{name}.py").exists()] + others


def run_one(name: str) -> tuple[int, float]:
    print(f"\n=== bench.{name} ===", flush=True)
    began = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", f"from bench import {name} as m; m.main()"],
            cwd=ROOT,
            timeout=TIMEOUT_S,
            check=False,
        )
        code = proc.returncode
    except subprocess.TimeoutExpired:
        print(f"bench.{name}: timed out after {TIMEOUT_S} s", flush=True)
        code = -1
    return code, time.monotonic() - began


def _fresh_results(since: float) -> list[dict[str, Any]]:
    out = []
    for path in sorted(RESULTS.glob("*.json")):
        if path.stat().st_mtime < since:
            continue
        try:
            body = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(body, dict) and isinstance(body.get("figures"), list):
            out.append(body)
    return out


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'benchmark':<11} {'figure':<44} {'value':>14} {'unit':<10} {'target':<12} result"]
    for body in results:
        for f in body["figures"]:
            verdict = {True: "PASS", False: "FAIL", None: ""}[f.get("ok")]
            lines.append(
                f"{body['benchmark']:<11} {f['name']:<44} {f['value']:>14,.2f} "
                f"{f['unit']:<10} {f.get('target', ''):<12} {verdict}"
            )
    return lines


def main() -> int:
    began = time.time()
    names = discover()
    runs = {name: run_one(name) for name in names}
    print("\n=== summary ===")
    for line in table(_fresh_results(began)):
        print(line)
    for name, (code, seconds) in runs.items():
        state = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"bench.{name}: {state} in {seconds:.0f} s")
    print(f"results: {RESULTS}/")
    return 0 if all(code == 0 for code, _ in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
