"""The rate limiter: a sliding window per key, and no memory kept for keys gone quiet."""

from __future__ import annotations

from devcloud.ratelimit import RateLimiter


def test_addresses_gone_quiet_are_forgotten() -> None:
    now = [0.0]
    limiter = RateLimiter(2, 60.0, clock=lambda: now[0])
    for wave in range(10):  # a client on ever new addresses, 2000 a minute
        now[0] = wave * 61.0
        for n in range(2000):
            assert limiter.allow(("remote", f"2001:db8:{wave:x}::{n:x}"))
    # what is kept is bounded by the addresses active in one window, not by all ever seen
    assert len(limiter._hits) <= 2 * 2048
    # and the window itself still holds
    key = ("remote", "2001:db8:9::1")
    assert limiter.allow(key)
    assert not limiter.allow(key)


def test_retry_after_is_when_the_oldest_hit_leaves_the_window() -> None:
    now = [0.0]
    limiter = RateLimiter(2, 60.0, clock=lambda: now[0])
    assert limiter.retry_after("k") == 0.0
    assert limiter.allow("k")
    now[0] = 10.0
    assert limiter.allow("k")
    assert limiter.retry_after("k") == 50.0  # the hit at 0 leaves the window at 60
    now[0] = 59.5
    assert not limiter.allow("k")
    assert limiter.retry_after("k", "other") == 0.5
    now[0] = 60.0
    assert limiter.retry_after("k") == 0.0
    assert limiter.allow("k")
