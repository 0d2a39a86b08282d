"""`gatewayd run | status | token` on a box where something is wrong: one line saying what, and
an exit code systemd can act on (2: fix the config; 1: retried), never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.support import ROOT, config_text, free_port


def _gatewayd(
    *args: str,
    prefix: tuple[str, ...] = (),
    timeout: float = 30,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "gatewayd.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env=env,
    )


def _one_line(stderr: str) -> str:
    """The last line of stderr, after checking there is no traceback."""
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def _config(tmp_path: Path, state_dir: Path, port: int = 0) -> Path:
    cfg = tmp_path / "gatewayd.toml"
    cfg.write_text(config_text(state_dir, status_port=port))
    return cfg


def _unprivileged() -> tuple[str, ...]:
    """A command prefix under which file permissions apply (root without its DAC overrides)."""
    if os.geteuid() != 0:
        return ()
    caps = "-dac_override,-dac_read_search"
    prefix = ("setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}")
    if (
        shutil.which("setpriv") is None
        or subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode
    ):
        pytest.skip("cannot drop root's permission overrides here (setpriv)")
    return prefix


@pytest.fixture
def locked_dir(tmp_path: Path) -> Iterator[Path]:
    """A state dir nobody but its owner may enter, as the unit's 0700 StateDirectory."""
    path = tmp_path / "locked"
    path.mkdir()
    path.chmod(0)
    yield path
    path.chmod(0o700)


def test_run_with_the_status_port_taken_says_so_in_one_line(tmp_path: Path) -> None:
    """Another service on the status port ended `run` with an ExceptionGroup traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _gatewayd("run", "-c", str(_config(tmp_path, tmp_path / "state", port)))
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert "status.listen" in line
    assert f"127.0.0.1:{port}" in line


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_run_with_an_unusable_state_dir_names_the_key(tmp_path: Path, where: str) -> None:
    """A state_dir that is a file (or lies under one) ended `run` with a traceback."""
    a_file = tmp_path / "state"
    a_file.write_text("")
    state = a_file if where == "file" else a_file / "gatewayd"
    result = _gatewayd("run", "-c", str(_config(tmp_path, state)))
    assert result.returncode == 2
    assert "gateway.state_dir" in _one_line(result.stderr)


def test_run_with_a_state_dir_this_user_may_not_write(tmp_path: Path, locked_dir: Path) -> None:
    """As under ProtectSystem=strict with state_dir outside the unit's StateDirectory."""
    result = _gatewayd("run", "-c", str(_config(tmp_path, locked_dir)), prefix=_unprivileged())
    assert result.returncode == 2
    assert "gateway.state_dir" in _one_line(result.stderr)


@pytest.mark.parametrize("where", ["file", "under_a_file", "locked", "under_locked"])
def test_check_config_refuses_a_state_dir_run_would_refuse(
    tmp_path: Path, locked_dir: Path, where: str
) -> None:
    """`check-config` said ok for a state_dir `run` then refused with exit 2: it now says what
    `run` says, with its exit code, and makes nothing."""
    a_file = tmp_path / "state"
    a_file.write_text("")
    state, prefix = {
        "file": (a_file, ()),
        "under_a_file": (a_file / "gatewayd", ()),  # stops root too
        "locked": (locked_dir, _unprivileged()),
        "under_locked": (locked_dir / "gatewayd", _unprivileged()),
    }[where]
    cfg = str(_config(tmp_path, state))
    checked = _gatewayd("check-config", "-c", cfg, prefix=prefix)
    ran = _gatewayd("run", "-c", cfg, prefix=prefix)
    assert (checked.returncode, ran.returncode) == (2, 2)
    assert _one_line(checked.stderr) == _one_line(ran.stderr)
    assert "gateway.state_dir" in _one_line(checked.stderr)
    assert checked.stdout == ""


@dataclass
class _Run:
    """A `gatewayd run` process: its first `gatewayd status` answer, then its exit and output."""

    proc: subprocess.Popen[str]
    status: subprocess.CompletedProcess[str]
    out: str = ""


