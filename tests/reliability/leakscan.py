"""Secret leak scan: every PIN, credential and Zigbee network key a test used must appear in no
file the run left behind, except the stores meant to hold them (which must be 0600).

Tests call `register(secret)`; at the end of the session every file under pytest's base temp
directory is scanned. A leak fails the session. Registered via `pytest_plugins` in
tests/conftest.py, so every suite can register what it uses.

Zigbee network keys are made by zigpy when a driver forms its network (in the test process or
in a daemon process) and kept in the radio's memory (the virtual radio's `zigbee.virtual.json`)
and in zigpy's database (`zigbee.db`, table `network_backups_*`). `register_zigbee_keys(dir)`
registers the keys stored under a directory; at the end of the session every key stored under
the base temp directory is registered before the scan, so no test can forget one.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import ahocorasick
import pytest

# Third-party trees a test copies or installs (a venv, npm packages): not written by our code.
FOREIGN_TREES = frozenset({"site-packages", "node_modules"})
# Files whose job is to hold a secret; each must be readable by its owner only.
SECRET_STORES = (
    "gatewayd.db",
    "gatewayd.db-wal",
    "gatewayd.db-shm",
    "zigbee.db",  # zigpy keeps the network key in its network backups
    "zigbee.db-wal",
    "zigbee.db-shm",
    "zigbee.db-journal",
    "zigbee.virtual.json",  # the virtual radio's memory (a real stick's NVRAM)
    "virtual.json",  # the same memory in tests of the virtual radio alone
)
ZIGBEE_RADIO_MEMORY = "*.virtual.json"
ZIGBEE_DATABASE = "zigbee.db"
MIN_LEN = 6  # shorter strings would match by chance (ports, timestamps)
CHUNK = 1 << 20

_secrets: set[str] = set()


def register(*secrets: str) -> None:
    """Remember secrets this test handed to the system (PINs, credentials, keys)."""
    for secret in secrets:
        if len(secret) < MIN_LEN:
            raise ValueError(f"a registered secret needs {MIN_LEN}+ characters to scan reliably")
        _secrets.add(secret)


def registered() -> frozenset[str]:
    return frozenset(_secrets)


def key_forms(key: str) -> set[str]:
    """The ways a 16-byte key may be written: zigpy's `aa:bb:…`, plain hex, either case."""
    plain = key.replace(":", "").replace(" ", "").lower()
    if len(plain) != 32:
        raise ValueError("a Zigbee network key has 16 bytes")
    colons = ":".join(plain[i : i + 2] for i in range(0, 32, 2))
    return {plain, plain.upper(), colons, colons.upper()}


def _backup_keys(backup: object) -> Iterator[str]:
    if isinstance(backup, dict):
        key = (backup.get("network_info") or {}).get("network_key") or {}
        if isinstance(key, dict) and isinstance(key.get("key"), str):
            yield key["key"]


def zigbee_keys(root: Path) -> set[str]:
    """Every Zigbee network key stored under `root` (a state dir or a whole temp tree)."""
    keys: set[str] = set()
    if not root.exists():
        return keys
    for memory in root.rglob(ZIGBEE_RADIO_MEMORY):
        with contextlib.suppress(OSError, ValueError):
            keys.update(_backup_keys(json.loads(memory.read_text()).get("backup")))
    for db in root.rglob(ZIGBEE_DATABASE):
        with contextlib.suppress(sqlite3.Error, ValueError):
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                tables = [
                    r[0]
                    for r in conn.execute(
                        "SELECT name FROM sqlite_master WHERE name LIKE 'network_backups%'"
                    )
                ]
                for table in tables:
                    for (blob,) in conn.execute(f'SELECT backup_json FROM "{table}"'):
                        keys.update(_backup_keys(json.loads(blob)))
            finally:
                conn.close()
    return keys


def register_zigbee_keys(root: Path) -> set[str]:
    """Register every Zigbee network key stored under `root`; returns the keys."""
    keys = zigbee_keys(root)
    for key in keys:
        register(*key_forms(key))
    return keys


