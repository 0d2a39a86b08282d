"""The reconnect policy: exponential backoff with full jitter, capped, never giving up."""

from __future__ import annotations

import pytest

from gatewayd.config import CloudConfig
from gatewayd.tunnel import Backoff, Tunnel


def test_ceilings_double_from_half_a_second_to_a_minute() -> None:
    top = Backoff(rand=lambda: 1.0)
    assert [round(top.next_delay(), 3) for _ in range(10)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
        60.0,
    ]
    for _ in range(1000):  # never gives up, never overflows
        assert top.next_delay() == 60.0


def test_full_jitter_spreads_over_the_whole_interval() -> None:
    draws = iter([0.0, 0.25, 0.5, 0.999])
    b = Backoff(rand=lambda: next(draws))
    b.attempt = 5  # ceiling 16 s
    assert [b.next_delay() for _ in range(2)] == [0.0, 0.25 * 32.0]


def test_reset_starts_again_from_the_base() -> None:
    b = Backoff(rand=lambda: 1.0)
    for _ in range(6):
        b.next_delay()
    b.reset()
    assert b.next_delay() == 0.5


def test_plain_ws_only_to_loopback_or_when_insecure_is_explicit() -> None:
    from gatewayd.store import Store

    def make(url: str, insecure: bool = False) -> Tunnel:
        return Tunnel(CloudConfig(url=url, insecure=insecure), Store.__new__(Store), print, dict)

    with pytest.raises(ValueError, match="loopback"):
        make("ws://cloud.example.com/v1/gateway/tunnel")
    make("ws://127.0.0.1:9/v1/gateway/tunnel")
    make("ws://[::1]:9/v1/gateway/tunnel")
    make("ws://10.1.2.3:9/v1/gateway/tunnel", insecure=True)


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.evil.com/v1/gateway/tunnel",  # a DNS name that merely starts like 127.x
        "ws://127.0.0.1.nip.io/v1/gateway/tunnel",
    ],
)
def test_plain_ws_to_a_host_name_that_looks_like_loopback_needs_insecure(url: str) -> None:
    """Any host starting with `127.` passed as loopback: plain ws:// to a name on the internet."""
    from gatewayd.store import Store

    with pytest.raises(ValueError, match="loopback"):
        Tunnel(CloudConfig(url=url), Store.__new__(Store), print, dict)
    Tunnel(CloudConfig(url=url, insecure=True), Store.__new__(Store), print, dict)
