"""Webhook delivery: each event POSTed as JSON to every receiver, signed, retried with backoff
until the receiver takes it (for up to `webhook_give_up_s`, a day by default).

`Seam-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`; Basic auth when the URL
carries credentials. One worker per receiver keeps order; the tunnel only enqueues, into the
database in the event's own transaction, so a delivery still owed survives a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from typing import Any, Final

import aiohttp
import msgspec
import structlog
from yarl import URL

from devcloud.db import Database, secret_hash
from devcloud.settings import Settings

log = structlog.get_logger("devcloud.webhooks")

QUEUE_LIMIT: Final = 10_000


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Seam-Signature` header value for one delivery."""
    payload = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class _Receiver:
    def __init__(self, url: str) -> None:
        parsed = URL(url)
        self.auth: dict[str, str] = (
            {"Authorization": aiohttp.encode_basic_auth(parsed.user, parsed.password or "")}
            if parsed.user
            else {}
        )
        self.url = parsed.with_user(None).with_password(None)
        # its deliveries in the outbox: a hash, as the path or query string may hold a token
        self.key = secret_hash(str(self.url))
        # in logs: no credentials, no path (`/services/T…/B…/<token>`), yet one per receiver
        self.label = f"{self.url.host}:{self.url.port}#{self.key[:8]}"
        self.wake = asyncio.Event()


class Webhooks:
    def __init__(self, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db
        # one per endpoint: a URL given twice (or with other credentials) shares its outbox
        # rows, and two workers on them would deliver every event twice
        by_key: dict[str, _Receiver] = {}
        for url in settings.webhook_urls:
            by_key.setdefault((r := _Receiver(url)).key, r)
        self._receivers = list(by_key.values())
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed = 0

    async def start(self) -> None:
        # no worker would ever send these: the receiver was removed from the configuration
        dropped = self._db.drop_webhooks_except({r.key for r in self._receivers})
        if dropped:
            log.warning("webhook.outbox_dropped", rows=dropped)
        if not self._receivers:
            return
        timeout = aiohttp.ClientTimeout(total=self._settings.webhook_timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout)
        for r in self._receivers:
            self._tasks.append(asyncio.create_task(self._worker(r), name=f"webhook {r.label}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def publish(self, event: dict[str, Any]) -> None:
        """Queue one event for every receiver, in the caller's transaction; never waits."""
        body = msgspec.json.encode(event)
        for r in self._receivers:
            if self._db.webhook_backlog(r.key) >= QUEUE_LIMIT:
                self.failed += 1
                log.error("webhook.dropped", receiver=r.label, reason="queue_full")
                continue
            self._db.add_webhook(r.key, body)
            r.wake.set()

    async def _worker(self, r: _Receiver) -> None:
        while True:
            owed = self._db.next_webhook(r.key)
            if owed is None:
                r.wake.clear()
                await r.wake.wait()
                continue
            n, body = owed
            if await self._deliver(r, body):
                self.delivered += 1
            else:
                self.failed += 1
            self._db.webhook_done(n)

    async def _deliver(self, r: _Receiver, body: bytes) -> bool:
        """POST one event until a 2xx, or until `webhook_give_up_s` after its first failure."""
        assert self._session is not None
        s = self._settings
        first_failure: float | None = None
        attempt = 0
        while True:
            attempt += 1
            ts = int(time.time())
            headers = {
                **r.auth,
                "Content-Type": "application/json",
                "Seam-Signature": sign(s.webhook_secret, ts, body),
            }
            try:
                # a 3xx is not taken: followed, a 301/302 turns the POST into a bodiless GET
                async with self._session.post(
                    r.url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    if 200 <= resp.status < 300:
                        log.info("webhook.delivered", receiver=r.label, attempt=attempt)
                        return True
                    reason = f"http_{resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = type(exc).__name__
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
            delay = min(s.webhook_backoff_s * 2 ** min(attempt - 1, 30), s.webhook_backoff_max_s)
            if now + delay - first_failure > s.webhook_give_up_s:
                log.error(
                    "webhook.gave_up",
                    receiver=r.label,
                    attempts=attempt,
                    failing_for_s=round(now - first_failure, 1),
                    reason=reason,
                )
                return False
            log.warning("webhook.attempt_failed", receiver=r.label, attempt=attempt, reason=reason)
            await asyncio.sleep(delay)
