"""The dispatcher over a long run: locks are paired, acted on and unpaired for months, and
actions end every way there is. Nothing it keeps per device or per action may outlive them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import anyio
import pytest
from msgspec.structs import replace

from gatewayd import actions
from gatewayd.actions import Dispatcher
from gatewayd.model import DeviceError
from tests.support import wait_until
from tests.unit.test_actions import LOCK, Harness, request
from tests.unit.test_handoff import CloudHarness

IDLE_S = 0.05


def workers() -> list[str]:
    return [
        task.get_name()
        for task in asyncio.all_tasks()
        if task.get_name().startswith("actions.worker.")
    ]


def held(d: Dispatcher) -> dict[str, int]:
    """Sizes of everything the dispatcher keeps by queue or by action id (but the bounded
    `_seen` and `recent`)."""
    return {
        "queues": len(d._queues),
        "wakeups": len(d._wakeups),
        "in_flight": len(d._in_flight),
        "last_done": len(d._last_done),
        "handoffs": len(d._handoffs),
        "active": d._active,
    }


EMPTY = dict.fromkeys(("queues", "wakeups", "in_flight", "last_done", "handoffs", "active"), 0)


async def assert_all_retired(d: Dispatcher) -> None:
    """Every worker ends once idle, and takes its entries with it."""
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: not workers(), 5)
    assert (len(workers()), held(d)) == (0, EMPTY)


@pytest.fixture(autouse=True)
def _short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    # a remote report answers the last action for this long; the test need not wait 5 s
    monkeypatch.setattr(actions, "REMOTE_GRACE_S", IDLE_S)


async def test_devices_paired_and_unpaired_leave_no_worker_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path)
    h.dispatcher = Dispatcher(h.store, h.exec, h.updates.append, worker_idle_s=IDLE_S)
    d = h.dispatcher
    async with anyio.create_task_group() as tg:
        d.bind(tg)
        for n in range(60):
            device = replace(LOCK, id=f"dev{n}", native_id=f"n{n}")
            h.exec.devices[device.id] = device  # paired
            for action in ("lock", "unlock"):
                req = request(action, device=device.id)
                d.submit(req)
                await h.settle(req.id)
            del h.exec.devices[device.id]  # unpaired
        gateway = request("pair_devices", {"duration": 1}, entity_type="Gateway", device="gw")
        d.submit(gateway)
        await h.settle(gateway.id)
        # a worker and its entries per device ever acted on would stay here for good
        await assert_all_retired(d)
        # a device acted on again gets a worker again, and it runs in order
        h.exec.devices["dev0"] = replace(LOCK, id="dev0")
        again = [request(a, device="dev0") for a in ("lock", "unlock", "lock")]
        for req in again:
            d.submit(req)
        for req in again:
            await h.settle(req.id)
        assert h.exec.ran[-3:] == [("dev0", "lock"), ("dev0", "unlock"), ("dev0", "lock")]
        await assert_all_retired(d)
        # idle, but a remote report may still answer its last action: the worker stays
        monkeypatch.setattr(actions, "REMOTE_GRACE_S", 3600.0)
        last = request("unlock", device="dev0")
        d.submit(last)
        await h.settle(last.id)
        await anyio.sleep(IDLE_S * 4)
        assert workers() == ["actions.worker.dev0"]
        assert d.answering("dev0") == last.id
        monkeypatch.setattr(actions, "REMOTE_GRACE_S", 0.0)
        await assert_all_retired(d)
        tg.cancel_scope.cancel()
    assert all(str(u.status) != "failed" for u in h.updates if u.action == "lock")


async def test_actions_ending_every_way_leave_nothing_behind(tmp_path: Path) -> None:
    h = CloudHarness(tmp_path)
    h.dispatcher = Dispatcher(h.store, h.exec, h._report, worker_idle_s=IDLE_S)
    d = h.dispatcher
    async with anyio.create_task_group() as tg:
        d.bind(tg)
        ended: list[str] = []
        for n in range(10):
            device = replace(LOCK, id=f"dev{n}", native_id=f"n{n}")
            h.exec.devices[device.id] = device
            # the driver never confirms: timed out at the deadline
            h.exec.gates[device.id] = anyio.Event()
            stuck = request("unlock", device=device.id, timeout=0.2)
            d.submit(stuck)
            # the cloud never acks the receipt: timed out waiting for the hand-off
            unacked = request("lock", device=device.id, timeout=0.2)
            d.submit(unacked, handoff=True)
            # cancelled by the cloud before its ack
            cancelled = request("lock", device=device.id)
            d.submit(cancelled, handoff=True)
            assert d.cancel(cancelled.id, "after the hand-off timeout")
            # refused by validation: never queued
            bad = request("set_code", {"code": "12"}, device=device.id)
            d.submit(bad)
            ended += [stuck.id, unacked.id, cancelled.id, bad.id]
        for action_id in ended:
            await h.settle(action_id)
        for n in range(10):
            # a driver error
            h.exec.gates.pop(f"dev{n}").set()
            h.exec.raise_next = DeviceError("jammed")
            req = request("unlock", device=f"dev{n}")
            d.submit(req, handoff=True)
            await h.ack_receipt(req.id)
            await h.settle(req.id)
            del h.exec.devices[f"dev{n}"]
        await assert_all_retired(d)
        tg.cancel_scope.cancel()
    kinds = {h.last_error_type(a) for a in ended}
    assert kinds == {"timeout", "cancelled", "invalid_input"}, kinds
