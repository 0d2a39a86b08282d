"""ZWaveDriver: door locks behind a zwave-js-server, through zwave-js-server-python.

The connection runs in a task started with `ctx.spawn`: connect, wait for driver ready and the
node interviews, then follow events until the websocket drops; reconnect with full-jitter
backoff and re-sync devices without repeating events. Every zwave_js_server object stays in
this package; the core sees only `Device`, `DoorEvent` and `GatewayError`.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from typing import Any, Final, cast

import aiohttp
import anyio
import structlog
from msgspec.structs import replace
from zwave_js_server.client import Client
from zwave_js_server.const import CommandClass, InclusionState, InclusionStrategy, NodeStatus
from zwave_js_server.model.node import Node
from zwave_js_server.model.notification import NotificationNotification
from zwave_js_server.model.value import Value

from drivers.zwave import commands
from drivers.zwave.events import (
    LATE_NOTICE_S,
    LOW_BATTERY,
    BoltTracker,
    Notice,
    bolt_from_mode,
    parse_alarm_v1,
    parse_notification,
    parse_state_value,
)
from drivers.zwave.inclusion import Inclusion
from drivers.zwave.uncompressed import UncompressedSession
from gatewayd.confirmed_codes import ConfirmedCodes, LateSets, code_digest, same_code
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
    ZWaveConfig,
)
from gatewayd.model import (
    DEVICE_ACTIONS,
    Action,
    ActionName,
    ActionNotSupported,
    ActionResult,
    ActionTimeout,
    ClearCode,
    CodeConstraints,
    CodeNotConfirmed,
    Device,
    DeviceError,
    DeviceNotFound,
    DeviceProperties,
    DoorEvent,
    DuplicateCode,
    EventName,
    GatewayError,
    InvalidInput,
    Lock,
    Method,
    SetCode,
    Unlock,
    utcnow,
)

log = structlog.get_logger(__name__)

_SIM_ACTIONS: Mapping[Simulation, str] = {
    Simulation.KEYPAD_UNLOCK: "keypad_unlock",
    Simulation.KEYPAD_LOCK: "keypad_lock",
    Simulation.MANUAL_LOCK: "manual_lock",
    Simulation.MANUAL_UNLOCK: "manual_unlock",
    Simulation.WRONG_CODE: "wrong_code",
    Simulation.JAM: "jam",
    Simulation.BATTERY: "battery",
    Simulation.OFFLINE: "offline",
    Simulation.ONLINE: "online",
    Simulation.DOOR_OPEN: "door_open",
    Simulation.DOOR_CLOSE: "door_close",
    Simulation.TAMPER: "tamper",
    Simulation.FAULT: "fault",
}


BOLT_READ_RETRY_S: Final = 0.5  # between the bolt reads of a late-looking word (see _read_bolt)
OWN_ECHO_S: Final = 10.0  # how late a lock's code notification for our own change may come
REFUSAL_WAIT_S: Final = 1.0  # how long a code the lock did not store may wait for its reason
# stop() returns within STOP_TIMEOUT_S, below the daemon's DRIVER_STOP_TIMEOUT_S: its waits are
# shielded (it may be called from a cancelled scope), so the daemon's limit cannot cut them.
STOP_TIMEOUT_S: Final = 1.0
STOP_WINDOW_S: Final = 1.0  # for an open pairing window's stop, on the way out
CLOSE_TIMEOUT_S: Final = 0.5  # a websocket close that zwave-server does not answer is cut then
# the Alarm CC v1 fields of a lock's Notification CC values, as (variable, key) in `_Lock.states`
_ALARM_V1_KEYS: Final = (("alarmType", None), ("alarmLevel", None))


@dataclass(slots=True)
class _Lock:
    """Driver-side state of one lock node (mutable, internal)."""

    node_id: int
    native_id: str
    device_id: str
    tracker: BoltTracker
    device: Device | None = None
    online: bool = True
    jammed: bool = False
    door_open: bool | None = None
    door_changes: int = 0  # door changes heard (see `_resync`)
    battery_level: float | None = None
    battery_low: bool = False
    masked: bool = False
    # the lock's count of users as zwave-js holds it (None: not read yet, or zwave-js has not)
    users: int | None = None
    last_seen: Any = None
    removed: bool = False  # its node left the network ("node removed"): its waits end
    code_waiters: dict[int, asyncio.Future[bool]] = field(default_factory=dict)
    # the set_code in flight: resolved when the lock says it refused the code as a duplicate
    code_refusal: asyncio.Future[None] | None = None
    # until when (time.monotonic) the "duplicate code" notice of each set that failed before
    # the lock said why may still come: the reason for that set, not the answer to the next
    late_refusals: list[float] = field(default_factory=list)
    # our own sets and clears whose "user code added/deleted" notification may still come: it
    # is the lock confirming them
    own_codes: list[_Echo] = field(default_factory=list)
    # slots whose last set (or clear) failed for want of the lock's "user code added" (or
    # "deleted"), which may come late
    late_sets: LateSets = field(default_factory=lambda: LateSets(OWN_ECHO_S))
    # the code we last wrote and saw confirmed in each slot, on a lock that masks codes (its
    # read-back cannot show it); forgotten when anything else may have changed the slot
    confirmed: ConfirmedCodes = field(default_factory=ConfirmedCodes)
    # the Notification CC state values (jam, cover, door...) as last seen, by (variable, key):
    # one that zwave-server took while the link was down differs from it after the reconnect
    states: dict[tuple[Any, Any], Any] = field(default_factory=dict)

    def expect_echo(self, slot: int, present: bool) -> _Echo:
        now = time.monotonic()
        # expired ones go here too: a lock that sends no code notifications (nothing else would
        # prune them) must not keep one entry per code change it ever made
        self.own_codes = [own for own in self.own_codes if own.until >= now]
        echo = _Echo(slot, present, now + OWN_ECHO_S)
        self.own_codes.append(echo)
        return echo

    def drop_echo(self, echo: _Echo) -> None:
        """Our change failed: the lock's word of it is no echo to swallow any more."""
        if echo in self.own_codes:
            self.own_codes.remove(echo)

    def refusal_may_come(self) -> None:
        """A set failed before the lock said why: its "duplicate code" notice may still come."""
        now = time.monotonic()
        # expired ones go here too: a lock that never says why (nothing else would prune them)
        # must not keep one entry per set it failed
        self.late_refusals = [until for until in self.late_refusals if until >= now]
        self.late_refusals.append(now + OWN_ECHO_S)

    def late_refusal(self) -> bool:
        """Whether a "duplicate code" notice is the late one of a failed set (used up if so)."""
        now = time.monotonic()
        self.late_refusals = [until for until in self.late_refusals if until >= now]
        if self.late_refusals:
            del self.late_refusals[0]
            return True
        return False

    def is_own_echo(self, slot: int, present: bool) -> bool:
        """Whether a code notification is the echo of our own change (used up if so)."""
        now = time.monotonic()
        self.own_codes = [own for own in self.own_codes if own.until >= now]
        for own in self.own_codes:
            if own.slot == slot and own.present == present:
                self.own_codes.remove(own)
                own.heard = True
                return True
        return False


def _said_added(waiter: asyncio.Future[bool]) -> bool:
    """Whether the lock said "user code added" for the slot a set waits on."""
    return waiter.done() and not waiter.cancelled() and waiter.result()


@dataclass(eq=False, slots=True)
class _Echo:
    """Our own change of a slot, whose notification the lock may still send."""

    slot: int
    present: bool  # "user code added" (True) or "deleted"
    until: float  # on time.monotonic
    heard: bool = False  # the lock said it (the entry is gone from `own_codes` then)


@dataclass(frozen=True, slots=True)
class _Recheck:
    due: float
    device_id: str
    slot: int
    digest: bytes  # of the code the slot should still hold


class _Disconnected(Exception):
    """The websocket to zwave-server closed."""


class _AttachOnReady(asyncio.Event):
    """The event Client.listen sets once it has built its driver model from zwave-server's
    state dump: `attach` runs then, in the listen task, before the client dispatches anything
    that came behind the dump (it reads on without yielding while data is buffered, and events
    that came while it parsed the dump are). Attached after `wait()`, they had no listener."""

    def __init__(self, attach: Callable[[], None]) -> None:
        super().__init__()
        self._attach = attach

    def set(self) -> None:
        if not self.is_set():
            self._attach()
        super().set()


