"""The real zwave-js stack for tests: mock-server (mock controller + lock nodes) and zwave-server.

Both run as node processes on free loopback ports, started and stopped by pid. mock-server
accepts a single TCP connection, so its port is never probed: readiness is its log line.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import stop_process

ROOT = Path(__file__).resolve().parents[2]
MOCK_DIR = Path(__file__).resolve().parent / "mock"
MOCK_SERVER = ROOT / "node_modules" / "zwave-js" / "bin" / "mock-server.cjs"
ZWAVE_SERVER = ROOT / "node_modules" / "@zwave-js" / "server" / "dist-esm" / "bin" / "server.js"
HOME_ID = 0x7E57D00D
LOCK_NODES = (2, 3, 4)  # node ids of the mock locks, in order (see mock/locks.cjs)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def native_id(node_id: int, home_id: int = HOME_ID) -> str:
    return f"{home_id:08x}-{node_id}"


class StackError(RuntimeError):
    pass


class _Proc:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, needle: str, timeout: float, start: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log.read_text(errors="replace")[start:]:
                return
            if self.proc.poll() is not None:
                raise StackError(f"{self.name} exited ({self.proc.returncode}): {self.tail()}")
            time.sleep(0.05)
        raise StackError(f"{self.name}: no {needle!r} within {timeout}s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self._fh.close()


class ZWaveStack:
    """mock-server with `locks` door locks, and zwave-server in front of it.

    `supervision`: the locks support Supervision CC, so zwave-js supervises their Door Lock
    Operation Set and User Code Set and returns each lock's Supervision status.
    `secure_inclusion`: the mock controller gets zwave-server's network keys, so a lock waiting
    for inclusion can be made an S2 node (`pending_security`) and run through S2 bootstrapping.
    """

    def __init__(
        self,
        workdir: Path,
        locks: int = 2,
        home_id: int = HOME_ID,
        *,
        supervision: bool = False,
        secure_inclusion: bool = False,
    ) -> None:
        self.workdir = workdir
        self.locks = locks
        self.home_id = home_id
        self.supervision = supervision
        self.secure_inclusion = secure_inclusion
        self.security_keys: dict[str, str] = {}
        self.serial_port = free_port()
        self.control_port = free_port()
        self.ws_port = free_port()
        self.mock: _Proc | None = None
        self.server: _Proc | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.server_config = workdir / "zwave-server.json"
        self._write_server_config()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def daemon_toml(self, *, code_recheck_s: float = 0.5) -> str:
        """A daemon config's [drivers.zwave] section for this stack's locks."""
        return f"""
