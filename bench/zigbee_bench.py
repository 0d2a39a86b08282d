"""Zigbee benchmark: an unlock through the daemon vs the same unlock as a direct zigpy call, on
twin virtual radios in one run; and daemon start-up and RSS with and without zha-quirks.

Like for like: both sides send `unlock_door` / `lock_door` and are done when the lock confirms
the new bolt state — its `lock_state` attribute report or its operation event notification,
whichever comes first (the virtual Yale sends the notification first, the other lock the
report), with a read-back when neither comes. The daemon side is timed from `Daemon.submit` of an
action request to its terminal status (dispatcher, store, registry, driver). The direct side is a
bare zigpy ControllerApplication, nobody else listening, on a twin virtual network: the same radio
and the same two lock models, paired the same way into a database of its own. Both run in one
event loop and are measured round by round (daemon, direct, daemon, direct, ...), so whatever
else the machine does during the run weighs on both alike.

Run: .venv/bin/python -m bench.zigbee_bench  (prints a summary, writes bench/results/zigbee.json)
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

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
from gatewayd.driver import ZigbeeConfig
from gatewayd.model import Lock, Unlock

ROUNDS = 192  # measured per side, over both locks
WARMUP = 4  # rounds at the start, not counted
# Round i commands lock i % 2 to unlock when (i // 2) is even, else to lock: every command
# really moves a bolt, and the run leaves both bolts locked, as they started.
assert (ROUNDS + WARMUP) % 4 == 0
# zigpy drops a frame identical to one seen in the last 10 s; 8-bit TSNs wrap after 256 frames,
# so commands are paced to stay well under 256 frames per 10 s.
PACE_S = 0.06
REPORT_WAIT_S = 2.0  # the driver's default: how long either side waits before reading back
TARGET_RATIO = 1.05
LOCKS = ("00:0d:6f:00:0a:90:00:01", "00:0d:6f:00:0a:90:00:02")  # Yale, generic


def config_text(state_dir: Path, quirks: bool = True) -> str:
    return f"""
[gateway]
state_dir = "{state_dir}"
[status]
listen = "127.0.0.1:0"
[log]
level = "warning"
[drivers.zigbee]
enabled = true
radio_type = "virtual"
virtual_locks = {len(LOCKS)}
availability_s = 0
quirks = {"true" if quirks else "false"}
report_wait_s = {REPORT_WAIT_S}
"""


# ---------------------------------------------------------------------- direct zigpy


class _Confirm:
    """A careful direct caller's wait: the lock's report or notification of the new bolt state."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.want: int | None = None  # LockState: 1 locked, 2 unlocked
        self.seen = asyncio.Event()
        from drivers.zigbee.zigpy_api import zcl

        cluster.on_event(zcl.AttributeReportedEvent.event_type, self._reported)
        cluster.add_listener(self)

    def _reported(self, event: Any) -> None:
        want = self.want
        if want is not None and int(event.attribute_id) == 0x0000 and int(event.value) == want:
            self.seen.set()

    def cluster_command(self, tsn: int, command_id: int, args: Any) -> None:
        # operation_event_notification (0x20): operation code 1 is Lock, 2 Unlock
        want = self.want
        if want is not None and command_id == 0x20 and int(args.operation_event_code) == want:
            self.seen.set()

    async def command(self, unlock: bool) -> None:
        self.want = 2 if unlock else 1
        self.seen = asyncio.Event()
        rsp = await (self.cluster.unlock_door() if unlock else self.cluster.lock_door())
        if int(rsp.status) != 0:
            raise RuntimeError(f"the lock refused: {rsp}")
        try:
            async with asyncio.timeout(REPORT_WAIT_S):
                await self.seen.wait()
        except TimeoutError:
            rsp = await self.cluster.read_attributes(["lock_state"], allow_cache=False)
            if int(rsp[0]["lock_state"]) != self.want:
                raise RuntimeError("the bolt did not move") from None
        self.want = None


async def _paired(state_dir: Path) -> None:
    """A daemon forms a network in `state_dir` and its virtual locks join it, then stops."""
    async with running_daemon(config_text(state_dir), len(LOCKS)):
        pass


