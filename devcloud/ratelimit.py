"""A sliding-window rate limiter keyed by anything hashable (API key, source address)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Final

_MIN_SWEEP: Final = 1024


class RateLimiter:
    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window_s
        self._clock = clock
        self._hits: dict[Hashable, deque[float]] = {}
        self._sweep_at = _MIN_SWEEP

    def allow(self, *keys: Hashable) -> bool:
        """Count one attempt against every key; False if any key is over its limit."""
        now = self._clock()
        if len(self._hits) >= self._sweep_at:
            self._sweep(now)
        allowed = True
        for key in keys:
            hits = self._hits.setdefault(key, deque())
            while hits and now - hits[0] >= self._window:
                hits.popleft()
            if len(hits) >= self._limit:
                allowed = False
        if allowed:
            for key in keys:
                self._hits[key].append(now)
        return allowed

    def retry_after(self, *keys: Hashable) -> float:
        """Seconds until every key has room for one more attempt (0.0: it has now)."""
        now = self._clock()
        wait = 0.0
        for key in keys:
            hits = self._hits.get(key)
            if hits is not None and len(hits) >= self._limit:
                # the hit whose leaving the window makes room for one more
                wait = max(wait, self._window - (now - hits[-self._limit]))
        return max(wait, 0.0)

    def _sweep(self, now: float) -> None:
        """Forget keys with no attempt left in the window: a client that comes from ever new
        addresses must not grow this map without bound. Amortized by doubling the threshold."""
        for key in [
            k for k, hits in self._hits.items() if not hits or now - hits[-1] >= self._window
        ]:
            del self._hits[key]
        self._sweep_at = max(_MIN_SWEEP, 2 * len(self._hits))
