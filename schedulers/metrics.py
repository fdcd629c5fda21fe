"""A scheduler's own figures, counted the Omega way.

Definitions (per scheduler, over its lifetime):
- `transactions`: transactions whose result came back (`on_result` calls).
- `successful_transactions`: transactions with at least one claim accepted.
- `conflicted_transactions`: transactions with at least one claim that came
  back with any rejection (`aborted` included); `conflict_free_transactions`:
  those with claims and none. A transaction without claims (only stops or
  verdicts) is neither, as in the simulator.
- `conflict_fraction` = conflicted / conflict-free transactions
  (`conflict_fraction`, the one definition live and simulated figures share):
  the Omega paper's "mean number of conflicts per successful transaction",
  where successful means conflict-free (Schwarzkopf et al., EuroSys 2013,
  section 4; Google's cluster-scheduler-simulator counts the same way). It can
  exceed 1: 3 conflicted and 2 conflict-free give 1.5. 0 before any
  conflict; not a number (and left out of the flat figures) when there were
  conflicts and no conflict-free transaction yet.
- `claim_conflict_fraction` = claims rejected / claims attempted: a share of
  claims, at most 1, a different figure under its own name.
- `conflicts_by_rival`: rejected claims by who they lost to (`Rejection.by`:
  a scheduler's name, this one's own included, or `agent`, `operator`...);
  `conflicts_by_machine`: rejected claims per machine, of which `as_dict`
  shows the `HOT_MACHINES` hottest as `hot_machines`.
- `partition_machines`: with conflict avoidance (`schedulers.avoid`), how
  many machines were this scheduler's own share at its last decision (every
  machine when it has no rival; 0 without avoidance); `claims_spilled`:
  claims it sent to machines of another scheduler's share because its own
  lacked room, where conflicts come back.
- `sampled`: placements (one job in one decision) that scored a sample of
  the feasible machines (`schedulers.sample`); `sample_fallbacks`: those of
  them whose sample had too little room, so every feasible machine was
  scored after all, the cost sampling exists to avoid.
- `busy_seconds`: decision time the caller reports through `add_busy`; busyness
  is busy_seconds over the caller's elapsed (virtual or real) time.
- `decision_seconds`: one sample per `add_busy` call (p50/p90/p99 in `as_dict`).
- `wait_first_attempt` / `wait_placed`: per job, submission to its first
  decision, and submission to the result that left it with nothing pending.
  These three are `Samples`: `n`, `mean` and `max` over the lifetime,
  percentiles over the most recent `WINDOW` samples.
- `blocked`: parked jobs and the reason they were parked.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

# How many of the machines with the most rejected claims the figures name.
HOT_MACHINES = 5


def conflict_fraction(conflicted: int, conflict_free: int) -> float:
    """The Omega paper's conflict fraction: conflicted transactions per
    conflict-free one (so it can exceed 1). 0 with no conflict at all; nan
    when there were conflicts and no conflict-free transaction (unbounded).

    Live schedulers (`SchedulerFigures`) and the simulator (`cellsim.metrics`)
    both call this, so their figures mean the same thing."""
    if not conflicted:
        return 0.0
    return conflicted / conflict_free if conflict_free else math.nan


def claim_conflict_fraction(rejected: int, attempted: int) -> float:
    """Rejected claims per claim attempted (at most 1); nan with no claims."""
    return rejected / attempted if attempted else math.nan


def hottest(counts: dict[str, int], n: int = HOT_MACHINES) -> dict[str, int]:
    """The `n` largest counts, largest first (ties by name, so copies agree)."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


