"""Frames the gateway puts in its outbox stay within the protocol's size, also renumbered."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gatewayd import protocol
from gatewayd.actions import StatusUpdate
from gatewayd.model import ActionStatus, iso
from gatewayd.store import Store
from gatewayd.upstream import Upstream

WHEN = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def _failed(message: str) -> StatusUpdate:
    error = {"type": "device_error", "message": message}
    return StatusUpdate("ar-1", ActionStatus.FAILED, WHEN, error, "unlock", 0.1, iso(WHEN))


def _frame_bytes(message: str, seq: int = 1) -> int:
    update = _failed(message)
    msg = protocol.ActionStatusMsg(
        seq=seq, action_request_id="ar-1", status="failed", error=update.error, at=iso(WHEN)
    )
    return len(protocol.encode(msg))


def _message_making_a_frame_of(size: int) -> str:
    base = _frame_bytes("")
    return "x" * (size - base)


def test_a_status_whose_error_does_not_fit_a_frame_is_sent_with_the_error_cut(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "s.db")
    Upstream(store).action_status(_failed("y" * protocol.MAX_FRAME_BYTES))
    store.flush()
    [(_, frame)] = store.outbox_after(0)
    msg = protocol.decode(frame)
    assert isinstance(msg, protocol.ActionStatusMsg)
    assert (msg.status, msg.error) == (
        "failed",
        {"type": "device_error", "message": "error details too large"},
    )
    store.close()


def test_a_frame_at_the_size_limit_can_still_be_renumbered_far_ahead(tmp_path: Path) -> None:
    """A frame a few bytes under the limit at seq 1 grew past it when a rebase (the store
    lost its last commits) gave it a seq of many digits: the rebase failed on every welcome,
    and the outbox never drained again."""
    message = _message_making_a_frame_of(protocol.MAX_FRAME_BYTES - 2)
    assert _frame_bytes(message) == protocol.MAX_FRAME_BYTES - 2
    store = Store.open(tmp_path / "s.db")
    Upstream(store).action_status(_failed(message))
    store.flush()
    moved = store.rebase(10**15, protocol.renumber)
    assert moved.shift == 10**15
    [(seq, frame)] = store.outbox_after(0)
    msg = protocol.decode(frame)
    assert isinstance(msg, protocol.ActionStatusMsg)
    assert (seq, msg.seq, msg.status) == (10**15 + 1, 10**15 + 1, "failed")
    assert msg.error is not None
    assert msg.error["type"] == "device_error"
    store.close()
