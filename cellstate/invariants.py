"""Checks of the promises `CellState` keeps, for tests, fault suites and replay.

`check` recomputes every running sum from the tasks themselves and compares;
it raises `InvariantViolation` naming the first broken promise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from cellstate.model import ACTIVE_STATES, Machine, Task, TaskState

if TYPE_CHECKING:
    from cellstate.state import CellState


class InvariantViolation(AssertionError):
    pass


def check(cell: CellState) -> None:
    sums: dict[str, list[int]] = {mid: [0] * 6 for mid in cell.machines}
    holders: dict[str, set[str]] = {mid: set() for mid in cell.machines}
    owners: dict[tuple[str, int], list[int]] = {}
    for task in cell.tasks.values():
        if task.state in ACTIVE_STATES:
            if task.machine not in cell.machines:
                raise InvariantViolation(
                    f"task {task.id} is active on unknown machine {task.machine}"
                )
            holders[task.machine].add(task.id)
            _add_task(sums[task.machine], task)
            if not task.best_effort:
                usage = owners.setdefault((task.owner, task.priority // 100), [0, 0])
                usage[0] += task.cpu
                usage[1] += task.memory
        elif task.state is TaskState.PENDING and task.machine is not None:
            raise InvariantViolation(f"pending task {task.id} names machine {task.machine}")
    for machine in cell.machine_list:
        if set(machine.tasks) != holders[machine.id]:
            raise InvariantViolation(f"machine {machine.id} task set disagrees with the tasks")
        _check_machine(machine, sums[machine.id])
    for key, usage in owners.items():
        if cell.owner_usage.get(key, [0, 0]) != usage:
            raise InvariantViolation(
                f"owner usage {key} is {cell.owner_usage.get(key)}, tasks say {usage}"
            )
    for job in cell.jobs.values():
        counts: dict[str, int] = {}
        for task in cell.job_tasks(job):
            counts[task.state] = counts.get(task.state, 0) + 1
        if {k: v for k, v in job.counts.items() if v} != counts:
            raise InvariantViolation(f"job {job.id} counts {job.counts} but tasks say {counts}")
        if (job.id in cell.pending_jobs) != bool(counts.get(TaskState.PENDING)):
            raise InvariantViolation(f"job {job.id} pending index is wrong")


def check_machines(cell: CellState, machine_ids: Iterable[str]) -> None:
    """`check`'s machine promises for the given machines only, recounted from the tasks each
    one holds: cheap enough to run after every command on the machines it changed (replay),
    with a full `check` now and then for everything else."""
    for mid in machine_ids:
        machine = cell.machines[mid]
        row = [0] * 6
        for tid in machine.tasks:
            task = cell.tasks.get(tid)
            if task is None or task.state not in ACTIVE_STATES or task.machine != mid:
                raise InvariantViolation(f"machine {mid} holds {tid}, which is not active on it")
            _add_task(row, task)
        _check_machine(machine, row)


def _add_task(row: list[int], task: Task) -> None:
    """Add an active task to a machine's recount: limits and reservations of regular tasks,
    then best-effort cpu and memory (the order of `_check_machine`'s `kept`)."""
    if task.best_effort:
        row[4] += task.cpu
        row[5] += task.memory
    else:
        row[0] += task.cpu
        row[1] += task.memory
        row[2] += task.reserved_cpu
        row[3] += task.reserved_memory


def _check_machine(machine: Machine, row: list[int]) -> None:
    kept = [
        machine.used_cpu,
        machine.used_memory,
        machine.reserved_cpu,
        machine.reserved_memory,
        machine.be_cpu,
        machine.be_memory,
    ]
    if row != kept:
        raise InvariantViolation(f"machine {machine.id} sums {kept} but its tasks add to {row}")
    if row[0] > machine.cpu or row[1] > machine.memory:
        raise InvariantViolation(f"machine {machine.id} over capacity: limits {row[:2]}")
    if row[2] + row[4] > machine.cpu or row[3] + row[5] > machine.memory:
        raise InvariantViolation(
            f"machine {machine.id} over capacity: reservations {row[2:4]} + best-effort {row[4:]}"
        )
