"""Z-Wave benchmark: a lock/unlock through the daemon vs the same command made directly with
zwave-js-server-python, against the same zwave-js mock locks in one run; and the RSS of a daemon
with only the Z-Wave driver loaded (in MiB, and in MB: the 55 MB target is 10^6 bytes, 52.45 MiB).

Like for like: both sides send Door Lock Operation Set through zwave-server
(`node.async_invoke_cc_api(DOOR_LOCK, "set", mode, wait_for_result=True)`) and are done when a
Door Lock Operation Get read from the device reports the new bolt mode (asked again every 0.2 s
until it does) — what the driver waits for, since zwave-js updates its value cache optimistically.
The daemon side is timed from `Daemon.submit` of an action request to its terminal status
(dispatcher, store, registry, driver); the bare `driver.execute` is timed too. The direct side is
a bare zwave_js_server Client on the same zwave-server, nobody else connected, with the library's
defaults (its websocket permessage-deflate compressed; the daemon's is not, see
drivers/zwave/uncompressed.py). Blocks alternate (daemon, direct, daemon, direct) so drift hits
both.

The RSS is the VmRSS of `gatewayd run` as a box runs it: a venv staged by scripts/install.sh (the
locked runtime deps and the zwave extra, byte-compiled), started with systemd/gatewayd.service's
ExecStart and Environment=, read once its 2 locks are up and it has locked and unlocked them
through its dispatcher (POST /actions: there is no cloud here). Its /metrics is then scraped once
and the RSS read again; the core is the same daemon with no driver enabled.

Run: .venv/bin/python -m bench.zwave_bench  (prints a summary, writes bench/results/zwave.json)
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
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
    running_daemon,
    write_results,
)
from gatewayd.model import Lock, Unlock
from tests.support import stop_process, unit_command, unit_process_environment

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

    out: dict[str, list[float]] = {"daemon": [], "driver": []}
    async with running_daemon(config_text(state_dir, url), len(LOCK_NODES)) as daemon:
        assert daemon.registry is not None
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

PREFIX = "/opt/gatewayd"  # where scripts/install.sh puts the venv; the unit's ExecStart runs it
WORK_ROUNDS = 8  # lock/unlock actions the measured daemon has done before its RSS is read

# The dev venv's daemon, started as the console script starts it, writing the modules it had
# imported to a file when it exits: whether a zwave-only daemon imported zigpy (installed here).
_LIST_MODULES = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from gatewayd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _box_install(root: Path) -> None:
    """Stage a box install under `root` as `make install` makes one (scripts/install.sh): the
    locked runtime deps and the zwave extra, byte-compiled, in a relocatable venv; no dev tools
    (in the dev venv structlog finds rich/pygments, which schemathesis pulls in)."""
    env = {
        **os.environ,
        "DESTDIR": str(root),
        "PREFIX": PREFIX,
        "EXTRAS": "zwave",
        "PYTHON": sys.executable,
    }
    subprocess.run(
        ["bash", "scripts/install.sh"], cwd=ROOT, env=env, check=True, capture_output=True
    )


def _box_config(state_dir: Path, port: int, url: str | None) -> str:
    """Like config_text; `local_actions` lets the benchmark hand it actions without a cloud."""
    zwave = f'[drivers.zwave]\nenabled = true\nurl = "{url}"\ncode_recheck_s = 0\n'
    return f"""
[gateway]
state_dir = "{state_dir}"
[status]
listen = "127.0.0.1:{port}"
local_actions = true
[log]
level = "warning"
{zwave if url else ""}"""


def _http(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        raw = resp.read()
    return raw if path == "/metrics" else json.loads(raw)


def _vm_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _wait_up(proc: subprocess.Popen[bytes], port: int, locks: int) -> list[str]:
    """Poll /status until the daemon is ready with `locks` devices; their ids."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gatewayd exited ({proc.returncode})")
        try:
            status = _http(port, "/status")
        except OSError:
            status = None
        if status and status["gateway"]["ready"] and len(status["devices"]) >= locks:
            return sorted(d["id"] for d in status["devices"])
        time.sleep(0.02)
    raise RuntimeError("gatewayd: not ready with its locks within 60 s")


def _work(port: int, devices: list[str]) -> None:
    """WORK_ROUNDS lock/unlock actions through the daemon, one at a time, each to completed."""
    for n, (k, unlock) in enumerate(_plan(WORK_ROUNDS)):
        request_id = f"footprint-{n}"
        body = {"device_id": devices[k], "action": "unlock" if unlock else "lock"}
        _http(port, "/actions", {**body, "id": request_id, "timeout_s": 60})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            recent = {a["id"]: a for a in _http(port, "/status")["actions"]["recent"]}
            status = recent.get(request_id, {}).get("status")
            if status in ("completed", "failed"):
                break
            time.sleep(0.05)
        if status != "completed":
            raise RuntimeError(f"{request_id}: {body['action']} ended {status}")


