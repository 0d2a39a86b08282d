"""The leak scan itself: a PIN stored or written as a value is found; the same digits inside a
random UUID are not (a soak registers thousands of 8-digit PINs, and some UUID now and then
holds one of them as a run of its hex digits)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.reliability import leakscan

PIN = "86095761"
INSIDE_A_UUID = f"a{PIN[:7]}-af1c-41d3-b537-{PIN}9a6e"
A_UUID_GROUP = f"{PIN}-5406-43d5-9695-58aa90d4442a"  # a whole group of digits: 2.3 % of UUIDs


def _database(path: Path, rows: list[tuple[str, str]]) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (a TEXT, b TEXT)")
    db.executemany("INSERT INTO t VALUES (?, ?)", rows)
    db.commit()
    db.close()


def _leaks(root: Path) -> list[str]:
    _files, problems = leakscan.scan(root, [PIN])
    return problems


def test_a_pin_written_as_a_value_is_a_leak(tmp_path: Path) -> None:
    (tmp_path / "frame.json").write_text(json.dumps({"code": PIN}))
    (tmp_path / "app.log").write_text(f"event=code.set code={PIN}\n")
    (tmp_path / "repr.txt").write_text(f"PinCode('{PIN}')")
    assert len(_leaks(tmp_path)) == 3


def test_a_pin_inside_a_uuid_is_no_leak(tmp_path: Path) -> None:
    (tmp_path / "events.json").write_text(json.dumps({"id": INSIDE_A_UUID}))
    (tmp_path / "gw.log").write_text(json.dumps({"action_request_id": A_UUID_GROUP}))
    _database(tmp_path / "cloud.db", [(INSIDE_A_UUID, "lock"), (A_UUID_GROUP, "unlock")])
    assert _leaks(tmp_path) == []


def test_a_pin_in_a_column_of_its_own_is_a_leak_even_beside_digits(tmp_path: Path) -> None:
    """SQLite stores a row's values side by side: after a value ending in a digit, the PIN's
    bytes are flanked by a digit in the file, and only SQL sees it as a value of its own."""
    _database(tmp_path / "cloud.db", [(INSIDE_A_UUID[:-4] + "0000", PIN)])
    raw = (tmp_path / "cloud.db").read_bytes()
    assert (b"0000" + PIN.encode()) in raw  # flanked by digits in the file
    problems = _leaks(tmp_path)
    assert len(problems) == 1
    assert "cloud.db" in problems[0]


def test_a_secret_that_is_not_a_number_is_found_anywhere(tmp_path: Path) -> None:
    credential = "Zx9-credential-Qk"
    (tmp_path / "blob.bin").write_bytes(b"abc" + credential.encode() + b"def")
    _files, problems = leakscan.scan(tmp_path, [credential])
    assert len(problems) == 1
