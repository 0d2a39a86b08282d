"""`gatewayd demo`: the reference cloud and a daemon with simulated locks on loopback, claimed
through the REST API, with curl commands that work. devcloud runs as its own process: the
daemon never imports it."""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from gatewayd import logging as gwlog
from gatewayd.config import ConfigError, parse_config
from gatewayd.daemon import Daemon
from gatewayd.status import find_listen_error

READY_LINE = "gatewayd demo is ready"


def demo_config(state_dir: Path, locks: int, status_port: int, cloud_port: int) -> str:
    return f"""
[gateway]
state_dir = "{state_dir}"
name = "demo gateway"

[cloud]
url = "ws://127.0.0.1:{cloud_port}/v1/gateway/tunnel"

[status]
listen = "127.0.0.1:{status_port}"
local_actions = true

[drivers.sim]
enabled = true
locks = {locks}
latency_ms = 150
"""


class DemoError(Exception):
    """Why the demo cannot run, in one line for the terminal."""


def start_cloud(work: Path, api_key: str, port: int) -> tuple[subprocess.Popen[bytes], int]:
    """Start `devcloud serve` and return it with the port it listens on."""
    out = work / "devcloud.out"
    with out.open("wb") as sink, (work / "devcloud.log").open("wb") as err:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
            [
                sys.executable,
                "-m",
                "devcloud.cli",
                "serve",
                "--port",
                str(port),
                "--db",
                str(work / "devcloud.db"),
                "--api-key",
                api_key,
                "--handoff-timeout",
                "10",
                "--log-format",
                "json",
            ],
            stdout=sink,
            stderr=err,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = (work / "devcloud.log").read_text(errors="replace").strip().splitlines()
            raise DemoError(said[-1] if said else f"devcloud exited with {proc.returncode}")
        for line in out.read_text().splitlines():
            if line.startswith("devcloud listening on "):
                return proc, int(line.rsplit(":", 1)[1])
        time.sleep(0.05)
    proc.kill()
    raise DemoError("devcloud did not start within 30 s")


async def claim(daemon: Daemon, api: str, api_key: str) -> dict[str, Any]:
    """Create a location and claim the daemon with its registration token, as a user would."""
    assert daemon.store is not None
    auth = aiohttp.BasicAuth(api_key, "")
    with anyio.fail_after(30):
        while daemon.tunnel is None or not daemon.tunnel.up:  # noqa: ASYNC110 - polls a property
            await anyio.sleep(0.05)
    async with aiohttp.ClientSession(auth=auth) as http:
        house = {"name": "Demo house", "timezone": "UTC"}
        async with http.post(f"{api}/v1/locations", json=house) as r:
            location = await r.json()
        token = daemon.store.identity().registration_token
        async with http.post(
            f"{api}/v1/locations/{location['id']}/register_gateway",
            json={"registration_token": token, "name": "demo gateway"},
        ) as r:
            gateway: dict[str, Any] = await r.json()
            if r.status != 200:
                raise RuntimeError(f"claim failed: {gateway}")
        with anyio.fail_after(30):
            while True:
                async with http.get(f"{api}/v1/devices") as r:
                    devices = await r.json()
                if len(devices) >= len(daemon.registry.devices()) > 0:  # type: ignore[union-attr]
                    break
                await anyio.sleep(0.1)
    return {"location": location, "gateway": gateway, "devices": devices}


def gatewayd_command() -> str:
    """This gatewayd as a shell command: the script next to the interpreter, else `-m`."""
    script = Path(sys.executable).with_name("gatewayd")
    if script.exists():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m gatewayd.cli"


