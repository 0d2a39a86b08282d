"""devcloud's schema upgrades."""

from __future__ import annotations

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
