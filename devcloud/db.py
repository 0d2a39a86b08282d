"""devcloud's SQLite store (WAL, on disk): locations, gateways, devices, actions, events.

Secrets are stored only as SHA-256 hashes (credentials, registration tokens); PIN codes are
never stored: action request data is written already masked.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS locations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    timezone TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY,
    location_id TEXT NOT NULL REFERENCES locations(id),
    name TEXT NOT NULL,
    credential_hash TEXT UNIQUE,
    previous_credential_hash TEXT UNIQUE,
    high_water INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS registration_tokens (
    token_hash TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    claimed_at REAL,
    gateway_id TEXT,
    confirmed_at REAL  -- the claimed gateway first connected with its credential
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    gateway_id TEXT NOT NULL REFERENCES gateways(id),
    body TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS action_requests (
    id TEXT PRIMARY KEY,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    location_id TEXT NOT NULL,
    action TEXT NOT NULL,
    data TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deadline TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS action_requests_in_flight ON action_requests (deadline)
    WHERE status IN ('gateway_received', 'processing');
CREATE TABLE IF NOT EXISTS action_transitions (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    action_request_id TEXT NOT NULL REFERENCES action_requests(id),
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS action_transitions_by_request
    ON action_transitions(action_request_id, n);
-- v5: an event id is unique per gateway (it was across all: one gateway could shadow another's)
CREATE TABLE IF NOT EXISTS events (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    date_created TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (gateway_id, id)
);
CREATE INDEX IF NOT EXISTS events_by_time ON events(date_created, n);
-- v4: webhook deliveries not yet done, so that a restart loses none
CREATE TABLE IF NOT EXISTS webhook_outbox (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_by_receiver ON webhook_outbox(receiver, n);
"""


