"""Shutdown in the daemon's order (its task group cancelled, then stop()): zigpy's database is
closed, its thread gone, within the driver's bound, whether the radio answers or has frozen.

A zigpy database left open keeps a thread running that the process waits for at exit: SIGTERM
then never ends the daemon (tests/e2e/test_radio_shutdown.py shows it on the real process)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiosqlite
import anyio

from drivers.zigbee import ZigbeeDriver
from drivers.zigbee.driver import DB_CLOSE_S, RADIO_CLOSE_S
from gatewayd.driver import DriverContext, DriverState
from tests.contract.sink import RecordingSink
from tests.zigbee.conftest import BASE, running

BOUND_S = RADIO_CLOSE_S + DB_CLOSE_S + 1.0  # stop() gives up on its own before this


def database_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if isinstance(t, aiosqlite.Connection)}


async def stop_within_bound(driver: ZigbeeDriver) -> None:
    # in a task of its own: a shielded wait in stop() could not be cut from here
    stopping = asyncio.ensure_future(driver.stop())
    finished, _ = await asyncio.wait({stopping}, timeout=BOUND_S)
    assert finished == {stopping}, f"stop() still running after {BOUND_S} s"
    stopping.result()
    assert driver.health().state is DriverState.STOPPED


async def test_stop_with_the_radio_frozen_closes_the_database(tmp_path: Path) -> None:
    """The radio never answers zigpy's goodbye: stop() leaves it after RADIO_CLOSE_S and still
    closes the database. Before, the database was closed only after the goodbye: never."""
    before = database_threads()
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        assert driver.virtual is not None
        assert database_threads() - before
        driver.virtual.freeze()
        await stop_within_bound(driver)
        assert database_threads() - before == set()


async def test_a_cancel_while_the_radio_starts_leaves_no_database_open(tmp_path: Path) -> None:
    """The daemon's task group is cancelled while zigpy opens its database and starts the radio
    (a SIGTERM right after start-up). Before, the half-started app was shut down in the
    cancelled task, cut at its first wait: its database thread kept running."""
    before = database_threads()
    sink = RecordingSink()
    driver = ZigbeeDriver(BASE, DriverContext(state_dir=tmp_path, spawn=lambda n, f: None))
    async with anyio.create_task_group() as tg:
        tg.start_soon(driver.start, sink)
        with anyio.fail_after(20):
            while not database_threads() - before:  # zigpy is opening its database
                await asyncio.sleep(0)
        assert driver.health().state is DriverState.STARTING
        tg.cancel_scope.cancel()
    await stop_within_bound(driver)
    assert database_threads() - before == set()
