"""A device the store and the cloud hold but no driver reports (its lock is on another network
than the one the radio now runs) is removed by the operator's unpair_devices naming it."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from drivers.sim import SimDriver
from gatewayd.daemon import Daemon
from gatewayd.driver import Inventory
from tests.e2e.conftest import CloudFactory, claim, tunnel_url, wait_action
from tests.support import running_daemon, wait_until

pytestmark = pytest.mark.stack


class OtherNetwork(SimDriver):
    """A complete inventory of another network: the stored locks it does not report are kept."""

    def inventory(self) -> Inventory | None:
        return Inventory(prefix="elsewhere-", network="elsewhere")


def gateway(
    state: Path, cloud_url: str, locks: int, driver: type[SimDriver]
) -> AbstractAsyncContextManager[Daemon]:
    return running_daemon(state, locks=locks, cloud_url=cloud_url, driver_classes={"sim": driver})


async def test_unpairing_a_device_no_driver_reports_removes_it_from_the_cloud(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    cloud = await cloud_factory()
    url = tunnel_url(cloud.server.port)
    state = tmp_path / "gw"
    async with gateway(state, url, 3, SimDriver) as daemon:
        _, gateway_id = await claim(cloud, daemon)
        await wait_until(lambda: len(cloud.state.db.devices()) == 3)
    ids = {d["id"] for d in await cloud.get("/v1/devices")}

    async with gateway(state, url, 2, OtherNetwork) as daemon:  # the third lock: kept, unowned
        assert daemon.registry is not None
        await wait_until(lambda: daemon.tunnel is not None and daemon.tunnel.up, 15)
        (kept,) = ids - {d.id for d in daemon.registry.devices()}
        path = f"/v1/gateways/{gateway_id}/actions/unpair_devices"

        status, ar = await cloud.post(path, {"data": {"duration": 10, "device_id": kept}})
        assert status == 200, ar
        done = await wait_action(cloud, ar["id"])
        assert (done["status"], done.get("error")) == ("completed", None)
        await wait_until(lambda: cloud.state.db.device(kept) is None)
        status, err = await cloud.request("GET", f"/v1/devices/{kept}")
        assert status == 404, err
        assert sorted(d["id"] for d in await cloud.get("/v1/devices")) == sorted(ids - {kept})
