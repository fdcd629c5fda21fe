"""The cell's processes run with the oldest GC generation collected only on request
(`cellstore.heap`). That is safe only if the cell state and the scheduler core leave no
cyclic garbage behind: anything they drop must be freed by reference counting alone."""

from __future__ import annotations

import gc

from cellstate import CellState, Heartbeat, KillJob, SchedulerClass
from cellstore.heap import NEVER, tune_for_large_heaps
from tests.cellfixtures import cell_with, submit
from tests.schedfixtures import core, step


def _workload() -> CellState:
    cell = cell_with(machines=40, domains=4, extra={"gpu": 2})
    batch, service = core(SchedulerClass.BATCH), core(SchedulerClass.SERVICE)
    for j in range(6):
        submit(cell, f"b{j}", tasks=30, cpu=500)
        submit(cell, f"s{j}", tasks=8, scheduler=SchedulerClass.SERVICE, priority=200)
        submit(cell, f"g{j}", tasks=2, extra={"gpu": 1})
    for _ in range(10):
        step(batch, cell)
        step(service, cell)
    cell.apply(Heartbeat(tuple(cell.machines), at=6.0))
    for j in range(3):
        cell.apply(KillJob(f"b{j}", at=7.0))
    step(batch, cell)
    return CellState.restore(cell.snapshot())


def test_the_cell_and_the_scheduler_core_leave_no_cyclic_garbage() -> None:
    # The first run builds code once per process (cattrs' and attrs' generated functions, a
    # few classes): that is garbage made once, not per command.
    _workload()
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        cell = _workload()
        assert cell.tasks  # the workload did something
        del cell
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()


def test_the_policy_never_collects_the_oldest_generation_by_itself() -> None:
    before = gc.get_threshold()
    try:
        tune_for_large_heaps()
        assert gc.get_threshold()[2] == NEVER
    finally:
        gc.set_threshold(*before)
