"""Helpers for the simulator tests: small workloads, and a minimal stand-in core.

The stand-in satisfies `schedulers.contract.Core`, as `SchedulerCore` does, with the
simplest policy (one job per decision, first machine with room per task, in
machine order) so that some tests have answers computable by hand. The
simulator itself always runs the real core unless a test passes this one.
"""

from __future__ import annotations

import random

import attrs

from cellsim.engine import SchedulerSetup
from cellsim.workload import parse
from cellstate import (
    CellState,
    Claim,
    CommitResult,
    ConflictMode,
    SchedulerClass,
    TaskState,
    Transaction,
    TxnMode,
)
from schedulers.metrics import SchedulerFigures


@attrs.frozen
class StandInDecision:
    transaction: Transaction
    jobs: tuple[str, ...]
    tasks: int

    @property
    def considered(self) -> tuple[str, ...]:
        return self.jobs

    @property
    def unscheduled(self) -> int:
        return self.tasks


class StandInCore:
    def __init__(
        self,
        name: str,
        kind: SchedulerClass,
        *,
        rng: random.Random,
        mode: TxnMode = TxnMode.INCREMENTAL,
        conflicts: ConflictMode = ConflictMode.FINE,
        shard: tuple[int, int] | None = None,
        sampling: bool = True,
        max_attempts: int = 1000,
        max_claims: int = 1000,
    ) -> None:
        self.name, self.kind, self.rng = name, kind, rng
        self.mode, self.conflicts, self.shard = mode, conflicts, shard
        self.max_attempts = max_attempts
        self.attempts: dict[str, int] = {}
        self.figures = SchedulerFigures()

    def _jobs(self, cell: CellState) -> list[str]:
        out = []
        for job_id in cell.pending_jobs:
            job = cell.jobs[job_id]
            if job.spec.scheduler is not self.kind or job_id in self.figures.blocked:
                continue
            if self.shard is not None:
                index, count = self.shard
                if int(job_id[1:]) % count != index:
                    continue
            out.append(job_id)
        return out

    def has_work(self, cell: CellState) -> bool:
        return bool(self._jobs(cell))

    def wakes_at(self) -> float | None:
        return None

    def decide(self, cell: CellState, now: float) -> StandInDecision | None:
        jobs = self._jobs(cell)
        if not jobs:
            return None
        job = cell.jobs[jobs[0]]
        free = {m.id: m.account.copy() for m in cell.machine_list}
        claims = []
        for task in cell.pending_tasks(job):
            for m in cell.machine_list:
                room = free[m.id]
                if room.shortfall(task.demand, task.best_effort) is None:
                    room.add(task.demand, task.demand, task.best_effort)
                    claims.append(Claim(task.id, m.id, m.seqnum))
                    break
        self.figures.decisions += 1
        txn = Transaction(self.name, tuple(claims), cell.version, self.mode, self.conflicts)
        return StandInDecision(txn, (job.id,), len(claims))

    def on_result(
        self, cell: CellState, decision: StandInDecision, result: CommitResult, now: float
    ) -> None:
        claims = len(decision.transaction.claims)
        if claims:
            self.figures.transactions += 1
            self.figures.claims_attempted += claims
            self.figures.claims_accepted += result.accepted
            self.figures.successful_transactions += bool(result.accepted)
            self.figures.conflicted_transactions += bool(result.rejected)
        for job in decision.jobs:
            self.attempts[job] = self.attempts.get(job, 0) + 1
            pending = cell.jobs[job].counts.get(TaskState.PENDING, 0)
            if pending and self.attempts[job] >= self.max_attempts:
                self.figures.blocked[job] = "abandoned"


def standin_factory(setup: SchedulerSetup, rng: random.Random, max_attempts: int) -> StandInCore:
    return StandInCore(
        setup.name,
        setup.kind,
        rng=rng,
        mode=setup.mode,
        conflicts=setup.conflicts,
        shard=setup.shard,
        sampling=setup.sampling,
        max_attempts=max_attempts,
    )


def tiny_workload(
    machines: int = 20,
    batch_mean: float = 10.0,
    service_mean: float = 300.0,
    prefill: float = 0.3,
    t_job: float = 0.1,
    t_task: float = 0.005,
    service_duration: float = 1800.0,
):
    return parse(
        {
            "name": "tiny",
            "cell": {
                "machines": machines,
                "cpu": 4.0,
                "memory_gib": 16.0,
                "domains": 4,
                "prefill_utilisation": prefill,
                "prefill_job_tasks": 5,
            },
            "schedulers": {
                "batch": {"t_job": t_job, "t_task": t_task},
                "service": {"t_job": t_job, "t_task": t_task},
            },
            "jobs": {
                "batch": {
                    "interarrival": {"dist": "exponential", "mean": batch_mean},
                    "tasks": {"dist": "lognormal", "median": 3, "sigma": 1.0, "min": 1, "max": 30},
                    "duration": {"dist": "lognormal", "median": 60, "sigma": 1.0, "min": 1},
                    "cpu": {"dist": "lognormal", "median": 0.3, "sigma": 0.5, "max": 2},
                    "memory_gib": {"dist": "lognormal", "median": 0.5, "sigma": 0.5, "max": 4},
                },
                "service": {
                    "interarrival": {"dist": "exponential", "mean": service_mean},
                    "tasks": {"dist": "lognormal", "median": 2, "sigma": 1.0, "min": 1, "max": 20},
                    "duration": {
                        "dist": "lognormal",
                        "median": service_duration,
                        "sigma": 1.0,
                        "min": 10,
                    },
                    "cpu": {"dist": "lognormal", "median": 0.5, "sigma": 0.5, "max": 2},
                    "memory_gib": {"dist": "lognormal", "median": 1.0, "sigma": 0.5, "max": 4},
                },
            },
        }
    )
