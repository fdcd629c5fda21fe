"""Helpers for scheduler tests: decide against a CellState, commit, report back."""

from __future__ import annotations

import random
from collections import Counter

from cellstate import CellState, Commit, CommitResult, SchedulerClass
from schedulers import Decision, SchedulerCore


def core(
    kind: SchedulerClass = SchedulerClass.BATCH, name: str | None = None, seed: int = 7, **options
) -> SchedulerCore:
    return SchedulerCore(name or kind.value, kind, rng=random.Random(seed), **options)


def step(
    sched: SchedulerCore, cell: CellState, now: float = 5.0
) -> tuple[Decision | None, CommitResult | None]:
    """One decision, committed to and applied by `cell`, its result reported."""
    decision = sched.decide(cell, now)
    if decision is None:
        return None, None
    result = cell.apply(Commit(decision.transaction, at=now)).result
    assert isinstance(result, CommitResult), result
    sched.on_result(cell, decision, result, now)
    cell.check_invariants()
    return decision, result


def placements(cell: CellState, job: str) -> Counter:
    """Machine id -> active tasks of `job` on it."""
    return Counter(t.machine for t in cell.job_tasks(cell.jobs[job]) if t.machine is not None)


def domains(cell: CellState, job: str) -> Counter:
    return Counter(
        cell.machines[m].domain for m, n in placements(cell, job).items() for _ in range(n)
    )