def guide(
    api: str, api_key: str, status: str, claimed: dict[str, Any], work: Path, config: Path
) -> str:
    gateway_id = claimed["gateway"]["id"]
    device = claimed["devices"][0]["id"]
    auth = f'-u "{api_key}:" -H "Content-Type: application/json"'

    def post(path: str, data: dict[str, Any] | None = None) -> str:
        body = f" -d '{json.dumps({'data': data})}'" if data is not None else ""
        return f"curl -s -X POST {auth}{body} {api}{path}"

    lines = [
        "",
        f"The reference cloud is at {api}, API key {api_key}",
        f"The gateway ({gateway_id}) is claimed and has {len(claimed['devices'])} locks.",
        f"Status page: {status}/    Logs: {work}",
        f"In a terminal: {gatewayd_command()} status -c {shlex.quote(str(config))}",
        "",
        "Try it, in this order (each action prints its action request, which moves to completed):",
        f"  {post(f'/v1/devices/{device}/actions/unlock')}",
        f"  {post(f'/v1/devices/{device}/actions/lock')}",
        f"  {post(f'/v1/devices/{device}/actions/set_code', {'code': '1234', 'slot_id': 3})}",
        "Someone types that code at the keypad (a simulated person at the door):",
        f"  curl -s -X POST {status}/simulate -d "
        f"'{json.dumps({'device_id': device, 'what': 'keypad_unlock', 'params': {'slot_id': 3}})}'",
        "Clear the code again, and open the pairing window (a simulated lock joins):",
        f"  {post(f'/v1/devices/{device}/actions/clear_code', {'slot_id': 3})}",
        f"  {post(f'/v1/gateways/{gateway_id}/actions/pair_devices', {'duration': 30})}",
        "Follow one action request (use the id an action printed):",
        f"  curl -s {auth} {api}/v1/action_requests/ACTION_REQUEST_ID",
        "Door events, and the devices with their state:",
        f"  curl -s {auth} {api}/v1/events",
        f"  curl -s {auth} {api}/v1/devices",
        "",
        f"{READY_LINE}. Ctrl-C stops it.",
    ]
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    if args.locks < 1:
        # claim() waits for the locks to reach the cloud, and the guide's commands act on one
        print(
            "gatewayd demo: --locks must be at least 1 (the commands it prints act on a lock)",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="gatewayd-demo-") as tmp:
        # absolute: the config refuses a relative state_dir
        work = Path(args.dir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        api_key = "demo_" + secrets.token_urlsafe(12)
        try:
            cloud, cloud_port = start_cloud(work, api_key, args.cloud_port)
        except DemoError as exc:
            print(f"gatewayd demo: {exc} (--cloud-port 0 takes a free port)", file=sys.stderr)
            return 1
        try:
            try:
                cfg = parse_config(
                    demo_config(work / "gateway", args.locks, args.status_port, cloud_port)
                )
            except ConfigError as exc:  # e.g. more locks than the simulator takes
                print(f"gatewayd demo: {exc}", file=sys.stderr)
                return 2
            log_stream = (work / "gatewayd.log").open("a", encoding="utf-8")
            gwlog.configure("info", "json", log_stream)
            daemon = Daemon(cfg, handle_signals=True)
            api = f"http://127.0.0.1:{cloud_port}"

            async def main() -> None:
                async with anyio.create_task_group() as tg:

                    async def serve() -> None:
                        await daemon.run()
                        # stopped (Ctrl-C): nothing more to wait for, a claim under way included
                        tg.cancel_scope.cancel()

                    tg.start_soon(serve)
                    await daemon.wait_started()
                    claimed = await claim(daemon, api, api_key)
                    assert daemon.status_port is not None
                    status = f"http://127.0.0.1:{daemon.status_port}"
                    # the daemon's config with the port it got, for `gatewayd status|token -c`
                    config = work / "gatewayd.toml"
                    config.write_text(
                        demo_config(work / "gateway", args.locks, daemon.status_port, cloud_port)
                    )
                    print(guide(api, api_key, status, claimed, work, config), flush=True)

            try:
                with contextlib.suppress(KeyboardInterrupt):
                    anyio.run(main)
            except Exception as exc:
                if (taken := find_listen_error(exc)) is None:
                    raise
                print(
                    f"gatewayd demo: {taken} (--status-port 0 takes a free port)", file=sys.stderr
                )
                return 1
            finally:
                log_stream.close()
        finally:
            cloud.terminate()
            try:
                cloud.wait(5)
            except subprocess.TimeoutExpired:
                cloud.kill()
    return 0
