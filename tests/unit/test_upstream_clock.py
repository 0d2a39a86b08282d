"""Times sent upstream follow the cloud's clock once the box's own is known to be off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gatewayd import protocol
from gatewayd.actions import StatusUpdate
from gatewayd.model import ActionStatus, Device, DeviceProperties, DoorEvent, EventName, iso
from gatewayd.store import Store
from gatewayd.upstream import CLOCK_SKEW_S, Upstream

WHEN = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def _sent(store: Store, upstream: Upstream, skew_s: float | None) -> list[dict[str, Any]]:
    upstream.cloud_clock(skew_s)
    device = Device(
        id="d-1",
        native_id="n",
        protocol="sim",
        name="Front door",
        manufacturer="Acme",
        model="L1",
        properties=DeviceProperties(locked=True, last_seen=WHEN),
    )
    upstream.action_status(
        StatusUpdate("ar-1", ActionStatus.COMPLETED, WHEN, None, "unlock", 0.1, iso(WHEN))
    )
    upstream.event(DoorEvent("d-1", EventName.DOOR_UNLOCKED, date_created=WHEN))
    upstream.device(device)
    store.flush()
    after = store.acked_seq
    frames = [protocol.to_dict(protocol.decode(f)) for _, f in store.outbox_after(after)]
    store.outbox_ack(store.committed_seq)
    return frames


def _stamps(frames: list[dict[str, Any]]) -> list[str]:
    at, event, device = frames
    return [at["at"], event["event"]["date_created"], device["device"]["properties"]["last_seen"]]


@pytest.mark.parametrize(
    ("skew_s", "shift_s"),
    [
        (None, 0),  # the cloud sent no time
        (0.4, 0),  # a round trip's worth: not a wrong clock
        (CLOCK_SKEW_S - 0.1, 0),
        (-3600.0, -3600),  # the box is an hour ahead of the cloud
        (3600.0, 3600),  # an hour behind
    ],
)
def test_upstream_times_move_to_the_clouds_clock(
    tmp_path: Path, skew_s: float | None, shift_s: int
) -> None:
    store = Store.open(tmp_path / "s.db")
    try:
        frames = _sent(store, Upstream(store), skew_s)
    finally:
        store.close()
    assert _stamps(frames) == [iso(WHEN + timedelta(seconds=shift_s))] * 3


def test_a_new_welcome_replaces_the_shift(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    upstream = Upstream(store)
    try:
        assert _stamps(_sent(store, upstream, -3600.0)) == [iso(WHEN - timedelta(hours=1))] * 3
        assert _stamps(_sent(store, upstream, 0.2)) == [iso(WHEN)] * 3  # NTP fixed the box
    finally:
        store.close()


def test_a_wall_clock_step_after_the_welcome_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A box that booted an hour behind is told the skew at the welcome; then NTP steps its
    clock. With the welcome's shift kept, every time sent after the step was an hour in the
    future (and a box that booted at 1970 stamped events in 2083)."""
    from gatewayd import upstream as upstream_module

    wall = [WHEN - timedelta(hours=1)]
    mono = [1000.0]
    monkeypatch.setattr(upstream_module, "utcnow", lambda: wall[0])
    store = Store.open(tmp_path / "s.db")
    upstream = Upstream(store, monotonic=lambda: mono[0])
    try:
        upstream.cloud_clock(3600.0)  # the cloud's clock is an hour ahead of ours
        mono[0] += 10
        wall[0] += timedelta(seconds=10)
        upstream.event(DoorEvent("d-1", EventName.DOOR_UNLOCKED, date_created=wall[0]))
        mono[0] += 10
        wall[0] += timedelta(hours=1, seconds=10)  # NTP steps our clock to the right time
        upstream.event(DoorEvent("d-1", EventName.DOOR_LOCKED, date_created=wall[0]))
        mono[0] += 10
        wall[0] -= timedelta(hours=2) - timedelta(seconds=10)  # and a bad step back
        upstream.event(DoorEvent("d-1", EventName.DOOR_UNLOCKED, date_created=wall[0]))
        store.flush()
        frames = [protocol.to_dict(protocol.decode(f)) for _, f in store.outbox_after(0)]
    finally:
        store.close()
    assert [f["event"]["date_created"] for f in frames] == [
        iso(WHEN + timedelta(seconds=10)),
        iso(WHEN + timedelta(seconds=20)),
        iso(WHEN + timedelta(seconds=30)),
    ]


def test_status_shows_the_skew_as_it_is_now_after_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """/status kept the welcome's skew (3600 s) after NTP had fixed the clock."""
    from gatewayd import tunnel as tunnel_module
    from gatewayd.config import CloudConfig
    from gatewayd.tunnel import Tunnel

    wall = [WHEN - timedelta(hours=1) + timedelta(seconds=10)]
    monkeypatch.setattr(tunnel_module, "utcnow", lambda: wall[0])
    cloud = CloudConfig(url="ws://127.0.0.1:9/t")
    tunnel = Tunnel(cloud, Store.__new__(Store), print, dict, clock=lambda: 110.0)
    tunnel._cloud_anchor = (WHEN, 100.0)  # the welcome: the cloud read WHEN at monotonic 100
    assert tunnel.current_skew_s() == 3600.0
    wall[0] += timedelta(hours=1)  # NTP steps our clock
    assert tunnel.current_skew_s() == 0.0
