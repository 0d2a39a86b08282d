"""devcloud's schema upgrades."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from devcloud.db import _SCHEMA, SCHEMA_VERSION, Database, secret_hash

_V2_TOKENS = """
CREATE TABLE registration_tokens (
    token_hash TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    claimed_at REAL,
    gateway_id TEXT
);
"""


def test_v2_tokens_claimed_before_the_upgrade_count_as_used(tmp_path: Path) -> None:
    """v3 sends `claimed` again for a token whose gateway never used its credential; a v2
    database does not know which did, so its claimed tokens stay used up."""
    path = tmp_path / "devcloud.db"
    old = sqlite3.connect(path)
    old.executescript(_V2_TOKENS)
    old.execute(
        "INSERT INTO registration_tokens VALUES (?, 1.0, 2.0, 'gw-1')", (secret_hash("used-1"),)
    )
    old.execute(
        "INSERT INTO registration_tokens VALUES (?, 1.0, NULL, NULL)", (secret_hash("new-2"),)
    )
    old.execute("PRAGMA user_version = 2")
    old.commit()
    old.close()
    db = Database(str(path))
    try:
        used = db.token(secret_hash("used-1"))
        fresh = db.token(secret_hash("new-2"))
        assert used is not None
        assert fresh is not None
        assert (used.claimed, used.gateway_id, used.confirmed) == (True, "gw-1", True)
        assert (fresh.claimed, fresh.confirmed) == (False, False)
    finally:
        db.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_v3_database_gains_the_webhook_outbox(tmp_path: Path) -> None:
    """v4 keeps the webhook deliveries still owed on disk; a v3 database has no such table."""
    path = tmp_path / "devcloud.db"
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA.split("-- v4")[0])
    old.execute("PRAGMA user_version = 3")
    old.commit()
    old.close()
    db = Database(str(path))
    try:
        db.add_webhook("http://127.0.0.1:9/hooks", b'{"id": "ev-1"}')
        owed = db.next_webhook("http://127.0.0.1:9/hooks")
        assert owed is not None
        assert owed[1] == b'{"id": "ev-1"}'
        db.webhook_done(owed[0])
        assert db.next_webhook("http://127.0.0.1:9/hooks") is None
    finally:
        db.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


_V4_EVENTS = """
CREATE TABLE events (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    gateway_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    date_created TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_by_time ON events(date_created, n);
"""


def _event(id_: str, device_id: str, when: str) -> dict[str, str]:
    return {"id": id_, "device_id": device_id, "event_name": "door locked", "date_created": when}


def test_v5_event_ids_are_unique_per_gateway_not_across_gateways(tmp_path: Path) -> None:
    """v4 held event ids unique across all gateways, so one gateway could shadow another's
    event; v5 keeps the events and dedupes per gateway. A time a v4 devcloud wrote without
    its year's leading zeros is padded, so that it sorts."""
    path = tmp_path / "devcloud.db"
    old = sqlite3.connect(path)
    old.executescript(_V4_EVENTS)
    rows = (
        ("ev-1", "2020-06-11T21:08:36.000Z", "2020-06-11T21:08:36.000Z"),
        ("ev-0", "0999-06-11T21:08:36Z", "999-06-11T21:08:36.000Z"),  # as sent, as stored
    )
    for n, (id_, sent, stored) in enumerate(rows, start=1):
        old.execute(
            "INSERT INTO events VALUES (?, ?, 'gw-1', 'lock-1', ?, ?)",
            (n, id_, stored, json.dumps(_event(id_, "lock-1", sent))),
        )
    old.execute("PRAGMA user_version = 4")
    old.commit()
    old.close()
    db = Database(str(path))
    try:
        assert [e["id"] for e in db.events(None, None, None, 10)] == ["ev-0", "ev-1"]
        assert db.events(None, "0998-01-01T00:00:00.000Z", "1000-01-01T00:00:00.000Z", 10) == [
            _event("ev-0", "lock-1", "0999-06-11T21:08:36Z")
        ]
        later = "2020-06-11T21:09:00.000Z"
        assert not db.add_event(_event("ev-1", "lock-1", later), "gw-1", later)
        assert db.add_event(_event("ev-1", "lock-2", later), "gw-2", later)
        assert [(e["id"], e["device_id"]) for e in db.events(None, None, None, 10)] == [
            ("ev-0", "lock-1"),
            ("ev-1", "lock-1"),
            ("ev-1", "lock-2"),
        ]
    finally:
        db.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        # numbering goes on after the copied rows
        (n,) = check.execute("SELECT n FROM events WHERE gateway_id = 'gw-2'").fetchone()
        assert n > 2
