"""Faults through real processes: each fault once in `make test`, many times in the long run.

After recovery: every door event the gateway produced is in the cloud exactly once and in
order, every action request ended exactly once, no action ran twice or after its deadline.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.faults import FAULTS, LOSSY_PER_KILL, RADIO_OF, run_trial
from tests.reliability.harness import Outcome, table

pytestmark = pytest.mark.stack

HEADER = [
    "fault",
    "trials",
    "events produced",
    "delivered",
    "duplicated",
    "lost",
    "cloud dedupes",
    "actions",
    "ran twice",
    "gateway_failure",
    "ran anyway",
]


def _row(fault: str, trials: int, o: Outcome) -> list[object]:
    return [
        fault,
        trials,
        o.produced,
        o.delivered,
        o.duplicated,
        o.lost,
        o.cloud_dedupes,
        o.actions,
        o.executed_twice,
        o.gateway_failures,
        o.ran_after_failure,
    ]


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_loses_and_duplicates_nothing(tmp_path: Path, fault: str) -> None:
    outcome, lab = await run_trial(tmp_path, fault, seed=1)
    table(f"fault trial ({fault})", HEADER, [_row(fault, 1, outcome)])
    for note in lab.notes:
        print(note)
    if fault.startswith("store"):
        assert lab.store_errors, "the store fault never showed on /status store.last_error"
        print("store.last_error seen:", lab.store_errors[0])
    assert outcome.produced > 0
    assert outcome.actions > 0
    outcome.assert_clean(allowed_lost=LOSSY_PER_KILL.get(fault, 0))


TRIALS = int(os.environ.get("GATEWAYD_FAULT_TRIALS", "5"))


GROUPS = {  # `-k radio_stacks` runs the radio rows alone
    "sim_locks": [f for f in FAULTS if f not in RADIO_OF],
    "radio_stacks": list(RADIO_OF),
}


@pytest.mark.reliability
@pytest.mark.timeout(TRIALS * len(FAULTS) * 60 + 120)  # a trial takes 10-40 s; pytest's 300 s
@pytest.mark.parametrize("group", list(GROUPS))
async def test_every_fault_many_times(tmp_path: Path, group: str) -> None:
    rows = []
    failures = []
    for fault in GROUPS[group]:
        total = Outcome()
        for trial in range(TRIALS):
            outcome, _lab = await run_trial(
                tmp_path / f"{list(FAULTS).index(fault)}-{trial}", fault, seed=trial, burst_s=6
            )
            total.add(outcome)
            if outcome.produced == 0 or outcome.actions == 0:  # a trial that ran nothing is no pass
                failures.append(
                    f"{fault} #{trial}: {outcome.produced} events, {outcome.actions} actions"
                )
            try:
                outcome.assert_clean(allowed_lost=LOSSY_PER_KILL.get(fault, 0))
            except AssertionError as exc:
                failures.append(f"{fault} #{trial}: {exc}")
        rows.append(_row(fault, TRIALS, total))
    table(f"faults (reliability run): {group}", HEADER, rows)
    assert not failures, failures