@contextmanager
def _running(cfg: Path) -> Iterator[_Run]:
    """`gatewayd run -c cfg` until `gatewayd status` answers; SIGTERM and its output at exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatewayd.cli", "run", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    run = None
    try:
        deadline = time.monotonic() + 30
        while (status := _gatewayd("status", "-c", str(cfg))).returncode != 0:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, status.stderr
            time.sleep(0.1)
        run = _Run(proc, status)
        yield run
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        if run is not None:
            run.out = out + err
    assert proc.returncode == 0, err


def test_run_with_a_damaged_store_starts_on_a_new_one_and_says_so(tmp_path: Path) -> None:
    """A store SQLite calls no database ended `run` with exit 1, which systemd retried every
    5 s for good: the box stayed offline until someone came to it. It now starts on a new
    store, keeps the damaged file aside, and `gatewayd status` says so."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "gatewayd.db").write_bytes(b"not a database, " * 256)
    with _running(_config(tmp_path, state, free_port())) as run:
        pass
    status = run.status
    assert "store rebuilt after damage" in status.stdout
    assert "store: found damaged at" in status.stdout
    copies = list(state.glob("gatewayd.db.corrupt-*"))
    assert [c.read_bytes() for c in copies] == [b"not a database, " * 256]
    assert copies[0].name in status.stdout
    assert '"event": "store.damaged"' in run.out


def _newer_store(state: Path) -> tuple[Path, bytes, int]:
    """A state dir whose store a newer gatewayd wrote (a release rolled back after an upgrade)."""
    import sqlite3

    from gatewayd.store import SCHEMA_VERSION, Store

    db_path = state / "gatewayd.db"
    Store.open(db_path).close()
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    return db_path, db_path.read_bytes(), SCHEMA_VERSION


def _refuses_the_newer_store(
    result: subprocess.CompletedProcess[str], db: Path, known: int
) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = _one_line(result.stderr)
    assert f"the store at {db} is schema {known + 1}" in line
    assert f"knows up to {known}" in line
    assert "install the newer gatewayd again" in line


def test_run_refuses_a_store_from_a_newer_gatewayd_in_one_line(tmp_path: Path) -> None:
    """Rolling a release back after an upgrade ended `run` with a RuntimeError traceback, and
    systemd restarted it every 5 s. Exit 2 (not restarted), one line, the store untouched."""
    state = tmp_path / "state"
    db, before, known = _newer_store(state)
    result = _gatewayd("run", "-c", str(_config(tmp_path, state)))
    _refuses_the_newer_store(result, db, known)
    assert db.read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == ["gatewayd.db"]  # nothing moved aside


def test_check_config_refuses_a_store_from_a_newer_gatewayd(tmp_path: Path) -> None:
    """`check-config` said ok for a state dir `run` could not start on. It reads the store's
    version without creating, migrating or writing anything."""
    state = tmp_path / "state"
    cfg = str(_config(tmp_path, state))
    assert _gatewayd("check-config", "-c", cfg).returncode == 0  # no store yet: nothing made
    assert not state.exists()
    db, before, known = _newer_store(state)
    os.utime(state, ns=(10**18, 10**18))  # any file made or removed in it changes this
    _refuses_the_newer_store(_gatewayd("check-config", "-c", cfg), db, known)
    assert state.stat().st_mtime_ns == 10**18, "a file was created or removed"
    assert db.read_bytes() == before

    import sqlite3

    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute(f"PRAGMA user_version = {known}")  # this gatewayd's own: ok
    conn.close()
    result = _gatewayd("check-config", "-c", cfg)
    assert result.returncode == 0, result.stderr
    assert ": ok" in result.stdout


def test_token_as_a_user_who_may_not_read_the_state_dir(tmp_path: Path, locked_dir: Path) -> None:
    """An operator's own account running `gatewayd token` got a PermissionError traceback."""
    result = _gatewayd("token", "-c", str(_config(tmp_path, locked_dir)), prefix=_unprivileged())
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert str(locked_dir) in line
    assert "Permission denied" in line


class _NotGatewayd(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>a router's admin page</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_status_asks_the_daemon_directly_whatever_proxy_the_environment_names(
    tmp_path: Path,
) -> None:
    """With http_proxy set (a box behind a company proxy), `gatewayd status` sent its request,
    for a document holding the registration token, to the proxy, and said the running daemon
    was not answering."""
    proxy = socket.create_server(("127.0.0.1", 0))
    proxy.settimeout(0)
    url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    env = {**os.environ, "http_proxy": url, "HTTP_PROXY": url}
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    cfg = _config(tmp_path, tmp_path / "state", free_port())
    try:
        with _running(cfg) as run:
            result = _gatewayd("status", "-c", str(cfg), env=env)
            with pytest.raises(BlockingIOError):
                proxy.accept()  # nobody came to the proxy
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    token = re.search(r"registration token: (\S+)", run.status.stdout)
    assert token is not None
    assert f"registration token: {token[1]}" in result.stdout


