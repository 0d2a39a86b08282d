"""A sliding-window rate limiter keyed by anything hashable (API key, source address)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable


class RateLimiter:
    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window_s
        self._clock = clock
        self._hits: dict[Hashable, deque[float]] = {}

    def allow(self, *keys: Hashable) -> bool:
        """Count one attempt against every key; False if any key is over its limit."""
        now = self._clock()
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
