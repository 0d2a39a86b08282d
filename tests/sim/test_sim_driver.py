"""Behaviour only the simulated driver has: timers, battery drain, inventory, the zero-cost path."""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import anyio
import pytest

from drivers.sim import SimDriver
from drivers.sim.lock import SimLock
from drivers.sim.timers import Timers
from gatewayd.config import parse_config
from gatewayd.driver import DriverContext, DriverState, SimConfig, Simulation, Spawn, load_driver
from gatewayd.model import (
    ActionResult,
    CodeConstraints,
    DeviceError,
    EventName,
    InvalidInput,
    Lock,
    PinCode,
    SetCode,
    Unlock,
)
from tests.contract.sink import RecordingSink

BASE = SimConfig(enabled=True, locks=2, latency_ms=0.0, pair_delay_s=0.0)


async def started(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path, config: SimConfig = BASE
) -> tuple[SimDriver, list[str]]:
    driver = SimDriver(config, DriverContext(state_dir=tmp_path, spawn=spawn))
    await driver.start(sink)
    return driver, [d.id for d in sorted(driver.devices(), key=lambda d: d.native_id)]


def run_without_suspending(coro: Coroutine[Any, Any, ActionResult]) -> ActionResult:
    """Drive a coroutine by hand; fail if it ever waits for the event loop (sleep, I/O...)."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: ActionResult = done.value
        return result
    coro.close()
    pytest.fail("execute suspended instead of completing at once")


def suspends(coro: Coroutine[Any, Any, ActionResult]) -> bool:
    try:
        coro.send(None)
    except StopIteration:
        return False
    coro.close()
    return True


def events_named(sink: RecordingSink, device_id: str, name: EventName) -> list[dict[str, Any]]:
    return [
        dict(e.details) for e in sink.events if e.device_id == device_id and e.event_name == name
    ]


# ---------------------------------------------------------------- the zero-cost path


async def test_zero_latency_execute_never_waits_for_the_loop(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    driver, (dev, _) = await started(sink, spawn, tmp_path)

    for i in range(1000):
        run_without_suspending(driver.execute(dev, Lock() if i % 2 else Unlock()))

    assert sink.devices[dev].properties.locked is True  # the 1000th (i=999) was a lock
    assert len(events_named(sink, dev, EventName.DOOR_LOCKED)) == 500


async def test_latency_or_a_delay_fault_does_wait(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    slow, (slow_dev, _) = await started(sink, spawn, tmp_path / "a", BASE.__replace__(latency_ms=1))
    assert suspends(slow.execute(slow_dev, Lock()))

    fast, (dev, _) = await started(RecordingSink(), spawn, tmp_path / "b")
    await fast.simulate(dev, Simulation.FAULT, {"kind": "delay", "delay_s": 0.01})
    assert suspends(fast.execute(dev, Lock()))
    assert suspends(fast.execute(dev, Lock()))  # a delay lasts until cleared
    await fast.simulate(dev, Simulation.FAULT, {"kind": "none"})
    run_without_suspending(fast.execute(dev, Lock()))


# ---------------------------------------------------------------- timers


async def test_auto_relock_after_unlock(sink: RecordingSink, spawn: Spawn, tmp_path: Path) -> None:
    driver, (dev, _) = await started(sink, spawn, tmp_path, BASE.__replace__(auto_relock_s=0.05))

    await driver.execute(dev, Unlock())
    assert sink.devices[dev].properties.locked is False

    event = await sink.wait_event(dev, EventName.DOOR_LOCKED)
    assert event.details == {"method": "auto"}
    assert sink.devices[dev].properties.locked is True


async def test_auto_relock_waits_for_the_door_to_close(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    driver, (dev, _) = await started(sink, spawn, tmp_path, BASE.__replace__(auto_relock_s=0.02))
    await driver.simulate(dev, Simulation.DOOR_OPEN, {})
    await driver.execute(dev, Unlock())

    await anyio.sleep(0.2)  # ten relock periods with the door open
    assert sink.devices[dev].properties.locked is False
    await driver.simulate(dev, Simulation.DOOR_CLOSE, {})

    event = await sink.wait_event(dev, EventName.DOOR_LOCKED)
    assert event.details == {"method": "auto"}


async def test_a_lock_in_time_cancels_the_auto_relock(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    driver, (dev, _) = await started(sink, spawn, tmp_path, BASE.__replace__(auto_relock_s=0.02))
    await driver.execute(dev, Unlock())
    await driver.execute(dev, Lock())

    await anyio.sleep(0.2)

    assert events_named(sink, dev, EventName.DOOR_LOCKED) == [{"method": "remote"}]


async def test_a_failing_timer_does_not_stop_the_others() -> None:
    fired: list[str] = []

    def fails() -> None:
        raise RuntimeError("the store refused the new lock")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:  # as the daemon's: an error would end it
            timers = Timers()
            tg.start_soon(timers.run)
            timers.call_later(("join", 3), 0.0, fails)
            timers.call_later(("relock", "a"), 0.01, lambda: fired.append("relock"))
            while not fired:
                await anyio.sleep(0.01)
            timers.close()

    assert fired == ["relock"]


async def test_stop_ends_the_timer_task(sink: RecordingSink, tmp_path: Path) -> None:
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            def spawn(name: str, fn: Any) -> None:
                tg.start_soon(fn, name=name)

            driver, _ = await started(sink, spawn, tmp_path, BASE.__replace__(auto_relock_s=60))
            await driver.execute(_[0], Unlock())  # a relock timer is pending
            await driver.stop()
        # the task group closed by itself: the timer task ended with stop()
    assert driver.health().state is DriverState.STOPPED
    with pytest.raises(DeviceError):
        await driver.execute(_[0], Lock())


# ---------------------------------------------------------------- battery


async def test_battery_drains_per_action_and_warns_once(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    config = BASE.__replace__(battery_drain_per_action=0.3)
    driver, (dev, _) = await started(sink, spawn, tmp_path, config)

    for action in (Unlock(), Lock(), Unlock()):
        await driver.execute(dev, action)

    assert sink.devices[dev].properties.battery_level == pytest.approx(0.1)
    assert events_named(sink, dev, EventName.LOW_BATTERY) == [{"battery_level": 0.1}]
    await driver.execute(dev, Lock())  # already low: no second warning
    assert len(events_named(sink, dev, EventName.LOW_BATTERY)) == 1
    assert sink.devices[dev].properties.battery_level == 0.0


# ---------------------------------------------------------------- inventory


async def test_restart_keeps_native_ids_and_paired_locks(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    first, ids = await started(sink, spawn, tmp_path)
    await first.pair(10)
    await sink.wait_for(lambda: len(sink.devices) == 3)
    await first.unpair(10, ids[0])
    await first.stop()
    natives = sorted(d.native_id for d in first.devices())
    assert natives == ["sim-0002", "sim-0003"]

    again = RecordingSink()
    again.ids = dict(sink.ids)  # the store keeps native id -> device id across restarts
    second, _ = await started(again, spawn, tmp_path)

    assert sorted(d.native_id for d in second.devices()) == natives
    assert set(again.devices) == set(sink.devices)


async def test_a_driver_restart_leaves_the_locks_as_they_are(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    """Restarting the driver does not touch the hardware: bolts, codes and batteries stay."""
    driver, (dev, _) = await started(sink, spawn, tmp_path)
    await driver.execute(dev, SetCode(slot_id=3, code=PinCode("4821")))
    await driver.execute(dev, Unlock())
    await driver.simulate(dev, Simulation.BATTERY, {"level": 0.5})
    await driver.stop()

    await driver.start(sink)

    assert sink.devices[dev].properties.locked is False
    assert sink.devices[dev].properties.battery_level == 0.5
    await driver.simulate(dev, Simulation.MANUAL_LOCK, {})
    await driver.simulate(dev, Simulation.KEYPAD_UNLOCK, {"slot_id": 3})  # the code still opens
    assert events_named(sink, dev, EventName.DOOR_UNLOCKED)[-1] == {
        "method": "pin_code",
        "slot_id": 3,
    }


async def test_a_lock_left_unlocked_over_a_driver_restart_still_relocks(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    driver, (dev, _) = await started(sink, spawn, tmp_path, BASE.__replace__(auto_relock_s=0.05))
    await driver.execute(dev, Unlock())
    await driver.stop()
    mark = len(sink.events)

    await driver.start(sink)

    event = await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
    assert event.details == {"method": "auto"}


async def test_a_changed_lock_count_reseeds_the_inventory(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    first, ids = await started(sink, spawn, tmp_path)
    await first.unpair(10, ids[0])
    await first.stop()

    second, _ = await started(sink, spawn, tmp_path, BASE.__replace__(locks=3))

    assert [d.native_id for d in second.devices()] == ["sim-0001", "sim-0002", "sim-0003"]


async def test_a_reseeded_inventory_is_kept_for_the_next_start(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    """`gatewayd demo --dir D --locks 1` after a run with 2 locks and a paired third, then
    `--locks 2` again: the reseed to one lock was never written, so the third run read the
    first run's file (its seed matched) and brought the paired lock back as a third."""
    first, _ = await started(sink, spawn, tmp_path)
    await first.pair(10)
    await sink.wait_for(lambda: len(sink.devices) == 3)
    await first.stop()
    second, _ = await started(sink, spawn, tmp_path, BASE.__replace__(locks=1))
    assert [d.native_id for d in second.devices()] == ["sim-0001"]
    await second.stop()

    third, _ = await started(sink, spawn, tmp_path)

    assert [d.native_id for d in third.devices()] == ["sim-0001", "sim-0002"]


