"""Z-Wave benchmark: a lock/unlock through the daemon vs the same command made directly with
zwave-js-server-python, against the same zwave-js mock locks in one run; and the RSS of a daemon
with only the Z-Wave driver loaded (in MiB, and in MB: the 55 MB target is 10^6 bytes, 52.45 MiB).

Like for like: both sides send Door Lock Operation Set through zwave-server
(`node.async_invoke_cc_api(DOOR_LOCK, "set", mode, wait_for_result=True)`) and are done when a
Door Lock Operation Get read from the device reports the new bolt mode (asked again every 0.2 s
until it does) — what the driver waits for, since zwave-js updates its value cache optimistically.
The daemon side is timed from `Daemon.submit` of an action request to its terminal status
(dispatcher, store, registry, driver); the bare `driver.execute` is timed too. The direct side is
a bare zwave_js_server Client on the same zwave-server, nobody else connected. Blocks alternate
(daemon, direct, daemon, direct) so drift hits both.

Run: .venv/bin/python -m bench.zwave_bench  (prints a summary, writes bench/results/zwave.json)
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from bench.common import (
    ActionProbe,
    Figure,
    compare_latencies,
    print_figures,
    quiet_logs,
    write_results,
)
from gatewayd.config import parse_config
from gatewayd.daemon import Daemon
from gatewayd.model import Lock, Unlock

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 96  # measured per side, over both locks
BLOCKS = 4  # daemon/direct alternations
WARMUP = 4  # rounds at the start of every block and side, not counted
# Round i commands lock i % 2 to unlock when (i // 2) is even, else to lock: a block of a multiple
# of 4 rounds leaves both bolts locked, as they started, so every command really moves a bolt.
assert (ROUNDS // BLOCKS + WARMUP) % 4 == 0
LOCK_NODES = (2, 3)  # the mock's Yale and Allegion (tests/zwave/mock/locks.cjs)
READ_BACK_S = 0.2  # drivers.zwave.commands.set_bolt asks again this often
TARGET_RATIO = 1.05
TARGET_RSS_MB = 55


def config_text(state_dir: Path, url: str) -> str:
    return f"""
[gateway]
state_dir = "{state_dir}"
[status]
listen = "127.0.0.1:0"
[log]
level = "warning"
[drivers.zwave]
enabled = true
url = "{url}"
code_recheck_s = 0
"""


def _plan(rounds: int) -> list[tuple[int, bool]]:
    """(node index, unlock?) for each round of a block."""
    return [(i % 2, (i // 2) % 2 == 0) for i in range(rounds)]


# ---------------------------------------------------------------------- through the daemon


async def _daemon_block(state_dir: Path, url: str, rounds: int) -> dict[str, list[float]]:
    from tests.zwave.stack import native_id

    daemon = Daemon(parse_config(config_text(state_dir, url)))
    out: dict[str, list[float]] = {"daemon": [], "driver": []}
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(60):
            await daemon.wait_started()
            while daemon.registry is None or len(daemon.registry.devices()) < len(LOCK_NODES):
                await anyio.sleep(0.02)
        registry = daemon.registry
        by_native = {d.native_id: d.id for d in registry.devices()}
        devices = [by_native[native_id(n)] for n in LOCK_NODES]
        driver = registry.drivers["zwave"]
        probe = ActionProbe(daemon, "zw")
        gc.collect()
        for k, unlock in _plan(rounds):
            out["daemon"].append(await probe.run(devices[k], "unlock" if unlock else "lock"))
        # The bare driver too (no dispatcher, store or registry), to place any overhead.
        for k, unlock in _plan(rounds):
            t0 = time.perf_counter()
            await driver.execute(devices[k], Unlock() if unlock else Lock())
            out["driver"].append(time.perf_counter() - t0)
        daemon.stop()
    return out


# ---------------------------------------------------------------------- direct zwave-js-server


async def _direct_command(node: Any, unlock: bool) -> None:
    """Operation Set, then Operation Get from the device until it reports the new mode."""
    from zwave_js_server.const import CommandClass

    target = 0x00 if unlock else 0xFF
    await node.async_invoke_cc_api(CommandClass.DOOR_LOCK, "set", target, wait_for_result=True)
    while True:
        report = await node.async_invoke_cc_api(CommandClass.DOOR_LOCK, "get", wait_for_result=True)
        if isinstance(report, dict) and report.get("currentMode") == target:
            return
        await asyncio.sleep(READ_BACK_S)


async def _direct_block(url: str, rounds: int) -> list[float]:
    from zwave_js_server.client import Client

    samples: list[float] = []
    async with aiohttp.ClientSession() as session:
        client = Client(url, session)
        await client.connect()
        ready = asyncio.Event()
        listening = asyncio.create_task(client.listen(ready))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            assert client.driver is not None
            nodes = [client.driver.controller.nodes[n] for n in LOCK_NODES]
            gc.collect()
            for k, unlock in _plan(rounds):
                t0 = time.perf_counter()
                await _direct_command(nodes[k], unlock)
                samples.append(time.perf_counter() - t0)
        finally:
            await client.disconnect()
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
    return samples


async def _latency(state_dir: Path, url: str) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"daemon": [], "driver": [], "direct": []}
    per_block = ROUNDS // BLOCKS + WARMUP
    for block in range(BLOCKS):
        for k, v in (await _daemon_block(state_dir / f"gw{block}", url, per_block)).items():
            samples[k] += v[WARMUP:]
        samples["direct"] += (await _direct_block(url, per_block))[WARMUP:]
    return samples


# ---------------------------------------------------------------------- footprint

_CHILD = """
import json, os, sys, tempfile, time, anyio
from pathlib import Path
from bench.zwave_bench import config_text, LOCK_NODES
from bench.common import quiet_logs
from gatewayd.config import parse_config
from gatewayd.daemon import Daemon
def rss():  # resident bytes now (no psutil: a box install has only the runtime deps)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
quiet_logs()
assert "zwave_js_server" not in sys.modules
core = rss()  # the core and its dependencies, no driver yet
async def main():
    t0 = time.perf_counter()
    daemon = Daemon(parse_config(config_text(Path(tempfile.mkdtemp()), sys.argv[1])))
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        await daemon.wait_started()
        while daemon.registry is None or len(daemon.registry.devices()) < len(LOCK_NODES):
            await anyio.sleep(0.01)
        ready = time.perf_counter() - t0
        now_rss = rss()
        drivers = sorted(daemon.registry.drivers)
        daemon.stop()
    print(json.dumps({
        "ready_s": ready, "rss_mib": now_rss / 2**20, "core_rss_mib": core / 2**20,
        "drivers": drivers, "zigpy_loaded": "zigpy" in sys.modules,
        "dev_only_loaded": sorted(m for m in ("rich", "pygments") if m in sys.modules),
    }))
