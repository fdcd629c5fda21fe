"""Disk and countable devices through the schedulers: filters, scores, explanations.

Devices and disk are held exclusively (`cellstate.ledger`): a job asking for
`gpu: 1` lands only where a gpu is free, never more tasks than gpus, and a
best-effort task never takes a device or disk another task holds.
"""

from __future__ import annotations

import random

import numpy as np

from cellstate import MachineSpec, RegisterMachines, Resources, SchedulerClass
from schedulers.context import DecisionContext
from schedulers.rank import best_fit, fits
from schedulers.table import table_for
from tests.cellfixtures import GI, cell_with, commit, submit
from tests.schedfixtures import core, placements, step

BATCH, SERVICE, BE = SchedulerClass.BATCH, SchedulerClass.SERVICE, SchedulerClass.BEST_EFFORT


def _mixed_cell(plain: int = 3, gpus: tuple[int, ...] = (2, 1)):
    """`plain` big machines without devices, then one machine per entry of `gpus`."""
    cell = cell_with(machines=plain, cpu=64000, memory=256 * GI)
    cell.apply(
        RegisterMachines(
            tuple(
                MachineSpec(f"g{i}", Resources(8000, 32 * GI, gpu=n)) for i, n in enumerate(gpus)
            ),
            at=1.5,
        )
    )
    return cell


def test_gpu_job_places_only_on_gpu_machines_and_never_more_tasks_than_gpus():
    cell = _mixed_cell()
    submit(cell, "train", tasks=5, extra={"gpu": 1})
    sched = core(BATCH)
    _, result = step(sched, cell)
    assert result.accepted == 3 and not result.rejected
    assert placements(cell, "train") == {"g0": 2, "g1": 1}
    explanation = sched.explain(cell, "train")
    # The plain machines have no gpu at all: that is what they are charged to.
    assert explanation.last.exhausted == {"no_capacity:gpu": 3}
    # Now the gpu machines are full too: too little free, not none.
    assert step(sched, cell) == (None, None)
    assert sched.explain(cell, "train").last.exhausted == {
        "no_capacity:gpu": 3,
        "insufficient:gpu": 2,
    }


def test_service_spreads_gpu_tasks_only_over_machines_with_gpus():
    cell = _mixed_cell(plain=4, gpus=(1, 1, 1))
    submit(cell, "infer", tasks=4, scheduler=SERVICE, extra={"gpu": 1})
    _, result = step(core(SERVICE), cell)
    assert result.accepted == 3
    assert placements(cell, "infer") == {"g0": 1, "g1": 1, "g2": 1}


def test_a_device_no_machine_has_is_explained_as_no_capacity():
    cell = cell_with(machines=4)
    submit(cell, "needs-gpu", tasks=3, extra={"gpu": 1})
    sched = core(BATCH)
    assert sched.decide(cell, 5.0) is None
    explanation = sched.explain(cell, "needs-gpu")
    assert explanation.last.exhausted == {"no_capacity:gpu": 4}
    assert "0/4 machines fit: 4 no_capacity:gpu" in explanation.summary()
    assert sched.parked.get("needs-gpu") in (None, "no_capacity:gpu")
    # The table did not grow a column for a dimension only a job names.
    assert "gpu" not in table_for(cell).dims


def test_service_cannot_preempt_its_way_to_a_missing_device():
    cell = cell_with(machines=2)
    submit(cell, "fill", tasks=8, priority=150)
    _, result = step(core(BATCH), cell)
    assert result.accepted == 8
    submit(cell, "web", tasks=1, scheduler=SERVICE, extra={"gpu": 1})
    sched = core(SERVICE)
    assert sched.decide(cell, 6.0) is None
    assert sched.explain(cell, "web").last.exhausted == {"no_capacity:gpu": 2}


def test_service_preempts_for_a_gpu_held_by_a_lower_band():
    cell = _mixed_cell(plain=1, gpus=(1,))
    submit(cell, "low", tasks=1, priority=150, extra={"gpu": 1})
    commit(cell, ("low.0", "g0"))
    submit(cell, "high", tasks=1, scheduler=SERVICE, priority=250, extra={"gpu": 1})
    decision, result = step(core(SERVICE), cell)
    (claim,) = decision.transaction.claims
    assert claim.machine == "g0" and claim.victims == ("low.0",)
    assert result.accepted == 1 and result.preempted == ("low.0",)


