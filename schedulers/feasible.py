"""Feasibility filters: which machines could take one task of a job, and why not.

Each filter looks at the whole machine table at once and yields
`(reason, ok_mask)` pairs; `feasible` runs a chain of them and charges every
machine to the *first* reason that removes it. Reasons are the codes of
`cellstate.reasons`, the words the commit protocol answers with
(`machine_not_up`, `constraint:<key>`, `anti_affinity`, and per resource
dimension `no_capacity:<dim>` or `insufficient:<dim>`), so an explanation
before a commit and a rejection after it read the same. Adding a policy means
adding a filter to a stack, not editing a loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from cellstate import ACTIVE_STATES, Job, reasons, selectors
from cellstate.resources import REQUIRED
from schedulers.context import DecisionContext
from schedulers.explain import JobMetric
from schedulers.table import MISSING, LabelColumn


class Filter(Protocol):
    def masks(self, ctx: DecisionContext, job: Job) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (reason, mask of machines that pass) pairs."""
        ...


def job_rows(ctx: DecisionContext, job: Job) -> np.ndarray:
    """Table rows of the machines where the job has an active task now (in no
    particular order; computed once per job and decision, and read from
    `ctx.known_rows` while no task of the job has moved since)."""
    rows = ctx.job_rows.get(job.id)
    if rows is None:
        cell = ctx.cell
        moves = job.moves
        known = None if ctx.known_rows is None else ctx.known_rows.get(job.id)
        # The same job (an id can be reused), moved no more since.
        if known is not None and known[0] is job and known[1] == moves:
            rows = known[2]
        else:
            machines, tasks = cell.machines, cell.tasks
            # Every task of the job, for each job of every decision: no generator
            # per task (and at a million tasks, a cache miss or two each).
            rows = np.asarray(
                [
                    machines[t.machine].index
                    for tid in job.task_ids
                    if (t := tasks[tid]).state in ACTIVE_STATES and t.machine is not None
                ],
                dtype=np.intp,
            )
        ctx.job_rows[job.id] = rows
        if ctx.known_rows is not None:
            ctx.known_rows[job.id] = (job, moves, rows)
    return rows


class MachineUp:
    """Only machines in state `up` take new tasks."""

    def masks(self, ctx: DecisionContext, job: Job) -> Iterator[tuple[str, np.ndarray]]:
        yield reasons.MACHINE_NOT_UP, ctx.table.up[: ctx.n]


class LabelConstraints:
    """`spec.constraints`: the machine's label `key` must equal the value; and each
    requirement of `spec.selector` must hold (a label absent matches `!=`, `notin` and
    `!key`, as in kubectl). Both are charged to `constraint:<key>`."""

    def masks(self, ctx: DecisionContext, job: Job) -> Iterator[tuple[str, np.ndarray]]:
        spec = job.spec
        for key, value in spec.constraints.items():
            column = ctx.table.labels(ctx.cell, key)
            code = column.vocab.get(value, -2)
            yield reasons.constraint(key), column.codes[: ctx.n] == code
        if not spec.selector:
            return
        for requirement in selectors.parsed(spec.selector).requirements:
            column = ctx.table.labels(ctx.cell, requirement.key)
            yield reasons.constraint(requirement.key), _holds(requirement, column, ctx.n)


def _holds(requirement: selectors.Requirement, column: LabelColumn, n: int) -> np.ndarray:
    """Per machine of the first `n`, whether `requirement` holds of its label (`column`)."""
    codes, op = column.codes[:n], requirement.op
    if op in ("exists", "!exists"):
        return (codes != MISSING) if op == "exists" else (codes == MISSING)
    # A value no machine has gets a code none holds.
    wanted = [column.vocab.get(value, -2) for value in sorted(requirement.values)]
    found = np.isin(codes, wanted)
    return found if op in ("=", "in") else ~found


class JobAntiAffinity:
    """`spec.anti_affinity`: at most one task of the job per machine."""

    def masks(self, ctx: DecisionContext, job: Job) -> Iterator[tuple[str, np.ndarray]]:
        if job.spec.anti_affinity:
            mask = np.ones(ctx.n, dtype=bool)
            mask[job_rows(ctx, job)] = False
            yield reasons.ANTI_AFFINITY, mask


class ResourceFit:
    """Every dimension the job demands must have room for one task: regular
    tasks in the regular room, best-effort tasks in the best-effort room (see
    `cellstate.ledger` for both). Machines with none of a demanded dimension
    are charged to `no_capacity:<dim>` (as `reasons.short` does), before any
    room is compared: no amount of waiting or preempting gives them a gpu, so
    that is the reason worth telling. The rest, with some of a dimension but
    too little free, are charged to `insufficient:<dim>`."""

    def __init__(self, best_effort: bool) -> None:
        self.best_effort = best_effort

    def masks(self, ctx: DecisionContext, job: Job) -> Iterator[tuple[str, np.ndarray]]:
        demand = job.spec.resources.amounts
        index = ctx.table.dim_index
        for dim in demand:
            if dim in REQUIRED:  # every machine has some cpu and memory
                continue
            j = index.get(dim)
            if j is None:  # no machine in the cell declares it
                yield reasons.no_capacity(dim), np.zeros(ctx.n, dtype=bool)
            else:
                yield reasons.no_capacity(dim), ctx.capacity[:, j] > 0
        for dim, amount in demand.items():
            j = index.get(dim)
            if j is not None:
                yield reasons.insufficient(dim), ctx.room_at_least(self.best_effort, j, amount)


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
    # Machines removed by a mask are those alive before it less those alive after: one
    # pass over the cell per mask, rather than a third array and a second pass.
    count = np.count_nonzero
    if alive is None:
        alive, left = np.ones(ctx.n, dtype=bool), ctx.n
    else:
        alive, left = alive.copy(), int(count(alive))
    for check in filters:
        for reason, ok in check.masks(ctx, job):
            alive &= ok
            now = int(count(alive))
            metric.count(reason, left - now)
            left = now
    return alive


def static_feasible(
    filters: tuple[Filter, ...], ctx: DecisionContext, job: Job, metric: JobMetric
) -> np.ndarray:
    """`feasible(filters, ctx, job, metric)` for a stack's static filters, which read
    the machine table, the job's constraints and (anti-affinity) where its tasks
    are, never the decision's rooms. Without anti-affinity that is the same for
    every job of a decision with the same constraints: worked out once for them,
    as a decision goes over every pending job. The mask is shared: not to be changed."""
    spec = job.spec
    if spec.anti_affinity:
        return feasible(filters, ctx, job, metric)
    key = (filters, tuple(spec.constraints.items()), spec.selector)
    hit = ctx.static.get(key)
    if hit is None:
        counted = JobMetric(job.id)
        mask = feasible(filters, ctx, job, counted)
        hit = ctx.static[key] = (mask, {**counted.filtered, **counted.exhausted})
    mask, removed = hit
    for reason, machines in removed.items():
        metric.count(reason, machines)
    return mask
