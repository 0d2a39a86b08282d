"""The daemon keeps its action log bounded: finished actions go `store.action_log_days` after
their deadline, at start-up and then hourly, and the newest ACTION_LOG_FLOOR always stay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from structlog.testing import CapturingLogger

from gatewayd import daemon as daemon_module
from gatewayd.model import iso, utcnow
from gatewayd.store import ACTION_LOG_FLOOR, ActionRow, Store
from tests.support import running_daemon, wait_until


def _fill(store: Store, prefix: str, count: int, deadline: str) -> None:
    for i in range(count):
        row = ActionRow(
            f"{prefix}-{i:05d}",
            "d1",
            "unlock",
            "completed",
            None,
            [("completed", deadline)],
            deadline,
        )
        store.record_action(row, deadline)
    store.flush()


def _count(store: Store, prefix: str) -> int:
    return sum(1 for row in store.recent_actions(3 * ACTION_LOG_FLOOR) if row.id.startswith(prefix))


@asynccontextmanager
async def _daemon(state: Path, *, days: int, pruned: str) -> AsyncIterator[tuple[Store, list[int]]]:
    """A daemon on `state` with `action_log_days = days`, once it has pruned action `pruned`;
    with the counts its `store.actions_pruned` lines gave (all of them once the block ended)."""
    logs = CapturingLogger()  # the daemon module's own logger, whatever structlog's config
    counts: list[int] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(daemon_module, "log", logs)
        async with running_daemon(state, extra=f"[store]\naction_log_days = {days}\n") as daemon:
            db = daemon.store
            assert db is not None
            await wait_until(lambda: not db.has_action(pruned))
            yield db, counts
    counts += [c.kwargs["count"] for c in logs.calls if c.args == ("store.actions_pruned",)]


async def test_the_daemon_prunes_at_start_up_by_the_configured_age(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    now = utcnow()
    store = Store.open(state / "gatewayd.db")
    _fill(store, "ancient", 200, "2020-01-01T00:00:00.000Z")
    _fill(store, "tendays", 100, iso(now - timedelta(days=10)))
    _fill(store, "fresh", ACTION_LOG_FLOOR, iso(now - timedelta(minutes=1)))
    stuck = ActionRow("stuck", "d1", "lock", "processing", None, [], "2020-01-01T00:00:00.000Z")
    store.record_action(stuck, "2020-01-01T00:00:00.000Z")  # a crash left it unfinished
    store.close()

    async with _daemon(state, days=30, pruned="ancient-00199") as (db, counts):
        assert _count(db, "ancient") == 0
        assert _count(db, "tendays") == 100  # within 30 days of their deadline
        assert _count(db, "fresh") == ACTION_LOG_FLOOR
        # failed at start-up (gateway_restarted); its deadline is still its own, and it stays
        # as one of the newest rows
        row = db.action("stuck")
        assert row is not None
        assert (row.status, row.deadline) == ("failed", "2020-01-01T00:00:00.000Z")
    assert counts == [200]

    async with _daemon(state, days=7, pruned="tendays-00099") as (db, counts):
        assert _count(db, "tendays") == 0
        assert _count(db, "fresh") == ACTION_LOG_FLOOR
        assert db.has_action("stuck")
    assert counts == [100]


async def test_a_clock_near_year_one_skips_the_prune_instead_of_ending_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reset RTC within `action_log_days` of year 1: the cutoff overflowed, OverflowError
    took the daemon's task group down at start-up."""
    from datetime import UTC, datetime

    monkeypatch.setattr(daemon_module, "utcnow", lambda: datetime(1, 1, 2, tzinfo=UTC))
    async with running_daemon(tmp_path / "state") as daemon:
        assert daemon.registry is not None
        await anyio.sleep(0.2)  # the prune task has run its first turn
        assert daemon.registry.devices()  # still serving