class _Restarted(Exception):
    """zwave-js restarted inside zwave-server: the client's controller and nodes are stale."""

    def __init__(self) -> None:
        super().__init__("zwave-js restarted inside zwave-server")


class ZWaveDriver(Driver):
    """Door locks on a Z-Wave network run by zwave-js-server."""

    name = "zwave"

    def __init__(self, config: ZWaveConfig, ctx: DriverContext) -> None:
        self._config = config
        self._ctx = ctx
        self._sink: DriverSink | None = None
        self._http: aiohttp.ClientSession | None = None
        self._client: Client | None = None
        self._home_id: int | None = None
        self._locks: dict[int, _Lock] = {}  # node id -> lock
        self._unsubs: list[Callable[[], None]] = []  # the controller's listeners
        # each node's listeners, dropped with the node: a link up for months would otherwise
        # keep them (and the Node objects) for every node ever included
        self._node_unsubs: dict[int, list[Callable[[], None]]] = {}
        self._state = DriverState.STARTING
        self._last_error: str | None = None
        self._reconnects = 0
        # `_resync`s run to their end: a report sent before the start-up one is done may be
        # overtaken by its read, so tests that send raw reports wait for it
        self.resyncs = 0
        self._settled = anyio.Event()
        self._scopes: list[anyio.CancelScope] = []
        # the connection's task group, while connected: bolt reads that end with the link
        self._linked: anyio.abc.TaskGroup | None = None
        self._run_done = anyio.Event()
        self._rechecks: asyncio.Queue[_Recheck] = asyncio.Queue()
        # the newest re-check of each (device, slot): a later set/clear supersedes an earlier one
        self._latest_recheck: dict[tuple[str, int], _Recheck] = {}
        self._server_version: str | None = None
        self._client_generation = 0
        self._inclusion = Inclusion()  # the answers to S2 bootstrapping's questions
        # the inclusion/exclusion window opened last: (its number, inclusion?). A window's timer
        # closes only its own window: a pair_devices opened after another is not cut short by
        # the first one's timer, and one opened while another is open replaces it.
        self._window: tuple[int, bool] | None = None
        self._windows_opened = 0
        # a window whose time is up but whose stop zwave-server did not take (inclusion?): it
        # keeps a window open when its client goes away, so the stop goes on the next connect
        self._unclosed: bool | None = None
        # node id -> native id of each node with Door Lock CC that joined without security
        self._insecure: dict[int, str] = {}
        commands.install_log_filter()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sink: DriverSink) -> None:
        self._sink = sink
        self._state = DriverState.STARTING
        self._settled = anyio.Event()
        self._scopes = []
        self._client_generation = 0
        self._rechecks = asyncio.Queue()
        self._latest_recheck = {}
        self._run_done = anyio.Event()
        self._http = aiohttp.ClientSession()
        self._ctx.spawn("zwave.connection", self._run)
        self._ctx.spawn("zwave.code_recheck", self._recheck_worker)
        # Wait for the first connection and interviews, or the first failure; never raise.
        with anyio.move_on_after(self._config.connect_timeout_s + self._config.interview_timeout_s):
            await self._settled.wait()

    async def stop(self) -> None:
        if self._state is DriverState.STOPPED:
            return
        self._state = DriverState.STOPPED
        if self._window is not None:
            # zwave-server keeps a window open when its client goes: the controller would go
            # on including (or excluding) whatever asks, with no end, after we are gone
            self._unclosed = self._take_window()
            with anyio.move_on_after(STOP_WINDOW_S, shield=True):
                await self._close_unclosed()
        for scope in self._scopes:
            scope.cancel()
        for lock in self._locks.values():
            lock.tracker.close()
        self._detach()
        self._locks.clear()
        with anyio.move_on_after(STOP_TIMEOUT_S, shield=True) as bound:
            try:
                # the connection task closes its websocket within CLOSE_TIMEOUT_S
                await self._run_done.wait()
                if self._client is not None:  # it did not get to
                    await self._client.disconnect()
            finally:
                if self._http is not None:
                    http, self._http = self._http, None
                    await http.close()  # its sockets close at once, even when cut short here
        if bound.cancelled_caught:
            log.warning("zwave.stop_timeout", timeout_s=STOP_TIMEOUT_S)
        log.info("zwave.stopped")

    def devices(self) -> Sequence[Device]:
        return [lk.device for lk in self._locks.values() if lk.device is not None]

    def inventory(self) -> Inventory | None:
        """The controller's network, once every lock on it has been reported: only then may the
        core remove a stored Z-Wave device of that network as gone (a wrong removal gives a lock
        a new id). Locks of another home id (zwave-server pointed at another stick) are kept."""
        # Safe because nothing is assumed about a node we could not classify. Connected means
        # _attach ran, which happens only after zwave-server's start_listening state dump: the
        # controller's whole node list. A ready node has its interview done (in this run or
        # restored complete from zwave-js's cache), so its command classes and values are known:
        # a lock among them must already be in _locks with its device reported through the sink.
        # A node not ready (interview running or failed, dead since zwave-server started)
        # might be a lock we never reported: then there is no inventory and nothing is removed.
        client = self._client
        if self._state is not DriverState.READY or client is None or client.driver is None:
            return None
        controller = client.driver.controller
        if controller.home_id is None:
            return None
        for node in controller.nodes.values():
            if node.is_controller_node:
                continue
            if not node.ready:
                return None
            lock = self._locks.get(node.node_id)
            if (_is_lock(node) or _has_door_lock(node)) and (lock is None or lock.device is None):
                return None
        # _attach dropped the locks of any network before this one: every lock is of this home
        home = _home(controller.home_id)
        return Inventory(prefix=f"{home}-", network=home)

    def health(self) -> DriverHealth:
        state = self._state
        dead = sorted(lk.native_id for lk in self._locks.values() if not lk.online)
        if state is DriverState.READY and dead:
            state = DriverState.DEGRADED
        details: dict[str, Any] = {
            "url": self._config.url,
            "reconnects": self._reconnects,
            "locks": len(self.devices()),
            "offline": dead,
        }
        if self._insecure:  # see _note_security
            details["without_security"] = sorted(self._insecure.values())
        if self._home_id is not None:
            details["home_id"] = _home(self._home_id)
        if self._server_version:
            details["server_version"] = self._server_version
        return DriverHealth(state, "zwave", self._last_error, details)

    # ------------------------------------------------------------------ connection

    async def _run(self) -> None:
        attempt = 0
        done = self._run_done
        try:
            with anyio.CancelScope() as scope:
                self._scopes.append(scope)
                while self._state is not DriverState.STOPPED:
                    connected_at = time.monotonic()
                    try:
                        await self._session()
                    except Exception as exc:  # noqa: BLE001 - every failure means: retry later
                        self._down(exc)
                    if time.monotonic() - connected_at > 10:
                        attempt = 0
                    delay = random.uniform(0, min(self._config.reconnect_max_s, 0.5 * 2**attempt))  # noqa: S311
                    attempt += 1
                    self._reconnects += 1
                    log.info("zwave.reconnect_scheduled", delay_s=round(delay, 2), attempt=attempt)
                    await anyio.sleep(delay)
        finally:
            # also when cancelled from outside: the daemon cancels its task group before stop()
            done.set()

    def _down(self, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, _Disconnected):
            text = "connection to zwave-server closed"
        self._last_error = f"{type(exc).__name__}: {text}"
        if self._state is not DriverState.STOPPED:
            self._state = DriverState.DOWN
        self._settled.set()
        log.warning("zwave.down", url=self._config.url, error=self._last_error)

    async def _session(self) -> None:
        assert self._http is not None
        # The Client only asks its session for ws_connect (drivers/zwave/uncompressed.py).
        uncompressed = UncompressedSession(self._http, self._config.heartbeat_s)
        session = cast(aiohttp.ClientSession, uncompressed)
        client = Client(self._config.url, session)
        try:
            with anyio.fail_after(self._config.connect_timeout_s):
                await client.connect()
        except BaseException:
            # the websocket may be open (zwave-server took the upgrade, then sent nothing):
            # left open, each attempt against a hung zwave-server would keep its socket
            await _disconnect(client)
            raise
        failure: list[BaseException] = []
        first = self._client_generation == 0
        try:
            async with anyio.create_task_group() as tg:
                self._linked = tg

                def attach() -> None:
                    self._client_generation += 1
                    self._attach(client)
                    assert client.driver is not None
                    self._unsubs.append(client.driver.on("driver ready", restarted))

                def restarted(_event: dict[str, Any]) -> None:
                    # zwave-js was restarted in zwave-server (a soft reset and restart, its own
                    # recovery of a stuck controller, a hard reset) with the link up: its nodes
                    # and controller are new, and the client's copy of them is never refreshed.
                    # Connecting again loads them anew, as after a restart of zwave-server.
                    failure.append(_Restarted())
                    tg.cancel_scope.cancel()

                ready = _AttachOnReady(attach)

                async def listen() -> None:
                    try:
                        await client.listen(ready)
                    except Exception as exc:  # noqa: BLE001 - reported by the loop
                        failure.append(exc)
                    tg.cancel_scope.cancel()

                tg.start_soon(listen)
                with anyio.fail_after(self._config.connect_timeout_s):
                    await ready.wait()
                with anyio.move_on_after(self._config.connect_timeout_s):  # tried again next time
                    await self._close_unclosed(only_if_open=True)
                await self._resync(first=first)
                await anyio.sleep_forever()
        finally:
            self._linked = None
            self._detach()
            self._client = None
            await _disconnect(client)
        raise failure[0] if failure else _Disconnected()

    def _attach(self, client: Client) -> None:
        assert client.driver is not None
        self._client = client
        controller = client.driver.controller
        if self._home_id is not None and controller.home_id != self._home_id:
            self._leave_network(controller.home_id)
        else:
            self._drop_removed_nodes(controller.nodes)
        self._home_id = controller.home_id
        for lock in self._locks.values():  # before _on_ready replays what came while away
            lock.late_sets.reconnected()
        self._server_version = client.version.server_version if client.version else None
        self._state = DriverState.READY
        self._last_error = None
        log.info("zwave.connected", url=self._config.url, nodes=len(controller.nodes))
        self._unsubs.append(controller.on("node added", self._on_node_added))
        self._unsubs.append(controller.on("node removed", self._on_node_removed))
        self._unsubs.append(controller.on("grant security classes", self._on_grant_request))
        self._unsubs.append(controller.on("validate dsk and enter pin", self._on_pin_request))
        self._unsubs.append(controller.on("inclusion aborted", self._on_inclusion_aborted))
        for node in controller.nodes.values():
            self._watch(node)
        self._check_settled()

    async def _resync(self, *, first: bool) -> None:
        """Read each lock's bolt and door state from the device: the cache may be stale."""
        for lock in list(self._locks.values()):
            node = self._node_or_none(lock)
            if node is None or node.status == NodeStatus.DEAD:
                continue
            mark, door_mark = lock.tracker.read_mark(), lock.door_changes
            try:
                report = await _read_door_lock(node, self._config.connect_timeout_s)
            except (TimeoutError, GatewayError) as exc:
                log.warning("zwave.resync_failed", node_id=lock.node_id, error=str(exc))
                continue
            if not report:
                continue
            # as for the bolt: a door change heard while the read was under way is as new as
            # the read, which would show the door in the state it left; and a state other than
            # the known one is a move (the answer may be its report, its event not in yet), at
            # start too: only a door never known is taken in silently
            if lock.door_changes == door_mark:
                self._door(lock, report.get("doorStatus"), silent=first and lock.door_open is None)
            locked = bolt_from_mode(report.get("currentMode"))
            if locked is None:
                continue
            lock.tracker.on_read(locked, mark, first=first)
            if first:
                self._publish(lock)
        self.resyncs += 1

    def _leave_network(self, home_id: int | None) -> None:
        """zwave-server now runs another controller: its node ids name other doors, so the
        locks of the network we knew go offline here and out of reach of its nodes."""
        log.warning(
            "zwave.network_changed",
            url=self._config.url,
            home_id=None if home_id is None else _home(home_id),
            previous_home_id=None if self._home_id is None else _home(self._home_id),
            locks_offline=len(self._locks),
        )
        for lock in self._locks.values():
            lock.tracker.close()
            if lock.online:
                lock.online = False
                self._emit(lock.device_id, EventName.DEVICE_DISCONNECTED, {})
            if lock.device is not None and self._sink is not None:
                props = replace(lock.device.properties, online=False)
                self._sink.device_updated(replace(lock.device, properties=props))
        self._locks.clear()
        self._insecure.clear()

    def _drop_removed_nodes(self, nodes: Mapping[int, Node]) -> None:
        """Locks whose node left the network while the link to zwave-server was down (excluded
        or removed as failed through another client): no "node removed" came for them, and the
        controller's node list, complete once connected (see inventory), no longer has them."""
        for node_id in [node_id for node_id in self._insecure if node_id not in nodes]:
            del self._insecure[node_id]
        for node_id in [node_id for node_id in self._locks if node_id not in nodes]:
            lock = self._locks.pop(node_id)
            lock.tracker.close()
            log.info("zwave.node_removed", node_id=node_id, while_disconnected=True)
            if self._sink is not None:
                self._sink.device_removed(lock.device_id)

    def _detach(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs.clear()
        for node_id in list(self._node_unsubs):
            self._unwatch(node_id)
        for lock in self._locks.values():
            for fut in lock.code_waiters.values():
                fut.cancel()
            lock.code_waiters.clear()
            lock.confirmed.forget_all()  # a keypad change may come while the link is down, unheard

    def _check_settled(self) -> None:
        client = self._client
        if client is None or client.driver is None:
            return
        nodes = client.driver.controller.nodes.values()
        if all(n.is_controller_node or (n.ready and self._published(n)) for n in nodes):
            self._settled.set()

    def _published(self, node: Node) -> bool:
        """Whether a ready node is no lock, or a lock already published: that is done once its
        count of users is read (_learn_users)."""
        lock = self._locks.get(node.node_id)
        return not _is_lock(node) or (lock is not None and lock.device is not None)

    # ------------------------------------------------------------------ nodes

    def _watch(self, node: Node) -> None:
        nid = node.node_id
        self._unwatch(nid)  # a node id added again: its old Node's listeners go
        self._node_unsubs[nid] = [
            node.on("ready", lambda _e: self._on_ready(node)),
            node.on("value updated", lambda e: self._on_value(nid, e["value"])),
            # a value seen for the first time (e.g. the first door-open notification) is "added"
            node.on("value added", lambda e: self._on_value(nid, e["value"])),
            # a late interview's slots (the count of users read at last) come as metadata
            node.on("metadata updated", lambda e: self._on_user_code(nid, e["value"])),
            node.on("notification", lambda e: self._on_notification(nid, e)),
            node.on("dead", lambda _e: self._on_status(nid, online=False)),
            node.on("alive", lambda _e: self._on_status(nid, online=True)),
            node.on("sleep", lambda _e: self._on_status(nid, online=True)),
        ]
        if node.ready:
            self._on_ready(node)
        else:
            self._note_security(node)  # one that joined insecure may never finish its interview

    def _on_node_added(self, event: dict[str, Any]) -> None:
        node: Node = event["node"]
        self._inclusion.node_added(node.node_id, event.get("result") or {})
        self._watch(node)

    def _unwatch(self, node_id: int) -> None:
        for unsub in self._node_unsubs.pop(node_id, ()):
            unsub()

    def _on_node_removed(self, event: dict[str, Any]) -> None:
        node: Node = event["node"]
        self._unwatch(node.node_id)
        self._insecure.pop(node.node_id, None)
        lock = self._locks.pop(node.node_id, None)
        log.info("zwave.node_removed", node_id=node.node_id)
        if lock is not None:
            # a set waiting for the lock's word ends now, not after code_confirm_s
            lock.removed = True
            for fut in lock.code_waiters.values():
                fut.cancel()
        if lock is not None and self._sink is not None:
            lock.tracker.close()
            self._sink.device_removed(lock.device_id)

    def _on_ready(self, node: Node) -> None:
        self._note_security(node)
        if not _is_lock(node):
            self._check_settled()
            return
        assert self._sink is not None
        assert self._home_id is not None
        native_id = _native_id(self._home_id, node.node_id)
        lock = self._locks.get(node.node_id)
        new = lock is None
        if lock is None:
            device_id = self._sink.device_id(native_id)
            lock = _Lock(node.node_id, native_id, device_id, tracker=self._tracker(device_id))
            self._locks[node.node_id] = lock
            lock.tracker.seed(_locked(node))
        else:
            # After a reconnect: a real change while we were away is one event, not a repeat.
            now = _locked(node)
            if now is not None:
                lock.tracker.on_value(now)
        level = _value(node, CommandClass.BATTERY, "level")
        if isinstance(level, int):
            lock.battery_level = level / 100
            if new:
                lock.battery_low = lock.battery_level < LOW_BATTERY
            else:  # a report zwave-server took while we were away: reported as it would have been
                self._battery(lock, lock.battery_level < LOW_BATTERY)
        if new:
            # After a reconnect the cached doorStatus may be older than a door notification we
            # saw: _resync reads the lock itself instead.
            self._door(lock, _value(node, CommandClass.DOOR_LOCK, "doorStatus"), silent=True)
        states = _notification_states(node)
        if not new:
            self._states_while_away(lock, states)
        lock.states = states
        online = node.status != NodeStatus.DEAD
        if not new and online != lock.online:
            self._on_status(node.node_id, online=online)
        lock.online = online
        if _has_cc(node, CommandClass.USER_CODE) and self._linked is not None:
            # a new lock is published once its count of users is read: before, it would show
            # no slot maximum, then its slots
            if lock.device is not None:
                self._publish(lock, node)
            self._linked.start_soon(self._learn_users, lock, node)
        else:
            self._publish(lock, node, added=lock.device is None)
        log.info("zwave.node_ready", node_id=node.node_id, native_id=native_id, new=new)
        self._check_settled()

    def _states_while_away(self, lock: _Lock, states: Mapping[tuple[Any, Any], Any]) -> None:
        """Notification states zwave-server took while the link was down (a jam, a tamper):
        each reported as it would have been, as zwave-js sends no "value updated" for them on
        a reconnect. A jam the lock cleared meanwhile (a bolt operation idles "Lock state")
        is no longer shown."""
        reported: set[str] = set()
        for (variable, key), value in states.items():
            if value == lock.states.get((variable, key)):
                continue
            notice = parse_state_value(variable, key, value)
            if notice is not None:
                reported.add(notice.kind)
                self._apply(lock, notice)
            elif (variable, key) == ("Access Control", "Lock state") and lock.jammed:
                lock.jammed = False
                self._publish(lock)
        if any(states.get(key) != lock.states.get(key) for key in _ALARM_V1_KEYS):
            self._alarm_while_away(lock, states.get(_ALARM_V1_KEYS[1]), reported)

    def _alarm_while_away(self, lock: _Lock, level: Any, reported: set[str]) -> None:
        """The last Alarm CC v1 report zwave-server took while the link was down, of a lock that
        says its events only so: reported as when the link is up (a jam, a low battery, a code
        added or deleted at the keypad, a wrong code), even one zwave-js maps to a notification
        (that went to no one). A bolt operation names the method (and slot) of the bolt change
        zwave-server's values show, if it moved the bolt that way; otherwise it is older than
        the bolt's state (or the change is left to the bolt read) and names nothing, but still
        ends a jam. zwave-server keeps only the last alarm: of several while away, the others
        are lost, and one equal to the last alarm heard before the drop is taken for it. A
        mapped alarm of a state (a jam) zwave-js also kept as its value, reported just before
        (`reported`, the kinds reported so): the same alarm, not a second one."""
        notice = self._alarm_v1_notice(lock, level, mapped=True)
        if notice is None or notice.kind in reported:
            return
        if notice.kind != "bolt" or lock.tracker.unnamed_move == notice.locked:
            self._apply(lock, notice)
        elif lock.jammed:
            lock.jammed = False
            self._publish(lock)

    def _note_security(self, node: Node) -> None:
        """A lock zwave-js knows joined without security (paired elsewhere, or before S2
        inclusion was answered here): most locks answer Door Lock and User Code only encrypted,
        so it shows no bolt and takes no command, and nothing else would say why. Said once a
        run (again after it is included anew), and listed on /status."""
        if node.is_secure is not False or not _has_door_lock(node) or self._home_id is None:
            self._insecure.pop(node.node_id, None)
            return
        native_id = _native_id(self._home_id, node.node_id)
        if node.node_id not in self._insecure:
            log.warning(
                "zwave.lock_without_security",
                node_id=node.node_id,
                native_id=native_id,
                hint="most locks then refuse commands: exclude it and pair it again, with"
                " dsk_pin for S2",
            )
        self._insecure[node.node_id] = native_id

    def _tracker(self, device_id: str) -> BoltTracker:
        def emit(name: EventName, details: dict[str, Any]) -> None:
            self._emit(device_id, name, details)

        def changed() -> None:
            lock = self._lock_by_device(device_id)
            if lock is not None:
                self._publish(lock)

        def verify() -> None:
            lock = self._lock_by_device(device_id)
            if lock is not None and self._linked is not None:
                self._linked.start_soon(self._read_bolt, lock)

        return BoltTracker(emit, self._config.event_merge_s, changed, verify)

    async def _read_bolt(self, lock: _Lock) -> None:
        """Read one lock's bolt for its tracker: a notification it cannot place alone, late for
        a move turned back or a new move (a keypad unlock). A lock that does not answer is asked
        again within the late window; if none answers, the tracker reports the word all the
        same (a possible duplicate rather than a lost unlock)."""
        mark = lock.tracker.read_mark()
        with anyio.move_on_after(LATE_NOTICE_S):
            while (node := self._node_or_none(lock)) is not None:
                try:
                    report = await _read_door_lock(node, self._config.command_timeout_s)
                except (TimeoutError, GatewayError) as exc:
                    log.warning("zwave.bolt_read_failed", node_id=lock.node_id, error=str(exc))
                else:
                    locked = bolt_from_mode(report.get("currentMode")) if report else None
                    if locked is not None:
                        lock.tracker.on_read(locked, mark, first=False)
                        return
                if lock.tracker.read_mark() != mark:
                    return  # the lock's own report came meanwhile and placed the word
                await anyio.sleep(BOLT_READ_RETRY_S)
            return  # the node left the network
        method = lock.tracker.on_unverified(mark)
        if method is not None:
            log.warning("zwave.late_word_unverified", node_id=lock.node_id, method=str(method))

    async def _learn_users(self, lock: _Lock, node: Node) -> None:
        """Read the lock's count of users from zwave-js, then publish it (added, if it is new).
        A read that fails keeps the count known before."""
        try:
            lock.users = await _read_users(node, self._config.connect_timeout_s)
        except (TimeoutError, GatewayError) as exc:
            log.warning("zwave.users_read_failed", node_id=lock.node_id, error=str(exc))
        if self._locks.get(lock.node_id) is lock:
            self._publish(lock, node, added=lock.device is None)
            self._check_settled()

    def _publish(self, lock: _Lock, node: Node | None = None, *, added: bool = False) -> None:
        node = node or self._node_or_none(lock)
        if node is None or self._sink is None:
            return
        if lock.device is None and not added:  # not added yet (its count of users is read first)
            return
        device = _device(lock, node)
        if added:
            lock.device = device
            self._sink.device_added(device)
        elif lock.device is None or _differs(device, lock.device):
            lock.device = device
            self._sink.device_updated(device)

    def _emit(self, device_id: str, name: EventName, details: dict[str, Any]) -> None:
        if self._sink is None:
            return
        log.info("zwave.door_event", device_id=device_id, event_name=str(name), **details)
        self._sink.door_event(DoorEvent(device_id, name, details))

    # ------------------------------------------------------------------ events

    def _on_value(self, node_id: int, value: Value) -> None:
        lock = self._locks.get(node_id)
        if lock is None:
            return
        lock.last_seen = utcnow()
        cc, prop = value.command_class, value.property_name
        if cc == CommandClass.DOOR_LOCK and prop == "currentMode":
            locked = bolt_from_mode(value.value)
            if locked is not None:
                lock.tracker.on_value(locked)
            else:
                if not lock.tracker.undefined:
                    mode = value.value if isinstance(value.value, int) else None
                    log.info("zwave.bolt_unknown", device_id=lock.device_id, mode=mode)
                lock.tracker.on_unknown()
        elif cc == CommandClass.DOOR_LOCK and prop == "doorStatus":
            self._door(lock, value.value)
        elif cc == CommandClass.BATTERY and prop == "level" and isinstance(value.value, int):
            lock.battery_level = value.value / 100
            self._battery(lock, lock.battery_level < LOW_BATTERY)
            self._publish(lock)
        elif cc == CommandClass.BATTERY and prop == "isLow" and value.value is True:
            self._battery(lock, True)
        elif cc == CommandClass.USER_CODE:
            self._on_user_code(node_id, value)
        elif cc == CommandClass.NOTIFICATION:
            if value.endpoint in (0, None):  # as _notification_states reads them
                lock.states[(prop, value.property_key)] = value.value
            if prop == "alarmLevel":  # zwave-js stores alarmType first
                self._on_alarm_v1(lock, value.value)
            notice = parse_state_value(prop, value.property_key, value.value)
            if notice is not None:
                self._apply(lock, notice)

    def _on_user_code(self, node_id: int, value: Value) -> None:
        """A slot zwave-js holds a value or metadata for, while the count of users is not known:
        zwave-js may have read it late (an interview that timed out, done later), and the cloud
        gets the slot range now, not at the lock's next update. A slot alone tells no count."""
        lock = self._locks.get(node_id)
        if (
            lock is None
            or lock.users is not None
            or lock.device is None
            or self._linked is None
            or value.command_class != CommandClass.USER_CODE
            or value.property_name != "userCode"
        ):
            return
        node = self._node_or_none(lock)
        if node is not None:
            self._linked.start_soon(self._learn_users, lock, node)

    def _on_alarm_v1(self, lock: _Lock, level: Any) -> None:
        notice = self._alarm_v1_notice(lock, level)
        if notice is not None:
            self._apply(lock, notice)

    def _alarm_v1_notice(self, lock: _Lock, level: Any, *, mapped: bool = False) -> Notice | None:
        """An Alarm CC v1 report of a Notification CC version 1 lock, unless zwave-js's device
        file maps it to a notification (which reports it), or `mapped` (one zwave-server took
        while the link was down: that notification went to no one). A later version's alarm
        fields come with the notification that says the same."""
        node = self._node_or_none(lock)
        if node is None or _cc_version(node, CommandClass.NOTIFICATION) != 1:
            return None
        alarm_type = _value(node, CommandClass.NOTIFICATION, "alarmType")
        if not mapped and _alarm_mapped(node, alarm_type, level):
            return None
        notice = parse_alarm_v1(alarm_type, level)
        return None if notice is None else self._in_slots(lock, notice)

    def _battery(self, lock: _Lock, low: bool) -> None:
        if low and not lock.battery_low:
            details: dict[str, Any] = {}
            if lock.battery_level is not None:
                details["battery_level"] = lock.battery_level
            self._emit(lock.device_id, EventName.LOW_BATTERY, details)
        lock.battery_low = low

    def _door(self, lock: _Lock, status: Any, *, silent: bool = False) -> None:
        """A door state ("open"/"closed", as Door Lock CC says it): one event per change."""
        if status not in ("open", "closed") or lock.door_open == (status == "open"):
            return
        lock.door_open = status == "open"
        lock.door_changes += 1
        if not silent:
            name = EventName.DOOR_OPENED if lock.door_open else EventName.DOOR_CLOSED
            self._emit(lock.device_id, name, {})
            self._publish(lock)

    def _on_notification(self, node_id: int, event: dict[str, Any]) -> None:
        lock = self._locks.get(node_id)
        notif = event.get("notification")
        if lock is None or not isinstance(notif, NotificationNotification):
            return
        lock.last_seen = utcnow()
        notice = parse_notification(notif.type_, notif.event, notif.parameters)
        if notice is not None:
            notice = self._in_slots(lock, notice)
        if notice is not None:
            self._apply(lock, notice)

    def _in_slots(self, lock: _Lock, notice: Notice) -> Notice | None:
        """A notification naming a user the lock has no slot for: a bolt change names no code,
        a code change is not reported."""
        codes = _codes(lock)
        if notice.slot_id is None or codes.has_slot(notice.slot_id):
            return notice
        if notice.kind == "bolt":
            method = Method.KEYPAD if notice.method is Method.PIN_CODE else notice.method
            return dataclass_replace(notice, slot_id=None, method=method)
        if notice.kind == "code":
            log.info("zwave.code_slot_ignored", device_id=lock.device_id, slot_id=notice.slot_id)
            return None
        if notice.kind == "invalid_code":
            return dataclass_replace(notice, slot_id=None)
        return notice

    def _apply(self, lock: _Lock, notice: Notice) -> None:
        did = lock.device_id
        if notice.kind == "bolt" and notice.locked is not None:
            if lock.jammed:
                lock.jammed = False
                self._publish(lock)
            lock.tracker.on_notification(notice.locked, notice.method, notice.slot_id)
        elif notice.kind == "jammed":
            lock.jammed = True
            self._emit(did, EventName.DOOR_JAMMED, {})
            self._publish(lock)
        elif notice.kind == "door" and notice.door_open is not None:
            self._door(lock, "open" if notice.door_open else "closed")
        elif notice.kind == "invalid_code":
            method = Method.KEYPAD if notice.method is Method.UNKNOWN else notice.method
            details: dict[str, Any] = {"method": str(method)}
            if notice.slot_id is not None:  # a code it holds, refused outside its schedule
                details["slot_id"] = notice.slot_id
            self._emit(did, EventName.KEYPAD_INVALID_CODE, details)
        elif notice.kind == "tampered":
            self._emit(did, EventName.TAMPERED, {})
        elif notice.kind == "battery_low":
            self._battery(lock, True)
        elif notice.kind == "code" and notice.slot_id is not None:
            waiter = lock.code_waiters.get(notice.slot_id)
            present = bool(notice.code_present)
            if lock.is_own_echo(notice.slot_id, present):
                # the late echo of an earlier set or clear of ours (a clear's "user code
                # deleted" after its read-back): never the answer to the write waiting now
                return
            if lock.late_sets.came(notice.slot_id, present):
                # a set or clear reported failed (the lock's word did not come in time) was
                # carried out
                self._carried_out(lock, notice.slot_id, present=present)
            elif waiter is not None and not waiter.done():
                waiter.set_result(present)
            else:
                lock.confirmed.forget(notice.slot_id)
                name = EventName.CODE_SET if notice.code_present else EventName.CODE_REMOVED
                self._emit(did, name, {"slot_id": notice.slot_id, "method": "keypad"})
        elif notice.kind == "codes_deleted":
            # every slot emptied at the lock: none holds a code we saw confirmed any more
            lock.confirmed.forget_all()
            log.warning("zwave.all_codes_deleted", device_id=did)
            # as the Zigbee driver says it: the cloud's list of codes on the lock is out of date
            self._emit(did, EventName.CODE_REMOVED, {"all_codes": True, "method": "keypad"})
        elif notice.kind == "code_duplicate":
            # One command in flight per lock; locks differ in which slot they name, if any.
            refusal = lock.code_refusal
            if lock.late_refusal():
                log.info("zwave.duplicate_code_late", device_id=did, slot_id=notice.slot_id)
            elif refusal is not None and not refusal.done():
                refusal.set_result(None)
            else:
                log.info("zwave.duplicate_code_refused", device_id=did, slot_id=notice.slot_id)

    def _on_status(self, node_id: int, *, online: bool) -> None:
        lock = self._locks.get(node_id)
        if lock is None or lock.online == online:
            return
        lock.online = online
        if not online:  # what its keypad does while it is out of reach is not heard here
            lock.confirmed.forget_all()
        log.info("zwave.node_status", node_id=node_id, online=online)
        name = EventName.DEVICE_CONNECTED if online else EventName.DEVICE_DISCONNECTED
        self._emit(lock.device_id, name, {})
        self._publish(lock)

    # ------------------------------------------------------------------ actions

    async def execute(self, device_id: str, action: Action) -> ActionResult:
        lock = self._lock_by_device(device_id)
        if lock is None:
            raise DeviceNotFound(f"no Z-Wave lock {device_id}")
        node = self._node(lock)
        await commands.reach(node)
        match action:
            case Lock() | Unlock():
                return await self._bolt(lock, node, isinstance(action, Lock))
            case SetCode(slot_id=slot, code=code):
                _codes(lock).check(slot, code)
                digits = code.reveal()
                # a re-check of the slot, due or under way, no longer counts (see _recheck)
                self._latest_recheck.pop((lock.device_id, slot), None)
                return await self._set_code(lock, node, slot, digits)
            case ClearCode(slot_id=slot):
                _codes(lock).check(slot)
                self._latest_recheck.pop((lock.device_id, slot), None)
                return await self._clear_code(lock, node, slot)
        raise ActionNotSupported(f"zwave cannot {action.name}")

    def hold_s(self, device_id: str, action: Action) -> float:
        lock = self._lock_by_device(device_id)
        return 0.0 if lock is None else lock.late_sets.hold_s(action)

    async def _bolt(self, lock: _Lock, node: Node, locked: bool) -> ActionResult:
        lock.tracker.begin_command()
        confirmed = False
        try:
            await commands.set_bolt(node, locked, self._config.command_timeout_s)
            confirmed = True
        finally:
            lock.tracker.end_command(confirmed=confirmed)
        lock.jammed = False
        lock.tracker.commanded(locked)
        self._publish(lock)
        return ActionResult({"locked": locked})

    async def _set_code(self, lock: _Lock, node: Node, slot: int, digits: str) -> ActionResult:
        await lock.late_sets.wait_out(slot)  # or a failed set's late word would confirm this one
        # The slot as the lock holds it now, so that a code it already holds is neither written
        # again nor reported as a change.
        digest = code_digest(digits)
        status, held = await commands.read_slot(node, slot)
        if status == commands.USER_ENABLED and same_code(held, digits):
            self._schedule_recheck(lock, slot, digest)
            log.info("zwave.code_already_set", device_id=lock.device_id, slot_id=slot)
            return ActionResult({"slot_id": slot})
        # A lock that masks codes cannot show which one it holds: the code is written again, and
        # reported unless we confirmed this very code there and heard of no change since.
        ours = lock.confirmed.take(slot, digest)
        unchanged = ours and status == commands.USER_ENABLED and commands.is_masked(held)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        refusal: asyncio.Future[None] = loop.create_future()
        lock.code_waiters[slot] = waiter
        lock.code_refusal = refusal
        stored = False
        try:
            try:
                written = await commands.write_code(node, slot, digits)
                if written:
                    status, read = await commands.read_slot(node, slot)
            except (commands.LinkLost, ActionTimeout, asyncio.CancelledError) as exc:
                if _said_added(waiter):
                    # the lock said "code added" while its read-back went unanswered: the set
                    # fails all the same, but the code is on the lock
                    self._carried_out(lock, slot, present=True)
                else:
                    # the Set may have reached the lock, or be carried out late (after the
                    # failure, the action's deadline, the reconnect): its "code added" is then
                    # the word of this failed set, not a change at the keypad
                    lock.late_sets.failed(slot, link_lost=isinstance(exc, commands.LinkLost))
                raise
            if not written:
                # the lock said so under Supervision: no read-back or notification to wait for,
                # only its reason, if it gives one (a PIN another slot holds)
                await self._await_refusal(refusal, slot)
                raise CodeNotConfirmed(f"slot {slot}: the lock refused the code (supervision fail)")
            if commands.is_masked(read):
                lock.masked = True
                try:
                    confirmed = await self._await_programming(lock, waiter, refusal, slot)
                except (CodeNotConfirmed, asyncio.CancelledError):  # no word yet, or the deadline
                    lock.late_sets.failed(slot)
                    raise
                if not confirmed or status != commands.USER_ENABLED:
                    raise CodeNotConfirmed(f"slot {slot}: the lock did not confirm the new code")
            elif status != commands.USER_ENABLED or not same_code(read, digits):
                await self._await_refusal(refusal, slot)
                if status == commands.USER_ENABLED:
                    raise CodeNotConfirmed(f"slot {slot}: the lock reads back a different code")
                if _said_added(waiter):
                    # it said "code added" all the same: it answered the read-back before it
                    # stored the code. The set fails, but the code is on the lock
                    self._carried_out(lock, slot, present=True)
                    raise CodeNotConfirmed(
                        f"slot {slot}: the lock said it stored the code, read back none"
                    )
                raise CodeNotConfirmed(
                    f"slot {slot}: the lock did not store the code and gave no reason"
                )
            stored = True
        finally:
            lock.code_waiters.pop(slot, None)
            lock.code_refusal = None
            if not stored and not refusal.done():  # the lock may still say why, late
                lock.refusal_may_come()
        if not waiter.done():  # its notification, if the lock sends one, is still to come
            lock.expect_echo(slot, True)
        if commands.is_masked(read):
            lock.confirmed.confirmed(slot, digest)
        self._schedule_recheck(lock, slot, digest)
        log.info(
            "zwave.code_set",
            device_id=lock.device_id,
            slot_id=slot,
            masked=lock.masked,
            unchanged=unchanged,
        )
        if not unchanged:
            self._emit(lock.device_id, EventName.CODE_SET, {"slot_id": slot, "method": "remote"})
        return ActionResult({"slot_id": slot})

    async def _clear_code(self, lock: _Lock, node: Node, slot: int) -> ActionResult:
        await lock.late_sets.wait_out(slot)  # a failed set's late word is reported before this
        lock.confirmed.forget(slot)
        status, _ = await commands.read_slot(node, slot)
        if status == commands.USER_AVAILABLE:  # nothing to clear, and no change to report
            log.info("zwave.code_already_clear", device_id=lock.device_id, slot_id=slot)
            return ActionResult({"slot_id": slot})
        echo = lock.expect_echo(slot, False)  # a masked lock says "user code deleted" as it clears
        try:
            await commands.clear_slot(node, slot)
            status, _ = await commands.read_slot(node, slot)
        except (commands.LinkLost, ActionTimeout, asyncio.CancelledError) as exc:
            self._clear_failed(lock, echo, slot, link_lost=isinstance(exc, commands.LinkLost))
            raise
        if status not in (commands.USER_AVAILABLE,):
            # a lock may answer the read-back from what it held before it cleared the slot
            self._clear_failed(lock, echo, slot)
            raise CodeNotConfirmed(f"slot {slot}: the lock still holds a code")
        log.info("zwave.code_cleared", device_id=lock.device_id, slot_id=slot)
        self._emit(lock.device_id, EventName.CODE_REMOVED, {"slot_id": slot, "method": "remote"})
        return ActionResult({"slot_id": slot})

    def _clear_failed(
        self, lock: _Lock, echo: _Echo, slot: int, *, link_lost: bool = False
    ) -> None:
        """A clear of ours failed (its read-back unanswered, cut off, or showing the code)."""
        if echo.heard:  # the lock said "code deleted" meanwhile: the code is gone all the same
            self._carried_out(lock, slot, present=False)
            return
        # as for a set: its "code deleted" may come late, the word of this failed clear (to
        # report, not to take as the echo of one that worked), not a change at the keypad
        lock.drop_echo(echo)
        lock.late_sets.failed(slot, link_lost=link_lost, present=False)

    def _carried_out(self, lock: _Lock, slot: int, *, present: bool) -> None:
        """A set (or clear) of ours that failed was carried out, as the lock's word says."""
        lock.confirmed.forget(slot)
        late = "zwave.code_set_late" if present else "zwave.code_clear_late"
        log.warning(late, device_id=lock.device_id, slot_id=slot)
        name = EventName.CODE_SET if present else EventName.CODE_REMOVED
        self._emit(lock.device_id, name, {"slot_id": slot, "method": "remote"})

    async def _await_programming(
        self, lock: _Lock, waiter: asyncio.Future[bool], refusal: asyncio.Future[None], slot: int
    ) -> bool:
        try:
            with anyio.fail_after(self._config.code_confirm_s):
                # not `await waiter`: its cancellation by _detach would look like our own
                either: set[asyncio.Future[Any]] = {waiter, refusal}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            # The lock answered every frame and reads back a mask: it did not confirm the code.
            raise CodeNotConfirmed(
                f"slot {slot}: no programming notification from a lock that masks codes"
            ) from None
        if refusal.done():
            raise DuplicateCode.in_slot(slot)
        if waiter.cancelled() and lock.removed:
            raise DeviceNotFound(f"slot {slot}: the lock was removed before it confirmed the code")
        if waiter.cancelled():  # the link to zwave-server went down; its teardown dropped it
            # the lock's word may be among what zwave-server took meanwhile (_alarm_while_away)
            lock.late_sets.failed(slot, link_lost=True)
            raise DeviceError(
                f"slot {slot}: connection to zwave-server lost before the lock confirmed the code"
            )
        return waiter.result()

    async def _await_refusal(self, refusal: asyncio.Future[None], slot: int) -> None:
        """A code the lock did not store: its notification saying why may follow the read-back."""
        with anyio.move_on_after(min(REFUSAL_WAIT_S, self._config.code_confirm_s)):
            await asyncio.wait({refusal})
        if refusal.done():
            raise DuplicateCode.in_slot(slot)

    def _schedule_recheck(self, lock: _Lock, slot: int, digest: bytes) -> None:
        """Read the slot again later: a lock may confirm a code and lose it afterwards."""
        if self._config.code_recheck_s > 0:
            due = time.monotonic() + self._config.code_recheck_s
            item = _Recheck(due, lock.device_id, slot, digest)
            self._latest_recheck[(lock.device_id, slot)] = item
            self._rechecks.put_nowait(item)

    async def _recheck_worker(self) -> None:
        with anyio.CancelScope() as scope:
            self._scopes.append(scope)
            while True:
                item = await self._rechecks.get()
                await anyio.sleep(max(0.0, item.due - time.monotonic()))
                key = (item.device_id, item.slot)
                if self._latest_recheck.get(key) is not item:
                    continue  # the slot was written again since: only its newest state counts
                try:
                    await self._recheck(item)
                except Exception as exc:  # noqa: BLE001 - a failed re-check is logged, not fatal
                    log.warning(
                        "zwave.code_recheck_failed",
                        device_id=item.device_id,
                        slot_id=item.slot,
                        error=type(exc).__name__,
                    )
                if self._latest_recheck.get(key) is item:
                    del self._latest_recheck[key]

    async def _recheck(self, item: _Recheck) -> None:
        lock = self._lock_by_device(item.device_id)
        if lock is None:
            return
        node = self._node(lock)
        commands.check_reachable(node)
        with anyio.fail_after(30):
            status, read = await commands.read_slot(node, item.slot)
        present = status == commands.USER_ENABLED and (
            commands.is_masked(read) or hmac.compare_digest(code_digest(read), item.digest)
        )
        if self._latest_recheck.get((item.device_id, item.slot)) is not item:
            # A set or clear of the slot began while the read was on the mesh (each pops the
            # entry as it starts): the read may show the new code, or none, and would report
            # the code just written, or just removed, as dropped.
            return
        if not present:  # "code set on device" went out when the set was confirmed
            lock.confirmed.forget(item.slot)
            self._emit(lock.device_id, EventName.CODE_DROPPED, {"slot_id": item.slot})

    # ------------------------------------------------------------------ pairing

    async def pair(self, duration_s: int, options: PairOptions = NO_PAIR_OPTIONS) -> None:
        controller = self._controller()
        await self._end_open_window(controller)
        before = self._inclusion.open(options.dsk_pin)
        try:
            ok = await commands.call(
                "begin inclusion", controller.async_begin_inclusion(InclusionStrategy.DEFAULT)
            )
        except BaseException:
            self._inclusion.restore(before)
            raise
        if not ok:
            self._inclusion.restore(before)
            raise DeviceError("the controller refused to start inclusion")
        log.info(
            "zwave.inclusion_started", duration_s=duration_s, with_pin=options.dsk_pin is not None
        )
        self._open_window(duration_s, inclusion=True)

    def _on_grant_request(self, event: dict[str, Any]) -> None:
        grant = self._inclusion.grant(event["requested_grant"])
        self._answer("grant security classes", lambda c: c.async_grant_security_classes(grant))

    def _on_pin_request(self, _event: dict[str, Any]) -> None:
        digits = self._inclusion.pin()
        self._answer(
            "enter dsk pin", lambda c: c.async_validate_dsk_and_enter_pin(digits), secret=True
        )

    def _on_inclusion_aborted(self, _event: dict[str, Any]) -> None:
        self._inclusion.aborted()

    def _answer(self, what: str, send: Callable[[Any], Any], *, secret: bool = False) -> None:
        """Send an answer to zwave-js's inclusion question from a task (events are synchronous)."""
        controller = self._controller()

        async def run() -> None:
            try:
                await commands.call(what, send(controller), secret=secret)
            except GatewayError as exc:
                # the message names the command and the failure, never the PIN
                log.warning("zwave.inclusion_answer_failed", what=what, error=str(exc))

        self._ctx.spawn(f"zwave.{what.replace(' ', '_')}", run)

    async def unpair(self, duration_s: int, device_id: str | None) -> None:
        controller = self._controller()
        if device_id is not None:
            lock = self._lock_by_device(device_id)
            if lock is None:
                raise DeviceNotFound(f"no Z-Wave lock {device_id}")
            node = self._node(lock)
            if node.status == NodeStatus.DEAD:
                await commands.call("remove failed node", controller.async_remove_failed_node(node))
                log.info("zwave.failed_node_removed", node_id=lock.node_id)
                return
        await self._end_open_window(controller)
        ok = await commands.call("begin exclusion", controller.async_begin_exclusion())
        if not ok:
            raise DeviceError("the controller refused to start exclusion")
        log.info("zwave.exclusion_started", duration_s=duration_s)
        self._open_window(duration_s, inclusion=False)

    def _open_window(self, duration_s: int, *, inclusion: bool) -> None:
        self._windows_opened += 1
        window = self._window = (self._windows_opened, inclusion)
        self._unclosed = None
        kind = "inclusion" if inclusion else "exclusion"
        self._ctx.spawn(f"zwave.{kind}_window", lambda: self._close_window(duration_s, window))

    async def _end_open_window(self, controller: Any) -> None:
        """A new window replaces one still open (zwave-js refuses to start one while another
        is open): stop it first. It may have ended on its own (a node joined): no matter."""
        inclusion = self._take_window()
        if inclusion is not None:
            await self._stop_window(controller, inclusion)

    def _take_window(self) -> bool | None:
        """End the open window on our side (an inclusion's state with it): whether it was an
        inclusion window, None if none was open. Stopping it on the controller is the caller's."""
        if self._window is None:
            return None
        _, inclusion = self._window
        self._window = None
        if inclusion:
            self._inclusion.closed()
        return inclusion

    async def _close_window(self, duration_s: int, window: tuple[int, bool]) -> None:
        await anyio.sleep(duration_s)
        if self._window != window:
            return  # replaced by a later window, which its own timer closes
        self._unclosed = self._take_window()
        await self._close_unclosed()

    async def _close_unclosed(self, *, only_if_open: bool = False) -> None:
        """Stop the window whose time is up, if zwave-server is reachable; `only_if_open`
        (after a reconnect): only if the controller still shows it open."""
        inclusion, client = self._unclosed, self._client
        if inclusion is None or client is None or client.driver is None:
            return  # the link is down: sent once it is up again
        controller = client.driver.controller
        kind = InclusionState.INCLUDING if inclusion else InclusionState.EXCLUDING
        if only_if_open and controller.inclusion_state != kind:
            self._unclosed = None  # it ended (a node joined), or another client runs its own
            return
        if await self._stop_window(controller, inclusion) and self._unclosed is inclusion:
            self._unclosed = None

    @staticmethod
    async def _stop_window(controller: Any, inclusion: bool) -> bool:
        """Whether zwave-server answered the stop (False: it may still hold the window open)."""
        # through commands.call: the client cancels the command's future when the link drops,
        # and that CancelledError, out of the window's task, would cancel the daemon's tasks
        what = "stop inclusion" if inclusion else "stop exclusion"
        try:
            if inclusion:
                await commands.call(what, controller.async_stop_inclusion())
            else:
                await commands.call(what, controller.async_stop_exclusion())
        except Exception as exc:  # noqa: BLE001 - the window may have closed on its own
            log.info("zwave.window_close_skipped", inclusion=inclusion, error=type(exc).__name__)
            return False
        return True

    # ------------------------------------------------------------------ simulation (mock only)

    async def simulate(self, device_id: str, what: Simulation, params: Mapping[str, Any]) -> None:
        url = self._config.mock_control_url
        if not url or self._http is None:
            await super().simulate(device_id, what, params)
            return
        lock = self._lock_by_device(device_id)
        if lock is None:
            raise DeviceNotFound(f"no Z-Wave lock {device_id}")
        body = dict(params)
        try:
            async with self._http.post(
                f"{url.rstrip('/')}/node/{lock.node_id}/{_SIM_ACTIONS[what]}", json=body
            ) as resp:
                if resp.status != 200:
                    raise InvalidInput(f"mock refused {what}: {await resp.text()}")
        except aiohttp.ClientError as exc:  # its text names the URL, never the body (a code)
            raise DeviceError(f"mock control channel unreachable for {what}: {exc}") from None
        if what in (Simulation.OFFLINE, Simulation.ONLINE):
            # The controller notices a lock went away (or came back) on its next transmission.
            # through commands.call: a link lost meanwhile is a DeviceError, not the client's
            # CancelledError (which would look like the caller's own cancellation)
            node = self._node(lock)
            try:
                await commands.call("ping", node.async_ping())
            except ActionTimeout as exc:  # a ping the node does not answer is the point
                log.info("zwave.ping_failed", node_id=lock.node_id, error=str(exc))

    # ------------------------------------------------------------------ helpers

    def _lock_by_device(self, device_id: str) -> _Lock | None:
        for lock in self._locks.values():
            if lock.device_id == device_id:
                return lock
        return None

    def _controller(self) -> Any:
        client = self._client
        if client is None or client.driver is None:
            raise DeviceError(f"zwave-server unreachable: {self._last_error or 'not connected'}")
        return client.driver.controller

    def _node_or_none(self, lock: _Lock) -> Node | None:
        client = self._client
        if client is None or client.driver is None:
            return None
        return client.driver.controller.nodes.get(lock.node_id)

    def _node(self, lock: _Lock) -> Node:
        if self._client is None:
            raise DeviceError(f"zwave-server unreachable: {self._last_error or 'not connected'}")
        node = self._node_or_none(lock)
        if node is None:
            raise DeviceNotFound(f"node {lock.node_id} is no longer in the network")
        return node


async def _disconnect(client: Client) -> None:
    """Close a client's websocket, bounded: a shielded wait on a server that no longer answers
    would hold up stop(). Cut short, aiohttp still closes the socket."""
    with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True) as closing:
        await client.disconnect()
    if closing.cancelled_caught:
        log.warning("zwave.close_timeout", timeout_s=CLOSE_TIMEOUT_S)