anyio.run(main)
"""


UV = ROOT / ".tools" / "bin" / "uv"


def _box_python(venv: Path) -> str:
    """A venv as a box install has it: the locked runtime deps and the zwave extra, no dev
    tools (in the dev venv structlog finds rich/pygments, which schemathesis pulls in)."""
    req = venv.parent / "box-requirements.txt"
    python = str(venv / "bin" / "python")
    pip = ["pip", "install", "--quiet", "--python", python]
    for args in (
        ["export", "--frozen", "--no-dev", "--extra", "zwave", "--no-emit-project", "-o", str(req)],
        ["venv", "--python", sys.executable, str(venv)],
        [*pip, "-r", str(req)],
        [*pip, "--no-deps", str(ROOT)],
    ):
        subprocess.run([str(UV), "--quiet", *args], cwd=ROOT, check=True, capture_output=True)
    return python


def _footprint(url: str, python: str = sys.executable) -> dict[str, Any]:
    out = subprocess.run(
        [python, "-c", _CHILD, url],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> dict[str, Any]:
    from tests.zwave.stack import ZWaveStack

    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="bench-zwave-") as tmp:
        stack = ZWaveStack(Path(tmp) / "stack", locks=len(LOCK_NODES))
        try:
            stack.start()
            samples = anyio.run(_latency, Path(tmp), stack.url)
            footprint = _footprint(stack.url, _box_python(Path(tmp) / "box-venv"))
            dev_footprint = _footprint(stack.url)
        finally:
            stack.stop()
    ms, latency = compare_latencies(samples, "direct zwave-js-server lock/unlock", TARGET_RATIO)
    rss_mib = float(footprint["rss_mib"])
    figures = [
        *latency,
        Figure("ratio driver / direct p50", ms["driver"][0] / ms["direct"][0], "x"),
        Figure("daemon start, zwave only (to 2 locks)", float(footprint["ready_s"]), "s"),
        Figure(
            "daemon RSS, zwave driver only (box install)",
            rss_mib,
            "MiB",
            f"<= {TARGET_RSS_MB} MB",
            rss_mib * 2**20 <= TARGET_RSS_MB * 1e6,
        ),
        Figure(
            "  same in MB (10^6 bytes; the target's unit)",
            rss_mib * 2**20 / 1e6,
            "MB",
            f"<= {TARGET_RSS_MB} MB",
            rss_mib * 2**20 <= TARGET_RSS_MB * 1e6,
        ),
        Figure(
            "  same in the dev venv (+ rich/pygments)",
            float(dev_footprint["rss_mib"]),
            "MiB",
        ),
        Figure("  of which the core before any driver", float(footprint["core_rss_mib"]), "MiB"),
        Figure(
            "  of which the zwave driver (drivers/zwave, zwave-js-server-python)",
            rss_mib - float(footprint["core_rss_mib"]),
            "MiB",
        ),
        Figure(
            "zigpy imported by a zwave-only daemon",
            float(footprint["zigpy_loaded"]),
            "bool",
            "0 (no)",
            not footprint["zigpy_loaded"],
        ),
    ]
    print_figures(
        f"zwave: {ROUNDS} lock/unlock per side, zwave-js mock-server + zwave-server", figures
    )
    details = {
        "rounds": ROUNDS,
        "blocks": BLOCKS,
        "ms_p50_p99": ms,
        "footprint": footprint,
        "footprint_dev_venv": dev_footprint,
    }
    write_results("zwave", figures, details)
    return details


if __name__ == "__main__":
    main()
