"""The Zigbee driver: zigpy's ControllerApplication on a configured radio, locks as Devices."""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio
import structlog

from drivers.zigbee.removed import RemovedLocks
from gatewayd.driver import (
    NO_PAIR_OPTIONS,
    Driver,
    DriverContext,
    DriverHealth,
    DriverSink,
    DriverState,
    Inventory,
    PairOptions,
    Simulation,
    ZigbeeConfig,
)
from gatewayd.model import (
    Action,
    ActionNotSupported,
    ActionResult,
    ClearCode,
    DeviceError,
    DeviceNotFound,
    Lock,
    SetCode,
    Unlock,
)

if TYPE_CHECKING:
    from drivers.zigbee.lock import LockOptions, ZigbeeLock
    from drivers.zigbee.virtual.radio import VirtualNetwork

log = structlog.get_logger(__name__)

RECONNECT_INITIAL_S: Final = 0.5
STARTUP_TIMEOUT_S: Final = 60.0
# Closing zigpy's app is shielded (cut half-way, its database thread keeps running and the
# process cannot exit), so it bounds itself, below the daemon's DRIVER_STOP_TIMEOUT_S.
RADIO_CLOSE_S: Final = 0.5  # a radio that does not answer zigpy's goodbye within this is left
DB_CLOSE_S: Final = 0.8  # zigpy's database: queued writes, WAL checkpoint, its thread joined
# A leave request's answer, at most (and at most command_timeout_s): a lock that does not
# confirm in time is removed anyway and sent the leave again when it is next heard.
LEAVE_TIMEOUT_S: Final = 10.0
# A removed lock heard again is sent the leave at most this often (one that refuses it would
# otherwise be sent one, and rediscovered by zigpy, at every frame).
REHEARD_RETRY_S: Final = 60.0


