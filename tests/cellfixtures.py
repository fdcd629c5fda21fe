"""Small builders for tests that drive a CellState with real commands."""

from __future__ import annotations

import itertools

from cellstate import (
    CellState,
    Claim,
    Commit,
    CommitResult,
    ConflictMode,
    JobSpec,
    MachineSpec,
    RegisterMachines,
    Resources,
    SchedulerClass,
    SubmitJob,
    Transaction,
    TxnMode,
)

GI = 1 << 30
_ids = itertools.count()


def cell_with(
    machines: int = 2,
    cpu: int = 4000,
    memory: int = 8 * GI,
    domains: int = 1,
    labels: dict[str, str] | None = None,
    extra: dict[str, int] | None = None,
) -> CellState:
    """A cell of `machines` alike machines; `extra` adds dimensions (disk, devices)."""
    cell = CellState()
    capacity = Resources(cpu, memory, **(extra or {}))
    specs = tuple(
        MachineSpec(f"m{i}", capacity, labels=labels or {}, domain=f"d{i % domains}")
        for i in range(machines)
    )
    cell.apply(RegisterMachines(specs, at=1.0))
    return cell


def submit(
    cell: CellState,
    job: str,
    tasks: int = 1,
    cpu: int = 1000,
    memory: int = GI,
    scheduler: SchedulerClass = SchedulerClass.BATCH,
    at: float = 2.0,
    extra: dict[str, int] | None = None,
    **spec,
) -> None:
    outcome = cell.apply(
        SubmitJob(
            job,
            JobSpec(
                name=job,
                owner=spec.pop("owner", "alice"),
                scheduler=scheduler,
                resources=Resources(cpu, memory, **(extra or {})),
                tasks=tasks,
                **spec,
            ),
            at=at,
        )
    )
    assert type(outcome.result).__name__ == "Ok", outcome.result


def commit(
    cell: CellState,
    *claims: tuple,
    mode: TxnMode = TxnMode.INCREMENTAL,
    conflicts: ConflictMode = ConflictMode.FINE,
    at: float = 3.0,
    scheduler: str = "test",
):
    """Commit claims given as (task, machine[, seqnum[, victims]]) as `scheduler`;
    seqnum defaults to the machine's current one."""
    built = []
    for claim in claims:
        task, machine, *rest = claim
        seqnum = (
            rest[0]
            if rest and rest[0] is not None
            else (cell.machines[machine].seqnum if machine in cell.machines else 0)
        )
        victims = tuple(rest[1]) if len(rest) > 1 else ()
        built.append(Claim(task, machine, seqnum, victims))
    txn = Transaction(scheduler, tuple(built), cell.version, mode, conflicts)
    return cell.apply(Commit(txn, at=at, id=f"c{next(_ids)}"))


def reasons(outcome) -> dict[str, str]:
    """A commit's rejections as {task: reason}."""
    assert isinstance(outcome.result, CommitResult)
    return {r.task: r.reason for r in outcome.result.rejected}