def secret_hash(secret: str) -> str:
    """How a credential or token is stored: SHA-256 hex (both are high-entropy or short-lived)."""
    return hashlib.sha256(secret.encode("utf-8", errors="surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class GatewayRow:
    id: str
    location_id: str
    name: str
    high_water: int
    has_credential: bool
    rotation_pending: bool  # rotated, and not yet connected with the new credential


@dataclass(frozen=True, slots=True)
class TokenRow:
    first_seen: float
    claimed: bool
    gateway_id: str | None = None  # the gateway it claimed
    confirmed: bool = False  # that gateway has connected with its credential since


class Database:
    """Synchronous SQLite access; every call is short and runs on the event loop's thread."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"database schema {version} is newer than this devcloud")
        self._conn.executescript(_SCHEMA)
        with self.transaction():  # all the upgrades and the new version, or none of them
            if 0 < version < 3:
                # v3: registration_tokens.confirmed_at; tokens claimed before it count as confirmed
                self._conn.execute("ALTER TABLE registration_tokens ADD COLUMN confirmed_at REAL")
                self._conn.execute("UPDATE registration_tokens SET confirmed_at = claimed_at")
            if 0 < version < 5:
                self._events_unique_per_gateway()
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _events_unique_per_gateway(self) -> None:
        """v5: rebuild `events` with UNIQUE (gateway_id, id) in place of UNIQUE (id) (SQLite
        cannot drop a constraint). Times written without a year's leading zeros are padded."""
        for statement in (
            "CREATE TABLE events_v5 (n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,"
            " gateway_id TEXT NOT NULL, device_id TEXT NOT NULL, date_created TEXT NOT NULL,"
            " body TEXT NOT NULL, UNIQUE (gateway_id, id))",
            "INSERT INTO events_v5 (n, id, gateway_id, device_id, date_created, body)"
            " SELECT n, id, gateway_id, device_id,"
            " substr('000' || date_created, -max(length(date_created), 24)), body FROM events",
            "DROP TABLE events",
            "ALTER TABLE events_v5 RENAME TO events",
            "CREATE INDEX events_by_time ON events(date_created, n)",
        ):
            self._conn.execute(statement)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ locations

    def add_location(self, id_: str, name: str, timezone: str | None, now: str) -> None:
        self._conn.execute(
            "INSERT INTO locations (id, name, timezone, created_at) VALUES (?, ?, ?, ?)",
            (id_, name, timezone, now),
        )

    def locations(self) -> list[dict[str, Any]]:
        rows = self._conn.execute("SELECT id, name FROM locations ORDER BY created_at, rowid")
        return [{"id": r["id"], "name": r["name"]} for r in rows]

    def location_exists(self, id_: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM locations WHERE id = ?", (id_,)).fetchone()
        return row is not None

    # ------------------------------------------------------------------ gateways

    def add_gateway(self, id_: str, location_id: str, name: str, cred_hash: str, now: str) -> None:
        self._conn.execute(
            "INSERT INTO gateways (id, location_id, name, credential_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (id_, location_id, name, cred_hash, now),
        )

    def gateway(self, id_: str) -> GatewayRow | None:
        row = self._conn.execute("SELECT * FROM gateways WHERE id = ?", (id_,)).fetchone()
        return None if row is None else _gateway_row(row)

    def gateways(self) -> list[GatewayRow]:
        rows = self._conn.execute("SELECT * FROM gateways ORDER BY created_at, rowid")
        return [_gateway_row(r) for r in rows]

    def gateway_by_credential(self, cred_hash: str) -> tuple[GatewayRow, bool] | None:
        """The gateway holding this credential, and whether it is the one rotated away from."""
        row = self._conn.execute(
            "SELECT *, credential_hash != ? AS previous FROM gateways"
            " WHERE credential_hash = ? OR previous_credential_hash = ?",
            (cred_hash, cred_hash, cred_hash),
        ).fetchone()
        return None if row is None else (_gateway_row(row), bool(row["previous"]))

    def rotate_credential(self, id_: str, cred_hash: str) -> None:
        """The new credential works at once; the old one until the gateway has used the new.

        Only for a gateway that is known to hold the previous credential (it just connected
        with it) or has no rotation pending: see `start_rotation`."""
        self._conn.execute(
            "UPDATE gateways SET previous_credential_hash = coalesce(previous_credential_hash,"
            " credential_hash), credential_hash = ? WHERE id = ?",
            (cred_hash, id_),
        )

    def start_rotation(self, id_: str, cred_hash: str) -> bool:
        """`rotate_credential`, unless the last rotation is still unconfirmed (False then).

        The gateway may hold the previous credential or the pending one; a second rotation
        would forget the pending one, and a gateway holding it would be refused for good."""
        cur = self._conn.execute(
            "UPDATE gateways SET previous_credential_hash = credential_hash, credential_hash = ?"
            " WHERE id = ? AND previous_credential_hash IS NULL AND credential_hash IS NOT NULL",
            (cred_hash, id_),
        )
        return cur.rowcount == 1

    def credential_confirmed(self, id_: str, now: float) -> None:
        """The gateway connected with its current credential: the previous one stops working,
        and so does the registration token that claimed it."""
        self._conn.execute(
            "UPDATE gateways SET previous_credential_hash = NULL WHERE id = ?", (id_,)
        )
        self.retire_tokens(id_, now)

    def retire_tokens(self, gateway_id: str, now: float) -> None:
        """The registration token that claimed this gateway claims it no more: not even to
        resend a lost `claimed` frame (its credential was used, or revoked)."""
        self._conn.execute(
            "UPDATE registration_tokens SET confirmed_at = ?"
            " WHERE gateway_id = ? AND confirmed_at IS NULL",
            (now, gateway_id),
        )

    def rename_gateway(self, id_: str, name: str) -> None:
        self._conn.execute("UPDATE gateways SET name = ? WHERE id = ?", (name, id_))

    def set_credential(self, id_: str, cred_hash: str | None) -> None:
        self._conn.execute(
            "UPDATE gateways SET credential_hash = ?, previous_credential_hash = NULL WHERE id = ?",
            (cred_hash, id_),
        )

    def high_water(self, gateway_id: str) -> int:
        row = self._conn.execute(
            "SELECT high_water FROM gateways WHERE id = ?", (gateway_id,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def set_high_water(self, gateway_id: str, seq: int) -> None:
        self._conn.execute(
            "UPDATE gateways SET high_water = MAX(high_water, ?) WHERE id = ?", (seq, gateway_id)
        )

    # ------------------------------------------------------------------ registration tokens

    def token_seen(self, token_hash: str, now: float) -> TokenRow:
        """Record the first time a token was presented; return what is known of it."""
        self._conn.execute(
            "INSERT OR IGNORE INTO registration_tokens (token_hash, first_seen) VALUES (?, ?)",
            (token_hash, now),
        )
        token = self.token(token_hash)
        assert token is not None
        return token

    def token(self, token_hash: str) -> TokenRow | None:
        row = self._conn.execute(
            "SELECT first_seen, claimed_at, gateway_id, confirmed_at FROM registration_tokens"
            " WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        return TokenRow(float(row[0]), row[1] is not None, row[2], row[3] is not None)

    def claim_token(self, token_hash: str, gateway_id: str, now: float) -> bool:
        cur = self._conn.execute(
            "UPDATE registration_tokens SET claimed_at = ?, gateway_id = ?"
            " WHERE token_hash = ? AND claimed_at IS NULL",
            (now, gateway_id, token_hash),
        )
        return cur.rowcount == 1

    def undo_claim(self, gateway_id: str, token_hash: str, cred_hash: str) -> bool:
        """Forget a gateway whose `claimed` frame could not be sent, and free its token for
        another registration. False (nothing changed) if the claim went on meanwhile: the
        gateway redialed with the token and was sent another credential, or used one."""
        with self.transaction():
            row = self._conn.execute(
                "SELECT 1 FROM gateways g JOIN registration_tokens t ON t.gateway_id = g.id"
                " WHERE g.id = ? AND g.credential_hash = ? AND t.token_hash = ?"
                " AND t.confirmed_at IS NULL",
                (gateway_id, cred_hash, token_hash),
            ).fetchone()
            if row is None:
                return False
            self._conn.execute("DELETE FROM gateways WHERE id = ?", (gateway_id,))
            self._conn.execute(
                "UPDATE registration_tokens SET claimed_at = NULL, gateway_id = NULL"
                " WHERE token_hash = ?",
                (token_hash,),
            )
        return True

    # ------------------------------------------------------------------ devices

    def upsert_device(self, device: dict[str, Any], gateway_id: str, now: str) -> None:
        self._conn.execute(
            "INSERT INTO devices (id, gateway_id, body, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at"
            " WHERE devices.gateway_id = excluded.gateway_id",
            (device["id"], gateway_id, json.dumps(device), now),
        )

    def remove_device(self, device_id: str, gateway_id: str) -> None:
        self._conn.execute(
            "DELETE FROM devices WHERE id = ? AND gateway_id = ?", (device_id, gateway_id)
        )

    def adopt_device(self, device_id: str, gateway_id: str) -> bool:
        """Move a device from a revoked gateway (no credential, none pending) to `gateway_id`:
        the box, claimed again after the revoke, is a new gateway reporting the same locks."""
        cur = self._conn.execute(
            "UPDATE devices SET gateway_id = ? WHERE id = ? AND gateway_id IN (SELECT id FROM"
            " gateways WHERE credential_hash IS NULL AND previous_credential_hash IS NULL)",
            (gateway_id, device_id),
        )
        return cur.rowcount == 1

    def device_owner(self, device_id: str) -> str | None:
        row = self._conn.execute(
            "SELECT gateway_id FROM devices WHERE id = ?", (device_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def device(self, device_id: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT body FROM devices WHERE id = ?", (device_id,)).fetchone()
        return None if row is None else _object(row[0])

    def devices(self, gateway_id: str | None = None) -> list[dict[str, Any]]:
        if gateway_id is None:
            rows = self._conn.execute("SELECT body FROM devices ORDER BY rowid")
        else:
            rows = self._conn.execute(
                "SELECT body FROM devices WHERE gateway_id = ? ORDER BY rowid", (gateway_id,)
            )
        return [_object(r[0]) for r in rows]

    # ------------------------------------------------------------------ action requests

    def add_action(self, row: dict[str, Any]) -> None:
        self._conn.execute(
            "INSERT INTO action_requests (id, entity_type, entity_id, gateway_id, location_id,"
            " action, data, status, error, created_at, updated_at, deadline)"
            " VALUES (:id, :entity_type, :entity_id, :gateway_id, :location_id, :action, :data,"
            " :status, NULL, :created_at, :created_at, :deadline)",
            {**row, "data": json.dumps(row["data"])},
        )
        self.add_transition(row["id"], row["status"], row["created_at"], "cloud")

    def pending_actions(self) -> list[tuple[str, str]]:
        """(id, created_at) of every request not yet handed to its gateway."""
        rows = self._conn.execute(
            "SELECT id, created_at FROM action_requests WHERE status = 'pending'"
        )
        return [(r[0], r[1]) for r in rows]

    def cancelled_actions(self, gateway_id: str, now: str, limit: int = 500) -> list[str]:
        """Ids of this gateway's requests the cloud failed (`gateway_failure`) whose deadline
        is still ahead: the gateway must not run them if it holds them. Newest first."""
        rows = self._conn.execute(
            "SELECT id FROM action_requests WHERE gateway_id = ? AND status = 'gateway_failure'"
            " AND deadline > ? ORDER BY created_at DESC LIMIT ?",
            (gateway_id, now, limit),
        )
        return [r[0] for r in rows]

    def action(self, id_: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT * FROM action_requests WHERE id = ?", (id_,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["data"] = _object(out["data"])
        out["error"] = None if out["error"] is None else _object(out["error"])
        return out

    def overdue_actions(self, before: str) -> list[tuple[str, str, str]]:
        """(id, gateway_id, updated_at: when the gateway last reported it) of requests received
        and not finished whose deadline is before `before` (ISO-8601 UTC, as stored)."""
        rows = self._conn.execute(
            "SELECT id, gateway_id, updated_at FROM action_requests"
            " WHERE status IN ('gateway_received', 'processing') AND deadline < ?",
            (before,),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def in_flight_actions(self, gateway_id: str) -> list[str]:
        """Ids of this gateway's requests it received and has not finished."""
        rows = self._conn.execute(
            "SELECT id FROM action_requests WHERE gateway_id = ?"
            " AND status IN ('gateway_received', 'processing')",
            (gateway_id,),
        )
        return [r[0] for r in rows]

    def set_action_status(
        self, id_: str, status: str, error: dict[str, Any] | None, at: str, source: str
    ) -> None:
        self._conn.execute(
            "UPDATE action_requests SET status = ?, error = ?, updated_at = ? WHERE id = ?",
            (status, None if error is None else json.dumps(error), at, id_),
        )
        self.add_transition(id_, status, at, source)

    def add_transition(self, id_: str, status: str, at: str, source: str) -> None:
        self._conn.execute(
            "INSERT INTO action_transitions (action_request_id, status, at, source)"
            " VALUES (?, ?, ?, ?)",
            (id_, status, at, source),
        )

    def transitions(self, id_: str) -> list[tuple[str, str, str]]:
        """Every status an action request went through, in order: (status, at, source)."""
        rows = self._conn.execute(
            "SELECT status, at, source FROM action_transitions"
            " WHERE action_request_id = ? ORDER BY n",
            (id_,),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    # ------------------------------------------------------------------ events

    def add_event(self, event: dict[str, Any], gateway_id: str, date_created: str) -> bool:
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO events (id, gateway_id, device_id, date_created, body)"
            " VALUES (?, ?, ?, ?, ?)",
            (event["id"], gateway_id, event["device_id"], date_created, json.dumps(event)),
        )
        return cur.rowcount == 1

    def event_position(self, id_: str) -> tuple[str, int] | None:
        """Where an event is in the list (date_created, n): the cursor of `after`."""
        row = self._conn.execute(
            "SELECT date_created, n FROM events WHERE id = ? ORDER BY n LIMIT 1", (id_,)
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def events(
        self,
        device_id: str | None,
        since: str | None,
        until: str | None,
        limit: int,
        after: tuple[str, int] | None = None,
    ) -> list[dict[str, Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if device_id is not None:
            clauses.append("device_id = ?")
            args.append(device_id)
        if since is not None:
            clauses.append("date_created >= ?")
            args.append(since)
        if until is not None:
            clauses.append("date_created <= ?")
            args.append(until)
        if after is not None:  # strictly after that event: past a page of one time
            clauses.append("(date_created > ? OR (date_created = ? AND n > ?))")
            args.extend((after[0], after[0], after[1]))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        if since is not None or after is not None:  # the first `limit`: a reader paging forward
            rows = self._conn.execute(
                f"SELECT body FROM events {where} ORDER BY date_created, n LIMIT ?",  # noqa: S608 - fixed clauses
                (*args, limit),
            ).fetchall()
        else:  # the latest `limit`: what just happened at the door is never cut off
            rows = self._conn.execute(
                f"SELECT body FROM events {where} ORDER BY date_created DESC, n DESC LIMIT ?",  # noqa: S608 - fixed clauses
                (*args, limit),
            ).fetchall()[::-1]
        return [_object(r[0]) for r in rows]

    # ------------------------------------------------------------------ webhook outbox

    def add_webhook(self, receiver: str, body: bytes) -> None:
        self._conn.execute(
            "INSERT INTO webhook_outbox (receiver, body) VALUES (?, ?)", (receiver, body)
        )

    def webhook_backlog(self, receiver: str) -> int:
        row = self._conn.execute(
            "SELECT count(*) FROM webhook_outbox WHERE receiver = ?", (receiver,)
        ).fetchone()
        return int(row[0])

    def next_webhook(self, receiver: str) -> tuple[int, bytes] | None:
        """The oldest delivery still owed to this receiver: (its number, the body)."""
        row = self._conn.execute(
            "SELECT n, body FROM webhook_outbox WHERE receiver = ? ORDER BY n LIMIT 1",
            (receiver,),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def webhook_done(self, n: int) -> None:
        self._conn.execute("DELETE FROM webhook_outbox WHERE n = ?", (n,))

    def drop_webhooks_except(self, receivers: set[str]) -> int:
        """Delete the deliveries owed to any receiver not in `receivers`; how many there were."""
        keep = json.dumps(sorted(receivers))
        cur = self._conn.execute(
            "DELETE FROM webhook_outbox WHERE receiver NOT IN (SELECT value FROM json_each(?))",
            (keep,),
        )
        return cur.rowcount


def _gateway_row(row: sqlite3.Row) -> GatewayRow:
    return GatewayRow(
        id=row["id"],
        location_id=row["location_id"],
        name=row["name"],
        high_water=int(row["high_water"]),
        has_credential=row["credential_hash"] is not None,
        rotation_pending=row["previous_credential_hash"] is not None,
    )


def _object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value
