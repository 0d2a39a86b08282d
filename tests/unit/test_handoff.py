"""Hand-off of cloud actions: run only after the cloud acked `gateway_received`; a cancel that
arrives before that ack means the action never runs."""

from __future__ import annotations

from pathlib import Path

import anyio
from structlog.testing import capture_logs

from gatewayd.actions import Dispatcher, StatusUpdate
from gatewayd.config import CloudConfig
from gatewayd.model import SetCode
from gatewayd.store import ActionRow, Store
from gatewayd.tunnel import Tunnel
from tests.unit.test_actions import LOCK, Devices, request
from tests.unit.test_tunnel_claims import GATEWAY_ID, OLD, ScriptedCloud, running


class CloudHarness:
    """A dispatcher whose reports go to the outbox, as the daemon's do, so each has a seq."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = Store.open(tmp_path / "s.db")
        self.exec = Devices(LOCK)
        self.updates: list[StatusUpdate] = []
        self.seqs: dict[tuple[str, str], int] = {}
        self.dispatcher = Dispatcher(self.store, self.exec, self._report)

    def _report(self, update: StatusUpdate) -> int:
        self.updates.append(update)
        seq = self.store.outbox_put(lambda s: b'{"seq": %d}' % s)
        self.seqs[(update.action_request_id, str(update.status))] = seq
        return seq

    def statuses(self, action_id: str) -> list[str]:
        return [str(u.status) for u in self.updates if u.action_request_id == action_id]

    def last_error_type(self, action_id: str) -> str:
        last = [u for u in self.updates if u.action_request_id == action_id][-1]
        assert last.error is not None
        return str(last.error["type"])

    async def ack_receipt(self, action_id: str) -> None:
        """What the cloud does: ack the receipt once it was sent, i.e. once it is committed."""
        seq = self.seqs[(action_id, "gateway_received")]
        await self.store.wait_outbox(seq - 1)
        self.store.outbox_ack(seq)

    async def settle(self, action_id: str) -> None:
        with anyio.fail_after(5):
            while not any(
                u.action_request_id == action_id and u.status.terminal for u in self.updates
            ):
                await anyio.sleep(0.005)


async def test_a_cloud_action_waits_for_the_ack_of_its_receipt(tmp_path: Path) -> None:
    h = CloudHarness(tmp_path)
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        assert h.dispatcher.submit(request("unlock", id="a1"), handoff=True)
        await anyio.sleep(0.1)  # committed, but the cloud has not acked: nothing moves
        assert h.store.committed_seq >= h.seqs[("a1", "gateway_received")]
        assert h.exec.started == []
        assert h.statuses("a1") == ["gateway_received"]
        # waiting for its hand-off, it is still queued (it was in no count: not in a queue,
        # not in flight, so /status, the status line and the metrics showed nothing to do)
        assert (h.dispatcher.queued(), h.dispatcher.in_flight()) == (1, [])
        assert h.dispatcher.submit(request("lock", id="a2"), handoff=True)
        assert h.dispatcher.queued() == 2
        await h.ack_receipt("a1")
        await h.settle("a1")
        assert h.dispatcher.queued() == 1  # a2, waiting for its own ack
        tg.cancel_scope.cancel()
    assert h.statuses("a1") == ["gateway_received", "processing", "completed"]
    assert h.exec.ran == [("d1", "unlock")]


async def test_a_cancel_before_the_ack_means_the_action_never_runs(tmp_path: Path) -> None:
    h = CloudHarness(tmp_path)
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("unlock", id="late"), handoff=True)
        h.dispatcher.submit(request("lock", id="next"), handoff=True)  # queued behind it
        await anyio.sleep(0.05)
        # the cloud's order on the wire: action_cancel, then the ack that covers the receipt
        assert h.dispatcher.cancel("late", "received after the hand-off timeout")
        await h.ack_receipt("next")
        await h.settle("late")
        await h.settle("next")
        tg.cancel_scope.cancel()
    assert h.statuses("late") == ["gateway_received", "failed"]
    assert h.last_error_type("late") == "cancelled"
    assert h.exec.started == [("d1", "lock")]  # only the one the cloud let go ahead
    row = h.store.action("late")
    assert row is not None
    assert row.status == "failed"


async def test_a_cancel_of_a_held_code_change_is_reported_at_once(tmp_path: Path) -> None:
    """A code change its driver holds back (Driver.hold_s, up to 10 s) sat in the queue with its
    cancel noted until the hold ended: the cloud heard nothing of it meanwhile."""
    h = CloudHarness(tmp_path)
    h.exec.hold = lambda action: 10.0 if isinstance(action, SetCode) else 0.0
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        set_code = request("set_code", {"code": "1234", "slot_id": 3}, id="held", timeout=30)
        h.dispatcher.submit(set_code, handoff=True)
        await anyio.sleep(0.3)  # the worker found it held
        assert h.dispatcher.cancel("held", "received after the hand-off timeout")
        with anyio.fail_after(2):  # well before the hold's end
            await h.settle("held")
        tg.cancel_scope.cancel()
    assert h.statuses("held") == ["gateway_received", "failed"]
    assert h.last_error_type("held") == "cancelled"
    assert h.exec.started == []


async def test_a_cancel_after_the_action_started_changes_nothing(tmp_path: Path) -> None:
    h = CloudHarness(tmp_path)
    gate = h.exec.gates["d1"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("unlock", id="a1"), handoff=True)
        await h.ack_receipt("a1")
        with anyio.fail_after(5):
            while not h.exec.started:
                await anyio.sleep(0.005)
        assert not h.dispatcher.cancel("a1", "too late")
        assert not h.dispatcher.cancel("never-seen", "unknown")
        gate.set()
        await h.settle("a1")
        tg.cancel_scope.cancel()
    assert h.statuses("a1") == ["gateway_received", "processing", "completed"]


async def test_no_ack_before_the_deadline_is_a_timeout_not_a_late_run(tmp_path: Path) -> None:
    h = CloudHarness(tmp_path)
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("unlock", id="a1", timeout=0.3), handoff=True)
        await h.settle("a1")
        h.store.outbox_ack(h.store.committed_seq)  # the ack comes, after the deadline
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert h.statuses("a1") == ["gateway_received", "failed"]
    assert h.last_error_type("a1") == "timeout"
    assert h.exec.started == []


async def test_local_actions_do_not_wait_for_a_cloud(tmp_path: Path) -> None:
    h = CloudHarness(tmp_path)
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("unlock", id="local"))
        await h.settle("local")
        tg.cancel_scope.cancel()
    assert h.statuses("local") == ["gateway_received", "processing", "completed"]
    assert h.store.acked_seq == 0


async def test_a_rebased_outbox_moves_the_hand_off_a_waiting_action_needs(tmp_path: Path) -> None:
    """The store came back behind the cloud (Store.rebase): the receipt the action waits for
    now has another seq, and only the ack of that one lets the action run."""
    h = CloudHarness(tmp_path)
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.store.outbox_put(lambda s: b'{"seq": %d}' % s)  # a door event before it: seq 1
        h.dispatcher.submit(request("unlock", id="a1"), handoff=True)  # its receipt: seq 2
        assert h.seqs[("a1", "gateway_received")] == 2
        await h.store.wait_outbox(1)
        await anyio.sleep(0.05)  # its worker is waiting for the ack of seq 2
        assert h.exec.started == []
        moved = h.store.rebase(50, lambda frame, seq: b'{"seq": %d}' % seq)
        h.dispatcher.rebase_handoffs(moved.after, moved.shift)
        assert [s for s, _ in h.store.outbox_after(0)] == [51, 52]
        h.store.outbox_ack(51)  # the door event: above the receipt's old seq, not its new one
        await anyio.sleep(0.1)
        assert h.exec.started == []
        h.store.outbox_ack(52)
        await h.settle("a1")
        tg.cancel_scope.cancel()
    assert h.statuses("a1") == ["gateway_received", "processing", "completed"]
    assert h.exec.ran == [("d1", "unlock")]


async def test_a_gateway_that_loses_its_claim_starts_none_of_the_actions_it_holds(
    tmp_path: Path,
) -> None:
    """The cloud refuses the credential (revoked) while a cloud action waits for the ack of
    its receipt. The gateway, unclaimed now, is claimed again as a new gateway, whose session
    acks the same outbox seqs: that ack started the old gateway's action, which its cloud had
    reported `gateway_failure`. Losing the claim now cancels every action still waiting."""
    h = CloudHarness(tmp_path)
    h.store.set_claimed(GATEWAY_ID, OLD)
    cloud = ScriptedCloud(set(), lambda _n: None)  # every credential refused: 401
    async with running(cloud):
        tunnel = Tunnel(
            CloudConfig(url=f"ws://127.0.0.1:{cloud.port}/v1/gateway/tunnel", connect_timeout_s=2),
            h.store,
            lambda _request: None,
            lambda: {"software_version": "0", "hardware": "test", "drivers": ["sim"]},
            on_unclaimed=h.dispatcher.cancel_handoffs,
        )
        async with anyio.create_task_group() as tg:
            h.dispatcher.bind(tg)
            assert h.dispatcher.submit(request("unlock", id="held"), handoff=True)
            await anyio.sleep(0.05)
            tg.start_soon(tunnel.run)
            with anyio.fail_after(10):
                while h.store.identity().claimed:
                    await anyio.sleep(0.01)
            await h.ack_receipt("held")  # what the next claim's session does
            await h.settle("held")
            tg.cancel_scope.cancel()
    # refused once; a reconnect before the test ends (the backoff's full jitter may make it
    # quick) dials unclaimed, with no credential, which this cloud refuses too
    assert cloud.refused[0] == OLD
    assert set(cloud.refused[1:]) <= {""}
    assert h.statuses("held") == ["gateway_received", "failed"]
    assert h.last_error_type("held") == "cancelled"
    assert h.exec.started == []


async def test_a_cancel_too_late_is_logged_once_per_id(tmp_path: Path) -> None:
    """The cloud names a failed id in `welcome.cancelled` on every reconnect until its
    deadline: its late cancel (then `actions.cancel_too_late`) was logged again on each one."""
    h = CloudHarness(tmp_path)
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        for action_id in ("a1", "a2"):
            h.dispatcher.submit(request("unlock", id=action_id), handoff=True)
            await h.ack_receipt(action_id)
            await h.settle(action_id)
        with capture_logs() as logs:
            for action_id in ("a1", "a1", "a2", "a1", "a2"):
                assert not h.dispatcher.cancel(action_id, "failed while the tunnel was down")
        tg.cancel_scope.cancel()
    late = [e["action_request_id"] for e in logs if e["event"] == "actions.cancel_after_end"]
    assert late == ["a1", "a2"]
    assert all(e["status"] == "completed" and e["started"] for e in logs)


async def test_a_late_cancel_of_an_action_that_never_started_does_not_say_it_ran(
    tmp_path: Path,
) -> None:
    """The cloud cancels actions that failed without reaching the lock (invalid input, a
    deadline passed before it ran, a restart before it started): the log said
    `actions.cancel_too_late`, as if each had run (a door moved). It says each ended, how, and
    that it never started; one that ran, or may have before a restart, is told apart."""
    h = CloudHarness(tmp_path)
    t = "2026-01-01T00:00:00.000Z"
    for row_id, status in (("restarted", "gateway_received"), ("cut", "processing")):
        transitions = [("gateway_received", t)] + (
            [("processing", t)] if status == "processing" else []
        )
        h.store.record_action(ActionRow(row_id, "d1", "unlock", status, None, transitions, t), t)
    h.store.flush()
    assert h.dispatcher.recover() == 2
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("set_code", {"slot_id": 3}, id="invalid"), handoff=True)
        h.dispatcher.submit(request("unlock", id="ran"), handoff=True)
        await h.ack_receipt("ran")
        # its receipt never acked: it times out waiting for its hand-off
        h.dispatcher.submit(request("unlock", id="expired", timeout=0.3), handoff=True)
        for action_id in ("invalid", "ran", "expired"):
            await h.settle(action_id)
        tg.cancel_scope.cancel()
    assert h.exec.started != []
    with capture_logs() as logs:
        for action_id in ("restarted", "cut", "invalid", "expired", "ran"):
            assert not h.dispatcher.cancel(action_id, "failed")
    assert [e["event"] for e in logs] == ["actions.cancel_after_end"] * 5
    assert [e["log_level"] for e in logs] == ["info", "warning", "info", "info", "warning"]
    ended = {e["action_request_id"]: (e["status"], e["error_type"], e["started"]) for e in logs}
    assert ended == {
        "restarted": ("failed", "gateway_restarted", False),
        "cut": ("failed", "gateway_restarted", True),
        "invalid": ("failed", "invalid_input", False),
        "expired": ("failed", "timeout", False),
        "ran": ("completed", None, True),
    }
