"""Action requests: create, hand to the gateway, time out the hand-off, apply gateway status.

The PIN code lives only in the `action_request` frame sent down the tunnel: what is stored and
shown is the masked copy.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import timedelta
from typing import Any, Final

import structlog

from devcloud.db import Database
from devcloud.hub import Connection, Hub
from devcloud.settings import Settings
from devcloud.timeutil import iso, parse_iso
from devcloud.validation import mask, mask_error_pins, mask_pin_digits
from gatewayd import protocol

log = structlog.get_logger("devcloud.actions")

# How far along each status is; the gateway may only move an action forward. gateway_failure
# is as final as completed: once the cloud has said it, a late report cannot change it.
_RANK: Final = {
    "pending": 0,
    "gateway_failure": 3,
    "gateway_received": 1,
    "processing": 2,
    "completed": 3,
    "failed": 3,
}
GATEWAY_STATUSES: Final = frozenset({"gateway_received", "processing", "completed", "failed"})


def action_view(row: dict[str, Any]) -> dict[str, Any]:
    """An action request as the REST API shows it (seed 001)."""
    out: dict[str, Any] = {"id": row["id"]}
    if row["entity_type"] == "Device":
        out["device_id"] = row["entity_id"]
    else:
        out["entity_id"] = row["entity_id"]
        out["entity_type"] = row["entity_type"]
    out["location_id"] = row["location_id"]
    out["data"] = {row["action"]: row["data"]}
    out["status"] = row["status"]
    if row["error"] is not None:
        out["error"] = row["error"]
    out["created_at"] = row["created_at"]
    out["updated_at"] = row["updated_at"]
    return out


class ActionService:
    def __init__(self, db: Database, hub: Hub, settings: Settings) -> None:
        self._db = db
        self._hub = hub
        self._settings = settings
        self._handoff: dict[str, asyncio.TimerHandle] = {}
        self._sweep: asyncio.Task[None] | None = None

    async def create(
        self,
        *,
        entity_type: str,
        entity_id: str,
        gateway_id: str,
        location_id: str,
        action: str,
        inputs: dict[str, Any],
    ) -> dict[str, Any]:
        """Store a `pending` request and send it to the gateway; return its REST view."""
        now, mono = self._hub.clock(), self._hub.monotonic()
        timeout = timedelta(seconds=self._settings.action_timeout_s)
        id_ = str(uuid.uuid4())
        created_at = iso(now)
        deadline = iso(now + timeout)
        row: dict[str, Any] = {
            "id": id_,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "gateway_id": gateway_id,
            "location_id": location_id,
            "action": action,
            "data": mask(inputs),
            "status": "pending",
            "created_at": created_at,
            "deadline": deadline,
        }
        self._db.add_action(row)
        log.info(
            "action.created", action_request_id=row["id"], action=action, gateway_id=gateway_id
        )

        def frame(conn: Connection) -> protocol.ActionRequestMsg:
            """Stamped on the session's clock, which the gateway reads deadlines on: on the
            wall clock, stepped back since the welcome (NTP), every request was past its
            deadline at the gateway, which failed it `timeout` until it reconnected."""
            created = conn.session_time(mono)
            return protocol.ActionRequestMsg(
                id=id_,
                entity_type=entity_type,
                entity_id=entity_id,
                action=action,
                inputs=inputs,
                created_at=iso(created),
                deadline=iso(created + timeout),
            )

        # armed before the send: a send can wait (a socket draining, a session's welcome)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._settings.handoff_timeout_s, self._handoff_expired, id_)
        self._handoff[id_] = timer
        until = loop.time() + self._settings.handoff_timeout_s
        conn = await self._hub.live(gateway_id, self._settings.handoff_timeout_s)
        sent = conn is not None and await conn.send(frame(conn))
        while not sent and conn is not None and conn.retiring and loop.time() < until:
            # `claimed` (a rotation) left on that session first: it goes to the one that follows
            conn = await self._hub.live(gateway_id, until - loop.time())
            sent = conn is not None and await conn.send(frame(conn))
        if not sent:
            timer.cancel()
            self._handoff.pop(id_, None)
            still = self._db.action(id_)
            if still is not None and still["status"] == "pending":
                self._fail(id_, "gateway_offline", "The gateway is offline")
        view = self._db.action(id_)
        assert view is not None
        return action_view(view)

    def resume(self) -> int:
        """After a restart: re-arm the hand-off timeout of every request still `pending` (its
        timer died with the old process). Returns how many."""
        loop = asyncio.get_running_loop()
        now = self._hub.clock()
        pending = self._db.pending_actions()
        for id_, created_at in pending:
            created = parse_iso(created_at) or now
            left = self._settings.handoff_timeout_s - (now - created).total_seconds()
            self._handoff[id_] = loop.call_later(max(0.0, left), self._handoff_expired, id_)
        if pending:
            log.info("action.handoff_resumed", pending=len(pending))
        return len(pending)

    def _handoff_expired(self, id_: str) -> None:
        self._handoff.pop(id_, None)
        row = self._db.action(id_)
        if row is not None and row["status"] == "pending":
            self._fail(id_, "gateway_timeout", "The gateway did not receive the action request")

    def start_sweep(self) -> None:
        """Check for overdue requests every `overdue_check_s` (see `fail_overdue`)."""
        self._sweep = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.overdue_check_s)
            try:
                self.fail_overdue()
            except sqlite3.Error as exc:  # a busy or failing disk: the next sweep tries again
                log.error("action.overdue_sweep_failed", error=type(exc).__name__)

    def fail_overdue(self) -> int:
        """Fail what a gateway received and went offline without finishing, `report_grace_s`
        after its deadline: it stayed `processing` for good when the gateway never came back.
        The gateway's own report, if it comes back later, is refused then (the request is
        final), and the error says the outcome is unknown. A gateway connected again since it
        last reported the request counts as gone: one back from a restart whose store had lost
        the request (a power cut, a restored backup) never reports it, and one that held it
        through a flap has sent its outcome from its outbox by now. Returns how many."""
        cutoff = iso(self._hub.clock() - timedelta(seconds=self._settings.report_grace_s))
        error = {
            "type": "gateway_lost",
            "message": "The gateway went offline before it reported the outcome;"
            " the lock may have moved",
        }
        ended = 0
        for id_, gateway_id, _ in self._db.overdue_actions(cutoff):
            conn = self._hub.claimed.get(gateway_id)
            if conn is not None and id_ in conn.in_flight:
                # reported in this session: its dispatcher fails it at the deadline. Not told
                # by `reported_at >= conn.since`: both on the wall clock, a step back since
                # the session began made every report in it look older than the session
                continue
            with self._db.transaction():
                self._db.set_action_status(id_, "failed", error, iso(self._hub.clock()), "cloud")
            log.warning("action.failed_overdue", action_request_id=id_, gateway_id=gateway_id)
            ended += 1
        return ended

    def fail_in_flight(self, gateway_id: str) -> int:
        """A revoked gateway's later reports are refused: what it held ends `failed`, saying the
        outcome is unknown, instead of staying `processing` for good. Returns how many."""
        error = {
            "type": "gateway_revoked",
            "message": "The gateway was revoked before it reported the outcome;"
            " the lock may have moved",
        }
        ids = self._db.in_flight_actions(gateway_id)
        for id_ in ids:
            self._db.set_action_status(id_, "failed", error, iso(self._hub.clock()), "cloud")
        return len(ids)

    def _fail(self, id_: str, type_: str, message: str) -> None:
        error = {"type": type_, "message": message}
        self._db.set_action_status(id_, "gateway_failure", error, iso(self._hub.clock()), "cloud")
        log.warning("action.gateway_failure", action_request_id=id_, reason=type_)

    def apply_status(
        self, gateway_id: str, msg: protocol.ActionStatusMsg
    ) -> protocol.ActionCancel | None:
        """A status report from the gateway that owns the request; anything else is not recorded.

        Returns the `action_cancel` for a request the gateway must not run, which the caller
        sends before the ack that lets the gateway go ahead: its `gateway_received` came after
        the hand-off timeout, when the cloud had already reported `gateway_failure`, or the
        request is another gateway's (a box claimed again after a revoke is a new gateway, and
        resends the receipts its old one had in flight). A request the cloud never issued (the
        gateway's local actions) is the gateway's own business.
        """
        row = self._db.action(msg.action_request_id)
        if row is None or row["gateway_id"] != gateway_id:
            log.warning("action.unknown_status_report", gateway_id=gateway_id)
            if row is None or msg.status != "gateway_received":
                return None
            return protocol.ActionCancel(
                action_request_id=row["id"], reason="the request is another gateway's"
            )
        current, new = row["status"], msg.status
        if current == "gateway_failure" and new in GATEWAY_STATUSES:
            log.warning("action.late_report", action_request_id=row["id"], new=new)
            if new != "gateway_received":
                return None
            return protocol.ActionCancel(
                action_request_id=row["id"],
                reason="the gateway received it after the cloud's hand-off timeout",
            )
        if new not in GATEWAY_STATUSES or _RANK[new] <= _RANK[current]:
            log.warning(
                "action.status_refused", action_request_id=row["id"], current=current, new=new
            )
            return None
        handle = self._handoff.pop(row["id"], None)
        if handle is not None:
            handle.cancel()
        error = _clean_error(msg.error) if new == "failed" else None
        self._db.set_action_status(row["id"], new, error, iso(self._hub.clock()), "gateway")
        conn = self._hub.claimed.get(gateway_id)
        if conn is not None:
            if new in ("gateway_received", "processing"):
                conn.in_flight.add(row["id"])
            else:
                conn.in_flight.discard(row["id"])
        log.info("action.status", action_request_id=row["id"], status=new)
        return None

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for handle in self._handoff.values():
            handle.cancel()
        self._handoff.clear()


def _clean_error(error: dict[str, Any] | None) -> dict[str, Any]:
    """The gateway's `{type, message, validation_errors?}`, reduced to those keys, with any
    digits that could be a PIN masked: it is stored, shown by REST, and no PIN may be."""
    if error is None:
        return {"type": "unknown", "message": "The action failed"}
    out: dict[str, Any] = {
        # masked before clipped: a clip could leave the head of a PIN too short to be seen
        "type": mask_pin_digits(str(error.get("type") or "unknown"))[:100],
        "message": mask_error_pins(str(error.get("message") or ""))[:500],
    }
    if isinstance(error.get("validation_errors"), dict):
        out["validation_errors"] = mask_error_pins(error["validation_errors"])
    return out
