"""Preemption: when nothing fits, choose victims on one machine.

Only tasks in a strictly lower band than the placing task, and never in the
production band or above (`cellstate.model.NON_PREEMPTIBLE`), may be victims;
the store checks the same rule at commit. Best-effort tasks hold no regular
resources (they live on reclaimed ones and the store sheds them itself), so
victims are regular tasks only.

On each candidate machine the victims are taken lowest priority first, the
largest first within a priority (fewer tasks), until the task fits; victims
that turn out unneeded are then dropped again, highest priority first. The
preemption cost of a machine is (highest victim priority, number of victims,
victims' total share of the machine); the machine with the least cost wins.
Candidates are a sample of the machines that pass every filter but resources,
so the work is bounded however large the cell.
"""

from __future__ import annotations

import numpy as np

from cellstate import ACTIVE_STATES, Task
from cellstate.model import NON_PREEMPTIBLE as NON_PREEMPTIBLE_BAND
from schedulers.context import DecisionContext

PREEMPT_SAMPLE = 64  # machines examined for victims per task


def preemptible(ctx: DecisionContext, row: int, band: int) -> list[Task]:
    """Regular tasks on machine `row` that a task of `band` may preempt, not
    already chosen as victims in this decision, cheapest to lose first."""
    limit = min(band, NON_PREEMPTIBLE_BAND)
    tasks = ctx.cell.tasks
    found = []
    for tid in ctx.machines[row].tasks:
        task = tasks[tid]
        if (
            not task.best_effort
            and task.priority // 100 < limit
            and task.state in ACTIVE_STATES
            and tid not in ctx.evicted
        ):
            found.append(task)
    found.sort(
        key=lambda t: (
            t.priority,
            -(t.cpu * ctx.inv_cap_cpu[row] + t.memory * ctx.inv_cap_mem[row]),
            t.id,
        )
    )
    return found


def victims_on(
    ctx: DecisionContext, row: int, band: int, cpu: int, memory: int
) -> tuple[tuple, list[Task]] | None:
    """The cheapest victim set on machine `row` that makes room for one task of
    (`cpu`, `memory`), with its cost; None if even all preemptible tasks won't do."""
    need_cpu = cpu - int(ctx.free_cpu[row])
    need_mem = memory - int(ctx.free_mem[row])
    if need_cpu <= 0 and need_mem <= 0:
        return (0, 0, 0.0), []
    chosen: list[Task] = []
    got_cpu = got_mem = 0
    for task in preemptible(ctx, row, band):
        if got_cpu >= need_cpu and got_mem >= need_mem:
            break
        chosen.append(task)
        got_cpu += task.cpu
        got_mem += task.memory
    if got_cpu < need_cpu or got_mem < need_mem:
        return None
    for task in sorted(chosen, key=lambda t: -t.priority):
        if got_cpu - task.cpu >= need_cpu and got_mem - task.memory >= need_mem:
            chosen.remove(task)
            got_cpu -= task.cpu
            got_mem -= task.memory
    share = float(got_cpu * ctx.inv_cap_cpu[row] + got_mem * ctx.inv_cap_mem[row])
    cost = (max(t.priority for t in chosen), len(chosen), share)
    return cost, chosen


def choose(
    ctx: DecisionContext, rows: np.ndarray, band: int, cpu: int, memory: int
) -> tuple[int, list[Task]] | None:
    """Among candidate `rows` (machines passing every filter but resources),
    the machine and victims of least preemption cost; None if none can make room."""
    if band <= 0:
        return None
    rows = rows[(ctx.table.cap_cpu[rows] >= cpu) & (ctx.table.cap_mem[rows] >= memory)]
    if ctx.sampling and rows.size > PREEMPT_SAMPLE:
        rows = rows[ctx.np_rng.choice(rows.size, size=PREEMPT_SAMPLE, replace=False)]
    elif rows.size > PREEMPT_SAMPLE * 4:
        rows = rows[: PREEMPT_SAMPLE * 4]
    best: tuple[tuple, int, list[Task]] | None = None
    for row in rows.tolist():
        found = victims_on(ctx, row, band, cpu, memory)
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], row, found[1])
    if best is None:
        return None
    return best[1], best[2]
