"""/metrics labels: one series per action the gateway knows, whatever the cloud sends."""

from __future__ import annotations

from typing import Any, cast

from gatewayd.actions import StatusUpdate
from gatewayd.metrics import GatewayMetrics
from gatewayd.model import ActionStatus, utcnow


def test_actions_the_gateway_does_not_know_share_one_label() -> None:
    """The action name is the cloud's to choose: as a label, each new one added a series that
    stayed for as long as the daemon ran (and quoted whatever the cloud wrote)."""
    metrics = GatewayMetrics(cast(Any, None))
    for action in ("unlock", "teleport", "x" * 60, "unlock"):
        metrics.observe_status(
            StatusUpdate(f"ar-{action}", ActionStatus.FAILED, utcnow(), {}, action, 0.1)
        )
    assert metrics.counts == {
        ("unlock", ActionStatus.FAILED): 2,
        ("unknown", ActionStatus.FAILED): 2,
    }
    assert set(metrics.latencies) == {"unlock", "unknown"}
