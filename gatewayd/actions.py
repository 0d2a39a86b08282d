"""The dispatcher: validates action requests, runs them one at a time per device, enforces
deadlines, keeps the status state machine, and reports every transition through one callback.

Guarantees: an action id is executed at most once (also across restarts: one found unfinished
at start-up is failed with `gateway_restarted`, never re-run); an action never starts after its
deadline and is cancelled when the deadline passes; per-device FIFO (but for a code change
its driver holds back, see `_next_job`), devices run concurrently.

Hand-off: an action from the cloud starts only once the cloud has acknowledged its
`gateway_received` report. The cloud answers a report that comes after its own hand-off
timeout (it has told its user `gateway_failure`) with `action_cancel` before that ack, so an
action the cloud gave up on is never run late.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, Protocol

import anyio
import anyio.lowlevel
import msgspec
import structlog
from anyio.abc import TaskGroup

from gatewayd.logging import get_logger
from gatewayd.model import (
    DEVICE_ACTIONS,
    Action,
    ActionName,
    ActionNotSupported,
    ActionRequest,
    ActionResult,
    ActionStatus,
    ActionTimeout,
    ClearCode,
    Device,
    DeviceError,
    DeviceNotFound,
    GatewayError,
    GatewayRestarted,
    InvalidInput,
    Lock,
    PinCode,
    SetCode,
    Unlock,
    check_transition,
    iso,
    utcnow,
)
from gatewayd.store import ActionRow, Store

log = get_logger(__name__)

GATEWAY_QUEUE: Final = "gateway"
RECENT_KEEP: Final = 50
SEEN_KEEP: Final = 1024  # recent ids in memory (bounded RSS); the store answers for the rest
REMOTE_GRACE_S: Final = 5.0  # a remote lock/unlock report this soon after our action answers it
YIELD_EVERY: Final = 8  # jobs a worker runs back to back before it lets other tasks run
HOLD_POLL_S: Final = 0.2  # how often a worker whose every job is held asks again (hold_s)
# A queue's worker that has had nothing to do for this long ends, and takes its entries with
# it: a box pairs and unpairs locks for months, and a worker (and its dict entries) kept for
# every device ever acted on would grow it for good. The next action starts a new worker.
WORKER_IDLE_S: Final = 60.0
_DIGITS = re.compile(r"[0-9]+")  # used with fullmatch: "$" would let a final "\n" in


def _loop_time() -> float:
    """`anyio.current_time()` on the asyncio loop the daemon runs on, without its lookups."""
    return asyncio.get_running_loop().time()


class StatusUpdate(msgspec.Struct, frozen=True):
    """One status transition of one action request, as reported upstream."""

    action_request_id: str
    status: ActionStatus
    at: datetime
    error: dict[str, Any] | None = None
    action: str = ""
    duration_s: float | None = None  # set on terminal transitions of executed actions
    at_iso: str = ""  # `iso(at)`, formatted once for the store and the outbox


# Reports one transition; returns the outbox seq of the frame that carries it, if any.
StatusCallback = Callable[[StatusUpdate], int | None]


class HandoffCancelled(GatewayError):
    """The cloud gave up on this action (hand-off timeout) before the gateway could run it."""

    type = "cancelled"


class Executor(Protocol):
    """What the dispatcher needs from the rest of the daemon (the device registry)."""

    def device(self, device_id: str) -> Device | None: ...

    def unreported(self, device_id: str) -> GatewayError | None:
        """The error for a device it knows but cannot reach now (see Registry.unreported)."""
        ...

    def hold_s(self, device_id: str, action: Action) -> float:
        """See Driver.hold_s."""
        ...

    async def execute(self, device_id: str, action: Action) -> ActionResult: ...

    async def pair(self, duration_s: int, inputs: Mapping[str, Any]) -> None: ...

    async def unpair(self, duration_s: int, device_id: str | None) -> None:
        """Raises DeviceNotFound for a device id it does not know."""
        ...


class _Seen(msgspec.Struct):
    """A recent id: how it ended (None while it has not), for a cloud cancel that comes late."""

    logged: bool = False  # its late cancel was logged
    status: str | None = None
    error_type: str | None = None
    started: bool = False  # it reached the device (or may have, before a restart)


class _Job(msgspec.Struct):
    request: ActionRequest
    action: Action | None  # None for gateway actions
    queue: str
    status: ActionStatus
    transitions: list[tuple[str, str]] = msgspec.field(default_factory=list)
    started: float | None = None
    finished: float | None = None
    error: dict[str, Any] | None = None
    deadline_iso: str = ""  # iso(request.deadline), formatted on the first transition
    receipt: int = 0  # the store commit that makes gateway_received durable
    due: float = 0.0  # the deadline on the loop's monotonic clock, fixed when received
    handoff_seq: int = 0  # from the cloud: the outbox seq of gateway_received it must ack
    cancelled: str | None = None  # why the cloud cancelled it, before it started
    waiting: anyio.CancelScope | None = None  # set while it waits for the cloud's ack

    def snapshot(self) -> dict[str, Any]:
        """What /status shows of an action: never its inputs."""
        return {
            "id": self.request.id,
            "entity_id": self.request.entity_id,
            "action": self.request.action,
            "status": str(self.status),
            "error": self.error,
            "transitions": [{"status": s, "at": t} for s, t in self.transitions],
            "duration_ms": (
                round((self.finished - self.started) * 1000, 1)
                if self.started is not None and self.finished is not None
                else None
            ),
        }


# --------------------------------------------------------------------------- validation


def validate(request: ActionRequest, device: Device | None) -> Action | None:
    """Turn raw inputs into a typed Action (None for gateway actions) or raise a GatewayError."""
    inputs = request.inputs
    if not isinstance(inputs, Mapping):
        raise InvalidInput("inputs must be an object", {"inputs": "must be an object"})
    try:
        name = ActionName(request.action)
    except ValueError:
        raise ActionNotSupported(f"unknown action {request.action!r}") from None
    if request.entity_type == "Gateway":
        if name in DEVICE_ACTIONS:
            raise ActionNotSupported(f"{name} is a device action")
        _validate_gateway_inputs(name, inputs)
        return None
    if request.entity_type != "Device":
        raise InvalidInput("entity_type must be Device or Gateway", {"entity_type": "invalid"})
    if device is None:
        raise DeviceNotFound(f"device {request.entity_id} not found")
    if name not in device.actions:
        raise ActionNotSupported(f"{name} is not supported by this device")
    return _device_action(name, inputs, device)


_DEVICE_INPUTS: Final[Mapping[ActionName, frozenset[str]]] = {
    ActionName.LOCK: frozenset(),
    ActionName.UNLOCK: frozenset(),
    ActionName.SET_CODE: frozenset({"code", "slot_id"}),
    ActionName.CLEAR_CODE: frozenset({"slot_id"}),
}


def _device_action(name: ActionName, inputs: Mapping[str, Any], device: Device) -> Action:
    errors: dict[str, str] = {}
    allowed = _DEVICE_INPUTS[name]
    for key in inputs:
        if key not in allowed:
            errors[str(key)] = "unknown input"
    codes = device.codes
    slot_range = codes.slot_range()
    slot: int | None = None
    if name in (ActionName.SET_CODE, ActionName.CLEAR_CODE):
        raw = inputs.get("slot_id")
        if raw is None and name is ActionName.SET_CODE and codes.has_slot(1):
            raw = 1  # the seed: "If you do not provide this value, the slot_id will default to 1"
        if raw is None:
            errors["slot_id"] = f"required; this lock's slots are {slot_range}"
        elif not isinstance(raw, int) or isinstance(raw, bool):
            errors["slot_id"] = "must be an integer"
        elif not codes.has_slot(raw):
            errors["slot_id"] = f"must be {slot_range}"
        else:
            slot = raw
    pin: PinCode | None = None
    if name is ActionName.SET_CODE:
        raw_code = inputs.get("code")
        lengths = codes.length_range()
        if raw_code is None:
            errors["code"] = f"required: {lengths}"
        elif not isinstance(raw_code, str):
            errors["code"] = "must be a string of digits"
        elif not _DIGITS.fullmatch(raw_code):
            errors["code"] = "must contain digits only"
        elif not codes.min_length <= len(raw_code) <= codes.max_length:
            errors["code"] = f"must be {lengths}"
        else:
            pin = PinCode(raw_code)
    if errors:
        raise InvalidInput(f"invalid inputs for {name}", errors)
    if name is ActionName.LOCK:
        return Lock()
    if name is ActionName.UNLOCK:
        return Unlock()
    assert slot is not None
    if name is ActionName.CLEAR_CODE:
        return ClearCode(slot_id=slot)
    assert pin is not None
    return SetCode(slot_id=slot, code=pin)


def _validate_gateway_inputs(name: ActionName, inputs: Mapping[str, Any]) -> None:
    errors: dict[str, str] = {}
    allowed = {"duration", "device_id", "protocol", "dsk_pin"}
    for key in inputs:
        if key not in allowed:
            errors[str(key)] = "unknown input"
    duration = inputs.get("duration")
    if not isinstance(duration, int) or isinstance(duration, bool) or not 1 <= duration <= 255:
        errors["duration"] = "must be an integer from 1 to 255 (seconds)"
    device_id = inputs.get("device_id")
    if device_id is not None and (name is not ActionName.UNPAIR_DEVICES or not _is_str(device_id)):
        errors["device_id"] = "must be a device id, for unpair_devices only"
    wanted = inputs.get("protocol")
    if wanted is not None and name is not ActionName.PAIR_DEVICES:
        errors["protocol"] = "for pair_devices only"  # unpair_devices: each radio excludes
    elif wanted is not None and not _is_str(wanted):
        errors["protocol"] = "must be a driver's name (zwave, zigbee, sim)"
    dsk = inputs.get("dsk_pin")  # the PIN on a Z-Wave S2 device's label; never in a message
    if dsk is not None and name is not ActionName.PAIR_DEVICES:
        errors["dsk_pin"] = "for pair_devices only"
    elif dsk is not None and not (
        isinstance(dsk, str) and len(dsk) == 5 and _DIGITS.fullmatch(dsk)
    ):
        errors["dsk_pin"] = "must be the 5 digits printed on the device"
    if errors:
        raise InvalidInput(f"invalid inputs for {name}", errors)


def _is_str(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 100


# --------------------------------------------------------------------------- dispatcher


class Dispatcher:
    """Runs action requests. `submit` is synchronous: validation and gateway_received happen
    before it returns; execution happens on per-queue worker tasks in the daemon's task group."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        on_status: StatusCallback,
        *,
        max_queue: int = 100,
        now: Callable[[], datetime] = utcnow,
        gateway_id: Callable[[], str | None] = lambda: None,
        worker_idle_s: float = WORKER_IDLE_S,
    ) -> None:
        self._store = store
        self._executor = executor
        self._on_status = on_status
        self._max_queue = max_queue
        self._now = now
        self._gateway_id = gateway_id
        self._worker_idle_s = worker_idle_s
        self._tg: TaskGroup | None = None
        self._queues: dict[str, deque[_Job]] = {}
        self._wakeups: dict[str, anyio.Event] = {}
        self._in_flight: dict[str, _Job] = {}
        # taken from its queue, not started: waiting for the cloud's ack of its hand-off or for
        # the commit of its receipt (still "queued" on /status and in the metrics)
        self._waiting: dict[str, _Job] = {}
        self._quiet: dict[str, anyio.Event] = {}  # set when the device's running action ends
        self._last_done: dict[str, tuple[str, float, Action | None]] = {}
        # recent ids, each with whether its late cancel was logged: the cloud repeats an id in
        # `welcome.cancelled` on every reconnect until its deadline, and one line says it
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._handoffs: dict[str, _Job] = {}  # cloud actions not started yet, by id
        self._active = 0  # jobs accepted into a queue and not yet finished
        self.recent: deque[_Job] = deque(maxlen=RECENT_KEEP)
        self.counts: dict[str, int] = {}

    def bind(self, tg: TaskGroup) -> None:
        """Workers are started in this task group (the daemon's)."""
        self._tg = tg

    # ------------------------------------------------------------------ recovery

    def recover(self) -> int:
        """Fail every action a previous run left unfinished; returns how many."""
        rows = self._store.actions_with_status(
            [ActionStatus.GATEWAY_RECEIVED, ActionStatus.PROCESSING]
        )
        for row in rows:
            request = ActionRequest(
                row.id, "", row.entity_id, row.action, {}, self._now(), self._now()
            )
            job = _Job(request, None, "", ActionStatus(row.status), list(row.transitions))
            self._remember(row.id)
            self._finish(job, GatewayRestarted("the gateway restarted before this action ended"))
            self._seen[row.id].started = row.status == ActionStatus.PROCESSING
            log.warning("actions.failed_after_restart", action_request_id=row.id, was=row.status)
        return len(rows)

    # ------------------------------------------------------------------ submit

    def submit(self, request: ActionRequest, *, handoff: bool = False) -> bool:
        """Accept one request. False when its id was seen before (it is then not executed).

        `handoff`: the request came from the cloud; it runs only after the cloud acknowledged
        its `gateway_received` report, and `cancel` can still stop it until then.
        """
        if self._is_duplicate(request.id):
            log.warning("actions.duplicate_ignored", action_request_id=request.id)
            return False
        self._remember(request.id)
        queue = GATEWAY_QUEUE if request.entity_type == "Gateway" else request.entity_id
        job = _Job(request, None, queue, ActionStatus.PENDING)
        # From here on the deadline is kept on the monotonic clock: a wall clock stepped later
        # (NTP on a box that booted with a stale clock) moves neither forward nor back.
        job.due = _loop_time() + (request.deadline - self._now()).total_seconds()
        seq = self._transition(job, ActionStatus.GATEWAY_RECEIVED)
        job.receipt = self._store.next_commit()
        if handoff and seq is not None:
            job.handoff_seq = seq
        try:
            device = self._lookup(request)
            job.action = validate(request, device)
            if self._remaining(job) <= 0:
                raise ActionTimeout("the deadline passed before the gateway received the action")
            pending = self._queues.setdefault(queue, deque())
            if len(pending) >= self._max_queue:
                raise DeviceError("too many actions are queued for this device")
        except GatewayError as exc:
            self._finish(job, exc)
            return True
        pending.append(job)
        self._active += 1
        if job.handoff_seq:
            self._handoffs[request.id] = job
        self._wake(queue)
        if self._active == 1:
            # Nothing else is queued or running: no other receipt would share the end-of-tick
            # group commit, so commit this one now rather than make the action wait for it. A
            # job that need not wait for the cloud starts next, so its processing report goes
            # into the same commit: one write for both (if the gateway died before the driver
            # call, start-up reports it failed with gateway_restarted; it never runs twice).
            if not job.handoff_seq and self._store.last_error is None:
                self._transition(job, ActionStatus.PROCESSING)
            self._store.flush()
        return True

    def _lookup(self, request: ActionRequest) -> Device | None:
        """The target device, or the GatewayError that says why it cannot act. A lookup that
        cannot answer (the store refused a read) fails this action: it is reported received
        already, and an exception out of `submit` left it so for good."""
        unreachable: GatewayError | None = None
        try:
            self._check_gateway_target(request)
            device = self._executor.device(request.entity_id)
            if device is None and request.entity_type == "Device":
                unreachable = self._executor.unreported(request.entity_id)
        except GatewayError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever it is, the action must end
            log.error(
                "actions.lookup_failed",
                action_request_id=request.id,
                device_id=request.entity_id,
                error_type=type(exc).__name__,
            )
            # the gateway's own failure, not the device's: the base type, `gateway_error`
            raise GatewayError(
                f"the gateway could not look the target up ({type(exc).__name__})"
            ) from None
        if unreachable is not None:
            raise unreachable
        return device

    def cancel(self, action_id: str, reason: str) -> bool:
        """The cloud gave up on a request: never start it. False if it had already started
        (or is unknown): then it runs to its end, and its reports tell the cloud the truth."""
        job = self._handoffs.get(action_id)
        if job is None:
            seen = self._seen.get(action_id)
            if seen is not None and not seen.logged:
                seen.logged = True
                if seen.status is None:  # running, or queued past its hand-off
                    log.warning("actions.cancel_too_late", action_request_id=action_id)
                else:  # say how it ended: one that failed unstarted moved no door
                    emit = log.warning if seen.started else log.info
                    emit(
                        "actions.cancel_after_end",
                        action_request_id=action_id,
                        status=seen.status,
                        error_type=seen.error_type,
                        started=seen.started,
                    )
            return False
        job.cancelled = reason or "cancelled by the cloud"
        log.warning("actions.cancelled_by_cloud", action_request_id=action_id)
        if job.waiting is not None:
            job.waiting.cancel()
        return True

    def cancel_handoffs(self, reason: str) -> None:
        """Never start any cloud action still waiting for its hand-off: the gateway lost its
        claim (revoked), so the cloud that sent them will never confirm them, and the ack of a
        later claim's session, which covers the same outbox seqs, is no go-ahead for them."""
        for action_id in list(self._handoffs):
            self.cancel(action_id, reason)

    def rebase_handoffs(self, after: int, shift: int) -> None:
        """The outbox was renumbered (Store.rebase): every frame above `after` moved up by
        `shift`, the gateway_received reports the waiting hand-offs are for among them."""
        for job in self._handoffs.values():
            if job.handoff_seq > after:
                job.handoff_seq += shift

    def reject(self, request: ActionRequest, message: str) -> None:
        """Refuse a request that could not even be read (e.g. bad timestamps): failed, once."""
        if self._is_duplicate(request.id):
            return
        self._remember(request.id)
        job = _Job(request, None, request.entity_id, ActionStatus.PENDING)
        self._transition(job, ActionStatus.GATEWAY_RECEIVED)
        self._finish(job, InvalidInput(message, {"request": message}))

    def _check_gateway_target(self, request: ActionRequest) -> None:
        if request.entity_type != "Gateway":
            return
        ours = self._gateway_id()
        if ours is not None and request.entity_id != ours:
            raise InvalidInput("this action is for another gateway", {"entity_id": "not ours"})

    def _is_duplicate(self, action_id: str) -> bool:
        return action_id in self._seen or self._store.has_action(action_id)

    def _remember(self, action_id: str) -> None:
        self._seen[action_id] = _Seen()
        if len(self._seen) > SEEN_KEEP:
            self._seen.popitem(last=False)

    # ------------------------------------------------------------------ workers

    def _wake(self, queue: str) -> None:
        event = self._wakeups.get(queue)
        if event is None:
            if self._tg is None:
                raise RuntimeError("dispatcher is not bound to a task group")
            self._wakeups[queue] = anyio.Event()
            self._tg.start_soon(self._worker, queue, name=f"actions.worker.{queue}")
        else:
            event.set()

    async def _worker(self, queue: str) -> None:
        pending = self._queues[queue]
        ran = 0
        while True:
            # one cancel scope per run of jobs, with a deadline only while a driver executes one
            with anyio.CancelScope() as guard:
                while True:
                    if not pending:
                        event = anyio.Event()
                        self._wakeups[queue] = event
                        with anyio.move_on_after(self._worker_idle_s):
                            await event.wait()
                        if not pending and self._retire(queue):
                            return
                        continue
                    startable = self._next_job(pending)
                    if startable is None:  # each would wait in its driver: a new job may go first
                        event = anyio.Event()
                        self._wakeups[queue] = event
                        with anyio.move_on_after(HOLD_POLL_S):
                            await event.wait()
                        continue
                    job = startable
                    # bind/reset rather than the bound_contextvars context manager: same log
                    # context for the driver's lines, without a generator per action
                    tokens = structlog.contextvars.bind_contextvars(
                        action_request_id=job.request.id, device_id=job.request.entity_id
                    )
                    try:
                        await self._run(job, guard)
                    except BaseException:
                        if not guard.cancel_called:
                            self._active -= 1
                            structlog.contextvars.reset_contextvars(**tokens)
                        raise
                    self._active -= 1
                    structlog.contextvars.reset_contextvars(**tokens)
                    ran += 1
                    if guard.cancel_called:
                        break  # its deadline passed as the driver returned: a new scope
                    if ran % YIELD_EVERY == 0:  # a zero-latency driver must not starve the loop
                        await anyio.lowlevel.checkpoint()
            if guard.cancelled_caught:
                # the driver had not returned by the job's deadline (see `_run`)
                assert job.finished is not None
                self._last_done[job.queue] = (job.request.id, job.finished, job.action)
                self._finish(job, ActionTimeout("the device did not confirm before the deadline"))
                self._active -= 1
                structlog.contextvars.reset_contextvars(**tokens)
                ran += 1
                if ran % YIELD_EVERY == 0:
                    await anyio.lowlevel.checkpoint()

    def _next_job(self, pending: deque[_Job]) -> _Job | None:
        """Taken from `pending`: its first job the driver can start at once. A code change that
        would first wait out the lock's late word for the slot (Executor.hold_s, up to 10 s)
        lets the device's later actions go before it: an unlock does not wait behind it. Never
        a later change of its slot (each job's hold is asked once: a hold that ends between two
        questions must not let the second change of a slot go first), nor anything past a held
        job that changes no slot."""
        passed: set[int] = set()  # the slots of the held code changes passed
        for n, job in enumerate(pending):
            slot = job.action.slot_id if isinstance(job.action, SetCode | ClearCode) else None
            if self._fails_unrun(job) or (slot not in passed and not self._held(job)):
                del pending[n]
                return job
            if slot is None:
                return None
            passed.add(slot)
        return None

    def _fails_unrun(self, job: _Job) -> bool:
        """Whether the job ends without reaching the driver: past due, or cancelled by the cloud
        (`_run`); it may go at once, before anything."""
        return self._remaining(job) <= 0 or job.cancelled is not None

    def _held(self, job: _Job) -> bool:
        if job.action is None:
            return False
        try:
            return self._executor.hold_s(job.request.entity_id, job.action) > 0
        except Exception:  # noqa: BLE001 - a driver bug must not end the worker: the job runs
            return False

    def _retire(self, queue: str) -> bool:
        """The worker of `queue` found it idle: True when it may end, its entries gone (a
        `remote` report may still be answering its last action: then it stays a while). Runs
        without awaiting, so no submit comes between the check and the removal; the next one
        finds no wakeup for the queue and starts a new worker."""
        done = self._last_done.get(queue)
        if done is not None and _loop_time() - done[1] <= REMOTE_GRACE_S:
            return False
        self._last_done.pop(queue, None)
        self._wakeups.pop(queue, None)
        self._queues.pop(queue, None)
        return True

    async def _run(self, job: _Job, guard: anyio.CancelScope) -> None:
        if job.handoff_seq or self._store.commits < job.receipt:
            self._waiting[job.queue] = job
            try:
                if not await self._may_start(job):
                    return
            finally:
                del self._waiting[job.queue]
        remaining = self._remaining(job)
        if remaining <= 0:
            self._finish(job, ActionTimeout("the deadline passed while the action was queued"))
            return
        if job.status is not ActionStatus.PROCESSING:
            self._transition(job, ActionStatus.PROCESSING)
        job.started = _loop_time()
        self._in_flight[job.queue] = job
        error: GatewayError | None = None
        try:
            # the deadline cancels the worker's scope: the worker fails the job with a timeout
            guard.deadline = job.due
            try:
                await self._execute(job)
            finally:
                guard.deadline = math.inf
        except GatewayError as exc:
            error = exc
        except asyncio.CancelledError:
            # Nobody cancelled this worker (not the deadline's scope, not shutdown): the driver
            # awaited something that was cancelled under it, e.g. a future its link's teardown
            # cancelled. Let it through and it would cancel the daemon's task group.
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            log.error(
                "actions.driver_cancelled",
                action_request_id=job.request.id,
                device_id=job.request.entity_id,
            )
            error = DeviceError("driver error (its operation was cancelled under it)")
        except Exception as exc:  # noqa: BLE001 - a driver bug must not take the daemon down
            log.error(
                "actions.driver_crashed",
                action_request_id=job.request.id,
                device_id=job.request.entity_id,
                error_type=type(exc).__name__,
            )
            error = DeviceError(f"driver error ({type(exc).__name__})")
        finally:
            self._in_flight.pop(job.queue, None)
            job.finished = _loop_time()
            quiet = self._quiet.pop(job.queue, None)
            if quiet is not None:
                quiet.set()
        self._last_done[job.queue] = (job.request.id, job.finished, job.action)
        self._finish(job, error)

    async def _may_start(self, job: _Job) -> bool:
        """Wait until the job may move the lock; False when it was finished instead."""
        if job.handoff_seq:
            await self._await_handoff(job)
            self._handoffs.pop(job.request.id, None)
            if job.cancelled is not None:
                self._finish(job, HandoffCancelled(f"the cloud cancelled it: {job.cancelled}"))
                return False
            if self._store.acked_seq < job.handoff_seq:
                self._finish(
                    job, ActionTimeout("the cloud did not confirm the hand-off before the deadline")
                )
                return False
        elif self._store.commits < job.receipt:
            # Never move a lock for an action a crash could make us forget (and run again):
            # wait for the commit of its receipt. That is the store's end-of-tick group commit,
            # shared by every receipt queued in the tick (a commit per worker cost a commit per
            # few actions under load); while the store refuses commits, its retries until the
            # deadline.
            with anyio.CancelScope(deadline=job.due):
                await self._store.wait_commit(job.receipt)
            if self._store.commits < job.receipt:
                self._finish(
                    job,
                    ActionTimeout("the gateway could not record the action before its deadline"),
                )
                return False
        return True

    async def _await_handoff(self, job: _Job) -> None:
        """Wait for the cloud's ack of this job's gateway_received (which implies it is
        committed here too), for a cancel, or for the deadline."""
        if job.cancelled is not None or self._store.acked_seq >= job.handoff_seq:
            return
        with anyio.move_on_after(max(self._remaining(job), 0)) as scope:
            job.waiting = scope
            while self._store.acked_seq < job.handoff_seq:  # read again: a rebase moves it
                await self._store.wait_acked(job.handoff_seq)
        job.waiting = None

    async def _execute(self, job: _Job) -> None:
        req = job.request
        if job.action is not None:
            await self._executor.execute(req.entity_id, job.action)
            return
        duration = int(req.inputs["duration"])
        if req.action == ActionName.PAIR_DEVICES:
            await self._executor.pair(duration, req.inputs)
            return
        device_id = req.inputs.get("device_id")
        if device_id is not None:
            # Removed under a running command, the lock ends it in an unknown state (a code
            # stored that the cloud, the device gone, can no longer clear): let it finish.
            # Actions queued behind it fail device_not_found once the lock is gone. The gateway's
            # own queue is in `_in_flight` too: an id equal to its name must not wait for itself.
            while device_id != GATEWAY_QUEUE and device_id in self._in_flight:
                quiet = self._quiet.setdefault(device_id, anyio.Event())
                await quiet.wait()
        # the executor decides: a stored device no driver reports is removed, not unknown
        await self._executor.unpair(duration, device_id)

    def _remaining(self, job: _Job) -> float:
        return job.due - _loop_time()

    # ------------------------------------------------------------------ state machine

    def _transition(
        self, job: _Job, status: ActionStatus, error: dict[str, Any] | None = None
    ) -> int | None:
        check_transition(job.status, status)
        at = self._now()
        at_iso = iso(at)
        name = str(status)
        request = job.request
        if not job.deadline_iso:
            job.deadline_iso = iso(request.deadline)
        job.status = status
        job.error = error
        job.transitions.append((name, at_iso))
        self.counts[status] = self.counts.get(status, 0) + 1
        row = ActionRow(
            request.id,
            request.entity_id,
            request.action,
            name,
            error,
            job.transitions,
            job.deadline_iso,
        )
        self._store.record_action(row, at_iso)
        if status.terminal:
            self.recent.append(job)
        log.info(
            "actions.status",
            action_request_id=request.id,
            device_id=request.entity_id,
            action=request.action,
            status=name,
            error_type=error["type"] if error else None,
        )
        duration = (
            job.finished - job.started
            if job.started is not None and job.finished is not None
            else None
        )
        return self._on_status(
            StatusUpdate(request.id, status, at, error, request.action, duration, at_iso)
        )

    def _finish(self, job: _Job, error: GatewayError | None) -> None:
        if error is None:
            self._transition(job, ActionStatus.COMPLETED)
        else:
            self._transition(job, ActionStatus.FAILED, error.to_dict())
        seen = self._seen.get(job.request.id)
        if seen is not None:
            seen.status = str(job.status)
            seen.error_type = None if error is None else error.type
            seen.started = job.started is not None

    # ------------------------------------------------------------------ introspection

    def answering(
        self, device_id: str, answers: Callable[[Action | None], bool] | None = None
    ) -> str | None:
        """The action request a `remote` lock/unlock report on this device answers, if any:
        the one in flight, else the last one if it ended within REMOTE_GRACE_S. With `answers`,
        only an action it accepts: the late report of the last action, coming while the next
        runs, answers the last one."""
        job = self._in_flight.get(device_id)
        if job is not None and (answers is None or answers(job.action)):
            return job.request.id
        done = self._last_done.get(device_id)
        if (
            done is not None
            and anyio.current_time() - done[1] <= REMOTE_GRACE_S
            and (answers is None or answers(done[2]))
        ):
            return done[0]
        return None

    def in_flight(self) -> list[dict[str, Any]]:
        return [job.snapshot() for job in self._in_flight.values()]

    def queued(self) -> int:
        """Accepted and not started: in a queue, or waiting for its hand-off or its receipt."""
        return sum(len(q) for q in self._queues.values()) + len(self._waiting)

    def recent_snapshots(self, limit: int = 20) -> list[dict[str, Any]]:
        return [job.snapshot() for job in list(self.recent)[-limit:][::-1]]
