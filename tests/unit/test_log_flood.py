"""The log flood guard: a repeating line is logged at a steady rate with a count of what was
dropped, other lines are not held back, and what it tracks stays bounded."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from gatewayd import logging as gwlog
from gatewayd.logguard import BURST, REFILL_PER_S, LogFloodGuard


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def emit(guard: LogFloodGuard, event: str, level: str = "warning", **kw: Any) -> dict[str, Any]:
    """One line through the guard: the line as it goes on, or {} when dropped."""
    try:
        return dict(guard(None, level, {"event": event, "level": level, **kw}))
    except structlog.DropEvent:
        return {}


def test_a_flood_is_held_to_burst_plus_refill_and_the_count_is_exact() -> None:
    """A lock sending a malformed report 100 times a second for 10 s: 1,000 warnings."""
    clock = Clock()
    guard = LogFloodGuard(clock=clock)
    logged: list[dict[str, Any]] = []
    for _ in range(1000):
        if line := emit(guard, "zwave.bad_report", node_id=5):
            logged.append(line)
        clock.now += 0.01
    assert BURST <= len(logged) <= BURST + REFILL_PER_S * 10 + 1
    dropped = 1000 - len(logged)
    # every dropped line is accounted for: in a later line's `suppressed`, or still pending
    clock.now += 1
    last = emit(guard, "zwave.bad_report", node_id=5)
    assert sum(line.get("suppressed", 0) for line in [*logged, last]) == dropped
    assert guard.suppressed() == {"zwave.bad_report": dropped}


def test_the_next_line_after_a_burst_says_exactly_how_many_were_dropped() -> None:
    clock = Clock()
    guard = LogFloodGuard(clock=clock)
    lines = [emit(guard, "tunnel.bad_frame", code=4000) for _ in range(1000)]  # at one instant
    assert sum(1 for line in lines if line) == BURST
    assert not any("suppressed" in line for line in lines)
    clock.now += 1
    after = emit(guard, "tunnel.bad_frame", code=4000)
    assert after["suppressed"] == 1000 - BURST
    assert "suppressed" not in emit(guard, "tunnel.bad_frame")  # counted once, then reset


def test_other_events_and_other_locks_are_never_held_back_by_a_flood() -> None:
    clock = Clock()
    guard = LogFloodGuard(clock=clock)
    others: list[dict[str, Any]] = []
    for i in range(5000):  # 1,000 lines a second of each flood, for 5 s
        emit(guard, "zigbee.attribute_ignored", "info", device_id="lock-1", attribute="x")
        emit(guard, "actions.status", "info", device_id="lock-1", status="completed")
        if i % 100 == 0:  # 10 a second of each of these, 50 in all
            others.append(emit(guard, "tunnel.connected", "info", gateway_id="gw-1"))
            others.append(emit(guard, "zigbee.attribute_ignored", "info", device_id="lock-2"))
            others.append(emit(guard, "zigbee.attribute_ignored", "warning", device_id="lock-1"))
            # the flooding lock's failed action: its own bucket, not its completed ones'
            others.append(
                emit(guard, "actions.status", "info", device_id="lock-1", status="failed")
            )
        clock.now += 0.001
    assert len(others) == 200
    assert all(others), "a line of another event, lock, level or status was dropped"
    assert set(guard.suppressed()) == {"zigbee.attribute_ignored", "actions.status"}


def test_a_bucket_refills_at_its_rate_up_to_the_burst() -> None:
    clock = Clock()
    guard = LogFloodGuard(burst=10, refill_per_s=2.0, clock=clock)
    assert sum(bool(emit(guard, "x.flood")) for _ in range(20)) == 10
    clock.now += 0.4  # 0.8 of a token
    assert not emit(guard, "x.flood")
    clock.now += 0.1  # 1.0
    assert emit(guard, "x.flood")["suppressed"] == 11
    assert not emit(guard, "x.flood")
    clock.now += 3600  # an hour of quiet fills the bucket, and no more
    assert sum(bool(emit(guard, "x.flood")) for _ in range(20)) == 10


def test_many_subjects_of_one_event_are_held_to_the_event_rate() -> None:
    """A cloud naming a new device in every request gets a new bucket per line: the event's
    bucket across subjects still holds it, and its lines' count is reported."""
    clock = Clock()
    guard = LogFloodGuard(event_burst=100, event_refill_per_s=10.0, clock=clock)
    logged = [emit(guard, "actions.status", device_id=f"dev-{i}") for i in range(1000)]
    assert sum(1 for line in logged if line) == 100
    clock.now += 1
    # each count stays with the kind of line it was dropped from, not with whoever comes next
    assert "suppressed" not in emit(guard, "actions.status", device_id="dev-real")
    assert emit(guard, "actions.status", device_id="dev-500")["suppressed"] == 1
    assert guard.suppressed() == {"actions.status": 900}