[drivers.zwave]
enabled = true
url = "{self.url}"
connect_timeout_s = 5.0
interview_timeout_s = 30.0
reconnect_max_s = 2.0
code_recheck_s = {code_recheck_s}
mock_control_url = "{self.control_url}"
"""

    @property
    def lock_nodes(self) -> tuple[int, ...]:
        return LOCK_NODES[: self.locks]

    def _write_server_config(self) -> None:
        # Fresh random network keys per run; a real box generates them once at install.
        keys = {
            name: secrets.token_hex(16)
            for name in ("S0_Legacy", "S2_Unauthenticated", "S2_Authenticated", "S2_AccessControl")
        }
        self.security_keys = keys
        cfg: dict[str, Any] = {
            "securityKeys": keys,
            "storage": {"cacheDir": str(self.workdir / "cache")},
            "logConfig": {"enabled": True, "level": "info", "logToFile": False},
        }
        fd = os.open(self.server_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(cfg, fh)

    def start(self) -> None:
        self.start_mock()
        self.start_server()

    def start_mock(self) -> None:
        env = {
            **os.environ,
            "ZWAVE_MOCK_LOCKS": str(self.locks),
            "ZWAVE_MOCK_CONTROL_PORT": str(self.control_port),
            "ZWAVE_MOCK_HOME_ID": str(self.home_id),
            "ZWAVE_MOCK_SUPERVISION": "1" if self.supervision else "0",
        }
        if self.secure_inclusion:
            env["ZWAVE_MOCK_SECURITY_KEYS"] = json.dumps(self.security_keys)
        self.mock = _Proc(
            "mock-server",
            [
                "node",
                "-r",
                str(MOCK_DIR / "preload.cjs"),
                str(MOCK_SERVER),
                "-i",
                "127.0.0.1",
                "-p",
                str(self.serial_port),
                "-c",
                str(MOCK_DIR / "locks.cjs"),
            ],
            self.workdir / "mock-server.log",
            env,
        )
        self.mock.wait_for_line("Server listening on tcp://", 30)
        self.mock.wait_for_line("Mock control listening", 10)

    def start_server(self) -> None:
        log = self.workdir / "zwave-server.log"
        start = log.stat().st_size if log.exists() else 0
        self.server = _Proc(
            "zwave-server",
            [
                "node",
                str(ZWAVE_SERVER),
                f"tcp://127.0.0.1:{self.serial_port}",
                "--config",
                str(self.server_config),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ws_port),
                "--disable-dns-sd",
            ],
            log,
            dict(os.environ),
        )
        self.server.wait_for_line("server listening on", 60, start=start)

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def stop(self) -> None:
        self.stop_server()
        if self.mock is not None:
            self.mock.stop()
            self.mock = None

    def pids(self) -> list[int]:
        return [p.pid for p in (self.mock, self.server) if p is not None]

    def alive(self) -> bool:
        """Both processes started and still running."""
        procs = (self.mock, self.server)
        return all(p is not None and p.proc.poll() is None for p in procs)

    def control(self, node_id: int, what: str, **params: Any) -> Any:
        """Act on a mock lock like a person at the door (see mock/locks.cjs)."""
        return self._post(f"/node/{node_id}/{what}", params)

    def reset(self) -> dict[str, Any]:
        """Every lock in the network back to a clean state (faults none, no codes, bolt locked,
        door closed, online), its reports already taken in by zwave-js; and a lock waiting to be
        included again if the previous one joined. Returns {nodes: [ids], pending: id | None}."""
        result: dict[str, Any] = self._post("/controller/reset", {})
        return result

    def pending_security(self, *classes: str) -> dict[str, Any]:
        """The lock waiting for inclusion becomes an S2 node asking for these security classes
        ("S2_AccessControl", "S0_Legacy", ...; none: insecure). Needs `secure_inclusion`.
        Returns {id, pin}: its node id and the 5-digit PIN of its DSK (None when insecure)."""
        result: dict[str, Any] = self._post("/controller/pending_security", {"classes": classes})
        return result

    def remove_node(self, node_id: int) -> list[int]:
        """Take a node out of the mock controller's node table, as an exclusion through another
        client would; zwave-js sees it on its next start. Returns the node ids left."""
        result: dict[str, Any] = self._post("/controller/remove_node", {"node_id": node_id})
        return list(result["nodes"])

    def _post(self, path: str, params: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            f"{self.control_url}{path}",
            data=json.dumps(params).encode(),
            method="POST",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())["result"]


SHARED_LOCKS = 2  # the shared stack: two locks in the network, a third waiting for inclusion
_START_ATTEMPTS = 3
_shared_lock = threading.Lock()
_shared: ZWaveStack | None = None


def shared_stack() -> ZWaveStack:
    """One stack for every test in this process that can share it (blocking: call it from a
    thread in async code), started on first use and stopped when the process exits. Node
    processes hold no asyncio state, so each test's event loop can use them; a test calls
    `reset()` first. A stack whose processes died is replaced."""
    global _shared
    with _shared_lock:
        if _shared is not None and not _shared.alive():
            _discard(_shared)
            _shared = None
        for attempt in range(_START_ATTEMPTS):
            if _shared is not None:
                break
            stack = ZWaveStack(Path(tempfile.mkdtemp(prefix="gatewayd-zwave-")), SHARED_LOCKS)
            try:
                stack.start()
            except StackError:
                # free ports are picked, then bound by node: another process may take one first
                _discard(stack)
                if attempt + 1 == _START_ATTEMPTS:
                    raise
                continue
            except BaseException:
                _discard(stack)
                raise
            atexit.register(_discard, stack)
            _shared = stack
        assert _shared is not None
        return _shared


def _discard(stack: ZWaveStack) -> None:
    stack.stop()
    shutil.rmtree(stack.workdir, ignore_errors=True)
