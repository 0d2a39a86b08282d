"""Log flood guard: a repeating line is logged at a steady rate, with a count of what was dropped.

A lock that sends malformed reports ten times a second, a cloud that keeps sending bad frames, a
radio that flaps: each wrote one line per occurrence for ever, until journald's own rate limit
(10,000 lines per 30 s per service) dropped lines wholesale, the one an operator needed too.
The guard gives every kind of line a token bucket and drops what is over it (`DropEvent`); the
next line of that kind that gets through carries `suppressed=N`, the number dropped since the
last one, and `gatewayd_log_lines_suppressed_total` counts them by event name.

Which lines share a bucket (the key):

- A structlog line: its event name and level, the first of `SUBJECT_KEYS` it carries (so one
  lock, node or gateway flooding an event does not silence the same event of the others) and its
  `status` (so a flood of `actions.status` ... `completed` cannot drop a `failed` one). A line
  with a subject also takes a token from its event's bucket across all subjects (per level and
  `status` too), a larger one: subjects are not a bounded set (a cloud can name any device),
  the event's rate still is. The price: lines naming ever new devices, once past that bucket,
  hold back the same event and status of the real ones (a `failed` flood, `failed` lines) too.
- A library's line (stdlib logging, which goes through the handler, not structlog's chain):
  its logger, level and a digest of its message template (before `%` arguments; the text itself
  is not kept, a library may have formatted a secret into it), under a bucket per logger and
  level across templates, since a library may format its message before logging it.

Never dropped: `critical` lines, and `EXEMPT_EVENTS`. Rare events, errors included, stay
under the burst by themselves; a repeating error (a failing disk, a driver that crashes on every
report) is exactly what the guard is for, so errors are not exempt by level.

A structlog line reaches the guard after redaction, so the event names it keys on and counts
are the redacted ones; `suppressed` is a number added to a line that was already redacted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Final

import structlog
from structlog.typing import EventDict, WrappedLogger

# Per key: 50 lines at once, then 5 a second. A lock cannot sustain more than about one action a
# second (each radio command waits for the lock's confirmation), which is 3-4 lines a second of
# any one per-device event; a start-up or a reconnect logs an event at most a few dozen times.
# A key flooding at 5/s writes 150 lines per journald window: 60 floods at once before journald
# drops anything itself.
BURST: Final = 50
REFILL_PER_S: Final = 5.0
# Per event across its subjects: ten keys' worth. A Z-Wave network's 232 nodes reporting ready
# at a reconnect pass; a cloud naming a new device in every request is held to 50 lines a second.
EVENT_BURST: Final = 500
EVENT_REFILL_PER_S: Final = 50.0
# Tracked buckets (keys and events), least recently used evicted first. An evicted bucket that
# was full and had dropped nothing is the same as a new one; one that had dropped lines loses
# only its `suppressed` note (the metric has counted them). Also the cap of the metric's labels.
MAX_KEYS: Final = 1024
SUBJECT_KEYS: Final = ("device_id", "node_id", "ieee", "gateway_id")
# Their latest line carries the registration token an operator claims the box with; each is
# paced by the tunnel's backoff (at least 0.5 s apart), so they cannot flood.
EXEMPT_EVENTS: Final = frozenset(
    {"daemon.unclaimed", "tunnel.credential_rejected", "tunnel.registration_token_renewed"}
)
NEVER_DROPPED_LEVELS: Final = frozenset({"critical", "fatal"})
OTHER_LABEL: Final = "(other)"  # the metric's label for events past MAX_KEYS of them


class _Bucket:
    __slots__ = ("dropped", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.dropped = 0  # dropped since a line of this bucket last got through


class LogFloodGuard:
    """Token buckets per kind of line. Call it as a structlog processor; `filter` is the same
    guard as a `logging` handler filter, for library lines (a formatter cannot drop a line)."""

    def __init__(
        self,
        *,
        burst: int = BURST,
        refill_per_s: float = REFILL_PER_S,
        event_burst: int = EVENT_BURST,
        event_refill_per_s: float = EVENT_REFILL_PER_S,
        max_keys: int = MAX_KEYS,
        exempt: frozenset[str] = EXEMPT_EVENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill_per_s = refill_per_s
        self.event_burst = event_burst
        self.event_refill_per_s = event_refill_per_s
        self.max_keys = max_keys
        self.exempt = exempt
        self._clock = clock
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._suppressed: dict[str, int] = {}  # event name (or logger) -> lines dropped
        self._lock = threading.Lock()  # lines come from worker threads too (aiosqlite, ...)

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        """structlog processor: drop a line over its bucket, note `suppressed` on the next."""
        event = event_dict.get("event")
        event = event if isinstance(event, str) else str(event)
        level = event_dict.get("level")
        if level in NEVER_DROPPED_LEVELS or event in self.exempt:
            return event_dict
        subject: tuple[str, Hashable] | None = None
        for name in SUBJECT_KEYS:
            value = event_dict.get(name)
            if value is not None:
                subject = (name, value if isinstance(value, str | int) else repr(value))
                break
        status = event_dict.get("status")
        status = status if isinstance(status, str) else None
        key = (event, level, subject, status)
        # the event-wide bucket is per status too: no flood of `completed` across locks can
        # drop another lock's `failed`
        dropped = self._admit(key, None if subject is None else (event, level, status), event)
        if dropped is None:
            raise structlog.DropEvent
        if dropped:
            event_dict["suppressed"] = dropped
        return event_dict

    def filter(self, record: logging.LogRecord) -> bool:
        """`logging` filter for library lines; structlog's own lines passed `__call__`."""
        if getattr(record, "_logger", None) is not None or record.levelno >= logging.CRITICAL:
            return True  # structlog's own lines (it marks their records) passed `__call__`
        # A digest of the template, not its text: a library that formats its message itself
        # may have put a secret in it, and this table holds keys until they are evicted.
        template = record.msg if isinstance(record.msg, str) else repr(type(record.msg))
        key = (record.name, record.levelno, hash(template))
        dropped = self._admit(key, (record.name, record.levelno), record.name)
        if dropped is None:
            return False
        if dropped:
            record.suppressed = dropped  # ExtraAdder puts it on the line
        return True

    @property
    def tracked(self) -> int:
        """Buckets held now (at most `max_keys`)."""
        return len(self._buckets)

    def suppressed(self) -> dict[str, int]:
        """Lines dropped so far, by event name (a library's: its logger name)."""
        with self._lock:
            return dict(self._suppressed)

    def _admit(self, key: Hashable, event_key: Hashable | None, label: str) -> int | None:
        """None: drop the line. Else the number of lines of its kind dropped before it (by
        either bucket: each count stays with the kind of line it was dropped from)."""
        with self._lock:
            now = self._clock()  # inside the lock: a bucket's stamp never moves back
            bucket = self._bucket(key, now, self.burst, self.refill_per_s)
            if bucket.tokens < 1:
                bucket.dropped += 1
                self._count(label)
                return None
            if event_key is not None:
                across = self._bucket(
                    ("*", event_key), now, self.event_burst, self.event_refill_per_s
                )
                if across.tokens < 1:
                    bucket.dropped += 1
                    self._count(label)
                    return None
                across.tokens -= 1
            dropped = bucket.dropped
            bucket.tokens -= 1
            bucket.dropped = 0
            return dropped

    def _bucket(self, key: Hashable, now: float, burst: int, refill: float) -> _Bucket:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            bucket = buckets[key] = _Bucket(float(burst), now)
        else:
            buckets.move_to_end(key)
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * refill)
            bucket.stamp = now
        return bucket

    def _count(self, label: str) -> None:
        counts = self._suppressed
        if label not in counts and len(counts) >= self.max_keys - 1:  # one left for OTHER
            label = OTHER_LABEL
        counts[label] = counts.get(label, 0) + 1