def test_a_flood_of_one_status_across_locks_drops_no_other_status() -> None:
    """Twelve locks logging `completed` 100 times a second each for 3 s, and one other lock
    failing now and then: every `failed` line gets through (the event-wide bucket is per
    status too; before, it was per event, and 8 of 10 were dropped)."""
    clock = Clock()
    guard = LogFloodGuard(clock=clock)
    kept = []
    for i in range(3000):
        emit(guard, "actions.status", "info", device_id=f"lock-{i % 12}", status="completed")
        if i % 300 == 0:
            kept.append(emit(guard, "actions.status", "info", device_id="front", status="failed"))
        clock.now += 0.001
    assert len(kept) == 10
    assert all(kept)


def test_critical_lines_and_exempt_events_are_never_dropped() -> None:
    guard = LogFloodGuard(burst=1, event_burst=1, clock=Clock())
    assert all(emit(guard, "x.fatal", "critical") for _ in range(100))
    assert all(emit(guard, "daemon.unclaimed", "info") for _ in range(100))
    assert all(emit(guard, "tunnel.credential_rejected", "error") for _ in range(100))
    assert guard.suppressed() == {}


def test_what_the_guard_tracks_stays_bounded() -> None:
    """Event names that never repeat (a library formatting its message) neither grow the
    buckets nor the metric's label set past the cap."""
    clock = Clock()
    guard = LogFloodGuard(burst=1, event_burst=1000, max_keys=8, clock=clock)
    for i in range(1000):
        emit(guard, f"x.event_{i}")
        emit(guard, f"x.event_{i}")  # the second of each is dropped
        assert guard.tracked <= 8
    counts = guard.suppressed()
    assert len(counts) == 8
    assert counts["(other)"] == 1000 - 7
    assert sum(counts.values()) == 1000
    # an evicted event starts again with a full bucket
    assert emit(guard, "x.event_0")


@pytest.fixture
def journal() -> Iterator[tuple[io.StringIO, Clock]]:
    stream = io.StringIO()
    clock = Clock()
    gwlog.configure("info", "json", stream, flood_guard=LogFloodGuard(clock=clock))
    yield stream, clock
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_the_configured_journal_is_limited_redacted_and_counted(
    journal: tuple[io.StringIO, Clock],
) -> None:
    """Through the real pipeline: structlog lines (plain and cached loggers) and a library's
    lines are limited, the count lands on the next line, and a PIN never shows."""
    stream, clock = journal
    log = gwlog.get_logger("gatewayd.test")
    other = structlog.get_logger("drivers.test")
    library = logging.getLogger("zwave_js_server.test")
    for i in range(500):
        log.warning("zwave.bad_report", node_id=7, frame="set code=736251")
        library.warning("unexpected report from node %s: code=%s", 7, "736251")
        if i % 25 == 0:
            other.info("registry.door_event", device_id="lock-2", event_name="door locked")
    clock.now += 1
    log.warning("zwave.bad_report", node_id=7, frame="set code=736251")
    library.warning("unexpected report from node %s: code=%s", 7, "736251")
    log.critical("daemon.fatal")

    text = stream.getvalue()
    assert "736251" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    flood = [line for line in lines if line["event"] == "zwave.bad_report"]
    from_library = [line for line in lines if str(line["event"]).startswith("unexpected")]
    assert len(flood) == len(from_library) == BURST + 1
    assert flood[-1]["suppressed"] == from_library[-1]["suppressed"] == 500 - BURST
    assert flood[-1]["frame"] == "set code=****"
    assert from_library[-1]["event"] == "unexpected report from node 7: code=****"
    assert sum(1 for line in lines if line["event"] == "registry.door_event") == 20
    assert lines[-1]["event"] == "daemon.fatal"
    assert gwlog.lines_suppressed() == {
        "zwave.bad_report": 500 - BURST,
        "zwave_js_server.test": 500 - BURST,
    }


def test_a_library_line_is_limited_whatever_its_message_and_its_text_is_not_kept(
    journal: tuple[io.StringIO, Clock],
) -> None:
    """A library that logs a dict is limited like any other (structlog's own records are told
    apart by the mark structlog puts on them, not by a dict message); one that formats a secret
    into its message leaves no copy of it in the guard's table."""
    stream, _clock = journal
    library = logging.getLogger("zigpy.test")
    for i in range(200):
        library.warning({"frame": i})
        library.warning(f"bad frame with code={i}-736251")  # formatted before logging
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert sum(1 for line in lines if line["event"].startswith("{")) == BURST
    guard = gwlog._flood_guard
    assert guard is not None
    assert not any("736251" in repr(key) for key in guard._buckets)
