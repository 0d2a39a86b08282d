"""The daemon: store, registry, dispatcher, drivers, tunnel and status endpoint under one task
group, with sd_notify readiness, a watchdog fed from the event loop, and a clean shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
import structlog

from gatewayd import __version__
from gatewayd.actions import Dispatcher, StatusUpdate
from gatewayd.config import Config
from gatewayd.disk import CHECK_EVERY_S, MB, RESERVE_NAME, DiskWatch, Reserve, describe_bytes
from gatewayd.driver import Driver, DriverContext, DriverHealth, DriverState, load_driver
from gatewayd.logging import redact_value
from gatewayd.metrics import GatewayMetrics
from gatewayd.model import ActionRequest, DoorEvent, iso, utcnow
from gatewayd.registry import Registry
from gatewayd.sdnotify import Notifier
from gatewayd.status import start_status_server
from gatewayd.store import PRUNE_BATCH, Store
from gatewayd.upstream import Upstream, device_dict

log = structlog.get_logger(__name__)

DRIVER_START_TIMEOUT_S: Final = 90.0
DRIVER_STOP_TIMEOUT_S: Final = 1.5
KEPT_LISTED: Final = 20  # native ids named in the warning about devices of another network
INVENTORY_CHECK_S: Final = 5.0  # how often a started driver is asked for its inventory again
DB_NAME: Final = "gatewayd.db"
PRUNE_EVERY_S: Final = 3600.0  # the action log is pruned at start-up, then this often
# Bounds of the time between watchdog pings (half of WATCHDOG_USEC in between): a tiny
# WATCHDOG_USEC (1 µs) made the loop spin. The floor stays below what a real WatchdogSec= asks
# for (a one-second watchdog needs pings more often than every second).
WATCHDOG_MIN_PING_S: Final = 0.05
WATCHDOG_MAX_PING_S: Final = 10.0


def _shown(error: str | None) -> str | None:
    """An error as /status and the status line show it: a library's message may quote a
    secret (a URL with its password, an Authorization header, a code), masked here."""
    return None if error is None else str(redact_value(error))


def _short(text: str, limit: int = 80) -> str:
    """One line of at most `limit` characters, for STATUS= and the page's headline."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _glibc(name: str) -> Any:
    """A function of the C library, on Linux with glibc; None elsewhere (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, ImportError):
        return None


def _trim_heap() -> None:
    """Give the memory freed during start-up (imports, driver discovery) back to the OS.

    glibc keeps freed heap pages; malloc_trim returns them (about 3 MiB of RSS here). Linux
    with glibc only: elsewhere (musl, macOS) this does nothing.
    """
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


# glibc's mallopt parameters (malloc.h) and the values we pin them to (glibc's defaults)
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
MALLOC_THRESHOLD_BYTES: Final = 128 * 1024


def _pin_malloc_thresholds() -> None:
    """Keep glibc's mmap and trim thresholds at 128 KiB instead of letting them follow the
    largest block freed.

    By default glibc raises its mmap threshold to the size of any mapped block that is freed.
    Once a /status body (about 250 KiB with 200 locks) has been freed, every later block of
    that size comes out of the heap: asyncio's socket reads (a 256 KiB buffer each, shrunk to
    what arrived), the /status bodies. The holes they leave are refilled piecemeal by small
    objects, the next big block no longer fits, and the heap, and RSS, creep up for as long as
    the daemon serves. With the thresholds pinned such blocks are mapped and unmapped whole.
    Linux with glibc only: elsewhere this does nothing.
    """
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return
    mallopt(_M_MMAP_THRESHOLD, MALLOC_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, MALLOC_THRESHOLD_BYTES)


@dataclass
class _Inventoried:
    """What a driver's inventories did in this run: the networks (prefixes) already cleaned
    up, and the last error its inventory raised (logged once, not at every check)."""

    prefixes: set[str] = field(default_factory=set)
    error: str | None = None


class TunnelLike(Protocol):
    """What the daemon needs of the cloud tunnel."""

    async def run(self) -> None: ...

    @property
    def up(self) -> bool: ...

    def snapshot(self) -> dict[str, Any]: ...


class Daemon:
    """One gateway. `run()` returns when cancelled or after `stop()`; `started` fires when ready."""

    def __init__(
        self,
        config: Config,
        *,
        driver_classes: Mapping[str, type[Driver]] | None = None,
        notifier: Notifier | None = None,
        handle_signals: bool = False,
        ignore_sighup: bool = False,
    ) -> None:
        self.config = config
        self._driver_classes = dict(driver_classes or {})
        self.notifier = notifier or Notifier()
        self._handle_signals = handle_signals
        self._ignore_sighup = ignore_sighup  # the service; the demo stops with its terminal
        self.state_dir = Path(config.gateway.state_dir)
        self.reserve = Reserve(self.state_dir / RESERVE_NAME)
        self.disk = DiskWatch(self.state_dir, config.store.disk_low_mb * MB, reserve=self.reserve)
        self.started_at = time.monotonic()
        self.ready = False
        self.store: Store | None = None
        self.registry: Registry | None = None
        self.dispatcher: Dispatcher | None = None
        self.tunnel: TunnelLike | None = None
        self.status_port: int | None = None
        self.metrics: Any = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._started = anyio.Event()
        self._unavailable: dict[str, str] = {}  # enabled drivers that could not be loaded
        self.status_listeners: list[Callable[[StatusUpdate], None]] = []
        self.event_listeners: list[Callable[[DoorEvent], None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def wait_started(self) -> None:
        await self._started.wait()

    def stop(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def run(self) -> None:
        _pin_malloc_thresholds()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = self.store = Store.open(
            self.state_dir / DB_NAME, self.config.store.synchronous, reserve=self.reserve
        )
        self.disk.check()  # makes the reserve an older state dir lacks, if there is room
        upstream = Upstream(store)
        registry = self.registry = Registry(store, upstream)
        dispatcher = self.dispatcher = Dispatcher(
            store,
            registry,
            self._on_status,
            max_queue=self.config.actions.max_queue_per_device,
            gateway_id=lambda: store.identity().gateway_id,
        )
        registry.answering = dispatcher.answering
        registry.unavailable = self._unavailable  # filled by _make_drivers, below
        registry.event_listeners = self.event_listeners
        self.metrics = GatewayMetrics(self)
        identity = store.identity()
        log.info(
            "daemon.starting",
            version=__version__,
            state_dir=str(self.state_dir),
            drivers=self.config.enabled_drivers(),
            gateway_id=identity.gateway_id,
        )
        if not self.config.enabled_drivers():
            log.warning("daemon.no_drivers", hint="enable drivers.zwave or drivers.zigbee")
        if not identity.claimed:
            log.info("daemon.unclaimed", registration_token=identity.registration_token)
        if recovered := dispatcher.recover():
            log.warning("daemon.recovered_actions", failed=recovered)
        drivers = self._make_drivers()
        # open until the shutdown below is over: a second signal during it (an impatient Ctrl-C,
        # a supervisor signalling twice) got the default handler once the first had closed it,
        # and killed the process before the store was closed
        receiver = (
            anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            if self._handle_signals
            else contextlib.nullcontext(None)
        )
        with receiver as signals:
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    dispatcher.bind(tg)
                    runner, self.status_port = await start_status_server(self)
                    tg.start_soon(self._serve_until_cancelled, runner, name="status.server")
                    if signals is not None:
                        tg.start_soon(self._signals, signals, name="daemon.signals")
                    if self.config.cloud.url:
                        from gatewayd.tunnel import Tunnel  # the tunnel only when a cloud is set

                        tunnel = Tunnel(
                            self.config.cloud,
                            store,
                            self._on_action_request,
                            self.hello,
                            on_reject=dispatcher.reject,
                            on_cancel=dispatcher.cancel,
                            on_clock=upstream.cloud_clock,
                            on_rebase=dispatcher.rebase_handoffs,
                            on_claimed=registry.report_all,
                            on_unclaimed=dispatcher.cancel_handoffs,
                        )
                        self.tunnel = tunnel
                        tg.start_soon(tunnel.run, name="tunnel")
                    async with anyio.create_task_group() as starting:
                        for driver in drivers:
                            sink = registry.attach(driver)
                            starting.start_soon(
                                self._start_driver, driver, sink, name=f"driver.{driver.name}.start"
                            )
                    self.ready = True
                    self.notifier.notify(READY="1", STATUS=self.status_line())
                    log.info("daemon.ready", devices=len(registry.devices()), port=self.status_port)
                    _trim_heap()
                    self._started.set()
                    tg.start_soon(self._watchdog, name="daemon.watchdog")
                    tg.start_soon(self._prune_action_log, store, name="store.prune")
                    tg.start_soon(self._watch_disk, name="store.disk")
            finally:
                self.ready = False
                with anyio.CancelScope(shield=True):
                    self.notifier.notify(STOPPING="1", STATUS="stopping")
                    await self._stop_drivers(drivers)
                    store.close()
                    self.notifier.close()
                    log.info("daemon.stopped")

    def _make_drivers(self) -> list[Driver]:
        """The enabled drivers. One that cannot be loaded (its radio library is not installed,
        its constructor fails) is reported down; the other radios' locks are still served."""
        drivers = []
        for name in self.config.enabled_drivers():
            try:
                drivers.append(self._make_driver(name))
            except Exception as exc:  # noqa: BLE001 - one broken driver must not stop the box
                self._unavailable[name] = f"cannot load: {exc}"
                log.error("daemon.driver_unavailable", driver=name, error=str(exc))
        return drivers

    def _make_driver(self, name: str) -> Driver:
        cls = self._driver_classes.get(name) or load_driver(name)
        section = getattr(self.config.drivers, name)
        return cls(section, DriverContext(state_dir=self.state_dir, spawn=self._spawn))

    def _spawn(self, name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._tg is None:
            raise RuntimeError("the daemon is not running")
        self._tg.start_soon(fn, name=name)

    async def _start_driver(self, driver: Driver, sink: Any) -> None:
        with anyio.move_on_after(DRIVER_START_TIMEOUT_S) as scope:
            try:
                await driver.start(sink)
            except Exception as exc:  # noqa: BLE001 - one broken driver must not stop the box
                log.error("daemon.driver_start_failed", driver=driver.name, error=str(exc))
                return
        inventoried = _Inventoried()
        if scope.cancelled_caught:
            # its own tasks go on (a Z-Wave network still interviewing): its inventory may come
            log.error("daemon.driver_start_timeout", driver=driver.name)
            self._spawn(
                f"driver.{driver.name}.inventory",
                lambda: self._recheck_inventory(driver, inventoried),
            )
            return
        # counted from what the driver reported through its sink: no call into the driver
        # that could raise here and take the whole daemon down with it
        assert self.registry is not None
        registry = self.registry
        count = sum(1 for d in registry.devices() if registry.driver_of(d.id) == driver.name)
        log.info("daemon.driver_started", driver=driver.name, devices=count)
        if not self._check_inventory(driver, inventoried):
            self._spawn(
                f"driver.{driver.name}.inventory",
                lambda: self._recheck_inventory(driver, inventoried),
            )

    async def _recheck_inventory(self, driver: Driver, inventoried: _Inventoried) -> None:
        """Ask again: a radio down at start-up, or an interview still running, may end later in
        this run, and a radio may be pointed at another network."""
        while True:
            await anyio.sleep(INVENTORY_CHECK_S)
            if self._check_inventory(driver, inventoried):
                return

    def _check_inventory(self, driver: Driver, inventoried: _Inventoried) -> bool:
        """Remove the devices gone from the network `driver` has inventoried, once per network
        and run. True when nothing more can be removed for it in this run."""
        assert self.registry is not None
        try:
            inventory = driver.inventory()
        except Exception as exc:  # noqa: BLE001 - not knowing is "no": nothing is removed
            if str(exc) != inventoried.error:
                log.error("daemon.driver_inventory_failed", driver=driver.name, error=str(exc))
            inventoried.error = str(exc)
            return False
        inventoried.error = None
        if inventory is None or inventory.prefix in inventoried.prefixes:
            return False
        inventoried.prefixes.add(inventory.prefix)
        gone, kept = self.registry.remove_unreported(driver.name, inventory)
        if gone:
            # devices that left its network while the gateway was off (a lock excluded, the
            # simulator given fewer locks): removed here, upstream too
            log.info("daemon.devices_gone", driver=driver.name, device_ids=gone)
        if kept:
            # the radio is on another network than these devices' (a server or stick swapped)
            log.warning(
                "daemon.other_network_devices_kept",
                driver=driver.name,
                network=inventory.network,
                kept=len(kept),
                native_ids=kept[:KEPT_LISTED],
            )
        return inventory.prefix == ""  # it covers every device of the driver

    async def _stop_drivers(self, drivers: list[Driver]) -> None:
        """Stop every driver at once, all within DRIVER_STOP_TIMEOUT_S: one radio hanging in
        stop() must not hold up the others, nor the shutdown, for a timeout of its own."""
        pending = {driver.name for driver in drivers}

        async def stop(driver: Driver) -> None:
            try:
                await driver.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log.error("daemon.driver_stop_failed", driver=driver.name, error=str(exc))
            pending.discard(driver.name)

        with anyio.move_on_after(DRIVER_STOP_TIMEOUT_S):
            async with anyio.create_task_group() as tg:
                for driver in drivers:
                    tg.start_soon(stop, driver, name=f"driver.{driver.name}.stop")
        if pending:
            log.error("daemon.driver_stop_timeout", drivers=sorted(pending))

    @staticmethod
    async def _serve_until_cancelled(runner: Any) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP and self._ignore_sighup:
                # the habit of "reload" (or a closed terminal) killed the daemon mid-action,
                # and systemd does not restart a service SIGHUP ended
                log.warning(
                    "daemon.sighup_ignored",
                    hint="gatewayd has no reload: restart the service to apply a new config",
                )
                continue
            log.info("daemon.signal", signal=signal.Signals(signum).name)
            self.stop()
            return

    async def _watchdog(self) -> None:
        """Ping systemd from the event loop itself: a stalled loop stops the pings."""
        interval = (self.notifier.watchdog_s or 0) / 2 or WATCHDOG_MAX_PING_S
        interval = min(max(interval, WATCHDOG_MIN_PING_S), WATCHDOG_MAX_PING_S)
        last_status = ""
        while True:
            line = self.status_line()
            fields = {"WATCHDOG": "1"} if self.notifier.watchdog_s else {}
            if line != last_status:
                fields["STATUS"] = last_status = line
            if fields or self.notifier.owed:  # a dropped READY=1 must not wait for a change
                self.notifier.notify(**fields)
            await anyio.sleep(interval)

    async def _prune_action_log(self, store: Store) -> None:
        """Keep the action log (and the state dir) bounded: finished actions go
        `store.action_log_days` after their deadline (see Store.prune_actions), a batch at a
        time so that a large first prune does not stall the loop."""
        days = self.config.store.action_log_days
        while True:
            try:
                cutoff = iso(utcnow() - timedelta(days=days))
            except OverflowError:  # a clock within `days` of year 1 (a reset RTC): skip a turn
                await anyio.sleep(PRUNE_EVERY_S)
                continue
            pruned = 0
            while True:
                n = store.prune_actions(cutoff)
                pruned += n
                if n < PRUNE_BATCH:
                    break
                await anyio.lowlevel.checkpoint()
            if pruned:
                log.info("store.actions_pruned", count=pruned, deadline_before=cutoff)
            await anyio.sleep(PRUNE_EVERY_S)

    async def _watch_disk(self) -> None:
        """Warn of a filling disk even when nobody reads /status or /metrics."""
        while True:
            self.disk.check()
            await anyio.sleep(CHECK_EVERY_S)

    # ------------------------------------------------------------------ flows

    def _on_status(self, update: StatusUpdate) -> int:
        assert self.registry is not None
        seq = self.registry.upstream.action_status(update)
        if self.metrics is not None:
            self.metrics.observe_status(update)
        for listener in self.status_listeners:
            listener(update)
        return seq

    def _on_action_request(self, request: ActionRequest) -> None:
        """From the cloud: runs once the cloud has acked its gateway_received report."""
        assert self.dispatcher is not None
        self.dispatcher.submit(request, handoff=True)

    def submit(self, request: ActionRequest) -> bool:
        """Hand an action request to the dispatcher (the tunnel and tests use this)."""
        assert self.dispatcher is not None
        return self.dispatcher.submit(request)

    def hello(self) -> dict[str, Any]:
        return {
            "software_version": __version__,
            "hardware": os.uname().machine,
            "drivers": self.config.enabled_drivers(),
        }

    # ------------------------------------------------------------------ introspection

    def driver_health(self) -> dict[str, DriverHealth]:
        out = {
            name: DriverHealth(DriverState.DOWN, "?", error)
            for name, error in self._unavailable.items()
        }
        if self.registry is None:
            return out
        for name, driver in self.registry.drivers.items():
            try:
                out[name] = driver.health()
            except Exception as exc:  # noqa: BLE001 - a status page must render regardless
                out[name] = DriverHealth(DriverState.DOWN, "?", f"health failed: {exc!r}")
        return out

    def status_line(self) -> str:
        """One human line for systemd's STATUS= and the top of the status page."""
        if self.store is None or self.registry is None or self.dispatcher is None:
            return "starting"
        ident = self.store.identity()
        who = f"claimed as {ident.gateway_id}" if ident.claimed else "unclaimed"
        tunnel = (
            "tunnel off"
            if self.tunnel is None
            else ("tunnel up" if self.tunnel.up else "tunnel down")
        )
        devices = self.registry.devices()
        n = len(devices)
        locks = f"{n} lock" + ("" if n == 1 else "s")
        offline = sum(1 for d in devices if not d.properties.online)
        down = [
            f"{name} ({_short(_shown(h.last_error) or '')})" if h.last_error else name
            for name, h in self.driver_health().items()
            if h.state == DriverState.DOWN
        ]
        parts = [who, tunnel, locks + (f" ({offline} offline)" if offline else "")]
        parts.append(f"{len(self.dispatcher.in_flight())} actions in flight")
        if down:
            parts.append("radio down: " + ", ".join(down))
        if self.store.last_error:
            parts.append("store error")
        if self.disk.low and self.disk.free is not None:
            parts.append(f"disk low ({describe_bytes(self.disk.free)} free)")
        if not self.reserve.in_place:
            parts.append("no space reserve")
        if self.store.recovery is not None:
            parts.append("store rebuilt after damage")
        return ", ".join(parts)

    def snapshot(self) -> dict[str, Any]:
        """Everything /status shows. Never a PIN or a credential."""
        store, registry, dispatcher = self.store, self.registry, self.dispatcher
        assert store is not None
        assert registry is not None
        assert dispatcher is not None
        ident = store.identity()
        disk_free = self.disk.check()  # before the status line, which shows it when low
        devices = []
        for device in registry.devices():
            body = device_dict(device)
            body["driver"] = registry.driver_of(device.id)
            last = registry.last_event.get(device.id)
            body["last_event"] = last.to_dict() if last else None
            devices.append(body)
        return {
            "gateway": {
                "id": ident.gateway_id,
                "name": self.config.gateway.name,
                "claimed": ident.claimed,
                "registration_token": None if ident.claimed else ident.registration_token,
                "version": __version__,
                "uptime_s": round(time.monotonic() - self.started_at, 1),
                "ready": self.ready,
                "status_line": self.status_line(),
                "now": utcnow().isoformat(),
            },
            "tunnel": self._tunnel_snapshot(),
            "store": {
                "last_error": _shown(store.last_error),
                "outbox_backlog": store.outbox_backlog(),
                "outbox_oldest_age_s": round(store.outbox_oldest_age_s(), 1),
                "acked_seq": store.acked_seq,
                # the store was found damaged this run and rebuilt (gatewayd.salvage)
                "recovered": None if store.recovery is None else store.recovery.to_dict(),
                # the file system holding the state dir; None when it cannot be read
                "disk_free_bytes": disk_free,
                "disk_low": self.disk.low,
                # the space a full disk gives the store's commits (gatewayd.disk.Reserve)
                "disk_reserve": self.reserve.in_place,
            },
            "drivers": {
                name: {
                    "state": str(h.state),
                    "radio": h.radio,
                    "last_error": _shown(h.last_error),
                    **dict(h.details),
                }
                for name, h in self.driver_health().items()
            },
            "devices": devices,
            "actions": {
                "in_flight": dispatcher.in_flight(),
                "queued": dispatcher.queued(),
                "recent": dispatcher.recent_snapshots(20),
                "counts": {str(k): v for k, v in dispatcher.counts.items()},
            },
        }

    def _tunnel_snapshot(self) -> dict[str, Any]:
        if self.tunnel is None:
            return {"state": "off"}
        snapshot = self.tunnel.snapshot()
        if isinstance(snapshot.get("last_error"), str):
            snapshot["last_error"] = _shown(snapshot["last_error"])
        return snapshot
