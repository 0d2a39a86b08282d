"""The leak scan itself: a PIN stored or written as a value is found; the same digits inside a
random UUID are not (a soak registers thousands of 8-digit PINs, and some UUID now and then
holds one of them as a run of its hex digits)."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

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


def test_among_thousands_of_pins_each_leak_is_found_across_chunk_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A soak registers some 10,000 PINs; one pass finds every one of them, also where a read
    ends in the middle of one, and a short PIN that starts a longer one stands on its own."""
    monkeypatch.setattr(leakscan, "CHUNK", 64)
    rng = random.Random(3)
    pins = sorted({f"{rng.randrange(10**7, 10**8)}" for _ in range(10_000)})
    short = pins[0][:4]
    straddling = b"\xff\xfe" * 27 + b'code="' + pins[4000].encode() + b'"\n'  # bytes 60-67
    assert straddling.index(pins[4000].encode()) < 64 < straddling.index(b'"\n')
    (tmp_path / "a.log").write_bytes(
        straddling + f"code={pins[0]} slot=2\ncode={short} slot=3\n".encode()
    )
    (tmp_path / "b.log").write_bytes(f"code={pins[0]}\n".encode())  # `short` only inside it
    (tmp_path / "c.log").write_bytes(f"id={INSIDE_A_UUID}\n".encode())  # no registered PIN
    _files, problems = leakscan.scan(tmp_path, [*pins, short])
    assert sorted(p.split(":")[0].rsplit("/", 1)[-1] for p in problems) == ["a.log"] * 3 + ["b.log"]
