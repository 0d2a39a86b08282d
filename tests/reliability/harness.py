"""Real processes for the reliability suite: devcloud and gatewayd as processes, a REST client,
the claim flow, and the invariants every fault trial must keep."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
import anyio
import psutil

from tests.reliability import leakscan
from tests.support import ROOT, config_text, free_port

API_KEY = "reliability-api-key-7f3c"
TERMINAL = frozenset({"completed", "failed", "gateway_failure"})
_LISTENING = re.compile(rb"devcloud listening on https?://[^:]+:(\d+)")


def _pump(stream: IO[bytes], log: Path, first_line: list[bytes] | None = None) -> None:
    """Copy a child's output to a file, line by line, as journald would receive it."""
    with log.open("ab") as out:
        for line in iter(stream.readline, b""):
            if first_line is not None and not first_line:
                first_line.append(line)
            out.write(line)
            out.flush()


class DevcloudProcess:
    """`python -m devcloud.cli serve` on loopback; restartable on the same db and port."""

    def __init__(self, db: Path, log: Path, *, port: int = 0, args: Iterable[str] = ()) -> None:
        self.db = db
        self.log = log
        self.port = port
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        leakscan.register(API_KEY)

    def start(self, timeout: float = 20) -> DevcloudProcess:
        port = self.port
        cmd = [sys.executable, "-m", "devcloud.cli", "serve", "--port", str(port)]
        cmd += ["--db", str(self.db), "--api-key", API_KEY, "--log-format", "json", *self.args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        first: list[bytes] = []
        self._threads = [
            threading.Thread(target=_pump, args=(self.proc.stdout, self.log, first), daemon=True),
            threading.Thread(target=_pump, args=(self.proc.stderr, self.log), daemon=True),
        ]
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + timeout
        while not first:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"devcloud did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)
        match = _LISTENING.search(first[0])
        assert match is not None, first[0]
        self.port = int(match.group(1))
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tunnel_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/gateway/tunnel"

    def rss(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        for t in self._threads:
            t.join(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def db_conn(self) -> sqlite3.Connection:
        """A read-only view of devcloud's database (WAL: it reads while devcloud writes)."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn


class GatewayProcess:
    """`gatewayd run` as a process whose output goes through a pipe (as to journald)."""

    def __init__(self, state_dir: Path, log: Path, cloud_url: str, **cfg: Any) -> None:
        self.state_dir = state_dir
        self.log = log
        self.status_port = free_port()
        self.config_file = state_dir.parent / f"{state_dir.name}.toml"
        self.config_file.write_text(
            config_text(state_dir, status_port=self.status_port, cloud_url=cloud_url, **cfg)
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> GatewayProcess:
        cmd = [sys.executable, "-m", "gatewayd.cli", "run", "-c", str(self.config_file)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        self._thread = threading.Thread(target=_pump, args=(self.proc.stdout, self.log))
        self._thread.daemon = True
        self._thread.start()
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 15) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        if self._thread is not None:
            self._thread.join(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_records(self) -> Iterator[dict[str, Any]]:
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    yield json.loads(line)

    def action_log(self) -> ActionLog:
        """When each action started and finished, from the gateway's log (appended to across
        restarts)."""
        out = ActionLog()
        for r in self.log_records():
            if "timestamp" not in r:
                continue
            at = _ts(str(r["timestamp"]))
            if r.get("event") == "actions.status":
                if r.get("status") == "processing":
                    out.started[str(r["action_request_id"])].append(at)
                elif r.get("status") in TERMINAL:
                    out.finished[str(r["action_request_id"])] = at
        return out

    def produced_events(self) -> list[tuple[str, str]]:
        """(event id, device id) of every door event the gateway produced, in order."""
        return [
            (str(r["event_id"]), str(r["device_id"]))
            for r in self.log_records()
            if r.get("event") == "registry.door_event"
        ]


class Rest:
    """devcloud's REST API with the API key."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.auth = {"Authorization": aiohttp.encode_basic_auth(API_KEY)}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(
            method, self.base + path, json=body, headers=self.auth
        ) as resp:
            return resp.status, await resp.json(content_type=None)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        return await r.json()


async def wait_for(what: str, check: Any, timeout: float = 30, every: float = 0.1) -> Any:
    """Poll an async predicate until it returns something truthy."""
    with anyio.fail_after(timeout):
        while True:
            try:
                value = await check()
            except (aiohttp.ClientError, OSError):
                value = None
            if value:
                return value
            await anyio.sleep(every)
    raise AssertionError(what)  # pragma: no cover - fail_after raises first


async def healthy(http: aiohttp.ClientSession, gw: GatewayProcess, timeout: float = 30) -> None:
    async def ok() -> bool:
        if not gw.alive():
            raise AssertionError(f"gatewayd exited: {gw.log.read_text()[-3000:]}")
        async with http.get(gw.base + "/healthz") as r:
            return r.status == 200

    await wait_for("gatewayd healthy", ok, timeout)


async def claim(http: aiohttp.ClientSession, rest: Rest, gw: GatewayProcess, locks: int) -> str:
    """Claim a running gateway through REST; wait until the cloud lists its locks."""
    await healthy(http, gw)

    async def unclaimed_up() -> Any:
        st = await get_json(http, gw.base + "/status")
        return st if st["tunnel"]["state"] == "unclaimed" else None

    status = await wait_for("gateway waits for its claim", unclaimed_up)
    token = status["gateway"]["registration_token"]
    code, location = await rest.call(
        "POST", "/v1/locations", {"name": "reliability lab", "timezone": "UTC"}
    )
    assert code == 200, location
    code, gateway = await rest.call(
        "POST",
        f"/v1/locations/{location['id']}/register_gateway",
        {"registration_token": token, "name": gw.state_dir.name},
    )
    assert code == 200, gateway

    async def listed() -> bool:
        code, body = await rest.call("GET", "/v1/devices")
        return code == 200 and len(body if isinstance(body, list) else body["devices"]) >= locks

    await wait_for("devices listed in the cloud", listed)
    return str(gateway["id"])


async def credential_of(gw: GatewayProcess) -> str:
    """The gateway's stored credential (read from its store on disk), registered as a secret."""
    conn = sqlite3.connect(f"file:{gw.state_dir / 'gatewayd.db'}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT credential FROM identity").fetchone()
    finally:
        conn.close()
    assert row is not None
    assert row[0], "not claimed"
    leakscan.register(str(row[0]))
    return str(row[0])


async def drained(http: aiohttp.ClientSession, gw: GatewayProcess, timeout: float = 60) -> None:
    """Wait until the gateway's outbox is empty and its tunnel is connected."""

    async def empty() -> bool:
        st = await get_json(http, gw.base + "/status")
        return bool(
            st["store"]["outbox_backlog"] == 0
            and st["tunnel"]["state"] == "connected"
            and not st["actions"]["in_flight"]
            and st["actions"]["queued"] == 0
        )

    await wait_for("outbox drained", empty, timeout, every=0.2)


# --------------------------------------------------------------------------- invariants


@dataclass
class ActionLog:
    """The gateway's own account: action starts (`processing`) and ends."""

    started: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    finished: dict[str, datetime] = field(default_factory=dict)


@dataclass
class Outcome:
    """What one trial left in the cloud, checked against what the gateway produced."""

    produced: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    reordered: int = 0
    actions: int = 0
    executed_twice: int = 0
    not_terminal: int = 0
    several_terminal: int = 0
    after_deadline: int = 0
    completed_without_effect: int = 0
    cloud_dedupes: int = 0
    late_reports: int = 0  # a gateway report the cloud had to refuse: it said gateway_failure
    gateway_failures: int = 0  # requests the cloud gave up on (offline, hand-off timeout)
    ran_after_failure: int = 0  # the cloud said gateway_failure, yet the gateway ran it
    problems: list[str] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        for name in self.__dataclass_fields__:
            if name == "problems":
                self.problems += other.problems
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def assert_clean(self, allowed_lost: int = 0) -> None:
        assert self.lost <= allowed_lost, self.problems[:10]
        for name in (
            "duplicated",
            "reordered",
            "executed_twice",
            "not_terminal",
            "several_terminal",
            "after_deadline",
            "completed_without_effect",
            "late_reports",
            "ran_after_failure",
        ):
            assert getattr(self, name) == 0, (name, self.problems[:10])


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def cloud_actions(cloud: DevcloudProcess, gateway_id: str) -> dict[str, str]:
    """Every action request the cloud holds for this gateway: id -> status."""
    conn = cloud.db_conn()
    try:
        return {
            r["id"]: r["status"]
            for r in conn.execute(
                "SELECT id, status FROM action_requests WHERE gateway_id = ?", (gateway_id,)
            )
        }
    finally:
        conn.close()


def check(
    cloud: DevcloudProcess,
    gateway_id: str,
    produced: list[tuple[str, str]],
    cloud_log: Path | None = None,
    gateway: ActionLog | None = None,
) -> Outcome:
    """Compare the cloud's events and action requests with what the gateway produced.

    Every action request the cloud created for the gateway is checked, including ones whose
    REST response the client never saw (e.g. the cloud was killed while answering). With the
    gateway's `ActionLog`, an action that started twice ran twice, and one that started after
    its deadline ran late, whether or not the lock reported it. Every driver sends a `remote`
    report for each lock/unlock the lock confirmed, also one that found the bolt already there.
    """
    action_ids = list(cloud_actions(cloud, gateway_id))
    out = Outcome(produced=len(produced), actions=len(action_ids))
    conn = cloud.db_conn()
    try:
        rows = conn.execute(
            "SELECT id, device_id, body FROM events WHERE gateway_id = ? ORDER BY n", (gateway_id,)
        ).fetchall()
        by_action: dict[str, list[dict[str, Any]]] = defaultdict(list)
        seen: set[str] = set()
        cloud_order: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            if row["id"] in seen:
                out.duplicated += 1
                out.problems.append(f"event {row['id']} stored twice")
            seen.add(row["id"])
            cloud_order[row["device_id"]].append(row["id"])
            body = json.loads(row["body"])
            details = body.get("details") or {}
            if details.get("method") == "remote" and details.get("action_request_id"):
                by_action[str(details["action_request_id"])].append(body)
        out.delivered = len(seen)
        produced_ids = {e for e, _ in produced}
        for event_id, device_id in produced:
            if event_id not in seen:
                out.lost += 1
                out.problems.append(f"event {event_id} of {device_id} never reached the cloud")
        extra = seen - produced_ids
        if extra:
            out.problems.append(f"{len(extra)} cloud events the gateway log does not show")
        gateway_order: dict[str, list[str]] = defaultdict(list)
        for event_id, device_id in produced:
            gateway_order[device_id].append(event_id)
        for device_id, ids in gateway_order.items():
            delivered_in_gw_order = [e for e in ids if e in seen]
            cloud_seq = [e for e in cloud_order[device_id] if e in produced_ids]
            if delivered_in_gw_order != cloud_seq:
                out.reordered += 1
                out.problems.append(f"events of {device_id} arrived out of order")
        for action_id in action_ids:
            ar = conn.execute(
                "SELECT status, deadline, action, entity_id FROM action_requests WHERE id = ?",
                (action_id,),
            ).fetchone()
            if ar is None or ar["status"] not in TERMINAL:
                out.not_terminal += 1
                out.problems.append(f"action {action_id} not terminal: {ar and ar['status']}")
                continue
            terminal = [
                (r["status"], r["source"])
                for r in conn.execute(
                    "SELECT status, source FROM action_transitions WHERE action_request_id = ?"
                    " ORDER BY n",
                    (action_id,),
                )
                if r["status"] in TERMINAL
            ]
            from_gateway = [s for s, src in terminal if src == "gateway"]
            if len(from_gateway) > 1:
                out.several_terminal += 1
                out.problems.append(f"action {action_id} ended twice: {terminal}")
            if len(terminal) > len(from_gateway) and from_gateway:
                out.late_reports += 1
                out.problems.append(f"action {action_id}: a gateway report after {terminal[0]}")
            effects = by_action.get(action_id, [])
            starts = gateway.started.get(action_id, []) if gateway is not None else []
            out.gateway_failures += ar["status"] == "gateway_failure"
            if ar["status"] == "gateway_failure" and (effects or starts):
                out.ran_after_failure += 1  # the hand-off must have cancelled it
                out.problems.append(f"action {action_id} ran after the cloud's gateway_failure")
            if len(effects) > 1 or len(starts) > 1:
                out.executed_twice += 1
                out.problems.append(
                    f"action {action_id} ran {max(len(effects), len(starts))} times"
                )
            deadline = _ts(ar["deadline"])
            if any(_ts(e["date_created"]) > deadline for e in effects) or any(
                at > deadline for at in starts
            ):
                out.after_deadline += 1
                out.problems.append(f"action {action_id} ran after its deadline")
            # A completed lock/unlock has the lock's own report (set_code: `code set on device`).
            if ar["status"] == "completed" and ar["action"] in ("lock", "unlock") and not effects:
                out.completed_without_effect += 1
                out.problems.append(f"action {action_id} completed with no lock report")
    finally:
        conn.close()
    if cloud_log is not None and cloud_log.exists():
        out.cloud_dedupes = cloud_log.read_text(errors="replace").count('"tunnel.duplicate"')
    return out


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    """A plain text table for the test output (and RELIABILITY.md)."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title]
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    return text
