"""Zigbee benchmark: unlock through the driver vs the same unlock as a direct zigpy cluster call,
on the same virtual radio in one run; and start-up time and RSS with and without zha-quirks.

Run: .venv/bin/python -m bench.zigbee_bench  (prints a summary, writes bench/results/zigbee.json)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from drivers.zigbee import ZigbeeDriver
from gatewayd.driver import DriverContext, ZigbeeConfig
from gatewayd.model import Lock, Unlock
from tests.contract.sink import RecordingSink

ROUNDS = 100
# zigpy drops a frame identical to one seen in the last 10 s; 8-bit TSNs wrap after 256 frames,
# so commands are paced to stay well under 256 frames per 10 s.
PACE_S = 0.08
CONFIG = ZigbeeConfig(
    enabled=True, radio_type="virtual", virtual_locks=2, availability_s=0, report_wait_s=1.0
)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _latency(state_dir: Path) -> dict[str, Any]:
    sink = RecordingSink()
    async with anyio.create_task_group() as tg:
        driver = ZigbeeDriver(
            CONFIG, DriverContext(state_dir=state_dir, spawn=lambda n, f: tg.start_soon(f, name=n))
        )
        await driver.start(sink)
        await sink.wait_for(lambda: len(sink.devices) >= 2, timeout=30)
        device = min(sink.devices.values(), key=lambda d: d.native_id)
        lock = driver._locks[device.id]  # the same zigpy device, for the direct call
        cluster = lock.door_lock
        via_driver: list[float] = []
        direct: list[float] = []
        for i in range(ROUNDS):
            action = Unlock() if i % 2 == 0 else Lock()
            t0 = time.perf_counter()
            await driver.execute(device.id, action)
            via_driver.append(time.perf_counter() - t0)
            await asyncio.sleep(PACE_S)
        for i in range(ROUNDS):
            t0 = time.perf_counter()
            await (cluster.unlock_door() if i % 2 == 0 else cluster.lock_door())
            direct.append(time.perf_counter() - t0)
            await asyncio.sleep(PACE_S)  # the lock's reports land outside the measurement
        await driver.stop()
        tg.cancel_scope.cancel()
    p = {
        "driver_p50_ms": statistics.median(via_driver) * 1000,
        "driver_p99_ms": _pct(via_driver, 0.99) * 1000,
        "zigpy_p50_ms": statistics.median(direct) * 1000,
        "zigpy_p99_ms": _pct(direct, 0.99) * 1000,
    }
    p["ratio_p50"] = p["driver_p50_ms"] / p["zigpy_p50_ms"]
    return p


_CHILD = """
import asyncio, json, sys, tempfile, time, anyio, msgspec, psutil
from pathlib import Path
from drivers.zigbee import ZigbeeDriver
from gatewayd.driver import DriverContext, ZigbeeConfig
from tests.contract.sink import RecordingSink
quirks = sys.argv[1] == "1"
async def main():
    cfg = ZigbeeConfig(enabled=True, radio_type="virtual", virtual_locks=2, availability_s=0,
                       quirks=quirks)
    sink = RecordingSink()
    async with anyio.create_task_group() as tg:
        d = ZigbeeDriver(cfg, DriverContext(state_dir=Path(tempfile.mkdtemp()),
                         spawn=lambda n, f: tg.start_soon(f, name=n)))
        t0 = time.perf_counter()
        await d.start(sink)
        started = time.perf_counter() - t0
        await sink.wait_for(lambda: len(sink.devices) >= 2, timeout=30)
        ready = time.perf_counter() - t0
        rss = psutil.Process().memory_info().rss
        await d.stop()
        tg.cancel_scope.cancel()
    print(json.dumps({"start_s": started, "ready_s": ready, "rss_mib": rss / 2**20}))
asyncio.run(main())
"""


def _footprint(quirks: bool) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, "1" if quirks else "0"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        latency = asyncio.run(_latency(Path(tmp)))
    with_quirks, without = _footprint(True), _footprint(False)
    results = {
        "rounds": ROUNDS,
        "unlock": latency,
        "quirks_on": with_quirks,
        "quirks_off": without,
        "quirks_cost": {
            "start_s": with_quirks["start_s"] - without["start_s"],
            "rss_mib": with_quirks["rss_mib"] - without["rss_mib"],
        },
    }
    print(
        f"unlock via driver p50 {latency['driver_p50_ms']:.2f} ms p99 "
        f"{latency['driver_p99_ms']:.2f} ms | direct zigpy p50 {latency['zigpy_p50_ms']:.2f} ms "
        f"p99 {latency['zigpy_p99_ms']:.2f} ms | ratio p50 {latency['ratio_p50']:.2f}"
    )
    for name, r in (("quirks on ", with_quirks), ("quirks off", without)):
        print(f"{name}: start {r['start_s']:.2f} s, ready {r['ready_s']:.2f} s, ", end="")
        print(f"RSS {r['rss_mib']:.1f} MiB")
    out = Path(__file__).resolve().parent / "results" / "zigbee.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(msgspec.json.encode(results).decode() + "\n")


if __name__ == "__main__":
    main()