def test_status_with_no_daemon_running_says_what_to_check(tmp_path: Path) -> None:
    """`gatewayd status -c demo/gatewayd.toml` after the demo ended said "the daemon is not
    answering on 127.0.0.1:N: <urlopen error [Errno 111] Connection refused>", neither why in
    words nor what to look at."""
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        cfg = _config(tmp_path, tmp_path / "state", closed.getsockname()[1])
        result = _gatewayd("status", "-c", str(cfg))
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert "urlopen error" not in line, line
    assert "(Connection refused): is it running? (`systemctl status gatewayd`;" in line, line


def test_status_when_another_program_answers_on_the_port(tmp_path: Path) -> None:
    """`gatewayd status` ended with a JSONDecodeError traceback."""
    server = HTTPServer(("127.0.0.1", 0), _NotGatewayd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = _config(tmp_path, tmp_path / "state", server.server_address[1])
        result = _gatewayd("status", "-c", str(cfg))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    assert "not gatewayd's /status" in _one_line(result.stderr)


def test_status_when_a_program_that_does_not_speak_http_answers_on_the_port(
    tmp_path: Path,
) -> None:
    """A service with a banner of its own (SSH, a serial bridge) on the status port: `gatewayd
    status` ended with an http.client.BadStatusLine traceback."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        cfg = _config(tmp_path, tmp_path / "state", server.getsockname()[1])
        result = _gatewayd("status", "-c", str(cfg))
    finally:
        server.close()
        thread.join(5)
    assert result.returncode == 1
    assert "not HTTP" in _one_line(result.stderr)


async def test_status_output_carries_no_terminal_escape_sequences(tmp_path: Path) -> None:
    """Lock names and radio errors come from devices and libraries: printed as they were, an
    ESC sequence in one retitled, cleared or rewrote the operator's terminal."""
    from gatewayd.cli import render_status
    from tests.support import running_daemon

    async with running_daemon(tmp_path / "gw") as daemon:
        snapshot = daemon.snapshot()
    snapshot["devices"][0]["name"] = "Front door\x1b]0;owned\x07\x1b[2J"
    snapshot["tunnel"]["last_error"] = "refused\r\x1b[1Aall good"
    text = render_status(snapshot)
    assert "Front door" in text
    assert "refused" in text
    for control in ("\x1b", "\x07", "\r"):
        assert control not in text
    # bidi overrides and zero-width characters reorder or hide a line in a terminal
    snapshot["devices"][0]["name"] = "Front\u202edoor\u200b\u2066x\ufeff"
    text = render_status(snapshot)
    assert "Front?door?" in text
    for invisible in ("\u202e", "\u200b", "\u2066", "\ufeff"):
        assert invisible not in text


async def test_status_keeps_the_recent_actions_in_columns(tmp_path: Path) -> None:
    """The action column was 11 wide: `unpair_devices` pushed its status out of line."""
    from gatewayd.cli import render_status
    from tests.support import running_daemon

    async with running_daemon(tmp_path / "gw") as daemon:
        snapshot = daemon.snapshot()
    snapshot["actions"]["recent"] = [
        {"action": name, "status": "completed", "id": f"ar-{n}"}
        for n, name in enumerate(("unpair_devices", "lock", "pair_devices"))
    ]
    # by the id at the end (the registration token, `calm-haiku-42`, may end in -0 to -2 too)
    ids = tuple(f"  ar-{n}" for n in range(3))
    rows = [line for line in render_status(snapshot).splitlines() if line.endswith(ids)]
    assert len(rows) == 3
    assert len({row.index("completed") for row in rows}) == 1, rows


def test_token_reads_the_store_without_writing_to_it(tmp_path: Path) -> None:
    """`token` opened the store as the daemon does: it migrated the schema and created the
    -wal/-shm files, which, run as root while the daemon was stopped, could be left owned by
    root, and the daemon's user could then not open its store."""
    import sqlite3

    from gatewayd.store import MIGRATIONS, Store

    state = tmp_path / "state"
    state.mkdir()
    db_path = state / "gatewayd.db"
    db = sqlite3.connect(db_path, isolation_level=None)
    for step in MIGRATIONS[:3]:  # a store written by an older gatewayd, not started since
        step(db)
    db.execute("PRAGMA user_version = 3")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(
        "INSERT INTO identity (id, registration_token, token_created_at)"
        " VALUES (1, 'calm-haiku-42', '2026-01-01T00:00:00+00:00')"
    )
    db.close()
    config = str(_config(tmp_path, state))

    def token() -> str:
        os.utime(state, ns=(10**18, 10**18))  # any file made or removed in it changes this
        result = _gatewayd("token", "-c", config)
        assert result.returncode == 0, result.stderr
        assert state.stat().st_mtime_ns == 10**18, "a file was created or removed"
        return result.stdout.strip()

    before = sorted(p.name for p in state.iterdir())
    assert token() == "calm-haiku-42"
    assert sorted(p.name for p in state.iterdir()) == before
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3  # not migrated
    db.close()

    # the daemon running: what it committed last may be in its WAL only, and is read there
    store = Store.open(db_path)
    try:
        fresh = store.reset_claim().registration_token
        assert token() == fresh
    finally:
        store.close()


async def test_status_names_a_last_event_without_empty_brackets(tmp_path: Path) -> None:
    """A code event has no method: it was printed as `code removed from device ()`."""
    from gatewayd.cli import render_status
    from tests.support import running_daemon

    async with running_daemon(tmp_path / "gw") as daemon:
        snapshot = daemon.snapshot()
    first, second = snapshot["devices"][0], snapshot["devices"][1]
    first["last_event"] = {"event_name": "code removed from device", "details": {"slot_id": 3}}
    second["last_event"] = {"event_name": "door unlocked", "details": {"method": "remote"}}
    text = render_status(snapshot)
    assert "code removed from device" in text
    assert "()" not in text
    assert "door unlocked (remote)" in text


async def test_status_says_how_long_the_oldest_report_has_waited(tmp_path: Path) -> None:
    from gatewayd.cli import render_status
    from tests.support import running_daemon

    async with running_daemon(tmp_path / "gw") as daemon:
        snapshot = daemon.snapshot()
    snapshot["store"]["outbox_backlog"] = 7
    snapshot["store"]["outbox_oldest_age_s"] = 754.2
    assert "outbox backlog 7 (oldest 754 s)" in render_status(snapshot)
    snapshot["store"]["outbox_backlog"] = 0
    snapshot["store"]["outbox_oldest_age_s"] = 0.0
    assert "oldest" not in render_status(snapshot)


def test_sighup_is_logged_and_ignored_and_sigterm_still_stops(tmp_path: Path) -> None:
    """SIGHUP (an operator's habit of "reload", or a closed terminal) killed the daemon with
    rc 129 mid-action: no clean stop, and systemd does not restart a service SIGHUP ended."""
    cfg = _config(tmp_path, tmp_path / "state", free_port())
    with _running(cfg) as run:
        run.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert run.proc.poll() is None, run.proc.communicate()
        assert _gatewayd("status", "-c", str(cfg)).returncode == 0
    assert '"event": "daemon.sighup_ignored"' in run.out
    assert '"event": "daemon.stopped"' in run.out


def test_status_with_port_0_says_why_it_cannot_ask(tmp_path: Path) -> None:
    """`status.listen = "127.0.0.1:0"` passes check-config (the daemon takes a free port), and
    `gatewayd status` then said "not answering on 127.0.0.1:0" as if the daemon were down."""
    result = _gatewayd("status", "-c", str(_config(tmp_path, tmp_path / "state", 0)))
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert "status.listening" in line
    assert "set a port" in line


@pytest.mark.parametrize(
    ("section", "value", "key"),
    [
        ("[cloud]\nurl", "wss://[::1/tunnel", "cloud.url"),
        ("[drivers.zwave]\nenabled = true\nurl", "ws://[::1:3000", "drivers.zwave.url"),
        ("[drivers.zigbee]\ndatabase_path", "", "drivers.zigbee.database_path"),
    ],
)
def test_check_config_names_the_key_of_a_value_that_ended_run(
    tmp_path: Path, section: str, value: str, key: str
) -> None:
    """An unclosed IPv6 bracket ended check-config (and run) with a ValueError traceback; an
    empty zigbee database path passed and left the radio down on IsADirectoryError."""
    cfg = tmp_path / "gatewayd.toml"
    cfg.write_text(
        f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n{section} = "{value}"\n',
        encoding="utf-8",
    )
    result = _gatewayd("check-config", "-c", str(cfg))
    assert result.returncode == 2, result.stdout
    assert _one_line(result.stderr).startswith(f"gatewayd: {cfg}: {key}: ")


def test_token_with_a_damaged_credential_does_not_print_it(tmp_path: Path) -> None:
    """One byte of the stored credential damaged: `token` printed Python's decode error, which
    quotes the whole value, on the operator's terminal."""
    from gatewayd.store import Store

    state = tmp_path / "state"
    state.mkdir()
    db_path = state / "gatewayd.db"
    store = Store.open(db_path)
    store.set_claimed("gw-1", "gwc_9f3b2c7d1e8a4b6c0d5e7f1a2b3c4d5e")
    store.close()
    raw = bytearray(db_path.read_bytes())
    raw[raw.find(b"gwc_9f3b2c7d") + 20] = 0xFF
    db_path.write_bytes(bytes(raw))
    result = _gatewayd("token", "-c", str(_config(tmp_path, state)))
    assert "gwc_9f3b2c7d" not in result.stdout + result.stderr
    assert result.returncode == 1
    assert _one_line(result.stderr).endswith("text that is not UTF-8")


def test_every_option_says_what_it_does_in_its_help() -> None:
    """`gatewayd demo --help` listed `--locks LOCKS`, and `devcloud serve --help` seven options
    (`--handoff-timeout`, `--heartbeat`, …), with no word on what they set, though the README
    sends users to them (`make demo ARGS="…"`, `devcloud serve --help`)."""
    from devcloud.cli import _parser as devcloud_parser
    from gatewayd.cli import build_parser

    bare = []
    for prog, parser in (("gatewayd", build_parser()), ("devcloud", devcloud_parser())):
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        bare += [
            f"{prog} {name} {action.option_strings[-1]}"
            for name, sub in commands.choices.items()
            for action in sub._actions
            if action.option_strings and not action.help
        ]
    assert not bare, f"options without help: {bare}"


_RUN_ON_A_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # no byte more to any file: a full disk
from gatewayd.cli import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


def test_a_store_a_full_disk_keeps_from_opening_says_how_much_room_there_is(
    tmp_path: Path,
) -> None:
    """`run` said only "cannot open the store …: disk I/O error" (SQLite's word for no room for
    the -shm file), which does not point at the disk."""
    state = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-c", _RUN_ON_A_FULL_DISK, str(_config(tmp_path, state))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert line.startswith(f"gatewayd: cannot open the store {state / 'gatewayd.db'}: "), line
    # the free space of tmp: a real full disk says 0 bytes (see test_free_space_is_said_in_…)
    assert re.search(
        rf"\(the file system holding {re.escape(str(state))} has [\d.]+ \w+ free\)$", line
    ), line


def test_free_space_is_said_in_bytes_a_person_reads() -> None:
    from gatewayd.disk import describe_bytes, free_space_note

    assert free_space_note(Path("/var/lib/gatewayd"), read=lambda _: 0) == (
        " (the file system holding /var/lib/gatewayd has 0 bytes free)"
    )

    def unreadable(path: Path) -> int:
        raise PermissionError(13, "Permission denied")

    assert free_space_note(Path("/var/lib/gatewayd"), read=unreadable) == ""
    assert [describe_bytes(n) for n in (999, 1000, 48_213_000, 3_100_000_000)] == [
        "999 bytes",
        "1 KB",
        "48.2 MB",
        "3.1 GB",
    ]


async def test_status_says_how_much_room_the_store_has_and_when_it_is_low(tmp_path: Path) -> None:
    from gatewayd.cli import render_status
    from tests.support import running_daemon

    async with running_daemon(tmp_path / "gw") as daemon:
        snapshot = daemon.snapshot()
    snapshot["store"]["disk_free_bytes"] = 2_345_000_000
    assert "store: 2.3 GB free on its file system" in render_status(snapshot)
    snapshot["store"]["disk_free_bytes"] = 12_000_000
    snapshot["store"]["disk_low"] = True
    assert "store: DISK LOW: 12.0 MB free on its file system" in render_status(snapshot)
    snapshot["store"]["disk_free_bytes"] = None  # cannot be read: no line
    assert "free on its file system" not in render_status(snapshot)


def test_status_and_token_still_show_the_token_on_the_box(tmp_path: Path) -> None:
    """Behind a reverse proxy the token is hidden (its forwarding headers); `gatewayd status`
    and `gatewayd token` on the box, which send none, still show it."""
    port = free_port()
    cfg = _config(tmp_path, tmp_path / "state", port)
    with _running(cfg) as run:
        shown = re.search(r"registration token: (\S+)", run.status.stdout)
        assert shown is not None
        forwarded = urllib.request.Request(
            f"http://127.0.0.1:{port}/status", headers={"X-Forwarded-For": "192.168.1.20"}
        )
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(forwarded, timeout=10) as resp:
            assert json.loads(resp.read())["gateway"]["registration_token"] is None
        again = _gatewayd("status", "-c", str(cfg))
        token = _gatewayd("token", "-c", str(cfg))
    assert f"registration token: {shown[1]}" in again.stdout
    assert token.returncode == 0, token.stderr
    assert shown[1] in token.stdout
