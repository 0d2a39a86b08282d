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
