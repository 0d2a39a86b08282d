"""devcloud's settings: one frozen object built by the CLI or by tests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    api_key: str = field(repr=False)
    db_path: str
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str = field(default="", repr=False)
    webhook_backoff_s: float = 0.5
    # a delivery is retried (backoff doubling up to webhook_backoff_max_s) until the receiver
    # takes it or this long has passed since its first failure: a receiver redeployed, or down
    # for an afternoon, misses nothing
    webhook_give_up_s: float = 24 * 3600.0
    webhook_backoff_max_s: float = 30.0
    webhook_timeout_s: float = 10.0
    action_timeout_s: float = 60.0
    handoff_timeout_s: float = 10.0
    # a request the gateway received and never finished is failed this long after its deadline
    # while the gateway is offline (a connected gateway fails it itself, at the deadline)
    report_grace_s: float = 30.0
    overdue_check_s: float = 5.0
    heartbeat_s: float = 60.0  # the gateway pings after h/2 of silence; the server rarely must
    hello_timeout_s: float = 10.0
    token_ttl_s: float = 24 * 3600.0
    claim_limit: int = 10
    claim_window_s: float = 60.0