def _automaton(needles: Iterable[bytes]) -> Any:
    """One Aho-Corasick automaton for all the needles: a file is read once, whatever their
    number (a 30-minute soak registers some 9,600 PINs; one substring search per needle per
    chunk had not finished its half a gigabyte of files after an hour). Bytes go in as latin-1,
    one char each."""
    automaton = ahocorasick.Automaton()
    for needle in needles:
        automaton.add_word(needle.decode("latin-1"), needle)
    automaton.make_automaton()
    return automaton


def _contains(path: Path, automaton: Any, overlap: int) -> set[bytes]:
    """The needles found in the file; `overlap` is the longest needle's length minus one."""
    found: set[bytes] = set()
    tail = b""
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            window = tail + chunk
            found.update(needle for _end, needle in automaton.iter(window.decode("latin-1")))
            tail = window[-overlap:] if overlap else b""
    numbers = {n for n in found if n.isdigit()}
    if not numbers:
        return found
    return (found - numbers) | _standalone_numbers(path, numbers)


def _standalone_numbers(path: Path, numbers: set[bytes]) -> set[bytes]:
    """The PINs among `numbers` (each found in `path`) that appear as themselves, not as a run
    of digits inside a longer word or a UUID: now and then a random UUID holds one of the
    thousands of 8-digit PINs a soak registers, inside a group or as a whole all-digit group
    (`"42060148-5406-…"`). A leaked PIN is a value of its own: quoted in JSON, after `=` in a
    log line, a column of its own in SQLite. SQLite lays a row's values side by side, so in a
    database (or its WAL) each stored value is also read through SQL and checked alone. The
    file is read once, and the database once, for all of `numbers`."""
    word = re.compile(
        rb"(?<![0-9A-Za-z-])("
        + b"|".join(re.escape(n) for n in sorted(numbers, key=len, reverse=True))
        + rb")(?![0-9A-Za-z-])"
    )
    standalone = set(word.findall(path.read_bytes()))  # each match is one of `numbers`
    if standalone == numbers:
        return standalone
    database = path.with_name(path.name.removesuffix("-wal"))
    try:
        with database.open("rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                return standalone
        for value in _sqlite_values(database):
            standalone.update(word.findall(value))
    except (OSError, sqlite3.Error):
        return numbers  # cannot be told apart: count them all as found
    return standalone


def _sqlite_values(database: Path) -> Iterator[bytes]:
    """Every text and blob value stored in the tables of a SQLite database, as bytes."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        conn.text_factory = bytes  # the values as stored, whatever their encoding
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                yield from (v for v in row if isinstance(v, bytes))
    finally:
        conn.close()


def scan(root: Path, secrets: Iterable[str]) -> tuple[int, list[str]]:
    """(files scanned, problems): a secret outside a store, or a store not 0600."""
    needles = sorted({s.encode() for s in secrets})
    problems: list[str] = []
    files = 0
    if not needles or not root.exists():
        return 0, problems
    automaton = _automaton(needles)
    overlap = max(len(n) for n in needles) - 1
    for path in root.rglob("*"):
        if FOREIGN_TREES.intersection(path.parts):
            continue
        try:
            st = path.lstat()
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        files += 1
        try:
            hits = _contains(path, automaton, overlap)
        except OSError:
            continue
        if path.name in SECRET_STORES:
            if stat.S_IMODE(st.st_mode) & 0o077:
                problems.append(f"{path} holds secrets with mode {oct(stat.S_IMODE(st.st_mode))}")
            continue
        for hit in hits:
            shown = hit[:3].decode(errors="replace") + "…"
            problems.append(f"{path}: contains a registered secret ({shown})")
    return files, problems


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or getattr(factory, "_basetemp", None) is None:
        return  # no test asked for a temp dir: nothing written there
    try:
        root = factory.getbasetemp()
    except (OSError, ValueError):
        return
    register_zigbee_keys(root)
    if not _secrets:
        return
    files, problems = scan(root, _secrets)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    line = f"leakscan: {len(_secrets)} secrets, {files} files scanned, {len(problems)} leaks"
    if reporter is not None:
        reporter.write_line(line)
        for problem in problems[:20]:
            reporter.write_line(f"leakscan: {problem}", red=True)
    if problems and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