def _home(home_id: int) -> str:
    """A home id as it leads a native id: 8 hex digits."""
    return f"{home_id:08x}"


def _native_id(home_id: int, node_id: int) -> str:
    """A lock's native id: its network's home id, then its node id."""
    return f"{_home(home_id)}-{node_id}"


def _differs(a: Device, b: Device) -> bool:
    """Whether a device changed in a way worth reporting (last_seen alone is not)."""
    return replace(a, properties=replace(a.properties, last_seen=None)) != replace(
        b, properties=replace(b.properties, last_seen=None)
    )


def _is_lock(node: Node) -> bool:
    return any(v.command_class == CommandClass.DOOR_LOCK for v in node.values.values())


def _has_door_lock(node: Node) -> bool:
    """Door Lock CC among a node's command classes, on any endpoint (even without values)."""
    return _has_cc(node, CommandClass.DOOR_LOCK)


def _has_cc(node: Node, cc_id: CommandClass) -> bool:
    return any(
        cc.id == cc_id for endpoint in node.endpoints.values() for cc in endpoint.command_classes
    )


def _cc_version(node: Node, cc_id: CommandClass) -> int | None:
    endpoint = node.endpoints.get(0)
    for cc in endpoint.command_classes if endpoint is not None else ():
        if cc.id == cc_id:
            return cc.version
    return None


