"""Scorers: how good a feasible machine is for a task; lower is better.

All scorers are vectorised over an array of table rows and take the task's
demand as the table's (column, amount) pairs (`DecisionContext.demand`).
Shares are summed over every dimension a machine has; a dimension it has
none of contributes nothing (`inv_cap` is 0 there).
- `best_fit`: the free share left after the task; the tightest machine wins,
  which packs (Borg's best fit). Built from the table's per-row `free_frac`,
  so nothing is recomputed for machines that did not change beyond one
  product with the demand.
- `worst_fit`: the same share negated; the emptiest machine wins, which
  spreads load over machines (Borg's worst fit, the other end of the trade
  its section 5.1 measures by cell compaction).
- `fits`: how many tasks of one job a machine can still take, the least over
  the dimensions the job demands.
- `spread_codes` / `domain_load`: which spread domain each machine is in
  (`spec.spread` label, else the failure domain) and how many of the job's
  tasks each domain already holds; the spread selector balances on these.
- Preemption cost lives with victim choice in `preempt`.
"""

from __future__ import annotations

import numpy as np

from cellstate import Job
from schedulers.context import DecisionContext
from schedulers.table import Demand


def task_share(ctx: DecisionContext, rows: np.ndarray, demand: Demand) -> np.ndarray:
    """The share one task takes of each machine (the step of `best_fit` per task)."""
    inv_cap = ctx.inv_cap
    (j, amount), *rest = demand
    share = inv_cap[:, j][rows] * amount
    for j, amount in rest:
        share += inv_cap[:, j][rows] * amount
    return share


def best_fit(
    ctx: DecisionContext, rows: np.ndarray, demand: Demand, best_effort: bool
) -> np.ndarray:
    """Free share left on each machine in `rows` after one task; lower packs tighter."""
    return ctx.frac(best_effort)[rows] - task_share(ctx, rows, demand)


def worst_fit(
    ctx: DecisionContext, rows: np.ndarray, demand: Demand, best_effort: bool
) -> np.ndarray:
    """Minus the free share left on each machine after one task; lower spreads wider."""
    return -best_fit(ctx, rows, demand, best_effort)


def fits(
    ctx: DecisionContext,
    rows: np.ndarray,
    demand: Demand,
    best_effort: bool,
    at_most_one: bool,
) -> np.ndarray:
    """How many tasks of `demand` each machine in `rows` can still take: the
    least, over the dimensions demanded, of room // demand. (Every job demands
    cpu and memory, so there is always one.)"""
    room = ctx.room(best_effort)
    (j, amount), *rest = demand
    count = room[:, j][rows] // amount
    for j, amount in rest:
        np.minimum(count, room[:, j][rows] // amount, out=count)
    if at_most_one:
        np.minimum(count, 1, out=count)
    return count


# `spread: domain` names the machines' failure domain (`MachineSpec.domain`), the
# default, not a label of that name: what the job file's comment and `examples/` say.
FAILURE_DOMAIN = "domain"


def spread_codes(ctx: DecisionContext, job: Job) -> np.ndarray:
    """Spread-domain code per table row: the failure domain (no `spec.spread`, or
    `FAILURE_DOMAIN`), or the value of the `spec.spread` label. Machines without
    the label form one domain of their own."""
    key = job.spec.spread
    if key and key != FAILURE_DOMAIN:
        return ctx.table.labels(ctx.cell, key).codes[: ctx.n]
    return ctx.table.domains.codes[: ctx.n]


def domain_load(codes: np.ndarray, rows: np.ndarray) -> dict[int, int]:
    """Tasks of the job per spread domain, from the rows its active tasks are on."""
    if rows.size == 0:
        return {}
    values, counts = np.unique(codes[rows], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}
