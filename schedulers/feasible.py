"""Feasibility filters: which machines could take one task of a job, and why not.

Each filter looks at the whole machine table at once and yields
`(reason, ok_mask)` pairs; `feasible` runs a chain of them and charges every
machine to the *first* reason that removes it, in the words the commit
protocol uses (`machine_not_up`, `constraint:<key>`, `anti_affinity`,
`insufficient:cpu`, `insufficient:memory`), so an explanation before a
commit and a rejection after it read the same. Adding a policy means adding a
filter to a stack, not editing a loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from cellstate import ACTIVE_STATES, Job
from schedulers.context import DecisionContext
from schedulers.explain import JobMetric

MACHINE_NOT_UP = "machine_not_up"
ANTI_AFFINITY = "anti_affinity"
INSUFFICIENT_CPU = "insufficient:cpu"
INSUFFICIENT_MEMORY = "insufficient:memory"


class Filter(Protocol):
    def masks(self, ctx: DecisionContext, job: Job) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (reason, mask of machines that pass) pairs."""
        ...


def job_rows(ctx: DecisionContext, job: Job) -> np.ndarray:
    """Table rows of the machines where the job has an active task now
    (computed once per job and decision)."""
    rows = ctx.job_rows.get(job.id)
    if rows is None:
        machines = ctx.cell.machines
        rows = ctx.job_rows[job.id] = np.asarray(
            [
                machines[t.machine].index
                for t in ctx.cell.job_tasks(job)
                if t.state in ACTIVE_STATES and t.machine is not None
            ],
            dtype=np.intp,
        )
    return rows


class MachineUp:
    """Only machines in state `up` take new tasks."""

    def masks(self, ctx: DecisionContext, job: Job) -> Iterator[tuple[str, np.ndarray]]:
        yield MACHINE_NOT_UP, ctx.table.up[: ctx.n]


class LabelConstraints:
    """`spec.constraints`: the machine's label `key` must equal the value."""

    def masks(self, ctx: DecisionContext, job: Job) -> Iterator[tuple[str, np.ndarray]]:
        for key, value in job.spec.constraints.items():
            column = ctx.table.labels(ctx.cell, key)
            code = column.vocab.get(value, -2)
            yield f"constraint:{key}", column.codes[: ctx.n] == code


class JobAntiAffinity:
    """`spec.anti_affinity`: at most one task of the job per machine."""

    def masks(self, ctx: DecisionContext, job: Job) -> Iterator[tuple[str, np.ndarray]]:
        if job.spec.anti_affinity:
            mask = np.ones(ctx.n, dtype=bool)
            mask[job_rows(ctx, job)] = False
            yield ANTI_AFFINITY, mask


class ResourceFit:
    """Every resource dimension must have room for one task: regular tasks on
    capacity minus limits, best-effort tasks on reclaimed resources."""

    def __init__(self, best_effort: bool) -> None:
        self.best_effort = best_effort

    def masks(self, ctx: DecisionContext, job: Job) -> Iterator[tuple[str, np.ndarray]]:
        free_cpu, free_mem = ctx.free(self.best_effort)
        resources = job.spec.resources
        yield INSUFFICIENT_CPU, free_cpu >= resources.cpu
        yield INSUFFICIENT_MEMORY, free_mem >= resources.memory


def feasible(
    filters: tuple[Filter, ...],
    ctx: DecisionContext,
    job: Job,
    metric: JobMetric,
    alive: np.ndarray | None = None,
) -> np.ndarray:
    """Run `filters` in order over the machines in `alive` (default: all);
    return the mask of machines passing all of them and charge each removed
    machine to its first failing reason in `metric`."""
    alive = np.ones(ctx.n, dtype=bool) if alive is None else alive.copy()
    for check in filters:
        for reason, ok in check.masks(ctx, job):
            removed = alive & ~ok
            metric.count(reason, int(np.count_nonzero(removed)))
            alive &= ok
    return alive