def _alarm_mapped(node: Node, alarm_type: Any, level: Any) -> bool:
    """Whether zwave-js turns this Alarm CC v1 report into a notification (compat alarmMapping
    of the node's device file), as it does for most Kwikset and Yale locks."""
    compat: Any = node.device_config.compat
    mappings = compat.get("alarmMapping") if isinstance(compat, Mapping) else None
    for mapping in mappings if isinstance(mappings, list) else ():
        if not isinstance(mapping, Mapping):
            continue
        source, target = mapping.get("from"), mapping.get("to")
        if (
            isinstance(source, Mapping)
            and source.get("alarmType") == alarm_type
            and source.get("alarmLevel") in (None, level)
        ):
            # an event its notification registry lacks (Yale's alarm type 132 goes to Access
            # Control 0xFE) zwave-js stores as "unknown" and sends no notification for
            return not (isinstance(target, Mapping) and target.get("notificationEvent") == 0xFE)
    return False


def _locked(node: Node) -> bool | None:
    return bolt_from_mode(_value(node, CommandClass.DOOR_LOCK, "currentMode"))


def _value(node: Node, cc: CommandClass, prop: str) -> Any:
    for v in node.values.values():
        if v.command_class == cc and v.property_name == prop and v.endpoint in (0, None):
            return v.value
    return None


