"""Door events as the registry sends them upstream: the ones that answer an action name it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from gatewayd.actions import StatusUpdate
from gatewayd.daemon import Daemon
from gatewayd.driver import Simulation
from gatewayd.model import ActionRequest, DoorEvent, EventName, utcnow
from tests.support import running_daemon, wait_until


def request(request_id: str, device_id: str, action: str, inputs: dict[str, Any]) -> ActionRequest:
    now = utcnow()
    return ActionRequest(
        request_id, "Device", device_id, action, inputs, now, now + timedelta(seconds=10)
    )


@contextlib.asynccontextmanager
async def watched(
    tmp_path: Path,
) -> AsyncIterator[tuple[Daemon, str, list[DoorEvent], dict[str, str]]]:
    """A running daemon, its first lock, and what it reports: door events, final statuses."""
    events: list[DoorEvent] = []
    done: dict[str, str] = {}

    def on_status(update: StatusUpdate) -> None:
        if update.status.terminal:
            done[update.action_request_id] = str(update.status)

    async with running_daemon(tmp_path / "state") as daemon:
        daemon.event_listeners.append(events.append)
        daemon.status_listeners.append(on_status)
        assert daemon.registry is not None
        yield daemon, daemon.registry.devices()[0].id, events, done


async def test_code_events_answering_an_action_name_the_action_request(tmp_path: Path) -> None:
    async with watched(tmp_path) as (daemon, device, events, done):
        assert daemon.registry is not None

        daemon.submit(request("set-1", device, "set_code", {"code": "4821", "slot_id": 3}))
        daemon.submit(request("clear-1", device, "clear_code", {"slot_id": 3}))
        await wait_until(lambda: len(done) == 2)
        assert done == {"set-1": "completed", "clear-1": "completed"}

        # A code someone programs at the keypad right after answers no action of ours.
        daemon.registry.event(
            DoorEvent(device, EventName.CODE_SET, {"slot_id": 5, "method": "keypad"})
        )

    codes = [
        (str(e.event_name), dict(e.details))
        for e in events
        if e.event_name in (EventName.CODE_SET, EventName.CODE_REMOVED)
    ]
    assert codes == [
        ("code set on device", {"slot_id": 3, "method": "remote", "action_request_id": "set-1"}),
        (
            "code removed from device",
            {"slot_id": 3, "method": "remote", "action_request_id": "clear-1"},
        ),
        ("code set on device", {"slot_id": 5, "method": "keypad"}),
    ]


async def test_an_event_after_its_device_was_removed_leaves_no_last_event(tmp_path: Path) -> None:
    """`last_event` is per device the registry holds: an event arriving after its device's
    removal went upstream and also left an entry nothing would ever remove."""
    async with running_daemon(tmp_path / "state") as daemon:
        registry = daemon.registry
        assert registry is not None
        kept, gone = (d.id for d in registry.devices())
        registry.remove(gone)
        registry.event(DoorEvent(gone, EventName.DOOR_UNLOCKED, {"method": "manual"}))
        registry.event(DoorEvent(kept, EventName.DOOR_UNLOCKED, {"method": "manual"}))
        assert gone not in registry.last_event
        assert registry.last_event[kept].event_name is EventName.DOOR_UNLOCKED


async def test_a_remote_report_is_tagged_only_with_an_action_it_answers(tmp_path: Path) -> None:
    """A late `remote` bolt report of an unlock that already completed, or a late `code set`
    of another slot, arriving while a set_code runs on the lock, answers that set_code no
    more than a keypad unlock would: it was tagged with the set_code's id all the same."""
    async with watched(tmp_path) as (daemon, device, events, done):
        registry = daemon.registry
        assert registry is not None
        daemon.submit(request("unlock-1", device, "unlock", {}))
        await wait_until(lambda: "unlock-1" in done)
        driver = registry.drivers["sim"]
        await driver.simulate(device, Simulation.FAULT, {"kind": "delay", "delay_s": 0.3})
        daemon.submit(request("set-1", device, "set_code", {"code": "4821", "slot_id": 3}))
        await wait_until(lambda: any(j["id"] == "set-1" for j in daemon.dispatcher.in_flight()))
        registry.event(DoorEvent(device, EventName.DOOR_UNLOCKED, {"method": "remote"}))
        registry.event(DoorEvent(device, EventName.CODE_SET, {"slot_id": 5, "method": "remote"}))
        await wait_until(lambda: "set-1" in done)

    tagged = [
        (str(e.event_name), e.details.get("slot_id"), e.details.get("action_request_id"))
        for e in events
        if e.details.get("method") == "remote"
    ]
    assert tagged == [
        ("door unlocked", None, "unlock-1"),
        ("door unlocked", None, "unlock-1"),  # the late report: its own action's, not set-1's
        ("code set on device", 5, None),  # no action of ours wrote slot 5
        ("code set on device", 3, "set-1"),
    ]