# How many of the most recent samples percentiles are read from. A scheduler that runs for
# weeks decides millions of times and reports its figures every few seconds: over the whole
# history, each report read 0.4 s more per 3 million decisions, and memory grew for good.
WINDOW = 10_000
# A decision takes from well under a millisecond (one job, a sample of machines) to seconds
# (a large gang on 100,000 machines).
DECISION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Samples:
    """A stream of one figure's samples (seconds): how many and their sum over the
    lifetime, the most recent `window` of them in a ring (for percentiles), and, given
    bucket bounds, a count per bucket over the lifetime (a Prometheus histogram's, which
    must never go down)."""

    __slots__ = ("_recent", "bounds", "buckets", "count", "peak", "total")

    def __init__(self, bounds: Sequence[float] = (), window: int = WINDOW) -> None:
        self.bounds = tuple(bounds)
        # Samples above bound i and at most bound i+1 (the last: above every bound).
        self.buckets = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0
        self.peak = -math.inf
        self._recent = np.zeros(window, dtype=np.float64)

    def append(self, value: float) -> None:
        self._recent[self.count % len(self._recent)] = value
        self.count += 1
        self.total += value
        if value > self.peak:
            self.peak = value
        if self.bounds:
            self.buckets[bisect.bisect_left(self.bounds, value)] += 1

    def recent(self) -> np.ndarray:
        """The most recent samples (at most `window`), oldest first."""
        size = len(self._recent)
        if self.count <= size:
            return self._recent[: self.count].copy()
        cut = self.count % size
        return np.concatenate((self._recent[cut:], self._recent[:cut]))

    def cumulative(self) -> list[int]:
        """Samples at most each bound, then all of them: a histogram's buckets."""
        return list(itertools.accumulate(self.buckets))

    def summary(self) -> dict[str, float | int]:
        if not self.count:
            return {"n": 0}
        data = self.recent()
        p50, p90, p99 = np.percentile(data, [50, 90, 99])
        return {
            "n": self.count,
            "mean": self.total / self.count,
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "max": self.peak,
        }


@attrs.define(slots=True)
class SchedulerFigures:
    """Counters and samples; see the module docstring for definitions."""

    decisions: int = 0
    transactions: int = 0
    successful_transactions: int = 0
    conflicted_transactions: int = 0
    conflict_free_transactions: int = 0
    claims_attempted: int = 0
    claims_accepted: int = 0
    preemptions: int = 0
    partition_machines: int = 0
    claims_spilled: int = 0
    sampled: int = 0
    sample_fallbacks: int = 0
    conflicts_by_reason: dict[str, int] = attrs.field(factory=dict)
    conflicts_by_rival: dict[str, int] = attrs.field(factory=dict)
    conflicts_by_machine: dict[str, int] = attrs.field(factory=dict)
    busy_seconds: float = 0.0
    decision_seconds: Samples = attrs.field(factory=lambda: Samples(DECISION_BUCKETS))
    wait_first_attempt: Samples = attrs.field(factory=Samples)
    wait_placed: Samples = attrs.field(factory=Samples)
    blocked: dict[str, str] = attrs.field(factory=dict)

    @property
    def claims_rejected(self) -> int:
        return self.claims_attempted - self.claims_accepted

    @property
    def conflict_fraction(self) -> float:
        return conflict_fraction(self.conflicted_transactions, self.conflict_free_transactions)

    @property
    def claim_conflict_fraction(self) -> float:
        return claim_conflict_fraction(self.claims_rejected, self.claims_attempted)

    def add_busy(self, seconds: float) -> None:
        """Record one decision's duration (wall or modelled); adds to busyness."""
        self.busy_seconds += seconds
        self.decision_seconds.append(seconds)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready figures (samples summarised as percentiles)."""
        return {
            "decisions": self.decisions,
            "transactions": self.transactions,
            "successful_transactions": self.successful_transactions,
            "conflicted_transactions": self.conflicted_transactions,
            "conflict_free_transactions": self.conflict_free_transactions,
            "conflict_fraction": self.conflict_fraction,
            "claims_attempted": self.claims_attempted,
            "claims_accepted": self.claims_accepted,
            "claims_rejected": self.claims_rejected,
            "claim_conflict_fraction": self.claim_conflict_fraction,
            "preemptions": self.preemptions,
            "partition_machines": self.partition_machines,
            "claims_spilled": self.claims_spilled,
            "sampled": self.sampled,
            "sample_fallbacks": self.sample_fallbacks,
            "conflicts_by_reason": dict(sorted(self.conflicts_by_reason.items())),
            "conflicts_by_rival": dict(sorted(self.conflicts_by_rival.items())),
            "hot_machines": hottest(self.conflicts_by_machine),
            "busy_seconds": self.busy_seconds,
            "decision_seconds": self.decision_seconds.summary(),
            "wait_first_attempt_s": self.wait_first_attempt.summary(),
            "wait_placed_s": self.wait_placed.summary(),
            "blocked_jobs": len(self.blocked),
            "blocked": dict(sorted(self.blocked.items())),
        }
