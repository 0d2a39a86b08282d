"""Secret leak scan: every PIN and credential a test used must appear in no file the run left
behind, except the stores meant to hold them (which must be 0600).

Tests call `register(secret)`; at the end of the session every file under pytest's base temp
directory is scanned. A leak fails the session. Registered via `pytest_plugins` in
tests/conftest.py, so every suite can register what it uses.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path

import pytest

# Third-party trees a test copies or installs (a venv, npm packages): not written by our code.
FOREIGN_TREES = frozenset({"site-packages", "node_modules"})
# Files whose job is to hold a secret; each must be readable by its owner only.
SECRET_STORES = ("gatewayd.db", "gatewayd.db-wal", "gatewayd.db-shm")
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


def _contains(path: Path, needles: list[bytes]) -> set[bytes]:
    found: set[bytes] = set()
    overlap = max(len(n) for n in needles) - 1
    tail = b""
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            window = tail + chunk
            found.update(n for n in needles if n in window)
            tail = window[-overlap:] if overlap else b""
    return found


def scan(root: Path, secrets: Iterable[str]) -> tuple[int, list[str]]:
    """(files scanned, problems): a secret outside a store, or a store not 0600."""
    needles = sorted({s.encode() for s in secrets})
    problems: list[str] = []
    files = 0
    if not needles or not root.exists():
        return 0, problems
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
            hits = _contains(path, needles)
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
    if factory is None or not _secrets:
        return
    try:
        root = factory.getbasetemp()
    except (OSError, ValueError):
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
