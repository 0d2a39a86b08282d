"""Action requests a cloud gets slightly wrong, against the scripted cloud end: answered, not
dropped in silence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
from structlog.testing import capture_logs

from gatewayd.config import CloudConfig
from gatewayd.model import ActionRequest
from gatewayd.store import Store
from gatewayd.tunnel import Tunnel
from tests.unit.test_protocol import request_frame as frame_bytes
from tests.unit.test_tunnel_claims import OLD, ScriptedCloud, claimed_store, running


def request_frame(**fields: Any) -> str:
    return frame_bytes(**fields).decode()


class Seen:
    def __init__(self) -> None:
        self.run: list[ActionRequest] = []
        self.rejected: list[tuple[str, str]] = []


async def serve(
    tmp_path: Path, cloud: ScriptedCloud, until: Any, **callbacks: Any
) -> tuple[Seen, Tunnel, Store]:
    store = claimed_store(tmp_path)
    seen = Seen()
    async with running(cloud):
        tunnel = Tunnel(
            CloudConfig(url=f"ws://127.0.0.1:{cloud.port}/v1/gateway/tunnel"),
            store,
            seen.run.append,
            lambda: {"software_version": "0", "hardware": "test", "drivers": ["sim"]},
            on_reject=lambda r, why: seen.rejected.append((r.id, why)),
            **callbacks,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(tunnel.run)
            with anyio.fail_after(10):
                while not until(seen, tunnel):
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    return seen, tunnel, store


async def test_a_request_with_a_mistyped_field_is_answered_failed_naming_it(
    tmp_path: Path,
) -> None:
    """`deadline: 12345` or `inputs: null` made the frame unreadable: skipped with no status and
    a log line that did not name the request, the cloud left waiting for its deadline."""
    cloud = ScriptedCloud({OLD}, lambda n: request_frame(deadline=12345) if n == 1 else None)
    with capture_logs() as logs:
        seen, _, store = await serve(tmp_path, cloud, lambda s, _t: len(s.rejected) >= 1)
    store.close()
    assert seen.run == []
    ((action_id, why),) = seen.rejected
    assert action_id == "a-1"
    assert why.startswith("malformed action_request: ")
    assert "deadline" in why
    skipped = [e for e in logs if e["event"] == "tunnel.frame_skipped"]
    assert skipped[0]["action_request_id"] == "a-1"


async def test_rfc3339_lower_case_t_and_z_are_read(tmp_path: Path) -> None:
    frame = request_frame(created_at="2026-12-04t10:00:00z", deadline="2099-12-04t10:00:30z")
    cloud = ScriptedCloud({OLD}, lambda n: frame if n == 1 else None)
    seen, _, store = await serve(tmp_path, cloud, lambda s, _t: bool(s.run or s.rejected))
    store.close()
    assert seen.rejected == []
    assert [r.id for r in seen.run] == ["a-1"]
    assert seen.run[0].deadline.year == 2099


async def test_a_frame_before_the_welcome_is_counted_and_logged(tmp_path: Path) -> None:
    cloud = ScriptedCloud({OLD}, lambda _n: None)
    cloud.before_welcome = request_frame()
    with capture_logs() as logs:
        seen, _, store = await serve(
            tmp_path, cloud, lambda _s, t: t.state == "connected" and t.frames_skipped == 1
        )
    store.close()
    assert seen.run == []
    assert any(
        e["event"] == "tunnel.frame_skipped" and "before welcome" in e["reason"] for e in logs
    )


async def test_a_deadline_before_created_at_is_invalid_input_not_a_timeout(tmp_path: Path) -> None:
    """It was failed `timeout` "the deadline passed before the gateway received the action",
    the deadline read on a cloud clock floored at created_at."""
    frame = request_frame(created_at="2026-12-04T10:00:30Z", deadline="2026-12-04T10:00:10Z")
    cloud = ScriptedCloud({OLD}, lambda n: frame if n == 1 else None)
    seen, _, store = await serve(tmp_path, cloud, lambda s, _t: bool(s.run or s.rejected))
    store.close()
    assert seen.run == []
    assert seen.rejected == [("a-1", "deadline is before created_at")]


async def test_an_oversized_request_is_answered_failed_naming_it(tmp_path: Path) -> None:
    """A request over 64 KiB was skipped unread when it was over 64 Ki characters (ASCII), and
    answered `failed` when it was over 64 KiB in fewer characters: the cloud, left waiting,
    told its user the gateway never received it (gateway_failure)."""
    frame = request_frame(inputs={"note": "x" * (70 * 1024)})
    cloud = ScriptedCloud({OLD}, lambda n: frame if n == 1 else None)
    seen, tunnel, store = await serve(tmp_path, cloud, lambda s, _t: bool(s.run or s.rejected))
    store.close()
    assert seen.run == []
    ((action_id, why),) = seen.rejected
    assert action_id == "a-1"
    assert why.startswith("malformed action_request: frame ")
    assert why.endswith("exceeds 65536 bytes")
    assert tunnel.frames_skipped == 1


async def test_a_malformed_action_cancel_is_skipped_with_a_warning_naming_it(
    tmp_path: Path,
) -> None:
    """An `action_cancel` without a usable `action_request_id` is logged, naming the frame and
    the field, and skipped; the session goes on. An over-long id was passed on unlogged."""
    bad = [
        '{"type": "action_cancel", "reason": "r"}',
        '{"type": "action_cancel", "action_request_id": 7, "reason": "r"}',
        '{"type": "action_cancel", "action_request_id": "%s", "reason": "r"}' % ("x" * 200),
    ]
    good = '{"type": "action_cancel", "action_request_id": "a-1", "reason": "r"}'
    cloud = ScriptedCloud({OLD}, lambda n: [*bad, good] if n == 1 else None)
    cancels: list[str] = []
    with capture_logs() as logs:
        _, tunnel, store = await serve(
            tmp_path,
            cloud,
            lambda _s, _t: bool(cancels),
            on_cancel=lambda action_id, _why: cancels.append(action_id),
        )
    store.close()
    assert cancels == ["a-1"]
    assert tunnel.sessions == 1
    assert tunnel.frames_skipped == 3
    skipped = [e for e in logs if e["event"] == "tunnel.frame_skipped"]
    assert [e["log_level"] for e in skipped] == ["warning"] * 3
    assert [e["frame_type"] for e in skipped] == ["action_cancel"] * 3
    assert all("action_request_id" in e["reason"] for e in skipped)
    assert "x" * 129 not in str(logs)


async def test_a_welcome_with_an_over_long_cancelled_id_ends_the_session_unwelcomed(
    tmp_path: Path,
) -> None:
    """`welcome.cancelled` took ids of any length (an `action_cancel` id is bounded): each was
    handed to the dispatcher. Such a welcome is refused like any frame out of bounds: logged,
    nothing cancelled or acked, the session not opened."""
    cancelled = ["a-1", "x" * 200]
    welcome = {
        "type": "welcome",
        "protocol": 1,
        "gateway_id": "g-1",
        "acked_seq": 0,
        "heartbeat_s": 60.0,
        "cancelled": cancelled,
    }
    cloud = ScriptedCloud({OLD}, lambda _n: None)
    cloud.before_welcome = json.dumps(welcome)  # read as the session's welcome
    cancels: list[str] = []
    states: set[str] = set()

    def redialled(_s: Seen, tunnel: Tunnel) -> bool:
        states.add(tunnel.state)
        if cancels or tunnel.state == "connected":
            return True  # taken as a welcome: fails below
        return tunnel.sessions >= 2 and any(e["event"] == "tunnel.disconnected" for e in logs)

    with capture_logs() as logs:
        _, tunnel, store = await serve(
            tmp_path,
            cloud,
            redialled,
            on_cancel=lambda action_id, _why: cancels.append(action_id),
        )
    store.close()
    assert cancels == []
    assert "connected" not in states
    assert tunnel.connected_since is None
    (disconnected, *_) = [e for e in logs if e["event"] == "tunnel.disconnected"]
    assert disconnected["error"].startswith("protocol: ")
    assert "cancelled" in disconnected["error"]
    assert not any(e["event"] == "tunnel.connected" for e in logs)
    assert "x" * 129 not in str(logs)
