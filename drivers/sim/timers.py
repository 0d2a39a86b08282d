"""Keyed one-shot timers served by a single background task (auto-relock, pairing joins)."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import anyio

from gatewayd.logging import get_logger

log = get_logger(__name__)


class Timers:
    """`call_later(key, delay, fn)` replaces any timer under the same key; `run()` fires them.

    Create it inside a running event loop. `close()` drops pending timers and ends `run()`.
    """

    def __init__(self) -> None:
        self._due: dict[Hashable, tuple[float, Callable[[], None]]] = {}
        self._wake = anyio.Event()
        self._closed = False

    def call_later(self, key: Hashable, delay_s: float, fn: Callable[[], None]) -> None:
        self._due[key] = (anyio.current_time() + delay_s, fn)
        self._wake.set()

    def cancel(self, key: Hashable) -> None:
        if self._due.pop(key, None) is not None:
            self._wake.set()

    def pending(self, key: Hashable) -> bool:
        return key in self._due

    def close(self) -> None:
        self._closed = True
        self._due.clear()
        self._wake.set()

    async def run(self) -> None:
        """Fire timers as they fall due, until closed."""
        while True:
            self._wake = anyio.Event()
            now = anyio.current_time()
            ready = sorted(
                ((at, key) for key, (at, _) in self._due.items() if at <= now),
                key=lambda item: item[0],
            )
            for _, key in ready:
                entry = self._due.pop(key, None)
                if entry is None:
                    continue
                try:
                    entry[1]()
                except Exception as exc:  # noqa: BLE001 - runs in the daemon's task group
                    # one failing timer (a join the store refused) must not end the others,
                    # nor take the daemon down with it
                    log.error("sim.timer_failed", timer=str(key), error=repr(exc))
            if self._closed:
                return
            if self._due:
                next_at = min(at for at, _ in self._due.values())
                with anyio.move_on_after(max(0.0, next_at - anyio.current_time())):
                    await self._wake.wait()
            else:
                await self._wake.wait()