def _footprint(argv: list[str], env: dict[str, str], tmp: Path, url: str | None) -> dict[str, Any]:
    """Start `argv` (gatewayd run), wait for its locks, have it lock and unlock them, read its
    RSS; then scrape /metrics once and read it again."""
    from tests.zwave.stack import free_port

    state = Path(tempfile.mkdtemp(dir=tmp))
    port = free_port()
    config = state / "config.toml"
    config.write_text(_box_config(state / "state", port, url))
    argv = [a if a != "{config}" else str(config) for a in argv]
    locks = len(LOCK_NODES) if url else 0
    t0 = time.perf_counter()
    with (state / "gatewayd.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env, cwd=state)
        try:
            devices = _wait_up(proc, port, locks)
            ready = time.perf_counter() - t0
            if devices:
                _work(port, devices)
            vm = _vm_kib(proc.pid)
            _http(port, "/metrics")
            scraped = _vm_kib(proc.pid)
        finally:
            stop_process(proc, 15)
    if proc.returncode != 0:
        raise RuntimeError(
            f"gatewayd exited {proc.returncode}: {(state / 'gatewayd.log').read_text()}"
        )
    return {
        "ready_s": ready,
        "actions_done": WORK_ROUNDS if devices else 0,
        "rss_mib": vm["VmRSS"] / 1024,
        "hwm_mib": vm["VmHWM"] / 1024,
        "rss_after_metrics_scrape_mib": scraped["VmRSS"] / 1024,
    }


def _footprints(url: str, tmp: Path) -> dict[str, Any]:
    """The box daemon with the zwave driver, the same with no driver (the core), and the dev
    venv's daemon (with the modules it imported)."""
    _box_install(tmp / "box")
    env = unit_process_environment()
    box = unit_command(tmp / "box", Path("{config}"))
    modules = tmp / "modules.json"
    dev = [sys.executable, "-c", _LIST_MODULES, str(modules), *box[1:]]
    out: dict[str, Any] = {
        "command": box,
        "environment": env,
        "zwave": _footprint(box, env, tmp, url),
        "core": _footprint(box, env, tmp, None),
        "dev_venv": _footprint(dev, env, tmp, url),
    }
    imported = json.loads(modules.read_text())
    out["zigpy_loaded"] = any(m.partition(".")[0] == "zigpy" for m in imported)
    out["dev_only_loaded"] = sorted(m for m in ("rich", "pygments") if m in imported)
    return out


def main() -> dict[str, Any]:
    from tests.zwave.stack import ZWaveStack

    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="bench-zwave-") as tmp:
        stack = ZWaveStack(Path(tmp) / "stack", locks=len(LOCK_NODES))
        try:
            stack.start()
            samples = anyio.run(_latency, Path(tmp), stack.url)
            footprint = _footprints(stack.url, Path(tmp))
        finally:
            stack.stop()
    ms, latency = compare_latencies(samples, "direct zwave-js-server lock/unlock", TARGET_RATIO)
    zwave, core, dev = footprint["zwave"], footprint["core"], footprint["dev_venv"]
    rss_mib = float(zwave["rss_mib"])
    rss_ok = rss_mib * 2**20 <= TARGET_RSS_MB * 1e6
    figures = [
        *latency,
        Figure("ratio driver / direct p50", ms["driver"][0] / ms["direct"][0], "x"),
        Figure("daemon start, zwave only (exec to 2 locks)", float(zwave["ready_s"]), "s"),
        Figure(
            f"box daemon RSS, zwave, after {WORK_ROUNDS} lock/unlock",
            rss_mib,
            "MiB",
            f"<= {TARGET_RSS_MB} MB",
            rss_ok,
        ),
        Figure(
            "  same in MB (10^6 bytes; the target's unit)",
            rss_mib * 2**20 / 1e6,
            "MB",
            f"<= {TARGET_RSS_MB} MB",
            rss_ok,
        ),
        Figure("  peak RSS so far (VmHWM)", float(zwave["hwm_mib"]), "MiB"),
        Figure(
            "  after a first /metrics scrape",
            float(zwave["rss_after_metrics_scrape_mib"]),
            "MiB",
        ),
        Figure("  same in the dev venv (+ rich/pygments)", float(dev["rss_mib"]), "MiB"),
        Figure("  of which the core (the daemon, no driver)", float(core["rss_mib"]), "MiB"),
        Figure(
            "  of which the zwave driver (drivers/zwave, zwave-js-server-python)",
            rss_mib - float(core["rss_mib"]),
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
    }
    write_results("zwave", figures, details)
    return details


if __name__ == "__main__":
    main()
