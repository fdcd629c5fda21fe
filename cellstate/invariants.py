"""Checks of the promises `CellState` keeps, for tests, fault suites and replay.

`check` recounts every machine's books and every owner's quota taken from the
tasks themselves with a fresh `Ledger`, compares them with what the cell kept,
and checks the ledger's rules per dimension; it raises `InvariantViolation`
naming the first broken promise.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cellstate.ledger import Account, Ledger, pack
from cellstate.model import ACTIVE_STATES, Machine, Task, TaskState

if TYPE_CHECKING:
    from cellstate.state import CellState


class InvariantViolation(AssertionError):
    pass


def check(cell: CellState) -> None:
    recount = Ledger()
    accounts = {mid: Account(m.account.capacity) for mid, m in cell.machines.items()}
    holders: dict[str, set[str]] = {mid: set() for mid in cell.machines}
    for task in cell.tasks.values():
        if task.state in ACTIVE_STATES:
            if task.machine not in cell.machines:
                raise InvariantViolation(
                    f"task {task.id} is active on unknown machine {task.machine}"
                )
            holders[task.machine].add(task.id)
            if cell.rules >= 2:
                _check_task(task)
            recount.add(task, accounts[task.machine])
        elif task.state is TaskState.PENDING and task.machine is not None:
            raise InvariantViolation(f"pending task {task.id} names machine {task.machine}")
    if [m.id for m in cell.machine_list] != list(cell.machines) or any(
        m.index != i for i, m in enumerate(cell.machine_list)
    ):
        raise InvariantViolation("machine_list disagrees with machines or with their rows")
    for machine in cell.machine_list:
        if set(machine.tasks) != holders[machine.id]:
            raise InvariantViolation(f"machine {machine.id} task set disagrees with the tasks")
        _check_machine(machine, accounts[machine.id])
    kept, counted = cell.ledger.usage(), recount.usage()
    if kept != counted:
        raise InvariantViolation(f"quota taken is {kept}, tasks say {counted}")
    for job in cell.jobs.values():
        counts: dict[str, int] = {}
        available = 0
        for task in cell.job_tasks(job):
            counts[task.state] = counts.get(task.state, 0) + 1
            if task.job != job.id:
                raise InvariantViolation(f"job {job.id} lists task {task.id} of {task.job}")
            ok = task.state is TaskState.RUNNING and (task.healthy is True or not task.checked)
            if ok != (task.healthy_at is not None):
                raise InvariantViolation(f"task {task.id} healthy_at disagrees with its state")
            available += ok
        ended = max((t.finished_at or 0.0 for t in cell.job_tasks(job)), default=0.0)
        if ended != job.ended_at:
            raise InvariantViolation(f"job {job.id} ended at {job.ended_at}, tasks say {ended}")
        if available != job.available:
            raise InvariantViolation(
                f"job {job.id} counts {job.available} available tasks, tasks say {available}"
            )
        if {k: v for k, v in job.counts.items() if v} != counts:
            raise InvariantViolation(f"job {job.id} counts {job.counts} but tasks say {counts}")
        # A job may stay listed after it settled by itself (a task beyond its
        # size exited); one with work must be listed.
        if cell.rules >= 3 and job.id not in cell.unsettled and not cell.settled(job):
            raise InvariantViolation(f"job {job.id} has lifecycle work but is not unsettled")
        if (job.id in cell.pending_jobs) != bool(counts.get(TaskState.PENDING)):
            raise InvariantViolation(f"job {job.id} pending index is wrong")
        if job.pending_from:
            for tid in itertools.islice(job.task_ids, job.pending_from):
                if cell.tasks[tid].state is TaskState.PENDING:
                    raise InvariantViolation(f"job {job.id}: pending task {tid} before its mark")


def check_machines(cell: CellState, machine_ids: Iterable[str]) -> None:
    """`check`'s machine promises for the given machines only, recounted from the tasks each
    one holds: cheap enough to run after every command on the machines it changed (replay),
    with a full `check` now and then for everything else."""
    recount = Ledger()
    for mid in machine_ids:
        machine = cell.machines[mid]
        account = Account(machine.account.capacity)
        for tid in machine.tasks:
            task = cell.tasks.get(tid)
            if task is None or task.state not in ACTIVE_STATES or task.machine != mid:
                raise InvariantViolation(f"machine {mid} holds {tid}, which is not active on it")
            if cell.rules >= 2:
                _check_task(task)
            recount.add(task, account)
        _check_machine(machine, account)


def _check_task(task: Task) -> None:
    """An active task's reservation lies between zero and its limit in every
    dimension (a promise of rules 2: rules 1 took usage reports as they came)."""
    if task.best_effort:
        if task.reserved:
            raise InvariantViolation(f"best-effort task {task.id} reserves {task.reserved}")
        return
    for dim, amount in task.reserved.items():
        if not 0 <= amount <= task.demand.get(dim, 0):
            raise InvariantViolation(
                f"task {task.id} reserves {amount} {dim}; its limit is {task.demand.get(dim, 0)}"
            )
    if task.reserved_packed != pack(task.reserved):
        raise InvariantViolation(
            f"task {task.id} packed reservation disagrees with {task.reserved}"
        )
    if task.reserved.keys() != task.demand.keys():
        raise InvariantViolation(
            f"task {task.id} reserves in {sorted(task.reserved)}, demands {sorted(task.demand)}"
        )


def _check_machine(machine: Machine, counted: Account) -> None:
    kept = machine.account.books()
    if kept != counted.books():
        raise InvariantViolation(
            f"machine {machine.id} books {kept} but its tasks add to {counted.books()}"
        )
    breach = counted.breach()
    if breach is not None:
        raise InvariantViolation(f"machine {machine.id} over capacity: {breach}")
