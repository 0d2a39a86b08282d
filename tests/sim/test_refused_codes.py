"""A code the lock refuses, through the core: the failed status, the outbox, the action log."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from drivers.sim import SimDriver
from gatewayd.actions import Dispatcher, StatusUpdate
from gatewayd.driver import DriverContext, SimConfig, Spawn
from gatewayd.model import Action, ActionResult, Device
from gatewayd.store import Store
from gatewayd.upstream import Upstream
from tests.contract.sink import RecordingSink
from tests.support import set_code_request

PIN = "80461357"


class Registry:
    """The dispatcher's view of the devices: the sim driver alone."""

    def __init__(self, driver: SimDriver) -> None:
        self.driver = driver

    def device(self, device_id: str) -> Device | None:
        return next((d for d in self.driver.devices() if d.id == device_id), None)

    def hold_s(self, device_id: str, action: Action) -> float:
        return self.driver.hold_s(device_id, action)

    async def execute(self, device_id: str, action: Action) -> ActionResult:
        return await self.driver.execute(device_id, action)

    async def pair(self, duration_s: int, inputs: Mapping[str, Any]) -> None:
        await self.driver.pair(duration_s)

    async def unpair(self, duration_s: int, device_id: str | None) -> None:
        await self.driver.unpair(duration_s, device_id)


async def test_a_duplicate_pin_fails_with_duplicate_code_and_the_pin_is_nowhere(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same PIN for a second slot: the action ends failed with duplicate_code upstream and
    in the action log; the PIN is in no status, frame, log line or byte of the store."""
    caplog.set_level(logging.DEBUG)
    driver = SimDriver(
        SimConfig(enabled=True, locks=1, latency_ms=0.0), DriverContext(tmp_path, spawn)
    )
    await driver.start(sink)
    (device,) = driver.devices()
    store = Store.open(tmp_path / "gatewayd.db")
    upstream = Upstream(store)
    updates: list[StatusUpdate] = []

    def on_status(update: StatusUpdate) -> int:
        updates.append(update)
        return upstream.action_status(update)

    dispatcher = Dispatcher(store, Registry(driver), on_status)
    first, second = set_code_request(device.id, PIN, 2), set_code_request(device.id, PIN, 3)
    with capture_logs() as structured:
        async with anyio.create_task_group() as tg:
            dispatcher.bind(tg)
            for request in (first, second):
                assert dispatcher.submit(request)
                with anyio.fail_after(5):
                    while not any(
                        u.action_request_id == request.id and u.status.terminal for u in updates
                    ):
                        await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
    store.flush()

    done = {u.action_request_id: u for u in updates if u.status.terminal}
    assert str(done[first.id].status) == "completed"
    failed = done[second.id]
    assert str(failed.status) == "failed"
    assert failed.error is not None
    assert failed.error["type"] == "duplicate_code"
    row = store.action(second.id)
    assert row is not None
    assert row.error == failed.error
    frames = [json.loads(frame) for _, frame in store.outbox_after(0)]
    sent = [f for f in frames if f.get("action_request_id") == second.id]
    assert [f["error"] for f in sent if f["status"] == "failed"] == [failed.error]
    store.close()
    await driver.stop()
    texts = [repr(updates), repr(frames), caplog.text, repr(structured)]
    assert [t for t in texts if PIN in t] == []
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("gatewayd.db*"))
    assert PIN.encode() not in stored
