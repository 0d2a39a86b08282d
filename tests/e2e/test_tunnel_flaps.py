"""A box that runs for months: its tunnel to devcloud drops again and again. Each session's
sockets, tasks and memory must go with it, whatever the number of reconnects."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import tracemalloc
from pathlib import Path

import pytest

from gatewayd.tunnel import Backoff, Tunnel
from tests.cloudkit import CloudFactory
from tests.e2e.conftest import claim, tunnel_url
from tests.proxy import FaultProxy
from tests.support import running_daemon, wait_until

pytestmark = pytest.mark.stack

WARM_UP = 30
FLAPS = 120


def resources() -> tuple[int, int, int]:
    """Open file descriptors, asyncio tasks, and traced bytes, after a full collection."""
    gc.collect()
    return (
        len(os.listdir("/proc/self/fd")),
        len(asyncio.all_tasks()),
        tracemalloc.get_traced_memory()[0],
    )


async def flap(tunnel: Tunnel, proxy: FaultProxy, times: int) -> None:
    """Cut the link `times` times, each time until the tunnel is connected again."""
    for _ in range(times):
        proxy.cut()
        await wait_until(functools.partial(_redialled, tunnel, tunnel.sessions), 15)


def _redialled(tunnel: Tunnel, sessions: int) -> bool:
    return tunnel.sessions > sessions and tunnel.state == "connected"


async def test_a_flapping_tunnel_leaks_no_socket_task_or_memory(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    cloud = await cloud_factory()
    assert cloud.server.port is not None
    proxy = await FaultProxy(cloud.server.port).start()
    tracemalloc.start()
    try:
        async with running_daemon(tmp_path / "gw", cloud_url=tunnel_url(proxy.port)) as daemon:
            await claim(cloud, daemon)
            tunnel = daemon.tunnel
            assert isinstance(tunnel, Tunnel)
            # flaps this fast would back off for a minute each; the drops are what is tested
            tunnel.backoff = Backoff(base=0.001, cap=0.005)
            await flap(tunnel, proxy, WARM_UP)  # caches, pools and statement caches fill first
            fds, tasks, traced = resources()
            await flap(tunnel, proxy, FLAPS)
            fds_after, tasks_after, traced_after = resources()
            assert len(cloud.state.hub.claimed) == 1  # devcloud holds the live session only
    finally:
        tracemalloc.stop()
        await proxy.close()
    assert fds_after - fds <= 4, (fds, fds_after)
    assert tasks_after - tasks <= 2, (tasks, tasks_after)
    # a session's objects are about 20 KiB: kept per session, 120 of them would fail this
    assert traced_after - traced <= 128 * 1024, (traced, traced_after)
