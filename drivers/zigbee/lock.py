"""One Zigbee door lock: zigpy's device and clusters translated into the gateway's Device,
door events and confirmed actions. zigpy objects stay in here."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from msgspec.structs import replace

from drivers.zigbee.zigpy_api import (
    Alarms,
    Basic,
    DoorLock,
    PowerConfiguration,
    exceptions,
    foundation,
    t,
    zcl,
)
from gatewayd.confirmed_codes import ConfirmedCodes, LateSets, code_digest, same_code
from gatewayd.driver import DriverSink
from gatewayd.model import (
    Action,
    ActionResult,
    ActionTimeout,
    CodeConstraints,
    CodeMemoryFull,
    CodeNotConfirmed,
    Device,
    DeviceError,
    DeviceOffline,
    DeviceProperties,
    DoorEvent,
    DuplicateCode,
    EventName,
    GatewayError,
    InvalidInput,
    Method,
    PinCode,
    utcnow,
)

log = structlog.get_logger(__name__)

LOW_BATTERY: Final = 0.2
BATTERY_RECOVERED: Final = 0.25
DEFAULT_CODES: Final = CodeConstraints(min_length=4, max_length=8, min_slot=1, max_slot=11)
# until its limits are read: any user id but 0xFFFF (all users) and any code length the
# driver would take from a read (1..16) is tried, the lock refuses what it does not take
UNREAD_CODES: Final = CodeConstraints(
    min_length=1, max_length=16, max_slot=0xFFFE, slots_known=False, lengths_known=False
)

_OP = DoorLock.OperationEvent
_SRC = DoorLock.OperationEventSource
_PROG = DoorLock.ProgrammingEvent
_LOCKS: Final = {
    int(_OP.Lock),
    int(_OP.KeyLock),
    int(_OP.AutoLock),
    int(_OP.OnTouchLock),
    int(_OP.ScheduleLock),
    int(_OP.Manual_Lock),
}
_UNLOCKS: Final = {int(_OP.Unlock), int(_OP.KeyUnlock), int(_OP.ScheduleUnlock)} | {
    int(_OP.Manual_Unlock)
}
_WRONG_CODE: Final = {int(_OP.LockFailureInvalidPINorID), int(_OP.UnlockFailureInvalidPINorID)}
# a code the lock holds, refused outside its schedule: the lock names the user
_OFF_SCHEDULE: Final = {int(_OP.LockFailureInvalidSchedule), int(_OP.UnlockFailureInvalidSchedule)}
_TAMPER_ALARMS: Final = {4, 5, 6}  # wrong-code limit, escutcheon removed, forced open
# Power Configuration's alarms of its first battery: too low to operate, then thresholds 1-3
# (Yale: critical, very low, low); some locks send them as the Door Lock cluster's
_BATTERY_ALARMS: Final = {0x10, 0x11, 0x12, 0x13}
_PIN_CHANGES: Final = {
    int(_PROG.PINCodeAdded),
    int(_PROG.PINCodeChanges),
    int(_PROG.PINCodeDeleted),
}
_PROGRAMMING_METHODS: Final = {int(_SRC.Keypad): Method.KEYPAD, int(_SRC.RF): Method.RF}
# the user id of a programming event for every user at once (all codes cleared at the keypad's
# master menu): 0xFF on locks with 8-bit user ids, 0xFFFF on the others
_ALL_USERS: Final = {0xFF, 0xFFFF}
# the standard attributes the lock follows, by cluster
_ATTRIBUTES: Final = {
    DoorLock.cluster_id: ("lock_state", "door_state"),
    PowerConfiguration.cluster_id: ("battery_percentage_remaining",),
}
# the code limits (`codes`): until a read has answered for them, the slots are UNREAD_CODES;
# a lock that answers without them keeps the guess DEFAULT_CODES
_CODE_LIMITS: Final = ("num_of_pin_users_supported", "max_pin_len", "min_pin_len")
# user statuses of a slot that holds a usable code (0xFF: the lock does not report it)
_CODE_HELD: Final = {int(DoorLock.UserStatus.Enabled), int(DoorLock.UserStatus.Not_Supported)}
# Onesti's (Nimly's) manufacturer attributes of the Door Lock cluster (zha-quirks' NimlyDoorLock,
# zigbee-herdsman-converters' nimly_pro_lock_actions), reported on their own after each bolt move:
# 0x0100 source << 24 | action (1 lock, 2 unlock) << 16 | user slot, and 0x0101 the PIN typed
NIMLY_SOURCE: Final = 0x0100
NIMLY_PIN: Final = 0x0101
_NIMLY_SOURCE_NAME: Final = "nimly_last_lock_unlock_source"  # its name under the quirk
_NIMLY_ZIGBEE, _NIMLY_KEYPAD, _NIMLY_UNATTRIBUTED, _NIMLY_AUTO = 0x00, 0x02, 0x05, 0x0A


# lock_door / unlock_door: sent this many times at most, again only when undelivered
BOLT_SENDS: Final = 3
BOLT_RESEND_S: Final = 0.1  # zigpy's own pause between tries
# any request: sent this many times at most while zigpy fails it for the lock's own rejoin
REJOIN_SENDS: Final = 5
HELD_EVENTS: Final = 64  # events a lock not yet announced holds for its device_added
OWN_ECHO_S: Final = 10.0  # how late a lock's programming event for our own change may come
# A failed configuration is tried again after this, then twice as long each time up to
# LockOptions.configure_retry_max_s: unbound, a lock sends no reports, so it may not be heard
# (and configured when heard) before the next availability ping, its door events lost meanwhile.
CONFIGURE_RETRY_S: Final = 30.0
# Reads of a heard lock's code limits that go unanswered before they are given up (logged
# `zigbee.limits_unread`; the lock stays usable with its limits unknown): some firmwares answer
# everything but those attributes, and each read costs airtime of a battery lock. The next read
# waits LIMITS_RETRY_S after the first unanswered one, twice as long after each one after it.
LIMITS_READS: Final = 5
LIMITS_RETRY_S: Final = 30.0
# the user id 0xFF in a programming event: all users on a lock with 8-bit user ids, slot 255 on
# one with more than 255 users
_USER_FF: Final = 0xFF
_PIN_GENERAL_FAILURE: Final = 1
_PIN_MEMORY_FULL: Final = 2
_PIN_DUPLICATE: Final = 3


@dataclass(frozen=True, slots=True)
class LockOptions:
    command_timeout_s: float = 20.0
    report_wait_s: float = 2.0
    event_merge_s: float = 0.3
    configure_retry_max_s: float = 3600.0


def has_door_lock(zdev: Any) -> bool:
    return any(DoorLock.cluster_id in ep.in_clusters for ep in zdev.non_zdo_endpoints)


def guard_pins(app: Any) -> None:
    """Strip the PIN a Nimly lock reports (0x0101) from its Door Lock cluster's attribute reports
    before zigpy takes them in: zigpy would keep it in its attribute cache, write it to its
    database and hand it to its listeners. On zigpy's app, in the path of every frame it
    receives: a lock still being interviewed (a raw device no resolver has seen yet, holding no
    quirk) reports too. Also marks the attribute reports being handled (`_Reporting`). Before
    the radio starts; idempotent."""
    if "packet_received" in vars(app):
        return
    received = app.packet_received

    def _without_pin(packet: Any) -> None:
        packet, reporting = _stripped(packet)
        before, _Reporting.now = _Reporting.now, reporting
        try:
            received(packet)
        finally:
            _Reporting.now = before

    app.packet_received = _without_pin


_REPORT_ATTRIBUTES: Final = foundation.GENERAL_COMMANDS[
    foundation.GeneralCommand.Report_Attributes
].schema


class _Reporting:
    """`now`: zigpy is handling an attribute report, which it does in one go. The attribute
    events it emits meanwhile are the lock's own word, also those of a value a quirk rewrote,
    which zigpy tells of as an update, the same event as for a read's rewritten answer. (A
    context variable would pass on to the tasks and callbacks started meanwhile.)"""

    now = False


def _stripped(packet: Any) -> tuple[Any, bool]:
    """`packet`, less its Nimly PIN if it is a Door Lock attribute report that carries one; and
    whether it is an attribute report."""
    if packet.src_ep == 0 or packet.dst_ep == 0:
        return packet, False  # ZDO
    report = _REPORT_ATTRIBUTES
    try:
        hdr, payload = foundation.ZCLHeader.deserialize(packet.data.serialize())
        if not (
            hdr.frame_control.is_general
            and hdr.command_id == foundation.GeneralCommand.Report_Attributes
        ):
            return packet, False
        if packet.cluster_id != DoorLock.cluster_id:
            return packet, True
        args, _ = report.deserialize(payload)
    except Exception:  # noqa: BLE001 - zigpy cannot parse it either: it drops it, unlogged
        return packet, False
    kept = [r for r in args.attribute_reports if r.attrid != NIMLY_PIN]
    if len(kept) == len(args.attribute_reports):
        return packet, True
    data = hdr.serialize() + report(attribute_reports=kept).serialize()
    return packet.replace(data=t.SerializableBytes(data)), True


class ZigbeeLock:
    """A door lock behind zigpy. Cluster callbacks arrive on the event loop, synchronously."""

    def __init__(
        self, zdev: Any, device_id: str, sink: DriverSink, opts: LockOptions, name_suffix: str = ""
    ) -> None:
        self.zdev = zdev
        self.ieee = str(zdev.ieee)
        self.device_id = device_id
        self._sink = sink
        self._opts = opts
        self._name_suffix = name_suffix
        self.locked: bool | None = None
        self.jammed = False
        self._jams = 0  # jams the lock has reported, repeats too
        self.door_open: bool | None = None
        # the lock reported its bolt / door as undefined: shown as None until it reports it again;
        # `locked` / `door_open` keep the last known state, so its return is no new event
        self._bolt_unknown = False
        self._door_unknown = False
        self.battery: float | None = None
        self.online = True
        self._low_battery = False
        self._changed = asyncio.Event()
        self._expect: bool | None = None  # the bolt state our command in flight asks for
        self._words = 0  # words from the lock on its bolt: lock_state values, operation events
        self._confirmed = False  # that command's `remote` report has gone out
        self._pending: asyncio.TimerHandle | None = None
        self._cache_write: asyncio.Handle | None = None
        self._code_slot: int | None = None
        # (slot, programming event codes, until when) of our own sets and clears whose echo
        # from the lock has not come yet: they were reported already
        self._own_programming: list[tuple[int, frozenset[int], float]] = []
        self._programmed: dict[int, int] = {}
        # the code we last wrote and saw confirmed in each slot, on a lock that masks codes (its
        # read-back cannot show it); forgotten when anything else may have changed the slot:
        # its programming event, the lock leaving or going silent, a rejoin
        self._confirmed_codes = ConfirmedCodes()
        # slots whose last set (or clear) failed for want of the lock's programming event, which
        # may come late: the next change of the slot waits it out, or the event would confirm
        # that one; a failed clear's late "deleted" is that clear carried out, not someone else's
        self._late_sets = LateSets(OWN_ECHO_S)
        self._left: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._has_left = False  # `_left` is resolved by `close` too: this says the lock left
        # The lock left or joined again (a reset, a re-pairing): that wipes its bindings and
        # reporting configuration, so it has to be configured again when it is back; until
        # then it sends no reports, no operation events and no alarms.
        self._unbound = False
        self._configuring: asyncio.Task[None] | None = None
        self._resyncing: asyncio.Task[None] | None = None  # the read after it was out of reach
        # after a failed configuration, not again before this (loop time): the lock's own
        # answers to it would otherwise start the next one at once, over and over
        self._configure_after = 0.0
        self._retry: asyncio.TimerHandle | None = None  # the next try after a failed one
        self._retries = 0  # failed configurations in a row: the retry's backoff
        # `refresh` runs: its read's answers are the state the lock is in, not events
        self._reading = False
        self._reported: dict[tuple[int, str], int] = {}  # what the lock reported meanwhile
        self._limits_read = False  # a read of _CODE_LIMITS was answered (supported or not)
        self._limiting: asyncio.Task[None] | None = None  # that read, when the lock is heard
        self._limits_after = 0.0  # loop time: not tried again before, after one went unanswered
        self._limits_unanswered = 0  # reads of them that went unanswered: LIMITS_READS at most
        # programming events held, in order, until the user count tells what user 0xFF is
        self._held_programming: list[Any] | None = None
        self._settling: asyncio.Task[None] | None = None  # the wait for that count
        self._firmware_read = False  # a read of sw_build_id was answered (supported or not)
        # the read of its bolt and door after pairing was lost: read again when it is heard,
        # not sooner than `_bolt_after` (loop time), which backs off after each one lost
        self._bolt_unread = False
        self._bolt_after = 0.0
        self._bolt_reads = 0
        # when the bolt state was last taken in with no event (loop time): an operation event
        # that follows within event_merge_s tells of that very change, and goes out
        self._bolt_untold = -1.0
        self._device: Device | None = None
        self._held: list[DoorEvent] = []  # events from before device_added, sent after it
        self._codes: tuple[tuple[Any, ...], CodeConstraints] = ((), DEFAULT_CODES)
        self._ep = next(
            ep for ep in zdev.non_zdo_endpoints if DoorLock.cluster_id in ep.in_clusters
        )
        self._unsubscribe: list[Callable[[], None]] = []
        self._closed = False  # its radio connection is gone: a failed delivery is not its own
        self._removed = False  # closed as removed from the gateway, not for the radio's loss
        self._hearings = 0  # frames and joins zigpy heard from the lock

    # ------------------------------------------------------------------ clusters

    def _cluster(self, cluster_id: int) -> Any | None:
        return self._ep.in_clusters.get(cluster_id)

    @property
    def door_lock(self) -> Any:
        return self._ep.in_clusters[DoorLock.cluster_id]

    def listen(self) -> None:
        _guard_answers(self.door_lock)
        for cid in (DoorLock.cluster_id, PowerConfiguration.cluster_id, Alarms.cluster_id):
            cluster = self._cluster(cid)
            if cluster is not None:
                relay = _Relay(self, cid)
                cluster.add_listener(relay)  # cluster-specific commands (legacy listener API)
                self._unsubscribe.append(functools.partial(cluster.remove_listener, relay))
                for name in (
                    zcl.AttributeReportedEvent.event_type,
                    zcl.AttributeUpdatedEvent.event_type,
                    zcl.AttributeReadEvent.event_type,  # a read's answer: zigpy sends no update
                ):
                    self._unsubscribe.append(cluster.on_event(name, relay.attribute_event))
        device_relay = _DeviceRelay(self)
        self.zdev.add_listener(device_relay)
        self._unsubscribe.append(functools.partial(self.zdev.remove_listener, device_relay))

    def close(self, *, removed: bool = False) -> None:
        """End its requests and listeners: the radio is lost, or the lock `removed`."""
        self._removed = self._removed or removed
        if self._closed:  # at the radio's loss, then again as the reconnect replaces it
            return
        self._closed = True
        if self._cache_write is not None:  # still due: written now, before zigpy shuts down
            self._cache_write.cancel()
            self._cache_bolt()
        # A bolt report waiting for the operation event that names its method: that event is
        # lost with the link, and the lock adopted after a reconnect starts from the
        # already-updated state in silence
        self._tell_pending()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        self._cancel_retry()
        if self._configuring is not None:
            self._configuring.cancel()
        if self._resyncing is not None:
            self._resyncing.cancel()
        if self._limiting is not None:
            self._limiting.cancel()
        if self._settling is not None:
            self._settling.cancel()
        self._release_programming()  # its count not read now: they go up, not with the task
        self._wake()  # a code change waiting for the lock's word fails now (`_await_programmed`)
        if not self._left.done():
            self._left.set_result(None)

    def _tell_pending(self) -> None:
        """A bolt report still waiting for its operation event goes up now, method unknown:
        that event will not come (the link is lost, the lock left or is out of reach)."""
        if self._pending is None:
            return
        if self.locked is not None:
            self._bolt_event(self.locked, Method.UNKNOWN, None)
        else:
            self._pending.cancel()
            self._pending = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def removed(self) -> bool:
        return self._removed

    def _cut(self, when: str) -> DeviceError:
        """The error of a request cut by `close`: what closed the lock, not always the radio."""
        if self._removed:
            return _LockRemoved(f"the lock was removed from the gateway {when}")
        return _RadioLost(f"the zigbee radio went down {when}")

    def carry_over(self, old: ZigbeeLock) -> None:
        """Re-adopted after a radio reconnect: keep what zigpy's cache does not hold (whether the
        lock is online or has left, a jam, the low-battery latch, the programming events of our
        own code changes still to come, the unanswered reads of its code limits), so that
        nothing is silently undone, reported twice or asked again. Called before `old` is
        closed."""
        self.locked, self.jammed, self._low_battery = old.locked, old.jammed, old._low_battery
        self._own_programming, self._late_sets = old._own_programming, old._late_sets
        # announced already, its events go up as they come; else (its adoption was cut off
        # before `announce`) the events it held wait for this one's
        self._device, self._held = old._device, old._held
        self._bolt_unknown, self._door_unknown = old._bolt_unknown, old._door_unknown
        self._bolt_unread, self._bolt_after = old._bolt_unread, old._bolt_after
        self._bolt_reads = old._bolt_reads
        self.online, self._unbound = old.online, old._unbound
        # a lock that never answers a read of its code limits is not asked LIMITS_READS more
        # times after each reconnect, nor sooner than its backoff
        self._limits_read, self._limits_unanswered = old._limits_read, old._limits_unanswered
        self._limits_after = old._limits_after
        if old._has_left:
            self._has_left = True
            self._left.set_result(None)

    async def configure(self) -> None:
        """After an interview or a rejoin: bind to us and ask for reports (what ZHA does too)."""
        for cid in (DoorLock.cluster_id, PowerConfiguration.cluster_id, Alarms.cluster_id):
            cluster = self._cluster(cid)
            if cluster is not None:
                await self._call(cluster.bind)
        await self._call(lambda: self.door_lock.configure_reporting("lock_state", 0, 3600, 0))
        power = self._cluster(PowerConfiguration.cluster_id)
        if power is not None:
            await self._call(
                lambda: power.configure_reporting("battery_percentage_remaining", 3600, 43200, 2)
            )

    async def configure_joined(self) -> bool:
        """`configure` after its interview; False if it failed: tried again when heard."""
        return await self._configure(log.warning, "zigbee.device_setup_failed")

    async def refresh(self, *, from_cache: bool) -> None:
        """Load bolt, door, battery and code limits: from zigpy's cache after a restart. What
        the lock reports on its own meanwhile (a keypad unlock, the door) is no answer of the
        read: it goes up as an event.

        The code limits are asked for in a request of their own, last: some firmwares never
        answer a read that names them, and in one read with the bolt and door they cost the
        bolt, battery and firmware too. Unanswered, they count as one of LIMITS_READS."""
        self._reading, self._reported = True, {}
        missed: list[Exception] = []

        async def read(cluster: Any, attrs: list[str]) -> bool:
            # one read lost on the air costs that read only: the rest is asked all the same
            try:
                return await self._read(cluster, attrs, from_cache)
            except Exception as exc:
                if self._closed:
                    raise
                missed.append(exc)
                return False  # not answered: the code limits then wait until it is heard

        try:
            asked = await read(self.door_lock, ["lock_state", "door_state"])
            self._bolt_unread = bool(missed)  # read again when the lock is heard
            power = self._cluster(PowerConfiguration.cluster_id)
            if power is not None:
                await read(power, ["battery_percentage_remaining"])
            basic = self._cluster(Basic.cluster_id)
            if basic is not None and await read(basic, ["sw_build_id"]):
                self._firmware_read = True
            self._load_from_cache()
        finally:
            self._reading = False
        if asked:
            await self._limits_now()
        if missed:  # told by the caller (zigbee.device_setup_failed); the lock's reports and
            # the next resync (back online, a reconnect, a restart) bring what was lost
            raise missed[0]

    async def restarted(self) -> None:
        """After a restart: `resync`, then bind and configure reporting again. Nothing tells
        whether the lock still holds its bindings: one re-paired while a configuration failed,
        or under a version that did not configure rejoined locks, would otherwise stay silent
        for good. Binding and reporting requests are idempotent on the lock."""
        await self.resync()
        await self._configure(log.info, "zigbee.configure_skipped")

    async def resync(self) -> None:
        """Read the bolt, door and battery, in case they changed while we (or the lock) were
        away: a door opened while the radio was unplugged is reported by no one else. Also the
        firmware if still unknown: the read after joining (`refresh`) may have gone unanswered."""
        try:
            attrs = ["lock_state", "door_state"]
            await self._call(lambda: self.door_lock.read_attributes(attrs, allow_cache=False))
            self._bolt_unread = False
            power = self._cluster(PowerConfiguration.cluster_id)
            if power is not None:
                attrs = ["battery_percentage_remaining"]
                await self._call(lambda: power.read_attributes(attrs, allow_cache=False))
            basic = self._cluster(Basic.cluster_id)
            if basic is not None and basic.get("sw_build_id") is None and not self._firmware_read:
                await self._call(lambda: basic.read_attributes(["sw_build_id"], allow_cache=False))
                self._firmware_read = True  # answered: a lock without one is not asked again
                self._publish()
        except Exception as exc:  # noqa: BLE001 - a sleeping lock answers later, via its reports
            log.info("zigbee.resync_skipped", device_id=self.device_id, error=type(exc).__name__)

    async def _read(self, cluster: Any, attrs: list[str], from_cache: bool) -> bool:
        """Whether the lock was asked (and answered), not the cache."""
        if from_cache and all(cluster.get(a) is not None for a in attrs[:1]):
            return False
        await self._call(lambda: cluster.read_attributes(attrs, allow_cache=False))
        return True

    def _load_from_cache(self) -> None:
        dl = self.door_lock
        state = dl.get("lock_state")
        if state is not None:
            self._apply_lock_state(int(state))
        door = dl.get("door_state")
        if door is not None:
            self._door_state(int(door), quiet=True)
        power = self._cluster(PowerConfiguration.cluster_id)
        if power is not None and power.get("battery_percentage_remaining") is not None:
            self._apply_battery(int(power.get("battery_percentage_remaining")), quiet=True)

    # ------------------------------------------------------------------ rejoins

    def joined(self) -> None:
        """zigpy heard the lock join at a new network address (reset or re-paired): it is on
        the network, without its bindings. zigpy interviews it again, and the driver's
        device_initialized then calls `reconfigure`."""
        self._unbound = True
        self._confirmed_codes.forget_all()  # a reset lock may hold none of them
        self.seen()

    def _heard(self) -> None:
        """zigpy heard from the lock (a frame, or a join at the same address, which zigpy
        announces with no event at all): after a leave, this is the lock back on the network.
        Looked at a turn later: a join at a new address starts an interview in the same turn,
        and the configuration waits for its end (`reconfigure`, from device_initialized)."""
        self._hearings += 1
        loop = asyncio.get_running_loop()
        if self._unbound:
            loop.call_soon(self._back)
            return
        if self._device is None or self._reading:
            return
        if self._bolt_unread:
            loop.call_soon(self._read_bolt_soon)
        if self._limits_unknown():
            loop.call_soon(self._read_limits_soon)

    def _read_bolt_soon(self) -> None:
        """Heard, its bolt and door never read (the read after pairing was lost, and it has
        reported neither since): read them now, in the background. Not again before
        command_timeout_s, twice as long after each read lost, configure_retry_max_s at most."""
        loop = asyncio.get_running_loop()
        if self._closed or self._reading or not self._bolt_unread or loop.time() < self._bolt_after:
            return
        if self._resyncing is not None and not self._resyncing.done():
            return
        delay = self._opts.command_timeout_s * 2**self._bolt_reads
        self._bolt_after = loop.time() + min(delay, self._opts.configure_retry_max_s)
        self._bolt_reads = min(self._bolt_reads + 1, 16)
        self._resyncing = loop.create_task(self._read_bolt())

    async def _read_bolt(self) -> None:
        """The read `refresh` lost, as `refresh` makes it: its answer is the state the lock is
        in, not an event (what the lock reports on its own meanwhile is one)."""
        self._reading, self._reported = True, {}
        try:
            await self._read(self.door_lock, ["lock_state", "door_state"], from_cache=False)
        except Exception as exc:  # noqa: BLE001 - read again when the lock is next heard
            if not self._closed:
                log.info("zigbee.bolt_unread", device_id=self.device_id, error=type(exc).__name__)
            return
        finally:
            self._reading = False
        self._bolt_unread = False

    def _back(self) -> None:
        configuring = self._configuring is not None and not self._configuring.done()
        if not self._unbound or configuring or self.zdev.initializing or not self._unsubscribe:
            return  # configured or being configured, being interviewed, or closed
        if asyncio.get_running_loop().time() < self._configure_after:
            return  # it failed a moment ago
        log.info("zigbee.device_back", device_id=self.device_id, ieee=self.ieee)
        self.seen()
        self.reconfigure()

    def reconfigure(self) -> None:
        """Bind and configure reporting again, in the background (one run at a time), then
        read the bolt, door and battery, which may have changed while the lock was away."""
        if self._configuring is None or self._configuring.done():
            self._configuring = asyncio.get_running_loop().create_task(self._reconfigure())

    async def _reconfigure(self) -> None:
        self._unbound = True  # cleared only once the lock has taken its configuration
        if await self._configure(log.warning, "zigbee.configure_failed"):
            await self.resync()

    async def _configure(self, emit: Callable[..., Any], event: str) -> bool:
        """`configure`; False, logged as `event`, if it failed (a sleeping lock, no answer):
        then it is tried again when the lock is next heard, not before command_timeout_s."""
        try:
            await self.configure()
        except Exception as exc:  # noqa: BLE001 - tried again when the lock is next heard
            if self._closed:  # cut by its removal or the radio's loss, each logged as such
                return False
            emit(event, device_id=self.device_id, error=type(exc).__name__)
            self._unbound = True
            loop = asyncio.get_running_loop()
            self._configure_after = loop.time() + self._opts.command_timeout_s
            self._retry_later()
            return False
        self._unbound = False
        self._cancel_retry()
        return True

    def _retry_later(self) -> None:
        """After a failed configuration: tried again on a timer too (one pending at most),
        with backoff; not for a lock that left (configured when it is back) or closed."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._closed or self._has_left:
            return
        cap = max(CONFIGURE_RETRY_S, self._opts.configure_retry_max_s)
        delay = min(CONFIGURE_RETRY_S * 2**self._retries, cap)
        if delay < cap:
            self._retries += 1
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        if not self._unbound or self._closed or self._has_left:
            return
        if self.zdev.initializing:
            # the interview's end configures it; if the interview fails, the next retry does
            self._retry_later()
            return
        self.reconfigure()

    def _cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._retries = 0

    def _limits_unknown(self) -> bool:
        return not self._limits_read and self.door_lock.get(_CODE_LIMITS[0]) is None

    def _read_limits_soon(self) -> None:
        """Heard, its code limits unknown: the read after pairing went unanswered, or a restart
        found the bolt cached without them. Read now, in the background."""
        loop = asyncio.get_running_loop()
        if self._closed or (self._limiting is not None and not self._limiting.done()):
            return
        if loop.time() < self._limits_after or not self._limits_unknown():
            return
        self._limits_after = loop.time() + self._opts.command_timeout_s
        self._limiting = loop.create_task(self._read_limits())

    async def _limits_now(self) -> None:
        """The code limits, for a caller that needs them now (whatever the backoff): the read
        under way (begun as the lock was heard) is awaited, else one is made, as `_limiting`
        so that another caller waits for the same one."""
        idle = self._limiting is None or self._limiting.done()
        if idle and self._limits_unknown() and not self._closed:
            self._limiting = asyncio.get_running_loop().create_task(self._read_limits())
        if self._limiting is not None and not self._limiting.done():
            await asyncio.wait({self._limiting})

    async def _read_limits(self) -> None:
        """Until read, the cloud is shown no slot count or code lengths, and a code of any
        length in any slot is tried. A lock that does not support them keeps the guess (slots
        1..11, 4 to 8 digits). After LIMITS_READS unanswered reads, they are not asked again."""
        if self._limits_unanswered >= LIMITS_READS:
            return
        dl = self.door_lock
        try:
            await self._call(lambda: dl.read_attributes(list(_CODE_LIMITS), allow_cache=False))
        except Exception as exc:  # noqa: BLE001 - tried again when the lock is next heard
            if self._closed:
                return
            self._limits_unanswered += 1
            error = type(exc).__name__
            if self._limits_unanswered >= LIMITS_READS:
                log.warning(
                    "zigbee.limits_unread",
                    device_id=self.device_id,
                    reads=self._limits_unanswered,
                    error=error,
                )
                return
            log.info("zigbee.code_limits_unread", device_id=self.device_id, error=error)
            backoff = LIMITS_RETRY_S * 2 ** (self._limits_unanswered - 1)
            loop = asyncio.get_running_loop()
            self._limits_after = max(self._limits_after, loop.time() + backoff)
            return
        self._limits_read = True
        self._publish()

    # ------------------------------------------------------------------ the Device

    def codes(self) -> CodeConstraints:
        dl = self.door_lock
        raw = (
            dl.get("min_pin_len"),
            dl.get("max_pin_len"),
            dl.get("num_of_pin_users_supported"),
            self._limits_unknown(),
        )
        if raw != self._codes[0]:
            self._codes = (raw, _codes(*raw))
        return self._codes[1]

    def _names_slot(self, user: int) -> bool:
        """Whether a user id in the lock's word is one of its code slots: while its count is
        unread, 0xFF / 0xFFFF are all users, as on a lock with fewer. (A programming event for
        0xFF waits for the count, `_programming`; an operation event does not wait: its door
        event goes up without the slot, as a keypad one.)"""
        c = self.codes()
        return c.has_slot(user) and (c.slots_known or user not in _ALL_USERS)

    def device(self) -> Device:
        basic = self._cluster(Basic.cluster_id)
        firmware = basic.get("sw_build_id") if basic is not None else None
        manufacturer = str(self.zdev.manufacturer or "unknown")
        model = str(self.zdev.model or "Zigbee lock")
        props = DeviceProperties(
            locked=None if self._bolt_unknown else self.locked,
            online=self.online,
            door_open=None if self._door_unknown else self.door_open,
            battery_level=self.battery,
            jammed=self.jammed,
            firmware=str(firmware) if firmware is not None else None,
            last_seen=utcnow(),
        )
        return Device(
            id=self.device_id,
            native_id=self.ieee,
            protocol="zigbee",
            name=f"{model}{self._name_suffix}",
            manufacturer=manufacturer,
            model=model,
            codes=self.codes(),
            properties=props,
        )

    def _publish(self) -> None:
        """device_updated, when something the cloud sees changed (one report often arrives as
        several zigpy events: reported, updated, and the notification that goes with it)."""
        if self._device is None:
            return
        device = self.device()
        if device.visible() == self._device.visible():
            return
        self._device = device
        self._sink.device_updated(device)
        self._wake()

    def _bolt_word(self) -> None:
        """The lock spoke of its bolt (a lock_state value, an operation event): the word a
        command waits for (`_await_bolt`), even when it repeats the state we hold."""
        self._words += 1
        if self._expect is not None:
            self._wake()

    def _wake(self) -> None:
        """Wake the command waiting for the lock's answer."""
        self._changed.set()
        self._changed = asyncio.Event()

    def announce(self) -> None:
        """device_added, then the events heard while the lock was being read; later changes go
        out as device_updated."""
        self._device = self.device()
        self._sink.device_added(self._device)
        held, self._held = self._held, []
        for event in held:
            self._sink.door_event(event)

    def _event(self, name: EventName, **details: Any) -> None:
        event = DoorEvent(device_id=self.device_id, event_name=name, details=details)
        if self._device is None:
            if len(self._held) < HELD_EVENTS:  # bounded: a lock that never finishes its read
                self._held.append(event)  # the cloud hears of the device first
            else:
                log.warning("zigbee.event_dropped", device_id=self.device_id, event=str(name))
        else:
            self._sink.door_event(event)

    # ------------------------------------------------------------------ availability

    def seen(self) -> None:
        if not self.online:
            self.online, self._has_left = True, False
            if self._left.done():
                self._left = asyncio.get_running_loop().create_future()
            log.info("zigbee.device_online", device_id=self.device_id, ieee=self.ieee)
            self._event(EventName.DEVICE_CONNECTED)
            self._publish()
            # What it reported while out of reach (a hand turn, the door) was lost with its
            # frames: read it again, as after a reconnect. One that rejoined without its
            # bindings is read once it is configured again (`reconfigure`).
            if not self._unbound and (self._resyncing is None or self._resyncing.done()):
                self._resyncing = asyncio.get_running_loop().create_task(self.resync())

    def gone(self, reason: str) -> None:
        # what it heard at its keypad meanwhile is not heard here
        self._confirmed_codes.forget_all()
        if reason == "left":
            self._has_left = self._unbound = True
            self._cancel_retry()  # configured when it is back
            if not self._left.done():
                self._left.set_result(None)
        if self.online:
            self.online = False
            # programming events held for its user count were heard while it was here: they
            # go up before it is gone, 0xFF taken as all users (the count is not read now)
            if self._settling is not None:
                self._settling.cancel()
            self._release_programming()
            # and so was a bolt report still waiting for its operation event (or the event
            # would go up after the disconnect, once event_merge_s has run out)
            self._tell_pending()
            log.info(
                "zigbee.device_offline", device_id=self.device_id, ieee=self.ieee, reason=reason
            )
            self._event(EventName.DEVICE_DISCONNECTED, reason=reason)
            self._publish()

    # ------------------------------------------------------------------ zigpy callbacks

    def on_attribute(
        self,
        cluster_id: int,
        name: str | None,
        value: Any,
        *,
        reported: bool,
        attribute_id: int | None = None,
    ) -> None:
        """A standard attribute by its name: a manufacturer's attribute may share its id.
        `reported`: the lock sent it on its own, not as an answer to a read."""
        if (
            cluster_id == DoorLock.cluster_id
            and attribute_id == NIMLY_SOURCE
            and name in (None, _NIMLY_SOURCE_NAME)  # unknown to zigpy without the quirk
            and reported
            and isinstance(value, int)
        ):
            self._nimly_source(int(value))
            return
        if value is None or name not in _ATTRIBUTES.get(cluster_id, ()):
            return
        if not isinstance(value, int):
            log.info("zigbee.attribute_ignored", device_id=self.device_id, attribute=name)
            return
        # a read's answer is the state the lock is in: during `refresh`, or the first word on
        # a bolt or door never known (a resync after the read at pairing was lost), not a move
        quiet = not reported and (self._reading or self._never_known(name))
        if self._reading:
            key = (cluster_id, name)
            if reported:
                self._reported[key] = value
            elif key in self._reported:
                # zigpy applies a read's answer a turn after its frame, so a report sent after
                # the answer can come first: the report is the newer word (or a later one
                # follows). zigpy's cache gets it back; that update comes here, the same value.
                if value != self._reported[key]:
                    self._ep.in_clusters[cluster_id].update_attribute(name, self._reported[key])
                return
        if name == "lock_state":
            self._bolt_unread = False  # heard: reported, or a read answered
            self._lock_state_report(int(value), quiet=quiet)
            self._bolt_word()
        elif name == "door_state":
            self._door_state(int(value), quiet=quiet)
        elif name == "battery_percentage_remaining":
            self._apply_battery(int(value), quiet=quiet)
            self._publish()

    def on_command(self, cluster_id: int, command_id: int, args: Any) -> None:
        if cluster_id == DoorLock.cluster_id:
            if command_id == DoorLock.ClientCommandDefs.operation_event_notification.id:
                self._operation(args)
            elif command_id == DoorLock.ClientCommandDefs.programming_event_notification.id:
                self._programming(args)
        elif cluster_id == Alarms.cluster_id and command_id == 0x00:
            self._alarm(int(args.cluster_id), int(args.alarm_code))

    def _alarm(self, cluster_id: int, code: int) -> None:
        door_lock = cluster_id == DoorLock.cluster_id
        if code in _BATTERY_ALARMS and (door_lock or cluster_id == PowerConfiguration.cluster_id):
            self._battery_low()
        elif door_lock and code == 0:
            self._jam()
        elif door_lock and code in _TAMPER_ALARMS:
            self._event(EventName.TAMPERED, alarm_code=code)

    # ------------------------------------------------------------------ bolt state

    def _never_known(self, name: str) -> bool:
        """Nothing known yet of the bolt (`lock_state`) or the door (`door_state`)."""
        if name == "lock_state":
            return self.locked is None and not self.jammed and not self._bolt_unknown
        if name == "door_state":
            return self.door_open is None and not self._door_unknown
        return False

    def _apply_lock_state(self, state: int) -> bool | None:
        """Update bolt/jam from a lock_state value; returns the new locked value if definite."""
        if state == 0:  # not fully locked: jammed
            self.jammed = True
            return None
        if state in (1, 2):
            self.locked = state == 1
            self.jammed = self._bolt_unknown = False
            return self.locked
        self._bolt_unknown = True  # 0xFF undefined, or a value outside the enum
        return None

    def _jam(self, *, quiet: bool = False) -> None:
        self._jams += 1
        if self.jammed:
            self._wake()  # jammed again: a lock or unlock in flight failed
            return
        self.jammed = True
        if not quiet:
            self._event(EventName.DOOR_JAMMED)
        self._publish()

    def _lock_state_report(self, state: int, *, quiet: bool) -> None:
        if state == 0:
            self._jam(quiet=quiet)
            return
        if state not in (1, 2):
            if not self._bolt_unknown:
                log.info("zigbee.bolt_undefined", device_id=self.device_id, lock_state=state)
                self._apply_lock_state(state)
                self._publish()
            return
        locked = state == 1
        changed = locked != self.locked or self.jammed
        if not changed:
            if self._bolt_unknown:  # back to the state it had: known again, nothing moved
                self._bolt_unknown = False
                self._publish()
            return  # a repeat (zigpy's reported and updated events, our own cache write)
        # during the read, a first word on the bolt is its state (a lock may report it as soon
        # as its reporting is configured); its operation event, if it moved, tells otherwise
        quiet = quiet or (self._reading and self.locked is None)
        self._apply_lock_state(state)
        self._publish()
        if quiet:
            self._bolt_untold = asyncio.get_running_loop().time()
            return
        if self._pending is not None:
            # the move before this one is over, and no operation event came for it: told now
            self._bolt_event(not locked, Method.UNKNOWN, None)
        if self._expect is not None and self._expect == locked:
            self._bolt_event(locked, Method.REMOTE, None)
            return
        # Wait briefly for the operation event that usually accompanies a report.
        self._pending = asyncio.get_running_loop().call_later(
            self._opts.event_merge_s, self._bolt_event, locked, Method.UNKNOWN, None
        )

    def _bolt_event(self, locked: bool, method: Method, slot: int | None) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._bolt_untold = -1.0  # told now: a later operation event is no news of it
        if method is Method.REMOTE:
            self._confirmed = True  # our command's report went out: set_locked sends no other
        details: dict[str, Any] = {"method": str(method)}
        if slot is not None:
            details["slot_id"] = slot
        self._event(EventName.DOOR_LOCKED if locked else EventName.DOOR_UNLOCKED, **details)

    def _operation(self, args: Any) -> None:
        code, source, user = (
            int(args.operation_event_code),
            int(args.operation_event_source),
            int(args.user_id),
        )
        # args.pin is never read: some locks send the PIN that was typed.
        if code in _WRONG_CODE:
            self._event(EventName.KEYPAD_INVALID_CODE, method=str(Method.KEYPAD))
            return
        if code in _OFF_SCHEDULE:
            named = {"slot_id": user} if self._names_slot(user) else {}
            self._event(EventName.KEYPAD_INVALID_CODE, method=str(Method.KEYPAD), **named)
            return
        if code in _LOCKS:
            locked = True
        elif code in _UNLOCKS:
            locked = False
        else:
            return
        method, slot = self._method(code, source, user, locked)
        self._bolt_told(locked, method, slot)

    def _nimly_source(self, value: int) -> None:
        """A Nimly lock's word on its last bolt move (attribute 0x0100), in place of the
        operation event it does not send: merged with its lock_state report as one event."""
        source, action, user = value >> 24 & 0xFF, value >> 16 & 0xFF, value & 0xFFFF
        if action not in (1, 2):
            return
        locked = action == 1
        slot = user if self._names_slot(user) else None  # 0: none, or the master code
        ours = self._expect == locked
        if source == _NIMLY_KEYPAD:
            method = Method.PIN_CODE if slot is not None else Method.KEYPAD
        elif source == _NIMLY_ZIGBEE:
            method, slot = (Method.REMOTE if ours else Method.RF), None
        elif source == _NIMLY_UNATTRIBUTED:  # a Zigbee command, the auto-relock, the inside keypad
            method, slot = (Method.REMOTE if ours else Method.UNKNOWN), None
        elif source == _NIMLY_AUTO:
            method, slot = (Method.AUTO if locked else Method.UNKNOWN), None
        else:  # fingerprint, RFID tag: the slot it names, if any
            method = Method.UNKNOWN
        self._bolt_told(locked, method, slot)

    def _bolt_told(self, locked: bool, method: Method, slot: int | None) -> None:
        """The lock told how its bolt moved: one event with its lock_state report."""
        self._bolt_word()
        if self._pending is not None and self.locked is not None and self.locked != locked:
            # a report waiting for its operation event, and this one tells of the next move (a
            # Yale lock tells before it reports): the move before is over, told now
            self._bolt_event(self.locked, Method.UNKNOWN, None)
        untold = asyncio.get_running_loop().time() - self._bolt_untold <= self._opts.event_merge_s
        pending = self._pending is not None or untold
        changed = locked != self.locked or self.jammed
        was_unknown = self._bolt_unknown
        self.locked, self.jammed, self._bolt_unknown = locked, False, False
        if changed or was_unknown:
            self._publish()
            # zigpy's persisted cache follows what the lock told us: bookkeeping, so it
            # waits until the action this notification confirms has been woken
            if self._cache_write is None:
                self._cache_write = asyncio.get_running_loop().call_soon(self._cache_bolt)
        if pending or changed:
            self._bolt_event(locked, method, slot)

    def _cache_bolt(self) -> None:
        """Write the bolt state we know into zigpy's attribute cache (and so its database)."""
        self._cache_write = None
        if self.locked is None or self.jammed or self._bolt_unknown:
            return  # unknown, or jammed: the lock's own report put that in the cache
        state = DoorLock.LockState(1 if self.locked else 2)
        if self.door_lock.get("lock_state") != state:
            self.door_lock.update_attribute(0x0000, state)

    def _method(self, code: int, source: int, user: int, locked: bool) -> tuple[Method, int | None]:
        if code == int(_OP.AutoLock):
            return Method.AUTO, None
        if code == int(_OP.OnTouchLock):  # the keypad's lock button, whatever source it names
            return Method.KEYPAD, None
        if code in (
            int(_OP.Manual_Lock),
            int(_OP.Manual_Unlock),
            int(_OP.KeyLock),
            int(_OP.KeyUnlock),
        ):
            return Method.MANUAL, None
        if source == int(_SRC.Manual):
            return Method.MANUAL, None
        if source == int(_SRC.Keypad):
            # a user id outside the lock's slots (0, 0xFFFF: none) names no code
            slot = user if self._names_slot(user) else None
            if slot is not None and (not locked or code == int(_OP.Lock)):
                return Method.PIN_CODE, slot
            return Method.KEYPAD, None
        if source == int(_SRC.RF):
            return (Method.REMOTE if self._expect == locked else Method.RF), None
        return Method.UNKNOWN, None

    def _door_state(self, state: int, *, quiet: bool) -> None:
        """0 open, 1 closed, 3 forced open; 2 jammed, 4 error, 0xFF or another value: unknown."""
        if state not in (0, 1, 3):
            if not self._door_unknown:
                log.info("zigbee.door_undefined", device_id=self.device_id, door_state=state)
                self._door_unknown = True
                self._publish()
            return
        is_open = state != 1
        was_unknown, self._door_unknown = self._door_unknown, False
        if is_open == self.door_open:
            if was_unknown:
                self._publish()
            return
        self.door_open = is_open
        if not quiet:
            self._event(EventName.DOOR_OPENED if is_open else EventName.DOOR_CLOSED)
        self._publish()

    def _apply_battery(self, raw: int, *, quiet: bool) -> None:
        """battery_percentage_remaining, in half percent; 0xFF (ZCL: invalid) or beyond 200 (also
        0xFF doubled by a whole-percent quirk) is unknown."""
        if not 0 <= raw <= 200:
            if self.battery is not None:
                log.info("zigbee.battery_unknown", device_id=self.device_id, raw=raw)
            self.battery = None
            return
        level = raw / 200
        self.battery = level
        if level < LOW_BATTERY:
            self._battery_low(quiet=quiet)
        elif level >= BATTERY_RECOVERED:
            self._low_battery = False

    def _battery_low(self, *, quiet: bool = False) -> None:
        """`low battery`, once until the battery is seen recovered: from the percentage, or from
        the lock's own alarm (the only word of a lock that reports no or a wrong percentage)."""
        if self._low_battery:
            return
        self._low_battery = True
        if not quiet:
            level = {} if self.battery is None else {"battery_level": self.battery}
            self._event(EventName.LOW_BATTERY, **level)

    def _programming(self, args: Any) -> None:
        code, user = int(args.program_event_code), int(args.user_id)
        if self._code_slot is not None and user == self._code_slot:
            self._programmed[user] = code  # confirmation of our own set/clear
            self._changed.set()
            self._changed = asyncio.Event()
            return
        if self._held_programming is not None:
            self._held_programming.append(args)  # after the one that waits: in order
            return
        if user == _USER_FF and not self.codes().slots_known and not self._closed:
            # all codes cleared, or slot 255 of a lock with more users: told once its user
            # count is read (all the lock's programming events meanwhile after it, in order)
            self._held_programming = [args]
            self._settling = asyncio.get_running_loop().create_task(self._settle_programming())
            return
        self._programmed_at_lock(args)

    async def _settle_programming(self) -> None:
        """The held programming events, once the user count is read; if it cannot be, 0xFF is
        all users (what the ZCL has it mean on the locks that have one)."""
        await self._limits_now()
        self._release_programming()

    def _release_programming(self) -> None:
        """The held programming events go up, in order: at the user count, or at `close`."""
        held, self._held_programming = self._held_programming, None
        if held is None:
            return
        if self._limits_unknown():
            log.info("zigbee.user_ff_taken_as_all", device_id=self.device_id)
        for args in held:
            self._programmed_at_lock(args)

    def _programmed_at_lock(self, args: Any) -> None:
        code, user = int(args.program_event_code), int(args.user_id)
        source = int(args.program_event_source)
        method = str(_PROGRAMMING_METHODS.get(source, Method.UNKNOWN))
        if not self._names_slot(user):
            if code == int(_PROG.PINCodeDeleted) and user in _ALL_USERS:
                # every slot emptied at the lock: none holds a code we saw confirmed any more
                self._confirmed_codes.forget_all()
                log.warning("zigbee.all_codes_deleted", device_id=self.device_id)
                self._event(EventName.CODE_REMOVED, all_codes=True, method=method)
            elif code in _PIN_CHANGES:
                log.info("zigbee.programming_slot_ignored", device_id=self.device_id, slot_id=user)
            return
        if source != int(_SRC.Keypad) and self._is_own_echo(user, code):
            return  # the lock confirming our own set/clear after its read-back: reported already
        if (
            source != int(_SRC.Keypad)
            and code in (int(_PROG.PINCodeAdded), int(_PROG.PINCodeChanges))
            and self._late_sets.came(user)
        ):
            # a set reported failed (its event did not come in time) was carried out after all
            self._confirmed_codes.forget(user)
            log.warning("zigbee.code_set_late", device_id=self.device_id, slot_id=user)
            self._event(EventName.CODE_SET, slot_id=user, method=str(Method.REMOTE))
            return
        if (
            source != int(_SRC.Keypad)
            and code == int(_PROG.PINCodeDeleted)
            and self._late_sets.came(user, present=False)
        ):
            # a clear reported failed (no word from the lock in time) was carried out after all
            self._confirmed_codes.forget(user)
            log.warning("zigbee.code_clear_late", device_id=self.device_id, slot_id=user)
            self._event(EventName.CODE_REMOVED, slot_id=user, method=str(Method.REMOTE))
            return
        self._confirmed_codes.forget(user)
        if code in (int(_PROG.PINCodeAdded), int(_PROG.PINCodeChanges)):
            self._event(EventName.CODE_SET, slot_id=user, method=method)
        elif code == int(_PROG.PINCodeDeleted):
            self._event(EventName.CODE_REMOVED, slot_id=user, method=method)

    # ------------------------------------------------------------------ commands

    async def _call(
        self,
        make: Callable[[], Awaitable[Any]],
        *,
        last_try: bool = True,
        idempotent: bool = True,
    ) -> Any:
        """One zigpy request (`make` makes it), bounded, cut short if the lock leaves or the
        radio goes; errors become typed. A failed delivery that is not the `last_try` is
        _Undelivered, and does not mark the lock out of reach.

        zigpy fails the requests waiting in its queue for a lock (it sends one at a time) when
        the lock joins or announces itself: a rejoin, batteries changed, its router restarted.
        Those were never sent: sent again (REJOIN_SENDS in all), and the lock stays online.

        zigpy takes a frame for a request's answer by its TSN alone: a notification of the
        lock's own that carries the TSN of our request (1 in 256) is handled as the lock's
        word it is, and the request, its answer lost, sent again if `idempotent`, else
        _AnswerLost."""
        for attempt in range(REJOIN_SENDS):
            try:
                return await self._call_once(make(), last_try=last_try)
            except _Rejoined:
                if attempt == REJOIN_SENDS - 1:
                    raise DeviceError(
                        "the lock kept rejoining the network: the request was not delivered"
                    ) from None
                await asyncio.sleep(BOLT_RESEND_S)
            except _Overtaken:
                if not idempotent:
                    raise _AnswerLost("the lock's answer was lost") from None
                if attempt == REJOIN_SENDS - 1:
                    raise DeviceError("the lock's answers kept being lost") from None
        raise AssertionError("unreachable: the last send returns or raises")

    async def _call_once(self, aw: Awaitable[Any], *, last_try: bool) -> Any:
        if self._closed or (not self.online and self._left.done()):
            if asyncio.iscoroutine(aw):
                aw.close()  # never sent
            if self._removed:
                raise _LockRemoved("the lock was removed from the gateway")
            if self._closed:
                raise DeviceError("the zigbee radio is down")
            raise DeviceOffline("the lock has left the network")
        hearings = self._hearings
        task = _start(aw)
        left = self._left
        try:
            async with asyncio.timeout(self._opts.command_timeout_s):
                done, _ = await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise ActionTimeout(
                f"the lock did not answer within {self._opts.command_timeout_s:g} s"
            ) from None
        finally:
            if not task.done():
                task.cancel()
        if task not in done:
            if self._closed:
                raise self._cut("during the command")
            raise DeviceOffline("the lock left the network during the command")
        try:
            result = task.result()
        except TimeoutError:
            raise _AnswerLost("the lock did not answer") from None
        except exceptions.DeliveryError:
            if self._closed:  # the radio's failure, not the lock's: it stays online
                raise self._cut("during the command") from None
            if self._hearings != hearings:
                # heard meanwhile (zigpy's rejoin failure comes just after the lock's word):
                # on the network, and the request was not delivered
                raise _Rejoined from None
            if not last_try:
                raise _Undelivered from None
            self.gone("unreachable")
            raise DeviceOffline("the lock is unreachable") from None
        except exceptions.ParsingError:
            raise DeviceError("the lock's answer could not be parsed") from None
        except exceptions.ZigbeeException as exc:
            raise DeviceError(f"zigbee error: {type(exc).__name__}") from None
        except _Overtaken as exc:
            self.seen()
            log.info("zigbee.answer_overtaken", device_id=self.device_id, command_id=exc.command)
            self.on_command(DoorLock.cluster_id, exc.command, exc.notification)
            raise
        self.seen()
        return result

    @staticmethod
    def _status(rsp: Any) -> Any:
        if isinstance(rsp, foundation.DefaultResponse) or hasattr(rsp, "status"):
            return rsp.status
        return None

    async def set_locked(self, locked: bool) -> ActionResult:
        self._expect, self._confirmed = locked, False
        words = self._words
        try:
            answered = await self._send_bolt(locked)
            if answered is not None:
                status = self._status(answered)
                if status != foundation.Status.SUCCESS:
                    raise DeviceError(
                        f"the lock refused to {'lock' if locked else 'unlock'} ({_name(status)})"
                    )
            await self._await_bolt(locked, words, answered=answered is not None)
            if not self._confirmed:
                # The bolt was already there, so the lock reports no change; the cloud still
                # gets the `remote` report that tells it the command reached the lock (what the
                # Z-Wave driver and the simulator send too). A change heard before this command
                # and still waiting for its method goes out first, as it is.
                if self._pending is not None:
                    self._bolt_event(locked, Method.UNKNOWN, None)
                self._bolt_event(locked, Method.REMOTE, None)
        except _RadioLost as exc:  # sent, or on its way: the lock may have moved
            raise DeviceError(f"{exc}: whether the lock moved is unknown") from None
        finally:
            self._expect = None
        return ActionResult({"locked": locked})

    async def _send_bolt(self, locked: bool) -> Any:
        """lock_door or unlock_door; the lock's answer, or None if it was lost. Sent again only
        when the radio could not deliver it: zigpy also sends a request again when its answer
        is late (after 5 s, to a lock that routes), and a lock that took the first one then
        moves twice (an unlock repeated after a hand lock in between)."""
        dl = self.door_lock
        for attempt in range(BOLT_SENDS):
            command = dl.lock_door if locked else dl.unlock_door
            try:
                return await self._call(
                    functools.partial(command, retries=0),
                    last_try=attempt == BOLT_SENDS - 1,
                    idempotent=False,
                )
            except _Undelivered:
                await asyncio.sleep(BOLT_RESEND_S)
            except _AnswerLost:
                return None  # delivered: the bolt tells whether the lock took it
        raise AssertionError("unreachable: the last try raises")

    async def _await_bolt(self, locked: bool, words: int, *, answered: bool = True) -> None:
        """Until the lock itself says its bolt is at `locked`, in a word heard since the
        command was sent (`words`: the count then): a report, an operation event, or the
        answer to a read. The state we hold may already be the target without being true (a
        hand turn whose report was lost): taken as the outcome, the command would complete
        with no word from the lock, and a jam reported a moment later would contradict it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._opts.command_timeout_s
        # Only a jam reported after the lock took this command is its outcome: an earlier one
        # is what the command may clear, and the lock reports the bolt when it has.
        jams = self._jams
        while self._words == words or self.locked != locked or self.jammed or self._bolt_unknown:
            if self._jams != jams:
                raise DeviceError("the bolt jammed")
            if self._closed:  # its report, if it comes, reaches the lock adopted after reconnect
                raise self._cut("before the lock reported its bolt")
            remaining = deadline - loop.time()
            if remaining <= 0:
                if not answered:
                    raise ActionTimeout("the lock did not answer, and its bolt did not move")
                raise ActionTimeout("the lock acknowledged but never reported the new bolt state")
            changed = self._changed
            try:
                async with asyncio.timeout(min(self._opts.report_wait_s, remaining)):
                    await changed.wait()
            except TimeoutError:
                await self._call(
                    lambda: self.door_lock.read_attributes(["lock_state"], allow_cache=False)
                )

    def late_hold_s(self, action: Action) -> float:
        """How long `action` would first wait out a failed set's late event (LateSets.hold_s)."""
        return self._late_sets.hold_s(action)

    async def set_code(self, slot: int, pin: PinCode) -> ActionResult:
        dl = self.door_lock
        await self._late_sets.wait_out(slot)  # or a failed set's late event would confirm this
        # The slot as the lock holds it now, so that a code it already holds is neither written
        # again nor reported as a change.
        digest = code_digest(pin.reveal())
        held = _readback(await self._call(lambda: dl.get_pin_code(slot)))
        in_use = held is not None and held[0] in _CODE_HELD and not _is_free(held)
        shown = held[1] if held is not None and in_use and _is_code(held[1]) else None
        if shown is not None and same_code(shown, pin.reveal()):
            log.info("zigbee.code_already_set", device_id=self.device_id, slot_id=slot)
            return ActionResult({"slot_id": slot})
        # A lock that masks codes cannot show which one it holds: the code is written again, and
        # reported unless we confirmed this very code there and heard of no change since.
        ours = self._confirmed_codes.take(slot, digest)
        unchanged = ours and in_use and shown is None
        self._code_slot, self._programmed = slot, {}
        try:
            rsp = await self._call(
                lambda: dl.set_pin_code(
                    slot, DoorLock.UserStatus.Enabled, DoorLock.UserType.Unrestricted, pin.reveal()
                )
            )
            status = self._status(rsp)
            if status != foundation.Status.SUCCESS:
                raise await self._refused(slot, len(pin.reveal()), status)
            readback = await self._call(lambda: dl.get_pin_code(slot))
            stored = _readback(readback)
            if stored is not None and stored[0] not in _CODE_HELD:
                if stored[0] == int(DoorLock.UserStatus.Available):
                    raise CodeNotConfirmed("the lock did not store the code")
                status = _name(DoorLock.UserStatus(stored[0]))
                raise CodeNotConfirmed(f"slot {slot}: the lock holds the code as {status}")
            if stored is None or not _is_code(stored[1]):  # masked, or no digits to compare
                try:
                    await self._await_programmed(
                        {int(_PROG.PINCodeAdded), int(_PROG.PINCodeChanges)}
                    )
                except CodeNotConfirmed:
                    self._late_sets.failed(slot)
                    raise
                self._confirmed_codes.confirmed(slot, digest)
            elif not same_code(stored[1], pin.reveal()):
                raise CodeNotConfirmed("the lock reads back a different code")
        except (ActionTimeout, asyncio.CancelledError):
            # sent, then no word in time (a late answer, the action's deadline): the lock may
            # have stored the code, and its programming event may still come
            self._late_sets.failed(slot)
            raise
        except _RadioLost:
            # the lock may have stored it: its programming event, if it comes after the
            # reconnect, goes up as the set carried out
            self._late_sets.failed(slot)
            raise DeviceError(
                f"slot {slot}: the zigbee radio went down before the lock confirmed the code:"
                " whether the lock holds it is unknown"
            ) from None
        finally:
            self._code_slot = None
        self._expect_echo(slot, int(_PROG.PINCodeAdded), int(_PROG.PINCodeChanges))
        if unchanged:
            log.info("zigbee.code_rewritten", device_id=self.device_id, slot_id=slot)
        else:
            self._event(EventName.CODE_SET, slot_id=slot, method=str(Method.REMOTE))
        return ActionResult({"slot_id": slot})

    async def clear_code(self, slot: int) -> ActionResult:
        dl = self.door_lock
        await self._late_sets.wait_out(slot)  # a failed set's late event is reported before this
        self._confirmed_codes.forget(slot)
        if _is_free(_readback(await self._call(lambda: dl.get_pin_code(slot)))):
            log.info("zigbee.code_already_clear", device_id=self.device_id, slot_id=slot)
            return ActionResult({"slot_id": slot})  # nothing to clear, and no change to report
        self._code_slot, self._programmed = slot, {}
        try:
            rsp = await self._call(lambda: dl.clear_pin_code(slot))
            status = self._status(rsp)
            if status != foundation.Status.SUCCESS:
                raise DeviceError(f"the lock refused to clear the code ({_name(status)})")
            stored = _readback(await self._call(lambda: dl.get_pin_code(slot)))
            not_reported = stored is not None and stored[0] == int(
                DoorLock.UserStatus.Not_Supported
            )
            if stored is None or (not_reported and stored[1] and not _is_code(stored[1])):
                # no answer, or no user status and a masked code: only the lock's
                # programming event tells whether the slot was cleared
                try:
                    await self._await_programmed({int(_PROG.PINCodeDeleted)})
                except CodeNotConfirmed:
                    self._late_sets.failed(slot, present=False)
                    raise
            elif not_reported:
                # 0xFF: the lock does not report a user status, so the code itself tells;
                # digits mean it is still there, an empty code that the slot is free
                if stored[1]:
                    raise CodeNotConfirmed("the slot still holds a code")
            elif stored[0] != int(DoorLock.UserStatus.Available):
                raise CodeNotConfirmed("the slot still holds a code")
        except (ActionTimeout, asyncio.CancelledError, _RadioLost):
            # sent, then no word in time (a late answer, the action's deadline, the radio's
            # loss): the lock may have cleared the slot, and its programming event may still come
            self._late_sets.failed(slot, present=False)
            raise
        finally:
            self._code_slot = None
        self._expect_echo(slot, int(_PROG.PINCodeDeleted))
        self._event(EventName.CODE_REMOVED, slot_id=slot, method=str(Method.REMOTE))
        return ActionResult({"slot_id": slot})

    async def _refused(self, slot: int, length: int, status: Any) -> GatewayError:
        """The error for a refused code. One checked against a guess (the lock's limits unread:
        the read after joining went unanswered) is checked again once they are read: a slot or
        length outside them is invalid input naming the lock's range, not a bare refusal."""
        number = int(status) if isinstance(status, int) else None
        if number not in (_PIN_MEMORY_FULL, _PIN_DUPLICATE):
            await self._limits_now()
            # read by now, or since the check (made against the guess if so)
            errors = self.codes().errors(slot, length)
            if errors and not self._limits_unknown():
                return InvalidInput("invalid input for this lock", errors)
        return _code_refused(slot, status)

    def _expect_echo(self, slot: int, *codes: int) -> None:
        """Locks send the programming event for a change we made when they like, often after
        answering the read-back; one that comes within OWN_ECHO_S is not a second change."""
        if self._programmed.get(slot) in codes:
            return  # it came already, as the confirmation
        now = asyncio.get_running_loop().time()
        # expired ones go here too: a lock that never sends the echo (nothing else would prune
        # them) must not keep one entry per code change it ever made
        self._own_programming = [own for own in self._own_programming if own[2] >= now]
        self._own_programming.append((slot, frozenset(codes), now + OWN_ECHO_S))

    def _is_own_echo(self, slot: int, code: int) -> bool:
        """Whether a programming event is the awaited echo of our own change (used up if so)."""
        now = asyncio.get_running_loop().time()
        self._own_programming = [own for own in self._own_programming if own[2] >= now]
        for own in self._own_programming:
            if own[0] == slot and code in own[1]:
                self._own_programming.remove(own)
                return True
        return False

    async def _await_programmed(self, codes: set[int]) -> None:
        """Masked read-back: the lock's programming event is the only confirmation.

        Waited for as long as a command's answer (command_timeout_s), not report_wait_s:
        locks send it when they like, often seconds later, and there is no read to fall back
        on. Given up sooner, an action fails that the lock did carry out, and its late event
        then goes up as a change made at the lock. The action's deadline still cuts it."""
        slot = self._code_slot
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._opts.command_timeout_s
        while self._programmed.get(slot or 0) not in codes:
            if self._closed:  # its event, if it comes, reaches the lock adopted after a reconnect
                raise self._cut(
                    "before the lock confirmed the change: whether it was made is unknown"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise CodeNotConfirmed("the lock masks codes and sent no programming event")
            changed = self._changed
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                continue


def _start(aw: Awaitable[Any]) -> asyncio.Future[Any]:
    """The request as a task that runs at once, up to its first wait: the frame is handed to
    the radio before the caller yields, so nothing else ready on the loop (a store commit,
    another lock's report) goes in front of it. A plain task would start a loop turn later."""
    if asyncio.iscoroutine(aw):
        return asyncio.eager_task_factory(asyncio.get_running_loop(), aw)
    return asyncio.ensure_future(aw)


def _codes(lo: Any, hi: Any, users: Any, unread: bool) -> CodeConstraints:
    """Code lengths and slots from the lock's min_pin_len, max_pin_len and user count."""
    c = UNREAD_CODES if unread else DEFAULT_CODES
    if lo is not None and hi is not None and 1 <= int(lo) <= int(hi) <= 16:
        c = replace(c, min_length=int(lo), max_length=int(hi), lengths_known=True)
    if users is not None and int(users) >= 2:
        c = replace(c, min_slot=1, max_slot=int(users) - 1)
    return c


def _readback(rsp: Any) -> tuple[int, str] | None:
    """(user_status, code) from get_pin_code_response; None when the lock cannot answer."""
    if not hasattr(rsp, "user_status"):
        return None
    return int(rsp.user_status), str(rsp.code)


def _is_free(stored: tuple[int, str] | None) -> bool:
    """Whether a read-back shows an empty slot: user status Available, or 0xFF (the lock
    reports no user status) with no code."""
    if stored is None:
        return False
    status, code = stored
    return status == int(DoorLock.UserStatus.Available) or (
        status == int(DoorLock.UserStatus.Not_Supported) and not code
    )


def _is_code(code: str) -> bool:
    """Whether a read-back holds a code: digits (not a mask, not bytes decoded as U+FFFD)."""
    return code.isascii() and code.isdigit()


def _name(status: Any) -> str:
    return str(getattr(status, "name", status))


def _code_refused(slot: int, status: Any) -> DeviceError:
    """The error for a set_pin_code_response status other than success (ZCL Door Lock:
    1 general failure, 2 memory full, 3 duplicate code; zigpy names 2 and 3 as other statuses)."""
    refused = f"slot {slot}: the lock refused the code"
    number = int(status) if isinstance(status, int) else None
    if number == _PIN_MEMORY_FULL:
        return CodeMemoryFull(f"{refused}: its code memory is full")
    if number == _PIN_DUPLICATE:
        return DuplicateCode.in_slot(slot)
    if number == _PIN_GENERAL_FAILURE:
        return DeviceError(f"{refused} (general failure)")
    return DeviceError(f"{refused} ({_name(status)})")


class _AnswerLost(ActionTimeout):
    """zigpy's wait for the lock's answer ran out: the request went out, and may have been
    carried out."""


class _RadioLost(DeviceError):
    """The radio connection went down while a request was out: it may have been carried out."""


class _LockRemoved(DeviceError):
    """The lock was removed from the gateway while a request was out (`close(removed=True)`)."""


class _Overtaken(Exception):
    """zigpy took a notification of the lock's own, with our request's TSN, for its answer."""

    def __init__(self, command: int, notification: Any) -> None:
        super().__init__(command)
        self.command, self.notification = command, notification


_NOTIFICATIONS: Final = (
    DoorLock.ClientCommandDefs.operation_event_notification,
    DoorLock.ClientCommandDefs.programming_event_notification,
)


def _guard_answers(cluster: Any) -> None:
    """zigpy matches a frame to a pending request of the cluster by its TSN alone: a
    notification the lock sends with the TSN of one of our requests becomes that request's
    answer (a command's, or a read's, which zigpy then takes for failed attributes), and never
    reaches the cluster's handlers. Raised as _Overtaken instead; idempotent."""
    if "request" in vars(cluster):
        return
    request = cluster.request

    async def checked(*args: Any, **kwargs: Any) -> Any:
        result = await request(*args, **kwargs)
        for command in _NOTIFICATIONS:
            if isinstance(result, cluster.client_commands.get(command.id, command).schema):
                raise _Overtaken(int(command.id), result)
        return result

    cluster.request = checked


class _Undelivered(Exception):
    """The radio could not deliver a request that will be sent again."""


class _Rejoined(Exception):
    """A request not delivered to a lock heard meanwhile: zigpy fails those it has queued for a
    lock that joins or announces itself."""


class _DeviceRelay:
    """zigpy's device listener protocol: the device's own events (not its clusters')."""

    def __init__(self, lock: ZigbeeLock) -> None:
        self._lock = lock

    def device_last_seen_updated(self, last_seen: Any) -> None:
        del last_seen
        self._lock._heard()


class _Relay:
    """zigpy's cluster listener protocol, forwarding with the cluster's id attached."""

    def __init__(self, lock: ZigbeeLock, cluster_id: int) -> None:
        self._lock, self._cluster_id = lock, cluster_id

    def attribute_event(self, event: Any) -> None:
        """AttributeReportedEvent / AttributeUpdatedEvent / AttributeReadEvent: a report, a
        quirk's value, a read's answer. zigpy does not catch a listener's exception: it would
        cut short the rest of the lock's frame."""
        try:
            # a value a quirk rewrote comes as an update, from a report or a read's answer
            reported = event.event_type == zcl.AttributeReportedEvent.event_type or (
                event.event_type == zcl.AttributeUpdatedEvent.event_type and _Reporting.now
            )
            self._lock.on_attribute(
                self._cluster_id,
                event.attribute_name,
                event.value,
                reported=reported,
                attribute_id=int(event.attribute_id),
            )
        except Exception as exc:  # noqa: BLE001 - one odd attribute must not cost the others
            self._failed("attribute", int(event.attribute_id), exc)

    def cluster_command(self, tsn: int, command_id: int, args: Any) -> None:
        try:
            self._lock.on_command(self._cluster_id, int(command_id), args)
        except Exception as exc:  # noqa: BLE001 - zigpy would log it at debug level only
            self._failed("command", int(command_id), exc)

    def _failed(self, what: str, number: int, exc: Exception) -> None:
        log.warning(
            "zigbee.report_failed",
            device_id=self._lock.device_id,
            cluster_id=self._cluster_id,
            what=what,
            number=number,
            error=type(exc).__name__,
        )
