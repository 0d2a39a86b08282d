"""The driver contract suite: every driver (sim, zwave, zigbee) is run through the same tests.

Harness interface
=================
A driver takes part by having a module `tests/contract/harness_<name>.py` (`<name>` is the
driver's registry name and the test id). It must define::

    @asynccontextmanager
    async def open_driver(
        tmp_path: Path, sink: RecordingSink, spawn: Spawn
    ) -> AsyncIterator[Driver]:
        '''Start the real stack if any, construct the driver with >= 2 locks, await
        driver.start(sink), wait until the locks are reported and ready, yield the driver;
        stop it and its stack after.'''

and may define:

``UNSUPPORTED: set[str] | Mapping[str, str]``
    Features its stack cannot exercise (a mapping gives the reason). Each test that needs one
    calls `pytest.skip` naming the harness and reason, so a gap is always visible in the report.
    Names must come from `FEATURES` below; a typo fails the run.
``ACTION_DEADLINE_S: float`` (default 5.0)
    How long one action may take on this stack. Every execute in the suite runs under
    `anyio.fail_after(ACTION_DEADLINE_S)`, and FAULT no_reply must outlast it.

Rules the harness and driver follow:

* `open_driver` runs entirely inside one task: it may hold task groups, processes and cancel
  scopes across its `yield`. `spawn` starts named tasks in a task group that is cancelled after
  `open_driver` has exited.
* The driver yielded is READY and `sink.devices` already holds >= 2 locks, all online, bolt
  state known.
* `driver.stop()` is idempotent: a test may stop the driver before the harness does, and
  (unless "restart" is unsupported) `driver.start(sink)` after a stop brings the same devices,
  with the same device ids, back.
* `driver.simulate(device_id, Simulation.X, params)` acts like a person at the door for every
  X not declared unsupported; FAULT kinds: "none" clears all; "no_reply" (the next action never
  gets an answer), "refuse" (the next action is refused -> DeviceError) and "drop_code" (the
  next set_code is not stored) hit one command only; "delay" lasts until "none".
* A lock refuses a PIN another of its slots holds, as real locks do: that set_code fails with
  DuplicateCode (`duplicate_code` upstream), unless "duplicate_code" is declared unsupported.

Drivers other than sim are marked `stack`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import tests.contract
from gatewayd.driver import Driver, Spawn
from tests.contract.hosting import hosted
from tests.contract.sink import RecordingSink

FEATURES = frozenset(
    {
        "battery",  # battery_level reported; BATTERY simulation -> low battery
        "keypad_unlock",
        "keypad_lock",
        "manual",  # MANUAL_LOCK / MANUAL_UNLOCK
        "wrong_code",
        "jam",
        "offline",  # OFFLINE / ONLINE
        "door",  # DOOR_OPEN / DOOR_CLOSE
        "tamper",
        "fault_no_reply",
        "fault_refuse",
        "fault_drop_code",
        "duplicate_code",  # a PIN another slot of the lock holds is refused: DuplicateCode
        "pair",
        "unpair",
        "restart",  # stop() then start(sink) again on the same driver object
        "inventory",  # Driver.inventory(): it can tell when every device on its network is in
    }
)

HARNESS_PREFIX = "harness_"
DEFAULT_DEADLINE_S = 5.0


def harness_names() -> list[str]:
    """The `<name>` of every tests/contract/harness_<name>.py, sim first."""
    names = sorted(
        info.name.removeprefix(HARNESS_PREFIX)
        for info in pkgutil.iter_modules(tests.contract.__path__)
        if info.name.startswith(HARNESS_PREFIX)
    )
    return sorted(names, key=lambda n: (n != "sim", n))


@dataclass(frozen=True, slots=True)
class Harness:
    """One driver's harness module and what it declares about itself."""

    name: str
    module: ModuleType
    unsupported: Mapping[str, str]
    deadline_s: float

    @classmethod
    def load(cls, name: str) -> Harness:
        module = importlib.import_module(f"tests.contract.{HARNESS_PREFIX}{name}")
        declared = getattr(module, "UNSUPPORTED", {})
        unsupported = (
            dict(declared)
            if isinstance(declared, Mapping)
            else dict.fromkeys(declared, "its stack cannot do this")
        )
        unknown = set(unsupported) - FEATURES
        if unknown:
            raise ValueError(f"harness {name} declares unknown features {sorted(unknown)}")
        deadline = float(getattr(module, "ACTION_DEADLINE_S", DEFAULT_DEADLINE_S))
        return cls(name=name, module=module, unsupported=unsupported, deadline_s=deadline)

    def require(self, feature: str) -> None:
        """Skip the calling test, saying why, when this harness declares `feature` unsupported."""
        assert feature in FEATURES, feature
        if feature in self.unsupported:
            pytest.skip(f"{self.name} harness: {feature} unsupported ({self.unsupported[feature]})")


def _params() -> list[object]:
    return [
        pytest.param(n, id=n, marks=() if n == "sim" else (pytest.mark.stack,))
        for n in harness_names()
    ]


@pytest.fixture(params=_params())
def harness(request: pytest.FixtureRequest) -> Harness:
    name: str = request.param
    return Harness.load(name)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """`spawn(name, fn)` backed by an anyio task group that is cancelled at teardown."""

    def just_spawn(spawn: Spawn) -> _Value[Spawn]:
        return _Value(spawn)

    async with hosted(just_spawn) as fn:
        yield fn


@pytest.fixture
async def driver(harness: Harness, sink: RecordingSink, tmp_path: Path) -> AsyncIterator[Driver]:
    """A started driver with >= 2 locks reported into `sink`, from the harness under test."""
    async with hosted(lambda spawn: harness.module.open_driver(tmp_path, sink, spawn)) as drv:
        assert isinstance(drv, Driver)
        yield drv


class _Value[T]:
    """An async context manager that just hands out a value."""

    def __init__(self, value: T) -> None:
        self._value = value

    async def __aenter__(self) -> T:
        return self._value

    async def __aexit__(self, *exc: object) -> None:
        return None
