"""Shared test helpers: free ports, configs, an in-process daemon, a daemon process."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from gatewayd.config import parse_config
from gatewayd.daemon import Daemon
from gatewayd.driver import Driver
from gatewayd.model import ActionRequest, utcnow
from gatewayd.sdnotify import Notifier

ROOT = Path(__file__).resolve().parent.parent

UNIT = ROOT / "systemd" / "gatewayd.service"


def unit_values(key: str) -> list[str]:
    """The values of `key=` lines in systemd/gatewayd.service, in order."""
    return [
        line.partition("=")[2].strip()
        for line in UNIT.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


def unit_environment() -> dict[str, str]:
    """The Environment= settings of systemd/gatewayd.service."""
    env: dict[str, str] = {}
    for value in unit_values("Environment"):
        for pair in shlex.split(value):
            name, _, val = pair.partition("=")
            env[name] = val
    return env


def unit_process_environment() -> dict[str, str]:
    """The environment the unit gives the daemon: a PATH and its Environment= settings, nothing
    from the shell the tests run in."""
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return {"PATH": path, **unit_environment()}


def unit_command(root: Path, config: Path) -> list[str]:
    """The unit's ExecStart, run from an install staged under `root`, with config `config`."""
    argv = shlex.split(unit_values("ExecStart")[0])
    argv[0] = str(root) + argv[0]
    argv[argv.index("-c") + 1] = str(config)
    return argv


def need_a_tmpfs_namespace(where: Path) -> None:
    """Skip a test that mounts a small tmpfs (a real full disk) in a user and mount namespace
    (`unshare -rm`) where there is none: a container, a kernel without unprivileged ones."""
    where.mkdir(exist_ok=True)
    mount = 'mount -t tmpfs -o size=64k tmpfs "$1"'
    try:
        probe = subprocess.run(
            ["unshare", "-rm", "sh", "-c", mount, "sh", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError as exc:  # no unshare at all
        pytest.skip(f"no user and mount namespace for a tmpfs: {exc}")
    if probe.returncode != 0:
        pytest.skip(f"no user and mount namespace for a tmpfs: {probe.stderr.strip()}")


def fill_disk(path: Path) -> None:
    """Write zeros to `path` until its file system has no block left: a test's full disk."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 1):
            try:
                while f.write(bytes(size)):
                    pass
            except OSError:
                pass


def on_a_small_disk(tmp_path: Path, size: str, *scripts: str, timeout: float = 60) -> Any:
    """Run each Python script in turn inside a user and mount namespace over a tmpfs of `size`
    (`4m`): a real full disk (ENOSPC), gone with the namespace. Each gets the tmpfs as argv[1],
    and the repository as its cwd; the last prints JSON. Returns (that JSON, the output)."""
    mount = tmp_path / "mnt"
    need_a_tmpfs_namespace(mount)
    runs = " && ".join(f'"$2" -c "${n + 3}" "$1"' for n in range(len(scripts)))
    shell = f'mount -t tmpfs -o size={size} tmpfs "$1" && {runs}'
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell, "sh", str(mount), sys.executable, *scripts],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.splitlines()[-1]), proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(
    state_dir: Path,
    *,
    locks: int = 2,
    latency_ms: float = 0,
    status_port: int = 0,
    cloud_url: str = "",
    cloud_ca_file: str = "",
    local_actions: bool = True,
    allowed_hosts: tuple[str, ...] = (),
    log_format: str = "json",
    extra: str = "",
) -> str:
    cloud = (
        f'[cloud]\nurl = "{cloud_url}"\nconnect_timeout_s = 3\nca_file = "{cloud_ca_file}"\n'
        if cloud_url
        else ""
    )
    return f"""
[gateway]
state_dir = "{state_dir}"
name = "test gateway"
{cloud}
[status]
listen = "127.0.0.1:{status_port}"
local_actions = {"true" if local_actions else "false"}
allowed_hosts = {json.dumps(list(allowed_hosts))}

[log]
format = "{log_format}"
level = "debug"

[drivers.sim]
enabled = true
locks = {locks}
latency_ms = {latency_ms}
{extra}
"""


@asynccontextmanager
async def running_daemon(
    state_dir: Path,
    *,
    notifier: Notifier | None = None,
    driver_classes: Mapping[str, type[Driver]] | None = None,
    start_timeout: float = 30,
    **kw: Any,
) -> AsyncIterator[Daemon]:
    """A daemon in this process, started and ready; stopped on exit."""
    config = parse_config(config_text(state_dir, **kw))
    daemon = Daemon(config, notifier=notifier, driver_classes=driver_classes)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(start_timeout):
            await daemon.wait_started()
        try:
            yield daemon
        finally:
            daemon.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 5) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


class DaemonProcess:
    """`gatewayd run` as a real process, with its output captured to a file."""

    def __init__(self, config_file: Path, log_file: Path, env: dict[str, str] | None = None):
        self.config_file = config_file
        self.log_file = log_file
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gatewayd.cli", "run", "-c", str(self.config_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )
        return self

    def wait_healthy(self, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log_file.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("daemon did not become healthy")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class TunnelServer:
    """A bare tunnel endpoint (`/v1/gateway/tunnel`) on a free loopback port, for tests that
    play the cloud's side themselves; subclasses write `handler`."""

    def __init__(self) -> None:
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        raise NotImplementedError

    async def start(self) -> Any:
        app = web.Application()
        app.router.add_get("/v1/gateway/tunnel", self.handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def stop_process(proc: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it is still running after `grace_s`; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace_s)


def wait_status(base: str, action_id: str, timeout: float = 10) -> dict[str, Any]:
    """Poll a daemon's /status (at `base`) until action `action_id` has ended; its entry."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for a in http_json(f"{base}/status")["actions"]["recent"]:
            if a["id"] == action_id:
                return dict(a)
        time.sleep(0.05)
    raise AssertionError(f"action {action_id} did not finish")


def set_code_request(device_id: str, code: str, slot_id: int) -> ActionRequest:
    """A set_code request as the cloud sends it, with a new id, due in 5 s."""
    now = utcnow()
    return ActionRequest(
        id=str(uuid.uuid4()),
        entity_type="Device",
        entity_id=device_id,
        action="set_code",
        inputs={"code": code, "slot_id": slot_id},
        created_at=now,
        deadline=now + timedelta(seconds=5),
    )
