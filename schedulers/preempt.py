"""Preemption: when nothing fits, choose victims on one machine.

Only tasks in a strictly lower band than the placing task, and never in the
production band or above (`cellstate.model.NON_PREEMPTIBLE`), may be victims;
the store checks the same rule at commit. Best-effort tasks hold no regular
resources in cpu and memory (they live on reclaimed ones and the store sheds
them itself), so victims are regular tasks only.

Room is counted per dimension: on a machine, a task needs `demand - free` in
each dimension it demands (nothing where that is not positive), and each
victim gains back its limit in every dimension. Only machines whose capacity
covers the demand in every demanded dimension are candidates: no victim set
could make room on the others. Victims are taken lowest priority first, the
largest first within a priority (fewer tasks), until every need is met,
passing over tasks whose job's disruption budget cannot spare them;
victims that turn out unneeded are then dropped again, highest priority
first. The preemption cost of a machine is (highest victim priority, number
of victims, victims' total share of the machine, summed over dimensions); the
machine with the least cost wins. For a job that spreads, its tasks in the
machine's spread domain come before all of that, and its tasks on the machine
right after the victims' priority (`choose`). Candidates are a sample of the machines
that pass every filter but resources, so the work is bounded however large
the cell.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from cellstate import ACTIVE_STATES, Band, Task
from cellstate.model import NON_PREEMPTIBLE
from schedulers.context import DecisionContext

PREEMPT_SAMPLE = 64  # machines examined for victims per task


def _share(ctx: DecisionContext, row: int, amounts: Mapping[str, int]) -> float:
    """The share of machine `row` that `amounts` is, summed over dimensions."""
    index, inv_cap = ctx.table.dim_index, ctx.inv_cap[row]
    return float(sum(amount * inv_cap[index[dim]] for dim, amount in amounts.items()))


def preemptible(ctx: DecisionContext, row: int, band: Band) -> list[Task]:
    """Regular tasks on machine `row` that a task of `band` may preempt, not
    already chosen as victims in this decision, cheapest to lose first."""
    limit = min(band, NON_PREEMPTIBLE)
    tasks = ctx.cell.tasks
    found = []
    for tid in ctx.machines[row].tasks:
        task = tasks[tid]
        if (
            not task.best_effort
            and task.band < limit
            and task.state in ACTIVE_STATES
            and tid not in ctx.evicted
        ):
            found.append(task)
    found.sort(key=lambda t: (t.priority, -_share(ctx, row, t.demand), t.id))
    return found


def victims_on(
    ctx: DecisionContext, row: int, band: Band, demand: Mapping[str, int]
) -> tuple[tuple, list[Task]] | None:
    """The cheapest victim set on machine `row` that makes room for one task of
    `demand`, with its cost; None if even all preemptible tasks won't do."""
    index, free = ctx.table.dim_index, ctx.free[row]
    need = {
        dim: short
        for dim, amount in demand.items()
        if (short := amount - int(free[index[dim]])) > 0
    }
    if not need:
        return (0, 0, 0.0), []
    got = dict.fromkeys(need, 0)

    def enough() -> bool:
        return all(got[dim] >= short for dim, short in need.items())

    chosen: list[Task] = []
    taken: dict[str, int] = {}  # per job, available tasks chosen here
    for task in preemptible(ctx, row, band):
        if enough():
            break
        if task.healthy_at is not None:
            # The store refuses what the victim's job cannot spare (`budget_exceeded`).
            if ctx.spare(task.job) - taken.get(task.job, 0) < 1:
                continue
            taken[task.job] = taken.get(task.job, 0) + 1
        chosen.append(task)
        for dim in need:
            got[dim] += task.demand.get(dim, 0)
    if not enough():
        return None
    for task in sorted(chosen, key=lambda t: -t.priority):
        if all(got[dim] - task.demand.get(dim, 0) >= short for dim, short in need.items()):
            chosen.remove(task)
            for dim in need:
                got[dim] -= task.demand.get(dim, 0)
    share = sum(_share(ctx, row, t.demand) for t in chosen)
    cost = (max(t.priority for t in chosen), len(chosen), share)
    return cost, chosen


def choose(
    ctx: DecisionContext,
    rows: np.ndarray,
    band: Band,
    demand: Mapping[str, int],
    spread: Callable[[int], tuple[int, int]] | None = None,
) -> tuple[int, list[Task]] | None:
    """Among candidate `rows` (machines passing every filter but resources),
    the machine and victims of least preemption cost; None if none can make room.

    `spread(row)`, for a job that spreads: its tasks in the machine's spread domain
    and on the machine. The domain comes first (a replica in another domain is
    worth a victim), the machine after the victims' priority (a second replica on
    a machine with room left is not worth evicting another task)."""
    if band <= Band.BEST_EFFORT:
        return None
    pairs = ctx.demand(demand)
    if pairs is None:  # a dimension no machine has: no victim frees it
        return None
    for j, amount in pairs:
        rows = rows[ctx.capacity[:, j][rows] >= amount]
    if ctx.sampling and rows.size > PREEMPT_SAMPLE:
        rows = rows[ctx.np_rng.choice(rows.size, size=PREEMPT_SAMPLE, replace=False)]
    elif rows.size > PREEMPT_SAMPLE * 4:
        rows = rows[: PREEMPT_SAMPLE * 4]
    best: tuple[tuple, int, list[Task]] | None = None
    for row in rows.tolist():
        found = victims_on(ctx, row, band, demand)
        if found is None:
            continue
        cost = found[0]
        if spread is not None:
            domain, machine = spread(row)
            cost = (domain, cost[0], machine, *cost[1:])
        if best is None or cost < best[0]:
            best = (cost, row, found[1])
    if best is None:
        return None
    return best[1], best[2]
