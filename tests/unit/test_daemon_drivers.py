"""The daemon around its drivers: a misbehaving driver must not take the box down, and shutdown
must not wait on one hung radio after another."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

import gatewayd.driver
from drivers.sim import SimDriver
from gatewayd.actions import StatusUpdate
from gatewayd.config import parse_config
from gatewayd.daemon import DB_NAME, Daemon
from gatewayd.driver import Driver, DriverHealth, DriverSink, DriverState
from gatewayd.model import (
    Action,
    ActionNotSupported,
    ActionRequest,
    ActionResult,
    ActionStatus,
    Device,
    utcnow,
)
from gatewayd.store import Store
from tests.support import config_text


class DevicesRaises(SimDriver):
    """A sim whose devices() is broken, though it started and reported its locks."""

    def devices(self) -> Sequence[Device]:
        raise RuntimeError("devices() is broken")


class HangsInStop(Driver):
    """A radio that never finishes stopping; it notes how many drivers were stopping with it."""

    name: ClassVar[str] = "zwave"
    stopping: ClassVar[set[str]] = set()
    seen_stopping: ClassVar[dict[str, int]] = {}

    async def start(self, sink: DriverSink) -> None:
        return None

    async def stop(self) -> None:
        self.stopping.add(self.name)
        try:
            await anyio.sleep_forever()
        finally:
            self.seen_stopping[self.name] = len(self.stopping)

    def devices(self) -> Sequence[Device]:
        return []

    async def execute(self, device_id: str, action: Action) -> ActionResult:
        raise ActionNotSupported("no locks")

    async def pair(self, duration_s: int) -> None:
        raise ActionNotSupported("no pairing")

    async def unpair(self, duration_s: int, device_id: str | None) -> None:
        raise ActionNotSupported("no pairing")

    def health(self) -> DriverHealth:
        return DriverHealth(DriverState.READY, "fake")


class AlsoHangsInStop(HangsInStop):
    name: ClassVar[str] = "zigbee"


async def run_daemon(tmp_path: Path, classes: dict[str, type[Driver]], extra: str = "") -> Daemon:
    """Start a daemon with these driver classes, check it became ready, and stop it."""
    daemon = Daemon(
        parse_config(config_text(tmp_path / "state", extra=extra)), driver_classes=classes
    )
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await daemon.wait_started()
            assert daemon.ready
            daemon.stop()
    return daemon


async def test_a_driver_whose_devices_raises_does_not_take_the_daemon_down(
    tmp_path: Path,
) -> None:
    daemon = await run_daemon(tmp_path, {"sim": DevicesRaises})

    assert daemon.registry is not None
    assert len(daemon.registry.devices()) == 2  # its locks were served all the same


async def test_a_radio_library_that_is_not_installed_leaves_the_other_locks_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as on a box installed without the zigbee extra, with zigbee enabled in its config
    drivers = {**gatewayd.driver.DRIVERS, "zigbee": "drivers.no_such_radio:ZigbeeDriver"}
    monkeypatch.setattr(gatewayd.driver, "DRIVERS", drivers)
    daemon = Daemon(
        parse_config(config_text(tmp_path / "state", extra="[drivers.zigbee]\nenabled = true\n"))
    )
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await daemon.wait_started()
            assert daemon.registry is not None
            assert len(daemon.registry.devices()) == 2  # the simulated locks
            line = daemon.status_line()
            daemon.stop()

    assert "radio down: zigbee (cannot load: No module named 'drivers.no_such_radio')" in line


async def test_hung_drivers_are_stopped_together_not_one_after_another(tmp_path: Path) -> None:
    HangsInStop.stopping.clear()
    HangsInStop.seen_stopping.clear()
    extra = "[drivers.zwave]\nenabled = true\n[drivers.zigbee]\nenabled = true\n"
    classes: dict[str, Any] = {"zwave": HangsInStop, "zigbee": AlsoHangsInStop}

    await run_daemon(tmp_path, classes, extra)

    # Each hung stop was given up only once both were under way: the shutdown waited on the
    # stop timeout once, not once per driver.
    assert HangsInStop.seen_stopping == {"zwave": 2, "zigbee": 2}


async def _gateway_action_without_zigbee(
    state: Path, monkeypatch: pytest.MonkeyPatch, action: str, inputs: dict[str, Any]
) -> tuple[StatusUpdate, bool]:
    """Run one gateway action on a daemon whose zigbee driver is enabled but cannot be loaded
    (an upgrade gone wrong), and a zigbee lock paired before in its store. Returns the final
    status and whether the store still knows the lock."""
    store = Store.open(state / DB_NAME)
    lock = store.device_id("zigbee", "00:0d:6f:00:0a:bc:de:f0")
    store.save_device(lock, {"id": lock, "name": "Back door"})
    store.close()
    drivers = {**gatewayd.driver.DRIVERS, "zigbee": "drivers.no_such_radio:ZigbeeDriver"}
    monkeypatch.setattr(gatewayd.driver, "DRIVERS", drivers)
    daemon = Daemon(parse_config(config_text(state, extra="[drivers.zigbee]\nenabled = true\n")))
    ended: list[StatusUpdate] = []
    daemon.status_listeners.append(lambda update: ended.append(update))
    now = utcnow()
    inputs = {k: lock if v == "<lock>" else v for k, v in inputs.items()}
    request = ActionRequest(
        f"{action}-1", "Gateway", "gateway", action, inputs, now, now + timedelta(seconds=10)
    )
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await daemon.wait_started()
            assert daemon.submit(request)
            while not any(u.status.terminal for u in ended):
                await anyio.sleep(0.02)
            assert daemon.store is not None
            kept = daemon.store.knows_device(lock)
            daemon.stop()
    return next(u for u in ended if u.status.terminal), kept


async def test_unpairing_a_lock_of_a_radio_that_cannot_be_loaded_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """unpair_devices naming a lock of a driver enabled but not loadable reported `completed`
    and forgot it, as for a driver no longer enabled, though no radio had excluded it. It stays
    on its network, and comes back under a new id once the library is fixed."""
    final, kept = await _gateway_action_without_zigbee(
        tmp_path / "state", monkeypatch, "unpair_devices", {"duration": 10, "device_id": "<lock>"}
    )
    assert final.status == ActionStatus.FAILED
    assert final.error is not None
    assert final.error["type"] == "device_error"
    assert "zigbee" in final.error["message"]
    assert kept


async def test_pairing_on_a_radio_that_cannot_be_loaded_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pair_devices for protocol zigbee said there is no such driver (action_not_supported),
    which sent the operator to the wrong fix: the driver is enabled, its library did not load."""
    final, _ = await _gateway_action_without_zigbee(
        tmp_path / "state", monkeypatch, "pair_devices", {"duration": 10, "protocol": "zigbee"}
    )
    assert final.status == ActionStatus.FAILED
    assert final.error is not None
    assert final.error["type"] == "device_error"
    assert "zigbee driver could not be loaded" in final.error["message"]