class ZigbeeDriver(Driver):
    """Zigbee door locks through zigpy. zigpy is imported by `start`, never at import time."""

    name: ClassVar[str] = "zigbee"

    def __init__(self, config: ZigbeeConfig, ctx: DriverContext) -> None:
        self._cfg = config
        self._ctx = ctx
        self._sink: DriverSink | None = None
        self._app: Any = None
        self._locks: dict[str, ZigbeeLock] = {}  # by device id
        self._by_ieee: dict[str, str] = {}
        self._state = DriverState.STOPPED
        self._error: str | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._leave_until = 0.0
        self._pair_until = 0.0
        self._removed: RemovedLocks | None = None  # removed without a confirmed leave
        self._removing: set[str] = set()  # IEEEs a leave is being sent to again
        self._retry_at: dict[str, float] = {}  # IEEE -> when a leave may be sent again
        self._dropped: weakref.WeakSet[Any] = weakref.WeakSet()  # zigpy devices we removed
        self._leaving: dict[str, asyncio.Future[None]] = {}  # IEEE -> set when it says it left
        self._reconnects = 0
        self._losses = 0  # connection_lost calls: one while `_connect` adopts fails it
        self._pinging: set[str] = set()  # device ids with an availability ping in flight
        self.virtual: VirtualNetwork | None = None  # the air, when radio_type is "virtual"

    @property
    def database(self) -> Path:
        return self._ctx.state_dir / self._cfg.database_path

    @property
    def removed(self) -> RemovedLocks:
        """Locks removed without a confirmed leave, kept next to zigpy's database."""
        if self._removed is None:
            self._removed = RemovedLocks(self.database.with_suffix(".removed.json"))
        return self._removed

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sink: DriverSink) -> None:
        from drivers.zigbee import radios

        self._sink = sink
        self._stopping = asyncio.Event()
        self._state = DriverState.STARTING
        _ = self.removed  # read before zigpy reports a device
        radios.guard_stack_logs()
        if self._cfg.radio_type == "virtual" and self.virtual is None:
            from drivers.zigbee.virtual.radio import VirtualNetwork

            self.virtual = VirtualNetwork(
                self.database.with_suffix(".virtual.json"),
                locks=self._cfg.virtual_locks,
                joining=self._cfg.virtual_joining_locks,
            )
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                await self._connect()
        except Exception as exc:  # noqa: BLE001 - any radio failure: report DOWN and retry
            self._down(exc)
        self._ctx.spawn("zigbee.radio", self._supervise)
        if self._cfg.availability_s > 0:
            self._ctx.spawn("zigbee.availability", self._availability)

    async def stop(self) -> None:
        if self._state is DriverState.STOPPED:
            return
        self._state = DriverState.STOPPED
        self._stopping.set()
        self._wake.set()
        for task in list(self._tasks):
            task.cancel()
        await self._close_app()
        log.info("zigbee.stopped")

    async def _connect(self) -> None:
        from drivers.zigbee import quirks, radios
        from drivers.zigbee.lock import guard_pins
        from drivers.zigbee.virtual.radio import CONF_VIRTUAL

        app_cls = radios.load_radio(self._cfg.radio_type)
        extra = {CONF_VIRTUAL: self.virtual} if self.virtual is not None else {}
        radios.private_file(self.database)
        radios.check_database(self.database)
        scrubbed = radios.scrub_pins(self.database)
        if scrubbed:
            log.warning("zigbee.stored_pins_deleted", rows=scrubbed)
        config = radios.zigpy_config(self._cfg, self.database, extra)
        resolver = await quirks.resolver(self._ctx.state_dir) if self._cfg.quirks else None
        radios.guard_stack_logs()  # the stack's loggers exist now: filter before it logs settings
        with anyio.CancelScope(shield=True):
            # opens zigpy's database in a thread of its own: cut half-way by the daemon's
            # cancel, nothing would be left to close it (local disk work, no radio)
            app = await app_cls.new(
                config, auto_form=False, start_radio=False, device_resolver=resolver
            )
        guard_pins(app)
        try:
            await app.startup(auto_form=True)
        except BaseException:
            await _shutdown(app)  # also when cancelled: a SIGTERM while the radio starts
            raise
        radios.private_file(self.database)
        radios.guard_stack_logs()
        self._app = app
        app.add_listener(self)
        losses = self._losses
        for zdev in list(app.devices.values()):
            await self._adopt(zdev, joined=False)
        if self._losses != losses:
            # lost while the locks were read: READY now would leave the dead connection up
            raise ConnectionError("the radio connection was lost while starting")
        self._state = DriverState.READY
        self._error = None
        log.info(
            "zigbee.started",
            radio=self._cfg.radio_type,
            devices=len(self._locks),
            quirks=resolver is not None,
        )

    async def _close_app(self) -> None:
        app, self._app = self._app, None
        if app is None:
            return
        app.remove_listener(self)
        for lock in self._locks.values():
            lock.close()
        await _shutdown(app)

    def _down(self, exc: BaseException) -> None:
        from drivers.zigbee import radios

        self._state = DriverState.DOWN
        self._error = _describe(exc)
        if radios.is_damage(exc):
            # zigpy's own database, not the radio: no retry fixes a damaged file. SQLite's
            # messages name no data. Moved aside, the network comes back from the radio but
            # zigpy no longer knows its locks, which then have to be paired again.
            self._error = (
                f"{self._error}: {exc}: the Zigbee database {self.database} cannot be used;"
                " restore it from a backup (without it, the locks must be paired again)"
            )
        elif getattr(exc, "sqlite_errorname", None):
            # SQLite's own refusal (full, read-only, locked), not damage: retried, and it says
            # which, e.g. a full disk. Its messages name no data.
            self._error = f"{self._error}: {exc}: the Zigbee database {self.database}"
        log.warning("zigbee.radio_down", radio=self._cfg.radio_type, error=self._error)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or return early; True when the driver is stopping."""
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            return False
        return True

    async def _supervise(self) -> None:
        """Reconnect with exponential backoff and full jitter while the radio is unreachable."""
        backoff = RECONNECT_INITIAL_S
        while not self._stopping.is_set():
            if self._app is not None and self._state is not DriverState.DOWN:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._app is not None:
                await self._close_app()
            if await self._sleep(random.uniform(0, backoff)):  # noqa: S311 - jitter, not crypto
                return
            try:
                async with asyncio.timeout(STARTUP_TIMEOUT_S):
                    await self._connect()
                self._reconnects += 1
                backoff = RECONNECT_INITIAL_S
            except Exception as exc:  # noqa: BLE001
                self._down(exc)
                await self._close_app()
                backoff = min(backoff * 2, self._cfg.reconnect_max_s)

    # ------------------------------------------------------------------ zigpy app listener

    def connection_lost(self, exc: Exception) -> None:
        if self._state is DriverState.STOPPED:
            return
        self._losses += 1
        self._down(exc)
        self._wake.set()
        # Their link is gone: a command in flight fails now, and a request that fails to go
        # out before the app is closed is not taken for the lock being out of reach.
        for lock in self._locks.values():
            lock.close()

    def device_initialized(self, zdev: Any) -> None:
        self._spawn_task(self._adopt(zdev, joined=True))

    def device_joined(self, zdev: Any) -> None:
        """A join zigpy reports: a new device, or a known one at a new network address (a lock
        reset or re-paired; one that rejoins at its old address is caught by the lock itself,
        see `ZigbeeLock._heard`). Its interview follows, then `device_initialized`."""
        if self._listed(zdev, "joined"):
            return
        device_id = self._by_ieee.get(str(zdev.ieee))
        if device_id is not None:
            self._locks[device_id].joined()

    def device_left(self, zdev: Any) -> None:
        said = self._leaving.get(str(zdev.ieee))
        if said is not None and not said.done():
            said.set_result(None)  # the lock says it left: the leave `_leave` sent is done
        device_id = self._by_ieee.get(str(zdev.ieee))
        if device_id is None:
            return
        self._locks[device_id].gone("left")
        loop = asyncio.get_running_loop()
        if loop.time() < self._leave_until and self._app is not None:
            self._spawn_task(self._app.remove(zdev.ieee))

    def device_removed(self, zdev: Any) -> None:
        device_id = self._by_ieee.pop(str(zdev.ieee), None)
        if device_id is None:
            return
        lock = self._locks.pop(device_id)
        lock.close(removed=True)
        log.info("zigbee.device_removed", device_id=device_id, ieee=lock.ieee)
        if self._sink is not None:
            self._sink.device_removed(device_id)

    def handle_message(self, zdev: Any, *_: Any) -> None:
        device_id = self._by_ieee.get(str(zdev.ieee))
        if device_id is not None:
            self._locks[device_id].seen()
        elif self._removed and str(zdev.ieee) in self._removed and not self._pairing():
            self._refuse(zdev, "frame")  # an announce at its old address, a report, ...

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _adopt(self, zdev: Any, *, joined: bool) -> None:
        """A device zigpy knows: if it has a Door Lock cluster, it becomes one of our Devices."""
        from drivers.zigbee.lock import ZigbeeLock, has_door_lock

        ieee = str(zdev.ieee)
        if self._sink is None or not zdev.is_initialized or not has_door_lock(zdev):
            return
        if zdev in self._dropped or self._listed(zdev, "joined" if joined else "known"):
            return
        old = self._locks.get(self._by_ieee.get(ieee, ""))
        if old is not None and old.zdev is zdev:
            if joined:
                # interviewed again: it rejoined, reset or re-paired, and holds no bindings
                # any more (ZHA configures a rejoined device again too)
                old.seen()
                old.reconfigure()
            return
        device_id = self._sink.device_id(ieee)
        lock = ZigbeeLock(zdev, device_id, self._sink, self._options())
        if old is not None:  # zigpy's new device object after a radio reconnect
            lock.carry_over(old)
            old.close()
            if joined:
                lock.seen()  # just interviewed: on the network, even if it had left
        lock.listen()
        self._locks[device_id] = lock
        self._by_ieee[ieee] = device_id
        try:
            # one whose configuration fails is configured again when it is next heard; it is
            # read all the same: a lock that lost a bind may answer, and unread it was shown
            # with no bolt or battery until then, and no firmware until a restart
            if joined:
                await lock.configure_joined()
            await lock.refresh(from_cache=not joined)
        except Exception as exc:  # noqa: BLE001 - a half-configured lock is still a lock
            if not lock.closed:  # else its request failed for that: told below
                log.warning("zigbee.device_setup_failed", ieee=ieee, error=_describe(exc))
        if lock.closed:
            # removed meanwhile (announced now, it would come back as a ghost), or the radio
            # was lost: then the lock adopted again after the reconnect announces it
            reason = "removed" if lock.removed else "radio_lost"
            log.info("zigbee.device_setup_cut", device_id=device_id, ieee=ieee, reason=reason)
            return
        log.info(
            "zigbee.device_ready",
            device_id=device_id,
            ieee=ieee,
            manufacturer=zdev.manufacturer,
            model=zdev.model,
            quirk=type(zdev).__name__,
            joined=joined,
        )
        lock.announce()
        if not joined:
            self._spawn_task(lock.restarted())

    def _options(self) -> LockOptions:
        from drivers.zigbee.lock import LockOptions

        c = self._cfg
        return LockOptions(
            command_timeout_s=c.command_timeout_s,
            report_wait_s=c.report_wait_s,
            event_merge_s=c.event_merge_s,
            # a failed configuration is tried again at least as often as the lock is pinged
            configure_retry_max_s=c.availability_s or 3600.0,
        )

    async def _availability(self) -> None:
        """Ping locks not heard from within availability_s; a failed delivery marks them offline."""
        period = max(0.05, self._cfg.availability_s / 2)
        while not await self._sleep(period):
            if self._app is None or self._state is DriverState.DOWN:
                continue
            for lock in list(self._locks.values()):
                last = lock.zdev.last_seen
                stale = last is None or (_now() - last) >= self._cfg.availability_s
                if (stale or not lock.online) and lock.device_id not in self._pinging:
                    self._spawn_task(self._ping(lock))

    async def _ping(self, lock: ZigbeeLock) -> None:
        from drivers.zigbee.zigpy_api import Basic

        # on the lock's own endpoint, which is not always 1 (a Nimly lock's is 11), or another
        basic = lock._cluster(Basic.cluster_id)
        if basic is None:
            eps = [ep for ep in lock.zdev.non_zdo_endpoints if Basic.cluster_id in ep.in_clusters]
            basic = eps[0].in_clusters[Basic.cluster_id] if eps else None
        if basic is None:
            return
        # A sleepy lock's failed delivery is known only once its parent gives up holding the
        # frame (7.68 s): so no cut shorter than command_timeout_s, and no retry (zigpy's two
        # would take it past command_timeout_s, and a lock out of reach would never be found).
        self._pinging.add(lock.device_id)
        try:
            await lock._call(
                lambda: basic.read_attributes(["zcl_version"], allow_cache=False, retries=0)
            )
        except Exception:  # noqa: BLE001, S110 - the lock marks itself offline on a failed delivery
            pass
        finally:
            self._pinging.discard(lock.device_id)

    # ------------------------------------------------------------------ the contract

    def devices(self) -> Sequence[Any]:
        return [lock.device() for lock in self._locks.values()]

    def inventory(self) -> Inventory | None:
        """Never: nothing a Zigbee coordinator holds says which locks are on its network.

        zigpy's device database is zigpy's memory, not the network's member list. A lock that
        left or was reset while the gateway was off is still in it (so a ghost is reported as
        a device that stays offline, never found missing here). A lock missing from it is no
        proof either: a lost or restored database, or its last queued writes lost to a power
        cut (zigpy writes from a queue, `synchronous = normal`) while the store kept the row,
        leaves out locks that still hold the network key and that zigpy adopts again, by the
        same IEEE address, as soon as they speak; a re-formed network (same IEEE, new extended
        PAN id) gets the same locks back when they are paired again. A native id is the IEEE
        address alone, so no network scope could tell these apart from a lock that is gone.
        Removing one of them would give it a new id; a Zigbee lock is removed only when zigpy
        removes it while the gateway runs (`device_removed`)."""
        return None

    def health(self) -> DriverHealth:
        state = self._state
        offline = sum(1 for lock in self._locks.values() if not lock.online)
        if state is DriverState.READY and offline:
            state = DriverState.DEGRADED
        return DriverHealth(
            state=state,
            radio=self._cfg.radio_type,
            last_error=self._error,
            details={
                "devices": len(self._locks),
                "offline": offline,
                "reconnects": self._reconnects,
                "quirks": self._cfg.quirks,
            },
        )

    def _lock(self, device_id: str) -> ZigbeeLock:
        lock = self._locks.get(device_id)
        if lock is None:
            raise DeviceNotFound(f"no zigbee device {device_id}")
        if self._app is None or self._state is DriverState.DOWN:
            raise DeviceError(f"the zigbee radio is down: {self._error or 'not connected'}")
        return lock

    async def execute(self, device_id: str, action: Action) -> ActionResult:
        lock = self._lock(device_id)
        match action:
            case Lock():
                return await lock.set_locked(True)
            case Unlock():
                return await lock.set_locked(False)
            case SetCode(slot_id=slot, code=code):
                lock.codes().check(slot, code)
                return await lock.set_code(slot, code)
            case ClearCode(slot_id=slot):
                lock.codes().check(slot)
                return await lock.clear_code(slot)
        raise ActionNotSupported(f"zigbee cannot {action.name}")

    def hold_s(self, device_id: str, action: Action) -> float:
        lock = self._locks.get(device_id)
        return 0.0 if lock is None else lock.late_hold_s(action)

    async def pair(self, duration_s: int, options: PairOptions = NO_PAIR_OPTIONS) -> None:
        del options  # nothing here takes a DSK PIN
        if self._app is None:
            raise DeviceError(f"the zigbee radio is down: {self._error or 'not connected'}")
        duration = max(1, min(254, duration_s))
        log.info("zigbee.permit_join", duration_s=duration)
        # a lock removed without leaving that joins now is being paired on purpose: adopted
        self._pair_until = asyncio.get_running_loop().time() + duration
        await self._app.permit(time_s=duration)

    async def unpair(self, duration_s: int, device_id: str | None) -> None:
        if self._app is None:
            raise DeviceError(f"the zigbee radio is down: {self._error or 'not connected'}")
        if device_id is None:
            # Zigbee has no exclusion mode: a lock that leaves in this window is removed.
            self._leave_until = asyncio.get_running_loop().time() + duration_s
            log.info("zigbee.leave_window", duration_s=duration_s)
            return
        lock = self._lock(device_id)
        app, zdev = self._app, lock.zdev
        log.info("zigbee.remove_device", device_id=device_id, ieee=lock.ieee)
        failure = await self._leave(zdev)
        if self._app is not app:
            raise DeviceError(f"the zigbee radio went down: {self._error or 'not connected'}")
        self._left_or_not(zdev, failure, device_id=device_id)
        self._dropped.add(zdev)
        await app.remove(zdev.ieee)  # device_removed: gone from the gateway

    # ------------------------------------------------------------------ removed, not left

    def _pairing(self) -> bool:
        return asyncio.get_running_loop().time() < self._pair_until

    def _listed(self, zdev: Any, how: str) -> bool:
        """True if `zdev` is a lock removed without a confirmed leave and must not be adopted:
        it is sent the leave again. One that joins while `pair` permits joining is being
        paired on purpose: dropped from the list, and adopted."""
        ieee = str(zdev.ieee)
        if not self._removed or ieee not in self._removed:
            return False
        if how == "joined" and self._pairing():
            self._removed.discard(ieee)
            self._retry_at.pop(ieee, None)
            log.info("zigbee.removed_lock_paired", ieee=ieee)
            return False
        self._refuse(zdev, how)
        return True

    def _refuse(self, zdev: Any, how: str) -> None:
        ieee = str(zdev.ieee)
        loop = asyncio.get_running_loop()
        if ieee in self._removing or loop.time() < self._retry_at.get(ieee, 0.0):
            return
        self._retry_at[ieee] = loop.time() + REHEARD_RETRY_S
        self._removing.add(ieee)
        log.warning(
            "zigbee.removed_lock_heard",
            ieee=ieee,
            heard=how,
            effect="not adopted: it was removed without leaving; sending it the leave again",
        )
        self._spawn_task(self._leave_again(zdev))

    async def _leave_again(self, zdev: Any) -> None:
        ieee = str(zdev.ieee)
        try:
            app = self._app
            if app is None:
                return
            failure = await self._leave(zdev)
            if self._app is not app or self._removed is None or ieee not in self._removed:
                return  # the radio went down, or the lock is being paired again on purpose
            self._left_or_not(zdev, failure, device_id=None)
            self._dropped.add(zdev)
            await app.remove(zdev.ieee)  # zigpy forgets it again
        finally:
            self._removing.discard(ieee)

    async def _leave(self, zdev: Any) -> str | None:
        """Send `zdev` a ZDO leave request; None once it confirmed (its answer, or its own
        word that it left, which may come first), else why not."""
        from drivers.zigbee.zigpy_api import exceptions, zdo_t

        bound = min(LEAVE_TIMEOUT_S, self._cfg.command_timeout_s)
        ieee = str(zdev.ieee)
        said = self._leaving[ieee] = asyncio.get_running_loop().create_future()
        request = asyncio.ensure_future(zdev.zdo.leave())
        request.add_done_callback(_retrieved)  # its failure may come after the lock's word
        try:
            async with asyncio.timeout(bound):
                await asyncio.wait({request, said}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            return f"no answer within {bound:g} s"
        finally:
            if self._leaving.get(ieee) is said:
                del self._leaving[ieee]
            if not request.done():
                request.cancel()
        if said.done():
            return None
        try:
            rsp = request.result()
        except exceptions.DeliveryError:
            return "the request was not delivered"
        except Exception as exc:  # noqa: BLE001 - not confirmed, whatever the stack raised
            return f"zigbee error: {type(exc).__name__}"
        status = rsp[0] if isinstance(rsp, list | tuple) and rsp else getattr(rsp, "status", rsp)
        if status == zdo_t.Status.SUCCESS:
            return None
        name = getattr(status, "name", None) or str(status)
        return f"the lock answered {name}"

    def _left_or_not(self, zdev: Any, failure: str | None, *, device_id: str | None) -> None:
        """Record the leave's outcome before zigpy forgets the lock: listed until confirmed."""
        ieee = str(zdev.ieee)
        ids = {"ieee": ieee} if device_id is None else {"device_id": device_id, "ieee": ieee}
        if failure is None:
            self.removed.discard(ieee)
            self._retry_at.pop(ieee, None)
            log.info("zigbee.device_left", **ids)
            return
        self.removed.add(ieee)
        log.warning(
            "zigbee.removed_without_leave",
            **ids,
            reason=failure,
            effect="removed from the gateway, but the lock did not confirm it left the network:"
            " it will be sent the leave again if it is heard, and its codes still work at its"
            " keypad until it is reset",
        )

    # ------------------------------------------------------------------ simulation

    async def simulate(self, device_id: str, what: Simulation, params: Mapping[str, Any]) -> None:
        if self.virtual is None:
            await super().simulate(device_id, what, params)
            return
        from drivers.zigbee.virtual.simulate import act

        lock = self._locks.get(device_id)
        if lock is None:
            raise DeviceNotFound(f"no zigbee device {device_id}")
        act(self.virtual, lock.ieee, what, params)


