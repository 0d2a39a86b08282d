"""The dispatcher: validation, state machine, per-device FIFO, deadlines, at-most-once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from gatewayd.actions import Dispatcher, StatusUpdate, validate
from gatewayd.model import (
    LEGAL_TRANSITIONS,
    Action,
    ActionRequest,
    ActionResult,
    ActionStatus,
    ClearCode,
    CodeConstraints,
    Device,
    DeviceError,
    DeviceNotFound,
    GatewayError,
    IllegalTransition,
    InvalidInput,
    SetCode,
    check_transition,
    iso,
    utcnow,
)
from gatewayd.store import ActionRow, Store

LOCK = Device(
    id="d1",
    native_id="n1",
    protocol="sim",
    name="front",
    manufacturer="m",
    model="x",
    codes=CodeConstraints(min_length=4, max_length=6, min_slot=2, max_slot=11),
)


def request(
    action: str = "unlock",
    inputs: Mapping[str, Any] | None = None,
    *,
    device: str = "d1",
    id: str | None = None,
    timeout: float = 5.0,
    entity_type: str = "Device",
) -> ActionRequest:
    now = utcnow()
    return ActionRequest(
        id=id or str(uuid.uuid4()),
        entity_type=entity_type,
        entity_id=device,
        action=action,
        inputs=dict(inputs or {}),
        created_at=now,
        deadline=now + timedelta(seconds=timeout),
    )


def unpair_request(device_id: str, *, id: str, gateway: str = "gw") -> ActionRequest:
    """unpair_devices naming `device_id`, sent to `gateway`."""
    return request(
        "unpair_devices",
        {"duration": 30, "device_id": device_id},
        entity_type="Gateway",
        device=gateway,
        id=id,
    )


class Devices:
    """A scriptable executor: records what ran, and can be told to block or fail."""

    def __init__(self, *devices: Device) -> None:
        self.devices = {d.id: d for d in devices}
        self.ran: list[tuple[str, str]] = []
        self.started: list[tuple[str, str]] = []
        self.gates: dict[str, anyio.Event] = {}
        self.raise_next: BaseException | None = None
        self.running: dict[str, int] = {}
        self.max_concurrent_per_device = 0
        self.hold: Callable[[Action], float] = lambda action: 0.0

    def device(self, device_id: str) -> Device | None:
        return self.devices.get(device_id)

    def unreported(self, device_id: str) -> GatewayError | None:
        return None

    def hold_s(self, device_id: str, action: Action) -> float:
        return self.hold(action)

    async def execute(self, device_id: str, action: Action) -> ActionResult:
        self.started.append((device_id, str(action.name)))
        self.running[device_id] = self.running.get(device_id, 0) + 1
        self.max_concurrent_per_device = max(
            self.max_concurrent_per_device, self.running[device_id]
        )
        try:
            gate = self.gates.get(device_id)
            if gate is not None:
                await gate.wait()
            if self.raise_next is not None:
                exc, self.raise_next = self.raise_next, None
                raise exc
            self.ran.append((device_id, str(action.name)))
            return ActionResult()
        finally:
            self.running[device_id] -= 1

    async def pair(self, duration_s: int, inputs: Mapping[str, Any]) -> None:
        self.ran.append(("gateway", f"pair:{duration_s}"))

    async def unpair(self, duration_s: int, device_id: str | None) -> None:
        if device_id is not None and device_id not in self.devices:
            raise DeviceNotFound(f"device {device_id} not found")
        self.ran.append(("gateway", f"unpair:{device_id}"))


class Harness:
    def __init__(self, tmp_path: Path, *devices: Device, gateway_id: str | None = None) -> None:
        self.store = Store.open(tmp_path / "s.db")
        self.exec = Devices(*devices)
        self.updates: list[StatusUpdate] = []
        self.dispatcher = Dispatcher(
            self.store, self.exec, self.updates.append, max_queue=3, gateway_id=lambda: gateway_id
        )

    def statuses(self, action_id: str) -> list[str]:
        return [str(u.status) for u in self.updates if u.action_request_id == action_id]

    def error(self, action_id: str) -> dict[str, Any]:
        last = [u for u in self.updates if u.action_request_id == action_id][-1]
        assert last.error is not None
        return last.error

    async def settle(self, action_id: str, timeout: float = 5) -> None:
        with anyio.fail_after(timeout):
            while not any(
                u.action_request_id == action_id and u.status.terminal for u in self.updates
            ):
                await anyio.sleep(0.005)


def two_locks() -> tuple[Device, Device]:
    from msgspec.structs import replace

    return LOCK, replace(LOCK, id="d2", native_id="n2")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("action", "inputs", "bad_key"),
    [
        ("set_code", {"code": "12a4", "slot_id": 3}, "code"),
        ("set_code", {"code": "123", "slot_id": 3}, "code"),
        ("set_code", {"code": "1234567", "slot_id": 3}, "code"),
        ("set_code", {"code": "", "slot_id": 3}, "code"),
        ("set_code", {"code": 1234, "slot_id": 3}, "code"),
        ("set_code", {"code": " 1234", "slot_id": 3}, "code"),
        ("set_code", {"code": "1234\n", "slot_id": 3}, "code"),  # "$" matches before a final \n
        (
            "set_code",
            {"code": "\uff11\uff12\uff13\uff14", "slot_id": 3},
            "code",
        ),  # full-width digits
        ("set_code", {"code": "1234", "slot_id": 12}, "slot_id"),
        ("set_code", {"code": "1234", "slot_id": 1}, "slot_id"),
        ("set_code", {"code": "1234", "slot_id": True}, "slot_id"),
        ("set_code", {"code": "1234", "slot_id": "3"}, "slot_id"),
        ("set_code", {"code": "1234"}, "slot_id"),  # default slot 1 is not this lock's
        ("set_code", {"code": "1234", "slot_id": 3, "user": "x"}, "user"),
        ("clear_code", {}, "slot_id"),
        ("clear_code", {"slot_id": 0}, "slot_id"),
        ("lock", {"force": True}, "force"),
    ],
)
def test_bad_inputs_are_invalid_input_naming_the_field(
    action: str, inputs: dict[str, Any], bad_key: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        validate(request(action, inputs), LOCK)
    assert bad_key in info.value.validation_errors
    assert info.value.to_dict()["type"] == "invalid_input"
    assert "1234" not in str(info.value.to_dict())


def test_good_set_code_keeps_leading_zero_and_masks_the_pin() -> None:
    action = validate(request("set_code", {"code": "0042", "slot_id": 11}), LOCK)
    assert isinstance(action, SetCode)
    assert action.code.reveal() == "0042"
    assert "0042" not in repr(action)
    assert "0042" not in str(action)


def test_default_slot_is_one_where_the_lock_has_it() -> None:
    from msgspec.structs import replace

    lock = replace(LOCK, codes=CodeConstraints(min_slot=1, max_slot=10))
    action = validate(request("set_code", {"code": "1234"}), lock)
    assert isinstance(action, SetCode)
    assert action.slot_id == 1


@pytest.mark.parametrize(
    ("req", "type_"),
    [
        (request("unlock", device="nope"), "device_not_found"),
        (request("open_sesame"), "action_not_supported"),
        (request("pair_devices", {"duration": 10}), "action_not_supported"),
        (request("lock", entity_type="Gateway", device="gw"), "action_not_supported"),
        (
            request("pair_devices", {"duration": 0}, entity_type="Gateway", device="gw"),
            "invalid_input",
        ),
        (
            request("pair_devices", {"duration": 256}, entity_type="Gateway", device="gw"),
            "invalid_input",
        ),
        (
            request(
                "unpair_devices",
                {"duration": 5, "device_id": 7},
                entity_type="Gateway",
                device="gw",
            ),
            "invalid_input",
        ),
        (request("unlock", entity_type="Room"), "invalid_input"),
    ],
)
def test_typed_errors(req: ActionRequest, type_: str) -> None:
    with pytest.raises(GatewayError) as info:
        validate(req, LOCK if req.entity_id == "d1" else None)
    assert info.value.type == type_


def test_unpair_devices_refuses_a_protocol_it_would_not_honour() -> None:
    """`protocol` chooses the radios pair_devices opens; unpair_devices took it and put every
    radio into exclusion anyway."""
    req = request(
        "unpair_devices", {"duration": 5, "protocol": "zigbee"}, entity_type="Gateway", device="gw"
    )
    with pytest.raises(GatewayError) as info:
        validate(req, None)
    assert info.value.to_dict()["validation_errors"] == {"protocol": "for pair_devices only"}
    req = request(
        "pair_devices", {"duration": 5, "protocol": ["zigbee"]}, entity_type="Gateway", device="gw"
    )
    with pytest.raises(GatewayError) as info:
        validate(req, None)
    assert set(info.value.to_dict()["validation_errors"]) == {"protocol"}


def test_only_legal_transitions() -> None:
    for current, allowed in LEGAL_TRANSITIONS.items():
        for new in ActionStatus:
            if new in allowed:
                check_transition(current, new)
            else:
                with pytest.raises(IllegalTransition):
                    check_transition(current, new)
    assert ActionStatus.GATEWAY_FAILURE not in {
        s for targets in LEGAL_TRANSITIONS.values() for s in targets
    }  # the cloud's status, never the gateway's


# --------------------------------------------------------------------------- dispatcher


async def test_completed_action_reports_every_transition_in_order(tmp_path: Path) -> None:
    h = Harness(tmp_path, *two_locks())
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        req = request("unlock", id="a1")
        assert h.dispatcher.submit(req)
        await h.settle("a1")
        tg.cancel_scope.cancel()
    assert h.statuses("a1") == ["gateway_received", "processing", "completed"]
    assert h.exec.ran == [("d1", "unlock")]
    h.store.flush()
    row = h.store.action("a1")
    assert row is not None
    assert row.status == "completed"
    assert [s for s, _ in row.transitions] == ["gateway_received", "processing", "completed"]


async def test_invalid_input_fails_without_reaching_the_device(tmp_path: Path) -> None:
    h = Harness(tmp_path, *two_locks())
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("set_code", {"code": "12ab", "slot_id": 3}, id="bad"))
        tg.cancel_scope.cancel()
    assert h.statuses("bad") == ["gateway_received", "failed"]
    assert h.error("bad")["type"] == "invalid_input"
    assert "code" in h.error("bad")["validation_errors"]
    assert h.exec.started == []


async def test_a_failure_that_quotes_the_request_is_reported_in_bounded_space(
    tmp_path: Path,
) -> None:
    """The cloud may make a request as large as a frame (64 KiB): 5,700 unknown inputs, or an
    action name that its quoting makes four times longer. Quoted whole, the failure's report
    did not fit in a frame, could not be encoded, and never went upstream."""
    h = Harness(tmp_path, *two_locks())
    inputs = {f"k{i:05d}": 0 for i in range(5700)}
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("lock", inputs, id="many"))
        h.dispatcher.submit(request("\u0080" * 20_000, id="long"))
        tg.cancel_scope.cancel()
    many, long = h.error("many"), h.error("long")
    assert h.statuses("many") == h.statuses("long") == ["gateway_received", "failed"]
    assert many["type"] == "invalid_input"
    shown = many["validation_errors"]
    assert len(shown) == 21
    assert shown["k00000"] == "unknown input"
    assert shown["…"] == "and 5680 more"
    assert long["type"] == "action_not_supported"
    assert long["message"].startswith("unknown action '\\x80")
    assert len(long["message"]) == 200
    for error in (many, long):
        assert len(msgspec.json.encode(error)) < 4096


async def test_per_device_fifo_one_in_flight_devices_concurrent(tmp_path: Path) -> None:
    h = Harness(tmp_path, *two_locks())
    gate = h.exec.gates["d1"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        for i, action in enumerate(["lock", "unlock", "lock"]):
            h.dispatcher.submit(request(action, id=f"d1-{i}"))
        h.dispatcher.submit(request("unlock", device="d2", id="d2-0"))
        await h.settle("d2-0")  # d2 is not held up by d1's blocked action
        assert h.exec.started == [("d1", "lock"), ("d2", "unlock")]
        assert h.dispatcher.queued() == 2
        gate.set()
        await h.settle("d1-2")
        tg.cancel_scope.cancel()
    assert [r for r in h.exec.ran if r[0] == "d1"] == [
        ("d1", "lock"),
        ("d1", "unlock"),
        ("d1", "lock"),
    ]
    assert h.exec.max_concurrent_per_device == 1


async def test_a_hold_that_ends_between_two_questions_lets_no_change_of_its_slot_go_first(
    tmp_path: Path,
) -> None:
    """A set of slot 3 the driver holds, then a clear of slot 3: the driver reads its clock at
    each question, and the hold ended between the question for the set and the one for the
    clear. The clear went first, and the set then left the slot holding the code the user had
    cleared after it."""
    h = Harness(tmp_path, LOCK)
    asked = 0

    def hold(action: Action) -> float:
        nonlocal asked
        asked += 1  # the clock moves on one step per question; the hold ends at step 2
        return max(2 - (asked - 1), 0) if isinstance(action, SetCode | ClearCode) else 0.0

    h.exec.hold = hold
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("set_code", {"code": "1234", "slot_id": 3}, id="set"))
        h.dispatcher.submit(request("clear_code", {"slot_id": 3}, id="clear"))
        await h.settle("clear")
        await h.settle("set")
        tg.cancel_scope.cancel()
    assert h.exec.ran == [("d1", "set_code"), ("d1", "clear_code")]


async def test_nothing_passes_a_held_action_that_changes_no_slot(tmp_path: Path) -> None:
    """A driver may hold any action (Driver.hold_s): a held lock lets no unlock go first."""
    h = Harness(tmp_path, LOCK)
    release = anyio.Event()
    h.exec.hold = lambda action: 0.0 if release.is_set() or action.name != "lock" else 5.0
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("lock", id="lock"))
        h.dispatcher.submit(request("unlock", id="unlock"))
        await anyio.sleep(0.5)  # the worker asks again every HOLD_POLL_S
        assert h.exec.ran == []
        release.set()
        await h.settle("unlock")
        tg.cancel_scope.cancel()
    assert h.exec.ran == [("d1", "lock"), ("d1", "unlock")]


async def test_never_executed_after_its_deadline(tmp_path: Path) -> None:
    h = Harness(tmp_path, *two_locks())
    gate = h.exec.gates["d1"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("lock", id="slow", timeout=0.3))
        h.dispatcher.submit(request("unlock", id="queued", timeout=0.2))
        h.dispatcher.submit(request("unlock", id="expired", timeout=-1))
        await h.settle("slow")
        await h.settle("queued")
        gate.set()
        tg.cancel_scope.cancel()
    assert h.error("slow")["type"] == "timeout"  # hung past its deadline: cancelled
    assert h.statuses("queued") == ["gateway_received", "failed"]
    assert h.error("queued")["type"] == "timeout"
    assert h.statuses("expired") == ["gateway_received", "failed"]
    assert h.exec.started == [("d1", "lock")]  # the queued and expired ones never reached the lock


async def test_a_repeated_id_is_never_executed_twice_even_after_restart(tmp_path: Path) -> None:
    h = Harness(tmp_path, *two_locks())
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        assert h.dispatcher.submit(request("unlock", id="once"))
        assert not h.dispatcher.submit(request("unlock", id="once"))
        await h.settle("once")
        tg.cancel_scope.cancel()
    h.store.flush()
    h2 = Harness.__new__(Harness)
    h2.store, h2.exec, h2.updates = h.store, Devices(*two_locks()), []
    h2.dispatcher = Dispatcher(h2.store, h2.exec, h2.updates.append)
    async with anyio.create_task_group() as tg:
        h2.dispatcher.bind(tg)
        assert not h2.dispatcher.submit(request("unlock", id="once"))
        tg.cancel_scope.cancel()
    assert h.exec.ran == [("d1", "unlock")]
    assert h2.exec.started == []
    assert h2.updates == []


async def test_unfinished_actions_fail_with_gateway_restarted(tmp_path: Path) -> None:
    h = Harness(tmp_path, *two_locks())
    t = "2026-01-01T00:00:00.000Z"
    h.store.record_action(
        ActionRow(
            "p1",
            "d1",
            "unlock",
            "processing",
            None,
            [("gateway_received", t), ("processing", t)],
            t,
        ),
        t,
    )
    h.store.record_action(
        ActionRow("r1", "d1", "lock", "gateway_received", None, [("gateway_received", t)], t), t
    )
    h.store.record_action(
        ActionRow("c1", "d1", "lock", "completed", None, [("completed", t)], t), t
    )
    h.store.flush()
    assert h.dispatcher.recover() == 2
    assert h.statuses("p1") == ["failed"]
    assert h.error("p1")["type"] == "gateway_restarted"
    assert h.statuses("r1") == ["failed"]
    assert h.error("r1")["type"] == "gateway_restarted"
    assert h.statuses("c1") == []
    assert h.exec.started == []
    h.store.flush()
    assert h.store.actions_with_status(["processing", "gateway_received"]) == []
    failed = h.store.action("p1")
    assert failed is not None
    assert failed.deadline == t  # its own deadline stays in the log (pruning goes by it)


async def test_a_driver_that_raises_is_a_device_error_without_its_message(tmp_path: Path) -> None:
    h = Harness(tmp_path, *two_locks())
    h.exec.raise_next = RuntimeError("radio said 987654 is wrong")
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("unlock", id="boom"))
        await h.settle("boom")
        h.dispatcher.submit(request("lock", id="after"))
        await h.settle("after")
        tg.cancel_scope.cancel()
    assert h.error("boom")["type"] == "device_error"
    assert "987654" not in str(h.error("boom"))
    assert h.statuses("after")[-1] == "completed"


async def test_a_driver_whose_operation_is_cancelled_under_it_fails_only_that_action(
    tmp_path: Path,
) -> None:
    """A driver awaiting a future that its own link teardown cancels gets CancelledError while
    nobody cancelled the worker: that is a device_error, not the end of the daemon."""
    h = Harness(tmp_path, *two_locks())
    h.exec.raise_next = asyncio.CancelledError()
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("unlock", id="cut"))
        await h.settle("cut")
        h.dispatcher.submit(request("lock", id="after"))
        await h.settle("after")
        assert not tg.cancel_scope.cancel_called
        tg.cancel_scope.cancel()
    assert h.statuses("cut")[-1] == "failed"
    assert h.error("cut")["type"] == "device_error"
    assert h.statuses("after")[-1] == "completed"


async def test_typed_driver_error_passes_through(tmp_path: Path) -> None:
    h = Harness(tmp_path, *two_locks())
    h.exec.raise_next = DeviceError("the lock refused the command")
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("unlock", id="refused"))
        await h.settle("refused")
        tg.cancel_scope.cancel()
    assert h.error("refused") == {"type": "device_error", "message": "the lock refused the command"}


async def test_full_queue_refuses_with_device_error(tmp_path: Path) -> None:
    h = Harness(tmp_path, *two_locks())
    gate = h.exec.gates["d1"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        for i in range(5):  # 1 in flight + max_queue 3 waiting + 1 refused
            h.dispatcher.submit(request("lock", id=f"q{i}"))
            await anyio.sleep(0.01)
        assert h.statuses("q4") == ["gateway_received", "failed"]
        assert h.error("q4")["type"] == "device_error"
        gate.set()
        await h.settle("q3")
        tg.cancel_scope.cancel()
    assert len(h.exec.ran) == 4


async def test_gateway_actions_check_the_target_gateway(tmp_path: Path) -> None:
    h = Harness(tmp_path, *two_locks(), gateway_id="gw-ours")
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(
            request(
                "pair_devices",
                {"duration": 30},
                entity_type="Gateway",
                device="gw-other",
                id="forged",
            )
        )
        h.dispatcher.submit(
            request(
                "pair_devices", {"duration": 30}, entity_type="Gateway", device="gw-ours", id="ok"
            )
        )
        h.dispatcher.submit(unpair_request("ghost", id="ghost", gateway="gw-ours"))
        await h.settle("ok")
        await h.settle("ghost")
        tg.cancel_scope.cancel()
    assert h.error("forged")["type"] == "invalid_input"
    assert h.statuses("ok")[-1] == "completed"
    assert h.error("ghost")["type"] == "device_not_found"
    assert h.exec.ran == [("gateway", "pair:30")]


class _Durable(Devices):
    """Records, as each action starts, what the store has committed of it."""

    def __init__(self, h: Harness) -> None:
        super().__init__(*h.exec.devices.values())
        self.h = h
        self.committed: dict[str, list[str]] = {}

    async def execute(self, device_id: str, action: Action) -> ActionResult:
        action_id = self.h.dispatcher.answering(device_id)
        assert action_id is not None
        row = self.h.store.action(action_id)
        self.committed[action_id] = [] if row is None else [s for s, _ in row.transitions]
        return await super().execute(device_id, action)


async def test_an_idle_dispatcher_commits_the_receipt_at_once(tmp_path: Path) -> None:
    """Alone, an action's receipt and processing reports are one commit made by `submit`;
    under load, receipts share the end-of-tick commit. Either way nothing runs before its
    receipt is committed."""
    h = Harness(tmp_path, *two_locks())
    h.exec = durable = _Durable(h)
    h.dispatcher._executor = durable
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        before = h.store.commits
        h.dispatcher.submit(request("unlock", id="alone"))
        assert h.store.commits == before + 1  # committed before submit returned
        await h.settle("alone")

        before = h.store.commits
        for k in range(3):
            h.dispatcher.submit(request("lock", device=("d1", "d2")[k % 2], id=f"busy-{k}"))
        assert h.store.commits == before + 1  # only the first (idle) submit committed at once
        for k in range(3):
            await h.settle(f"busy-{k}")
        tg.cancel_scope.cancel()
    assert durable.committed["alone"] == ["gateway_received", "processing"]
    assert durable.committed["busy-0"] == ["gateway_received", "processing"]
    for k in (1, 2):  # queued behind others: their receipt alone is durable when they start
        assert durable.committed[f"busy-{k}"] == ["gateway_received"]
    for k in range(3):
        assert h.statuses(f"busy-{k}") == ["gateway_received", "processing", "completed"]


@pytest.mark.parametrize("step_hours", [-1, 1], ids=["clock-stepped-back", "clock-stepped-ahead"])
async def test_a_wall_clock_step_moves_no_deadline(tmp_path: Path, step_hours: int) -> None:
    """Once received, a deadline is kept on the monotonic clock. A wall clock stepped back an
    hour (NTP on a box that booted with a stale clock) cannot let a queued action run late; a
    step ahead cannot fail one that still has time."""
    step = [timedelta(0)]
    store = Store.open(tmp_path / "s.db")
    devices = Devices(*two_locks())
    updates: list[StatusUpdate] = []
    dispatcher = Dispatcher(store, devices, updates.append, now=lambda: utcnow() + step[0])
    gate = devices.gates["d1"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        dispatcher.bind(tg)
        dispatcher.submit(request("unlock", id="first", timeout=30))
        dispatcher.submit(request("lock", id="short", timeout=0.6))  # queued behind "first"
        dispatcher.submit(request("lock", id="long", timeout=20))  # queued behind both
        step[0] = timedelta(hours=step_hours)
        await anyio.sleep(1.0)  # "short" is past its deadline when "first" finishes
        gate.set()
        with anyio.fail_after(10):
            while sum(u.status.terminal for u in updates) < 3:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    final = {u.action_request_id: u for u in updates if u.status.terminal}
    assert str(final["short"].status) == "failed"
    assert final["short"].error is not None
    assert final["short"].error["type"] == "timeout"
    assert str(final["long"].status) == "completed"
    assert devices.ran == [("d1", "unlock"), ("d1", "lock")]  # "short" never reached the lock


async def test_remote_reports_are_attributed_to_the_action_in_flight(tmp_path: Path) -> None:
    h = Harness(tmp_path, *two_locks())
    gate = h.exec.gates["d1"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("unlock", id="mine"))
        with anyio.fail_after(5):
            while not h.exec.started:  # on the lock, held there by the gate
                await anyio.sleep(0.005)
        assert h.dispatcher.answering("d1") == "mine"
        assert h.dispatcher.answering("d2") is None
        gate.set()
        await h.settle("mine")
        assert h.dispatcher.answering("d1") == "mine"  # a late report within the grace window
        tg.cancel_scope.cancel()


async def test_nothing_runs_before_its_receipt_is_durable(tmp_path: Path) -> None:
    """A crash must never forget an action that already moved the lock: the dispatcher starts
    an action only once its gateway_received record is committed."""
    import sqlite3

    h = Harness(tmp_path, *two_locks())
    blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # the store refuses every commit
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("unlock", id="held", timeout=30))
        h.dispatcher.submit(request("unlock", device="d2", id="expires", timeout=0.5))
        await anyio.sleep(1.0)
        assert h.exec.started == []  # nothing touched a lock while the store refused
        # "held" came to an idle dispatcher and a store not yet known to refuse: its processing
        # report went into the (refused) receipt commit; it still waits for that commit
        assert h.statuses("held") == ["gateway_received", "processing"]
        assert h.store.action("held") is None
        assert h.error("expires")["type"] == "timeout"
        blocker.execute("ROLLBACK")
        blocker.close()
        await h.settle("held", timeout=10)
        tg.cancel_scope.cancel()
    assert h.statuses("held") == ["gateway_received", "processing", "completed"]
    assert h.exec.ran == [("d1", "unlock")]  # the expired one never ran


async def test_a_replay_of_a_pruned_action_is_failed_never_executed(tmp_path: Path) -> None:
    """The action log forgets finished actions long past their deadline; a replay of one is
    accepted as new, and refused for its deadline, so the lock never moves twice."""
    h = Harness(tmp_path, *two_locks())
    first = request("unlock", id="old", timeout=0.2)
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(first)
        await h.settle("old")
        tg.cancel_scope.cancel()
    h.store.flush()
    await anyio.sleep(0.25)  # its deadline passes
    cutoff = iso(utcnow())
    assert h.store.prune_actions(cutoff, keep=1) == 0  # the newest row stays
    h.store.record_action(
        ActionRow("newer", "d2", "lock", "completed", None, [("completed", cutoff)], cutoff), cutoff
    )
    h.store.flush()
    assert h.store.prune_actions(cutoff, keep=1) == 1
    assert not h.store.has_action("old")

    h2 = Harness.__new__(Harness)  # a later run: the id is in no memory either
    h2.store, h2.exec, h2.updates = h.store, Devices(*two_locks()), []
    h2.dispatcher = Dispatcher(h2.store, h2.exec, h2.updates.append)
    async with anyio.create_task_group() as tg:
        h2.dispatcher.bind(tg)
        assert h2.dispatcher.submit(first)  # the same request, replayed
        await h2.settle("old")
        tg.cancel_scope.cancel()
    assert h.exec.ran == [("d1", "unlock")]
    assert h2.exec.started == []
    assert h2.statuses("old") == ["gateway_received", "failed"]
    assert h2.error("old")["type"] == "timeout"


class _TurnsCancelIntoDeviceError(Devices):
    """A driver that catches the cancellation of its wait and fails with its own error."""

    async def execute(self, device_id: str, action: Action) -> ActionResult:
        if action.name == "lock":
            try:
                await anyio.sleep_forever()
            except BaseException:
                raise DeviceError("the lock stopped answering") from None
        return await super().execute(device_id, action)


async def test_a_worker_goes_on_after_timeouts_in_a_row(tmp_path: Path) -> None:
    """A worker keeps one cancel scope across jobs, with a deadline only while a driver runs:
    after a job's deadline cancels it, the next jobs still run with their own deadlines."""
    h = Harness(tmp_path, *two_locks())
    gate = h.exec.gates["d1"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("lock", id="hung-1", timeout=0.2))
        h.dispatcher.submit(request("unlock", id="hung-2", timeout=0.5))
        await h.settle("hung-1")
        await h.settle("hung-2")
        del h.exec.gates["d1"]
        gate.set()
        h.dispatcher.submit(request("lock", id="after", timeout=5))
        await h.settle("after")
        assert h.dispatcher.in_flight() == []
        tg.cancel_scope.cancel()
    assert [h.error(i)["type"] for i in ("hung-1", "hung-2")] == ["timeout", "timeout"]
    assert h.statuses("after") == ["gateway_received", "processing", "completed"]
    assert h.exec.ran == [("d1", "lock")]


