"""UTC timestamps written the way the seed writes them: `2020-02-10T01:33:19.955Z`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

# The cloud's wall clock: what its timestamps are read from (a seam for tests that step it).
WallClock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """Fixed width (a year is always four digits: `%Y` writes 999 as `999`), so that stored
    times sort and compare as text."""
    ts = ts.astimezone(UTC)
    return (
        f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}T{ts.hour:02d}:{ts.minute:02d}:"
        f"{ts.second:02d}.{ts.microsecond // 1000:03d}Z"
    )


def parse_iso(text: str) -> datetime | None:
    """An ISO-8601 timestamp as an aware UTC datetime; naive ones are taken as UTC; None if bad."""
    if not isinstance(text, str) or not 10 <= len(text) <= 40:
        return None
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    try:
        return ts.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
