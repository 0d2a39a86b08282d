"""`gatewayd demo`: a daemon with simulated locks on loopback, and the commands to try it."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import anyio

from gatewayd import logging as gwlog
from gatewayd.config import parse_config
from gatewayd.daemon import Daemon


def demo_config(state_dir: Path, locks: int, status_port: int) -> str:
    return f"""
[gateway]
state_dir = "{state_dir}"
name = "demo gateway"

[status]
listen = "127.0.0.1:{status_port}"
local_actions = true

[log]
format = "console"

[drivers.sim]
enabled = true
locks = {locks}
latency_ms = 200
"""


def run_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="gatewayd-demo-") as tmp:
        state = Path(args.dir or tmp)
        cfg = parse_config(demo_config(state, args.locks, args.status_port))
        gwlog.configure("info", "console")
        daemon = Daemon(cfg, handle_signals=True)

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                await daemon.wait_started()
                print_guide(daemon)

        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(main)
    return 0


def print_guide(daemon: Daemon) -> None:
    assert daemon.registry is not None
    base = f"http://127.0.0.1:{daemon.status_port}"
    ids = [d.id for d in daemon.registry.devices()]
    first = ids[0] if ids else "DEVICE_ID"

    def post(path: str, body: str) -> str:
        return f"curl -s -X POST {base}/{path} -d '{body}'"

    code_inputs = '"inputs": {"code": "1234", "slot_id": 3}'
    lines = [
        f"gatewayd demo is running with {len(ids)} simulated locks. Ctrl-C stops it.",
        "",
        f"  status page:  {base}/",
        f"  status JSON:  curl -s {base}/status",
        f"  metrics:      curl -s {base}/metrics",
        "  unlock:       " + post("actions", f'{{"device_id": "{first}", "action": "unlock"}}'),
        "  lock:         " + post("actions", f'{{"device_id": "{first}", "action": "lock"}}'),
        "  set a code:   "
        + post("actions", f'{{"device_id": "{first}", "action": "set_code", {code_inputs}}}'),
        "  keypad use:   "
        + post(
            "simulate",
            f'{{"device_id": "{first}", "what": "keypad_unlock", "params": {{"slot_id": 3}}}}',
        ),
    ]
    print("\n".join(lines), flush=True)