@asynccontextmanager
async def _direct_app(state_dir: Path) -> AsyncIterator[list[_Confirm]]:
    """A bare zigpy ControllerApplication, nobody else listening, on the network, database and
    locks a daemon paired in `state_dir`; yields one caller per lock, in LOCKS order."""
    from drivers.zigbee import quirks, radios
    from drivers.zigbee.virtual.radio import CONF_VIRTUAL, VirtualNetwork
    from drivers.zigbee.zigpy_api import EUI64

    await _paired(state_dir)
    cfg = ZigbeeConfig(enabled=True, radio_type="virtual", virtual_locks=len(LOCKS))
    database = state_dir / cfg.database_path
    net = VirtualNetwork(database.with_suffix(".virtual.json"), locks=len(LOCKS))
    config = radios.zigpy_config(cfg, database, {CONF_VIRTUAL: net})
    app = await radios.load_radio("virtual").new(
        config, auto_form=False, start_radio=False, device_resolver=await quirks.resolver(state_dir)
    )
    await app.startup(auto_form=False)
    try:
        yield [
            _Confirm(app.get_device(ieee=EUI64.convert(ieee)).endpoints[1].in_clusters[0x0101])
            for ieee in LOCKS
        ]
    finally:
        await app.shutdown()


# ---------------------------------------------------------------------- both, round by round


async def _latency(state_dir: Path) -> dict[str, list[float]]:
    """The daemon and the direct caller in one loop, each on its own twin virtual network,
    measured round by round (daemon, then direct, the same command on the same lock model), so
    whatever the machine does during the run weighs on both alike. Then the daemon's own
    driver alone, to place any overhead."""
    samples: dict[str, list[float]] = {"daemon": [], "driver": [], "direct": []}
    async with running_daemon(config_text(state_dir / "daemon"), len(LOCKS)) as daemon:
        assert daemon.registry is not None
        registry = daemon.registry
        by_ieee = {d.native_id: d.id for d in registry.devices()}
        probe = ActionProbe(daemon, "zb")
        async with _direct_app(state_dir / "direct") as direct:
            gc.collect()
            for i in range(WARMUP + ROUNDS):
                unlock = (i // 2) % 2 == 0
                took = await probe.run(by_ieee[LOCKS[i % 2]], "unlock" if unlock else "lock")
                await anyio.sleep(PACE_S)
                t0 = time.perf_counter()
                await direct[i % 2].command(unlock)
                if i >= WARMUP:
                    samples["daemon"].append(took)
                    samples["direct"].append(time.perf_counter() - t0)
                await anyio.sleep(PACE_S)
        driver = registry.drivers["zigbee"]
        for i in range(WARMUP + ROUNDS):
            unlock = (i // 2) % 2 == 0
            t0 = time.perf_counter()
            await driver.execute(by_ieee[LOCKS[i % 2]], Unlock() if unlock else Lock())
            if i >= WARMUP:
                samples["driver"].append(time.perf_counter() - t0)
            await anyio.sleep(PACE_S)
    return samples


# ---------------------------------------------------------------------- footprint

_CHILD = """
import json, sys, tempfile, time, anyio, psutil
from pathlib import Path
from bench.zigbee_bench import config_text, LOCKS
from bench.common import quiet_logs
from gatewayd.config import parse_config
from gatewayd.daemon import Daemon
quiet_logs()
async def main():
    t0 = time.perf_counter()
    daemon = Daemon(parse_config(config_text(Path(tempfile.mkdtemp()), sys.argv[1] == "1")))
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        await daemon.wait_started()
        started = time.perf_counter() - t0
        while daemon.registry is None or len(daemon.registry.devices()) < len(LOCKS):
            await anyio.sleep(0.01)
        ready = time.perf_counter() - t0
        rss = psutil.Process().memory_info().rss
        daemon.stop()
    print(json.dumps({"start_s": started, "ready_s": ready, "rss_mib": rss / 2**20}))
anyio.run(main)
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


def main() -> dict[str, Any]:
    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="bench-zigbee-") as tmp:
        samples = anyio.run(_latency, Path(tmp))
    with_quirks, without = _footprint(True), _footprint(False)
    ms, latency = compare_latencies(samples, "direct zigpy unlock + confirmation", TARGET_RATIO)
    figures = [
        *latency,
        Figure("daemon start, quirks on (to 2 locks)", with_quirks["ready_s"], "s"),
        Figure("daemon start, quirks off (to 2 locks)", without["ready_s"], "s"),
        Figure(
            "daemon RSS, quirks on",
            with_quirks["rss_mib"],
            "MiB",
            "<= 100 MB",
            with_quirks["rss_mib"] * 2**20 <= 100e6,
        ),
        Figure("daemon RSS, quirks off", without["rss_mib"], "MiB"),
    ]
    print_figures(f"zigbee: {ROUNDS} lock/unlock per side, virtual radio, zigpy stack", figures)
    details = {
        "rounds": ROUNDS,
        "pace_s": PACE_S,
        "ms_p50_p99": ms,
        "quirks_on": with_quirks,
        "quirks_off": without,
    }
    write_results("zigbee", figures, details)
    return details


if __name__ == "__main__":
    main()