def test_disk_is_exclusive_against_best_effort():
    """A best-effort task's disk is held: a regular task cannot have it, and
    the regular scheduler does not claim it (no conflict at commit)."""
    cell = cell_with(machines=1, cpu=16000, memory=64 * GI, extra={"disk": 100 * GI})
    submit(cell, "scratch", tasks=1, scheduler=BE, extra={"disk": 60 * GI})
    _, result = step(core(BE), cell)
    assert result.accepted == 1
    submit(cell, "db", tasks=1, extra={"disk": 50 * GI})
    sched = core(BATCH)
    assert sched.decide(cell, 6.0) is None
    assert sched.explain(cell, "db").last.exhausted == {"insufficient:disk": 1}
    # 40Gi are left to regular tasks, whatever cpu and memory lend.
    submit(cell, "small", tasks=3, extra={"disk": 20 * GI})
    _, result = step(sched, cell, now=7.0)
    assert result.accepted == 2 and not result.rejected


def test_best_effort_never_takes_a_device_or_disk_another_task_holds():
    cell = cell_with(machines=2, cpu=16000, memory=64 * GI, extra={"disk": 10 * GI, "gpu": 1})
    submit(cell, "reg", tasks=1, extra={"gpu": 1, "disk": 6 * GI})
    commit(cell, ("reg.0", "m0"))
    submit(cell, "be-gpu", tasks=3, scheduler=BE, extra={"gpu": 1})
    submit(cell, "be-disk", tasks=3, scheduler=BE, extra={"disk": 5 * GI})
    sched = core(BE)
    for now in (5.0, 6.0, 7.0):
        step(sched, cell, now=now)
    # m0's gpu is held by `reg`: only m1's gpu goes to a best-effort task.
    assert placements(cell, "be-gpu") == {"m1": 1}
    # m0 has 4Gi of disk left (none for 5Gi); m1 has room for two.
    assert placements(cell, "be-disk") == {"m1": 2}
    for machine in cell.machine_list:
        account = machine.account
        for dim in ("gpu", "disk"):
            held = account.used.get(dim, 0) + account.best_effort.get(dim, 0)
            assert held <= account.capacity[dim]


def test_regular_scheduler_does_not_claim_a_gpu_a_best_effort_task_holds():
    cell = cell_with(machines=2, extra={"gpu": 1})
    submit(cell, "be", tasks=1, scheduler=BE, extra={"gpu": 1})
    _, result = step(core(BE), cell)
    assert result.accepted == 1
    submit(cell, "reg", tasks=2, extra={"gpu": 1})
    _, result = step(core(BATCH), cell, now=6.0)
    assert result.accepted == 1 and not result.rejected


def test_context_take_moves_both_rooms_as_the_ledger_does():
    cell = cell_with(machines=2, extra={"disk": 10 * GI, "gpu": 2})
    table = table_for(cell)
    ctx = DecisionContext(cell, table, random.Random(1), sampling=False)
    gpu, disk, cpu = (table.dim_index[d] for d in ("gpu", "disk", "cpu"))
    demand = ctx.demand({"cpu": 1000, "memory": GI, "disk": GI, "gpu": 1})
    rows, counts = np.asarray([0]), np.asarray([2])
    saved = ctx.save()
    # A regular task reserves its limit: both rooms shrink in every dimension.
    ctx.take(rows, counts, demand, best_effort=False)
    assert ctx.free[0, gpu] == 0 and ctx.be_free[0, gpu] == 0
    assert ctx.free[0, cpu] == 2000 and ctx.be_free[0, cpu] == 2000
    ctx.restore(saved)
    # A best-effort task borrows cpu and memory but holds disk and devices.
    ctx.take(rows, np.asarray([1]), demand, best_effort=True)
    assert ctx.free[0, cpu] == 4000 and ctx.be_free[0, cpu] == 3000
    assert ctx.free[0, gpu] == 1 and ctx.free[0, disk] == 9 * GI
    assert list(fits(ctx, np.asarray([0, 1]), demand, False, False)) == [1, 2]


def test_scores_ignore_dimensions_a_machine_lacks():
    """A machine without a gpu is scored on cpu and memory alone; a gpu
    machine's free gpu counts as room, so cpu-only work packs elsewhere first."""
    cell = _mixed_cell(plain=1, gpus=(2,))
    cell.apply(
        RegisterMachines((MachineSpec("m0", Resources(8000, 32 * GI)),), at=1.6)
    )  # same cpu and memory as g0
    table = table_for(cell)
    ctx = DecisionContext(cell, table, random.Random(1), sampling=False)
    demand = ctx.demand({"cpu": 1000, "memory": GI})
    score = best_fit(ctx, np.asarray([0, 1]), demand, False)
    assert score[1] - score[0] == 1.0  # g0's two free gpus: a whole free share
    submit(cell, "cpu-only", tasks=1)
    step(core(BATCH), cell)
    assert placements(cell, "cpu-only") == {"m0": 1}