def _notification_states(node: Node) -> dict[tuple[Any, Any], Any]:
    """The node's Notification CC values, by (variable, key), as zwave-js holds them now."""
    return {
        (v.property_name, v.property_key): v.value
        for v in node.values.values()
        if v.command_class == CommandClass.NOTIFICATION and v.endpoint in (0, None)
    }


def _codes(lock: _Lock) -> CodeConstraints:
    """The code limits the lock was last published with (the defaults before that)."""
    return lock.device.codes if lock.device else CodeConstraints()


async def _read_door_lock(node: Node, timeout_s: float) -> Any:
    """The lock's Door Lock report (bolt and door) read from it, or None; TimeoutError or
    GatewayError if it does not answer."""
    with anyio.fail_after(timeout_s):
        return await commands.call(
            "read bolt state",
            node.async_invoke_cc_api(CommandClass.DOOR_LOCK, "get", wait_for_result=True),
        )


async def _read_users(node: Node, timeout_s: float) -> int | None:
    """The lock's count of users as zwave-js holds it, or None if it has not read it. It is the
    User Code CC's `supportedUsers`, an internal value: in no node.values and told by no event,
    so it is asked for. The slots zwave-js holds values of are no count: a single report (or a
    partial read) makes one."""
    with anyio.fail_after(timeout_s):
        result = await commands.call(
            "read count of users",
            node.async_send_command(
                "get_value",
                valueId={"commandClass": CommandClass.USER_CODE, "property": "supportedUsers"},
                wait_for_result=True,
            ),
        )
    users = result.get("value") if isinstance(result, dict) else None
    return users if isinstance(users, int) and not isinstance(users, bool) and users >= 0 else None