async def test_unpair_without_a_device_removes_the_newest_lock(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    driver, _ = await started(sink, spawn, tmp_path)
    await driver.pair(10)
    await sink.wait_for(lambda: len(sink.devices) == 3)
    newest = sink.ids["sim-0003"]

    await driver.unpair(10, None)

    assert sink.removed == [newest]
    assert sorted(d.native_id for d in driver.devices()) == ["sim-0001", "sim-0002"]


# ---------------------------------------------------------------- the lock's behaviour


async def test_a_jammed_bolt_refuses_remote_moves_until_turned_by_hand(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    driver, (dev, _) = await started(sink, spawn, tmp_path)
    await driver.simulate(dev, Simulation.JAM, {})

    with pytest.raises(DeviceError):
        await driver.execute(dev, Unlock())

    await driver.simulate(dev, Simulation.MANUAL_LOCK, {})
    assert sink.devices[dev].properties.jammed is False
    await driver.execute(dev, Unlock())
    assert sink.devices[dev].properties.locked is False


async def test_no_reply_cancelled_leaves_the_bolt_and_events_untouched(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    driver, (dev, _) = await started(sink, spawn, tmp_path)
    await driver.simulate(dev, Simulation.FAULT, {"kind": "no_reply"})
    before = len(sink.events)

    with anyio.move_on_after(0.05) as scope:
        await driver.execute(dev, Unlock())

    assert scope.cancelled_caught
    assert sink.devices[dev].properties.locked is True
    assert sink.events[before:] == []


async def test_keypad_unlock_needs_a_programmed_slot(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    driver, (dev, _) = await started(sink, spawn, tmp_path)

    with pytest.raises(InvalidInput):
        await driver.simulate(dev, Simulation.KEYPAD_UNLOCK, {"slot_id": 3})

    assert sink.devices[dev].properties.locked is True
    assert sink.names(dev) == []


async def test_the_lock_refuses_codes_it_cannot_hold(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    config = BASE.__replace__(code_lengths=(4, 6), slots=(2, 5))
    driver, (dev, _) = await started(sink, spawn, tmp_path, config)
    assert sink.devices[dev].codes == CodeConstraints(4, 6, 2, 5)

    with pytest.raises(InvalidInput):
        await driver.execute(dev, SetCode(slot_id=6, code=PinCode("1234")))
    with pytest.raises(InvalidInput):
        await driver.execute(dev, SetCode(slot_id=2, code=PinCode("1234567")))
    assert sink.names(dev) == []


async def test_while_offline_nothing_is_heard_and_online_reports_the_truth(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    driver, (dev, _) = await started(sink, spawn, tmp_path)
    await driver.simulate(dev, Simulation.OFFLINE, {})
    mark = len(sink.events)

    await driver.simulate(dev, Simulation.MANUAL_UNLOCK, {})

    assert sink.events[mark:] == []
    assert sink.devices[dev].properties.locked is True  # last state heard
    await driver.simulate(dev, Simulation.ONLINE, {})
    assert sink.names(dev)[-1] == "device connected"
    assert sink.devices[dev].properties.locked is False


async def test_an_unknown_fault_kind_is_invalid(
    sink: RecordingSink, spawn: Spawn, tmp_path: Path
) -> None:
    driver, (dev, _) = await started(sink, spawn, tmp_path)

    with pytest.raises(InvalidInput):
        await driver.simulate(dev, Simulation.FAULT, {"kind": "explode"})


def test_the_lock_model_never_shows_its_codes() -> None:
    lock = SimLock(native_id="sim-0001", device_id="d", codes=CodeConstraints())
    lock.write_slot(2, PinCode("86420975"))

    assert lock.read_slot(2) == PinCode("86420975")
    assert "86420975" not in repr(lock)
    assert "86420975" not in str(lock.properties())


# ---------------------------------------------------------------- registry and config


def test_the_registry_loads_the_sim_driver() -> None:
    assert load_driver("sim") is SimDriver


def test_sim_settings_come_from_the_config_file() -> None:
    cfg = parse_config(
        b"[drivers.sim]\nenabled = true\nlocks = 5\nlatency_ms = 0\npair_delay_s = 0.5\n"
        b"slots = [2, 11]\n"
    )
    assert cfg.drivers.sim.locks == 5
    assert cfg.drivers.sim.pair_delay_s == 0.5
    assert cfg.drivers.sim.slots == (2, 11)