async def test_a_driver_that_turns_its_cancellation_into_an_error_does_not_stop_the_worker(
    tmp_path: Path,
) -> None:
    h = Harness.__new__(Harness)
    h.store = Store.open(tmp_path / "s.db")
    h.exec = _TurnsCancelIntoDeviceError(*two_locks())
    h.updates = []
    h.dispatcher = Dispatcher(h.store, h.exec, h.updates.append, gateway_id=lambda: None)
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("lock", id="stuck", timeout=0.2))
        h.dispatcher.submit(request("unlock", id="next", timeout=5))
        await h.settle("stuck")
        await h.settle("next")
        tg.cancel_scope.cancel()
    assert h.statuses("stuck")[-1] == "failed"
    assert h.error("stuck")["type"] in ("timeout", "device_error")
    assert h.statuses("next") == ["gateway_received", "processing", "completed"]
    assert h.exec.ran == [("d1", "unlock")]


async def test_an_unpair_naming_a_lock_waits_for_the_command_running_on_it(
    tmp_path: Path,
) -> None:
    """Gateway actions run on a queue of their own: an unpair removed the lock under a running
    set_code, which failed device_offline while the lock had stored the code, and the cloud,
    the device gone, could never clear it."""
    h = Harness(tmp_path, LOCK)
    h.exec.gates["d1"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(request("set_code", {"code": "1234", "slot_id": 3}, id="code"))
        await anyio.sleep(0.05)
        assert h.exec.started == [("d1", "set_code")]
        h.dispatcher.submit(unpair_request("d1", id="unpair"))
        await anyio.sleep(0.1)
        assert h.exec.ran == []  # the unpair waits while the set_code runs
        h.exec.gates["d1"].set()
        await h.settle("code")
        await h.settle("unpair")
        tg.cancel_scope.cancel()
    assert h.exec.ran == [("d1", "set_code"), ("gateway", "unpair:d1")]
    assert h.statuses("code")[-1] == "completed"
    assert h.statuses("unpair")[-1] == "completed"


async def test_an_unpair_naming_the_gateway_queue_fails_at_once_and_blocks_nothing(
    tmp_path: Path,
) -> None:
    """The gateway's actions run on the queue named "gateway", which is also its key among the
    actions in flight: an unpair whose device_id was "gateway" waited for itself until its
    deadline (a `timeout`), and every pair or unpair behind it waited as long."""
    h = Harness(tmp_path, LOCK)
    async with anyio.create_task_group() as tg:
        h.dispatcher.bind(tg)
        h.dispatcher.submit(unpair_request("gateway", id="odd"))
        pair = request("pair_devices", {"duration": 30}, entity_type="Gateway", device="gw")
        h.dispatcher.submit(pair)
        await h.settle("odd", timeout=2)
        await h.settle(pair.id, timeout=2)
        tg.cancel_scope.cancel()
    assert h.statuses("odd")[-1] == "failed"
    assert h.error("odd")["type"] == "device_not_found"
    assert h.statuses(pair.id)[-1] == "completed"


@pytest.mark.parametrize(
    ("table", "entity_type", "action", "inputs"),
    [
        ("devices", "Device", "unlock", {}),  # is the lock no driver reports paired?
        ("identity", "Gateway", "pair_devices", {"duration": 30}),  # is it for this gateway?
    ],
)
async def test_a_lookup_the_store_cannot_answer_fails_the_action_not_leaves_it(
    tmp_path: Path, table: str, entity_type: str, action: str, inputs: dict[str, Any]
) -> None:
    """`submit` asks the store about the target after gateway_received is reported; a store
    that could not answer (a real SQLite error: here the table is gone) raised out of it: the
    action stayed `gateway_received` for good, and the tunnel dropped its session over it."""
    import sqlite3

    from gatewayd.registry import Registry
    from gatewayd.upstream import Upstream

    store = Store.open(tmp_path / "s.db")
    store.set_claimed("gw-1", "credential-1")
    registry = Registry(store, Upstream(store))
    updates: list[StatusUpdate] = []

    def report(update: StatusUpdate) -> int:
        updates.append(update)
        return registry.upstream.action_status(update)

    # as the daemon wires it
    dispatcher = Dispatcher(store, registry, report, gateway_id=lambda: store.identity().gateway_id)
    target = "gw-1" if entity_type == "Gateway" else "not-reported"
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        async with anyio.create_task_group() as tg:
            dispatcher.bind(tg)
            submitted = request(action, inputs, device=target, id="looked-up")
            assert dispatcher.submit(msgspec.structs.replace(submitted, entity_type=entity_type))
            tg.cancel_scope.cancel()
    finally:
        other.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
        other.close()
    assert [str(u.status) for u in updates] == ["gateway_received", "failed"]
    error = updates[-1].error
    assert error is not None
    assert error["type"] == "gateway_error"
    assert error["message"] == "the gateway could not look the target up (OperationalError)"
    store.close()