def _device(lock: _Lock, node: Node) -> Device:
    dc = node.device_config
    manufacturer = (dc.manufacturer if dc else None) or f"0x{node.manufacturer_id or 0:04x}"
    model = (dc.label if dc else None) or node.label or "Z-Wave lock"
    # count of users not known (zwave-js has not read it: interview not done, or timed out):
    # the cloud is shown no slot maximum and any user id of the CC's version is tried, the lock
    # refuses one it lacks (a 1..11 guess refused slots 12 and up of a lock that has them)
    wide = 0xFF if _cc_version(node, CommandClass.USER_CODE) == 1 else 0xFFFF
    codes = (
        CodeConstraints(min_slot=1, max_slot=lock.users)
        if lock.users
        else CodeConstraints(max_slot=wide, slots_known=False)
    )
    # no code actions for a lock without User Code CC or with 0 users; one whose count of users
    # is not known (its interview timed out) keeps them
    no_codes = not _has_cc(node, CommandClass.USER_CODE) or lock.users == 0
    actions = (
        DEVICE_ACTIONS - {ActionName.SET_CODE, ActionName.CLEAR_CODE}
        if no_codes
        else DEVICE_ACTIONS
    )
    props = DeviceProperties(
        locked=None if lock.tracker.undefined else lock.tracker.locked,
        online=lock.online,
        door_open=lock.door_open,
        battery_level=lock.battery_level,
        jammed=lock.jammed,
        firmware=node.firmware_version,
        last_seen=lock.last_seen,
    )
    return replace(
        Device(
            id=lock.device_id,
            native_id=lock.native_id,
            protocol="zwave",
            name=node.name or f"{manufacturer} {model}",
            manufacturer=manufacturer,
            model=model,
            actions=actions,
        ),
        codes=codes,
        properties=props,
    )
