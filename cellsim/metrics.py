"""The Omega paper's scheduler metrics, recorded from a simulated trace.

Definitions (Schwarzkopf et al., EuroSys 2013, sections 4 and 5; the same as
Google's open-source cluster-scheduler-simulator):

- **job wait time**: from a job's submission to the start of its first
  scheduling attempt (the paper's headline figure), and, second, to the
  moment its last task was placed ("fully scheduled");
- **scheduler busyness**: the share of time a scheduler spends deciding (think
  time, useful or wasted), computed per simulated day and reported as the
  median of the daily values (and the overall mean);
- **conflict fraction**: conflicted transactions per successful transaction,
  where a transaction is a commit with at least one claim, it is conflicted if
  any of its claims was rejected, and successful (conflict-free) otherwise;
  attempts that found no room submit no transaction and count in neither. It
  can exceed 1. Computed by `schedulers.metrics.conflict_fraction`, the
  function the live schedulers use; the share of claims rejected is
  `claim_conflict_fraction`, a different figure;
- **abandoned jobs**: jobs given up after the maximum number of attempts.

Every figure is computed from plain counters and lists kept in insertion order,
so two runs fed the same trace produce the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from schedulers.metrics import claim_conflict_fraction, conflict_fraction

DAY = 86_400.0


class SchedulerTally:
    """What one scheduler did: attempts, transactions, claims, busy time per day."""

    __slots__ = (
        "attempts",
        "busy_days",
        "claims",
        "claims_rejected",
        "conflicted",
        "kind",
        "name",
        "no_claim_attempts",
        "transactions",
    )

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.attempts = 0
        self.no_claim_attempts = 0
        self.transactions = 0
        self.conflicted = 0
        self.claims = 0
        self.claims_rejected = 0
        self.busy_days: list[float] = []

    def add_busy(self, start: float, end: float) -> None:
        """Add busy time [start, end), split at day boundaries."""
        while end > start:
            day = int(start // DAY)
            stop = min(end, (day + 1) * DAY)
            days = self.busy_days
            if len(days) <= day:
                days.extend([0.0] * (day + 1 - len(days)))
            days[day] += stop - start
            start = stop


class JobRecord:
    __slots__ = (
        "abandoned",
        "first_attempt",
        "fully_placed",
        "kind",
        "scheduler",
        "submitted",
        "tasks",
    )

    def __init__(self, kind: str, submitted: float, tasks: int) -> None:
        self.kind = kind
        self.submitted = submitted
        self.tasks = tasks
        self.scheduler: str | None = None
        self.first_attempt: float | None = None
        self.fully_placed: float | None = None
        self.abandoned = False


class Metrics:
    """Collects a run's trace events; `rows` turns them into the paper's figures."""

    def __init__(self) -> None:
        self.schedulers: dict[str, SchedulerTally] = {}
        self.jobs: dict[str, JobRecord] = {}

    # -- recording ----------------------------------------------------------------

    def scheduler(self, name: str, kind: str) -> SchedulerTally:
        tally = self.schedulers.get(name)
        if tally is None:
            tally = self.schedulers[name] = SchedulerTally(name, kind)
        return tally

    def submitted(self, job: str, kind: str, at: float, tasks: int) -> None:
        self.jobs[job] = JobRecord(kind, at, tasks)

    def attempt(self, scheduler: str, jobs: Iterable[str], at: float, claims: int) -> None:
        """A decision that produced a transaction (or would have: `claims` may be 0)."""
        tally = self.schedulers[scheduler]
        tally.attempts += 1
        if not claims:
            tally.no_claim_attempts += 1
        for job in jobs:
            self.first_attempt(scheduler, job, at)

    def first_attempt(self, scheduler: str, job: str, at: float) -> None:
        """`scheduler` considered `job` at `at`; only the first time counts."""
        record = self.jobs.get(job)
        if record is not None and record.first_attempt is None:
            record.first_attempt = at
            record.scheduler = scheduler

    def busy(self, scheduler: str, start: float, end: float) -> None:
        self.schedulers[scheduler].add_busy(start, end)

    def transaction(self, scheduler: str, claims: int, rejected: int) -> None:
        if not claims:
            return
        tally = self.schedulers[scheduler]
        tally.transactions += 1
        tally.claims += claims
        tally.claims_rejected += rejected
        if rejected:
            tally.conflicted += 1

    def placed(self, job: str, at: float) -> None:
        record = self.jobs.get(job)
        if record is not None and record.fully_placed is None:
            record.fully_placed = at

    def abandon(self, job: str) -> None:
        record = self.jobs.get(job)
        if record is not None:
            record.abandoned = True

    # -- figures ------------------------------------------------------------------

    def rows(self, run_time: float) -> list[dict[str, object]]:
        """One row per scheduler, then one per job class (`scheduler` = `class:<kind>`)."""
        rows = []
        for tally in self.schedulers.values():
            jobs = [r for r in self.jobs.values() if r.scheduler == tally.name]
            rows.append(self._row(tally.name, tally.kind, [tally], jobs, run_time))
        kinds = sorted(
            {t.kind for t in self.schedulers.values()} | {r.kind for r in self.jobs.values()}
        )
        for kind in kinds:
            tallies = [t for t in self.schedulers.values() if t.kind == kind]
            jobs = [r for r in self.jobs.values() if r.kind == kind]
            rows.append(self._row(f"class:{kind}", kind, tallies, jobs, run_time))
        return rows

    @staticmethod
    def _row(
        name: str, kind: str, tallies: list[SchedulerTally], jobs: list[JobRecord], run_time: float
    ) -> dict[str, object]:
        transactions = sum(t.transactions for t in tallies)
        conflicted = sum(t.conflicted for t in tallies)
        claims = sum(t.claims for t in tallies)
        claims_rejected = sum(t.claims_rejected for t in tallies)
        first = [r.first_attempt - r.submitted for r in jobs if r.first_attempt is not None]
        full = [r.fully_placed - r.submitted for r in jobs if r.fully_placed is not None]
        daily = [busyness(t.busy_days, run_time) for t in tallies]
        return {
            "scheduler": name,
            "kind": kind,
            "jobs": len(jobs),
            "jobs_attempted": len(first),
            "jobs_fully_placed": len(full),
            "jobs_abandoned": sum(r.abandoned for r in jobs),
            "wait_first_mean": mean(first),
            "wait_first_p90": percentile(first, 0.9),
            "wait_full_mean": mean(full),
            "wait_full_p90": percentile(full, 0.9),
            "busyness_median_daily": mean([median(d) for d in daily]) if daily else math.nan,
            "busyness_mean": mean([_overall(t.busy_days, run_time) for t in tallies]),
            "attempts": sum(t.attempts for t in tallies),
            "attempts_no_claims": sum(t.no_claim_attempts for t in tallies),
            "transactions": transactions,
            "conflicted": conflicted,
            "conflict_fraction": conflict_fraction(conflicted, transactions - conflicted),
            "claims": claims,
            "claims_rejected": claims_rejected,
            "claim_conflict_fraction": claim_conflict_fraction(claims_rejected, claims),
        }


def busyness(busy_days: list[float], run_time: float) -> list[float]:
    """Busy share of each day of a run of `run_time` seconds (the last day may be partial)."""
    days = max(1, math.ceil(run_time / DAY))
    values = []
    for day in range(days):
        length = min(DAY, run_time - day * DAY)
        busy = busy_days[day] if day < len(busy_days) else 0.0
        values.append(busy / length if length > 0 else 0.0)
    return values


def _overall(busy_days: list[float], run_time: float) -> float:
    return sum(busy_days) / run_time if run_time > 0 else math.nan


def mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