async def _shutdown(app: Any) -> None:
    """zigpy's shutdown of `app`, not cut by a cancel, the radio's part and the database's each
    bounded: a frozen radio that never answers the goodbye must not keep the database open."""
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(RADIO_CLOSE_S) as radio:
            try:
                await _end_device_tasks(app)
                await app.shutdown(db=False)
            except Exception as exc:  # noqa: BLE001 - a dying radio may fail to say goodbye
                log.warning("zigbee.shutdown_failed", error=type(exc).__name__)
        if radio.cancelled_caught:
            log.warning("zigbee.radio_close_timeout", timeout_s=RADIO_CLOSE_S)
        with anyio.move_on_after(DB_CLOSE_S) as db:
            try:
                await _close_database(app)
            except Exception as exc:  # noqa: BLE001 - SQLite recovers its WAL at the next open
                log.warning("zigbee.database_close_failed", error=type(exc).__name__)
        if db.cancelled_caught:
            log.error("zigbee.database_close_timeout", timeout_s=DB_CLOSE_S)


async def _end_device_tasks(app: Any) -> None:
    """Cancel the devices' own tasks (a fast-polling reset timer) and let them finish first.
    zigpy 2.3's shutdown cancels them and clears each device's task set, so each task's
    done-callback `set.remove` then raised KeyError: an asyncio error in the journal at
    every stop. Ended here, they leave their sets themselves."""
    tasks = [task for device in app.devices.values() for task in getattr(device, "_tasks", ())]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


async def _close_database(app: Any) -> None:
    """The database part of zigpy's `shutdown(db=True)`, which would first wait on the radio
    again (zigpy 2.3, pinned, keeps the listener in `_dblistener`)."""
    listener = app._dblistener
    if listener is None:
        return
    app._remove_db_listeners()
    app._dblistener = None  # closed once, even if shut down again
    await listener.shutdown()


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _now() -> float:
    import time

    return time.time()


def _describe(exc: BaseException) -> str:
    """A one-line, secret-free description: the class and errno/strerror, never frame data."""
    name = type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return f"{name}: {exc.strerror}"
    return name
