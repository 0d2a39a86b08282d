"""The virtual radio under zigpy's real ControllerApplication: join, interview, persistence."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from drivers.zigbee.radios import private_file
from drivers.zigbee.virtual.radio import CONF_VIRTUAL, VirtualControllerApplication, VirtualNetwork

pytestmark = pytest.mark.stack


def _config(tmp_path: Path, net: VirtualNetwork) -> dict[str, Any]:
    private_file(tmp_path / "zigbee.db")  # zigpy keeps the network key there, as the driver does
    return {
        "device": {"path": "virtual"},
        "database_path": str(tmp_path / "zigbee.db"),
        "ota": {"enabled": False},
        "topology_scan_enabled": False,
        "backup_enabled": False,
        "watchdog_enabled": False,
        "network": {"channel": 15},
        CONF_VIRTUAL: net,
    }


async def _wait_initialized(app: Any, count: int) -> list[Any]:
    async with asyncio.timeout(10):
        while True:
            locks = [d for d in app.devices.values() if d.nwk != 0 and d.is_initialized and d.model]
            if len(locks) >= count:
                return locks
            await asyncio.sleep(0.02)


async def test_locks_join_and_are_interviewed_then_reload_from_database(tmp_path: Path) -> None:
    net = VirtualNetwork(tmp_path / "virtual.json", locks=2)
    app = await VirtualControllerApplication.new(_config(tmp_path, net), auto_form=True)
    try:
        locks = await _wait_initialized(app, 2)
        models = sorted((d.manufacturer, d.model) for d in locks)
        assert models == [("Yale", "YRD220/240 TSDB"), ("gatewayd", "Virtual Keypad Lock")]
        for dev in locks:
            assert 0x0101 in dev.endpoints[1].in_clusters
        assert net.descriptor_requests == 6  # node + active endpoints + simple, per lock
    finally:
        await app.shutdown()

    net2 = VirtualNetwork(tmp_path / "virtual.json")
    app2 = await VirtualControllerApplication.new(_config(tmp_path, net2), auto_form=True)
    try:
        locks2 = await _wait_initialized(app2, 2)
        assert sorted(str(d.ieee) for d in locks2) == sorted(str(d.ieee) for d in locks)
        assert net2.descriptor_requests == 0
    finally:
        await app2.shutdown()
    for name in ("virtual.json", "zigbee.db"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
