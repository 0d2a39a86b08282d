"""UTC timestamps written the way the seed writes them: `2020-02-10T01:33:19.955Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


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
