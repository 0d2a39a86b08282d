"""`gatewayd demo`: the reference cloud and a daemon with simulated locks on loopback, claimed
through the REST API, with curl commands that work. devcloud runs as its own process: the
daemon never imports it."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import stat
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
from gatewayd.status import find_listen_error, find_raised

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
    """Why the demo cannot run, in one line for the terminal; `gatewayd demo` exits with `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _port_hint(flag: str) -> str:
    return f'({flag} 0 takes a free port; with make: make demo ARGS="{flag} 0")'


def start_cloud(work: Path, api_key: str, port: int) -> tuple[subprocess.Popen[bytes], int]:
    """Start `devcloud serve` and return it with the port it listens on. The API key goes in its
    environment: an argument would show in `ps` to every user of the machine. Its stdin is a pipe
    this process holds open: a demo killed outright (kill -9, the OOM killer) closes it, and
    devcloud stops instead of serving on, keeping the port from the next demo."""
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
                "--handoff-timeout",
                "10",
                "--log-format",
                "json",
                "--stop-at-stdin-eof",
            ],
            stdin=subprocess.PIPE,
            stdout=sink,
            stderr=err,
            env={**os.environ, "DEVCLOUD_API_KEY": api_key},
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = (work / "devcloud.log").read_text(errors="replace").strip().splitlines()
            why = said[-1] if said else f"devcloud exited with {proc.returncode}"
            hint = f" {_port_hint('--cloud-port')}" if "cannot listen" in why else ""
            raise DemoError(why + hint)
        for line in out.read_text().splitlines():
            if line.startswith("devcloud listening on "):
                return proc, int(line.rsplit(":", 1)[1])
        time.sleep(0.05)
    proc.kill()
    raise DemoError("devcloud did not start within 30 s")


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None = None
) -> Any:
    """One REST call to the cloud: its JSON, or a DemoError with the cloud's own message."""
    path = "/v1/" + url.split("/v1/", 1)[-1]
    try:
        async with http.request(method, url, json=body) as r:
            answer = await r.json()
    except (aiohttp.ClientError, ValueError) as exc:
        raise DemoError(f"{method} {path}: no answer from the cloud ({exc})") from None
    if r.status != 200:
        error = answer.get("error") if isinstance(answer, dict) else None
        why = error.get("message") if isinstance(error, dict) else None
        raise DemoError(f"{method} {path}: the cloud answered {r.status}: {why or answer}")
    return answer


async def claim(daemon: Daemon, api: str, api_key: str) -> dict[str, Any]:
    """Create a location and claim the daemon with its registration token, as a user would; a
    gateway a run before in the same --dir claimed is looked up in the cloud instead."""
    assert daemon.store is not None
    try:
        with anyio.fail_after(30):
            while daemon.tunnel is None or not daemon.tunnel.up:  # noqa: ASYNC110 - polls a property
                await anyio.sleep(0.05)
    except TimeoutError:
        raise DemoError("the gateway did not connect to the cloud within 30 s") from None
    identity = daemon.store.identity()
    async with aiohttp.ClientSession(auth=aiohttp.BasicAuth(api_key, "")) as http:
        if identity.claimed:
            gateway = await _call(http, "GET", f"{api}/v1/gateways/{identity.gateway_id}")
        else:
            house = {"name": "Demo house", "timezone": "UTC"}
            location = await _call(http, "POST", f"{api}/v1/locations", house)
            gateway = await _call(
                http,
                "POST",
                f"{api}/v1/locations/{location['id']}/register_gateway",
                {"registration_token": identity.registration_token, "name": "demo gateway"},
            )
        try:
            with anyio.fail_after(30):
                while True:
                    devices = await _call(http, "GET", f"{api}/v1/devices")
                    if len(devices) >= len(daemon.registry.devices()) > 0:  # type: ignore[union-attr]
                        break
                    await anyio.sleep(0.1)
        except TimeoutError:
            raise DemoError("the gateway's locks did not reach the cloud within 30 s") from None
    return {"gateway": gateway, "devices": devices}


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
    locks = len(claimed["devices"])
    auth = f'-u "{api_key}:" -H "Content-Type: application/json"'

    def post(path: str, data: dict[str, Any] | None = None) -> str:
        body = f" -d '{json.dumps({'data': data})}'" if data is not None else ""
        return f"curl -s -X POST {auth}{body} {api}{path}"

    lines = [
        "",
        f"The reference cloud is at {api}, API key {api_key}",
        f"The gateway ({gateway_id}) is claimed and has {locks} lock{'s' * (locks != 1)}.",
        f"Status page: {status}/    Logs: {work}",
        f"In a terminal: {gatewayd_command()} status -c {shlex.quote(str(config))}",
        "",
        "Try it, one command at a time (each action prints its action request, which moves to"
        " completed):",
        f"  {post(f'/v1/devices/{device}/actions/unlock')}",
        f"  {post(f'/v1/devices/{device}/actions/lock')}",
        f"  {post(f'/v1/devices/{device}/actions/set_code', {'code': '1234', 'slot_id': 3})}",
        "Once set_code's action request shows completed (follow it as shown below), someone"
        " types that code at the keypad (a simulated person at the door):",
        f"  curl -s -X POST {status}/simulate -d "
        f"'{json.dumps({'device_id': device, 'what': 'keypad_unlock', 'params': {'slot_id': 3}})}'",
        "Then clear the code again, and open the pairing window (a simulated lock joins):",
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


API_KEY_FILE = "api-key"
_KEY_SHAPE = re.compile(r"demo_[A-Za-z0-9_-]{16}")


def demo_api_key(work: Path) -> str:
    """The demo cloud's API key: the one a run before this in the same directory made (its
    printed commands keep working), else a new one, kept in a file of mode 0600."""
    path = work / API_KEY_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        kept = path.read_text(encoding="ascii").strip()
        if _KEY_SHAPE.fullmatch(kept):
            return kept
    key = "demo_" + secrets.token_urlsafe(12)
    path.unlink(missing_ok=True)  # a damaged one: written again, with the mode it must have
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    return key


DEMO_PREFIX = "gatewayd-demo-"
PID_FILE = "demo.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def remove_stale_demo_dirs(parent: Path) -> None:
    """Remove the temporary dirs of demos killed outright (kill -9, the OOM killer, a power
    cut): each holds a gateway credential and the demo's API key. Only a dir of this user whose
    pid file names a process that is gone: one without a pid file (a demo starting) is left."""
    for path in parent.glob(f"{DEMO_PREFIX}*"):
        try:
            st = path.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            pid = int((path / PID_FILE).read_text(encoding="ascii"))
            if pid <= 0 or _alive(pid):  # 0 and below name process groups
                continue
        except (OSError, ValueError, OverflowError, UnicodeDecodeError):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _write_pid_file(work: Path) -> None:
    """Written whole, then renamed in place: another demo never reads a partial pid."""
    part = work / f"{PID_FILE}.part"
    part.write_text(f"{os.getpid()}\n", encoding="ascii")
    part.replace(work / PID_FILE)


def hold_demo_dir(work: Path) -> tuple[int, str | None]:
    """Make this demo the only one in `work`, for as long as the returned descriptor stays
    open; and say so when a demo before this one in it ended without stopping.

    Two demos in one --dir ran two daemons on one gateway store and two clouds on one
    database, and the second one's config (its ports) replaced the first's under the commands
    the first printed. The pid file in it is locked while a demo runs: the lock goes with its
    process however it ends (kill -9, a crash), so a pid left in a file nobody holds is a demo
    that did not stop; its gateway, cloud database and API key are carried on with."""
    path = work / PID_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {held})" if held.isdigit() else ""
            stop = f"kill {held}" if held.isdigit() else "Ctrl-C in its terminal"
            raise DemoError(
                f"another demo{who} is running in {work}: stop it ({stop}) first, "
                "or give this one another --dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # removed by a demo that ended meanwhile
            same = False
        if same:
            break
        os.close(fd)
    left = os.read(fd, 32).decode("ascii", "replace").strip()
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    if not left.isdigit() or int(left) == os.getpid():
        return fd, None
    return fd, (
        f"The demo that ran in {work} before (pid {left}) did not stop (killed, or crashed):"
        " carrying on with its gateway, cloud database and API key."
    )


def release_demo_dir(work: Path, fd: int) -> None:
    """A demo that stops leaves no pid file: one found by the next demo is one that did not."""
    with contextlib.suppress(OSError):
        (work / PID_FILE).unlink()
    os.close(fd)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C; a DemoError says in one line why it cannot."""
    if args.locks < 1:
        # claim() waits for the locks to reach the cloud, and the guide's commands act on one
        raise DemoError("--locks must be at least 1 (the commands it prints act on a lock)", 2)
    remove_stale_demo_dirs(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=DEMO_PREFIX) as tmp:
        _write_pid_file(Path(tmp))
        # absolute: the config refuses a relative state_dir
        work = Path(args.dir or tmp).resolve()
        # its own: the cloud's database, the logs and the gateway's state (credential included)
        work.mkdir(mode=0o700, parents=True, exist_ok=True)
        held = None
        if args.dir:  # a temporary dir is this demo's own, its pid file written above
            held, note = hold_demo_dir(work)
            if note is not None:
                print(note, flush=True)
        try:
            return _run_in(work, args)
        finally:
            if held is not None:
                release_demo_dir(work, held)


def _run_in(work: Path, args: argparse.Namespace) -> int:
    """The demo in its directory, which it holds: the cloud, then the daemon, until Ctrl-C."""
    api_key = demo_api_key(work)
    cloud, cloud_port = start_cloud(work, api_key, args.cloud_port)
    try:
        try:
            cfg = parse_config(
                demo_config(work / "gateway", args.locks, args.status_port, cloud_port)
            )
        except ConfigError as exc:  # e.g. more locks than the simulator takes
            raise DemoError(str(exc), 2) from None
        with (work / "gatewayd.log").open("a", encoding="utf-8") as log_stream:
            gwlog.configure("info", "json", log_stream)
            _run_daemon(Daemon(cfg, handle_signals=True), args, work, api_key, cloud_port)
    finally:
        cloud.terminate()
        try:
            cloud.wait(5)
        except subprocess.TimeoutExpired:
            cloud.kill()
    return 0


def _run_daemon(
    daemon: Daemon, args: argparse.Namespace, work: Path, api_key: str, cloud_port: int
) -> None:
    """Run the daemon, claim it and print the guide; until Ctrl-C."""
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
    except Exception as exc:  # noqa: BLE001 - logged with its traceback, told in one line
        if (said := find_raised(exc, DemoError)) is not None:
            raise said from None
        if (taken := find_listen_error(exc)) is not None:
            raise DemoError(f"{taken} {_port_hint('--status-port')}") from None
        cause = find_raised(exc, Exception) or exc
        # a defect: its traceback goes to the log, the terminal gets one line
        gwlog.get_logger("gatewayd.demo").exception("demo.failed")
        # a temporary --dir goes when the demo ends: the log with it
        where = f"traceback in {work / 'gatewayd.log'}" if args.dir else "--dir keeps its log"
        raise DemoError(f"{type(cause).__name__}: {cause} ({where})") from None
