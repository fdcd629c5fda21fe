"""A scheduler's own figures, counted the Omega way.

Definitions (per scheduler, over its lifetime):
- `transactions`: transactions whose result came back (`on_result` calls).
- `successful_transactions`: transactions with at least one claim accepted.
- `conflicted_transactions`: transactions with at least one claim rejected
  (for any reason, `aborted` included).
- `conflict_fraction` = conflicted_transactions / successful_transactions
  (0 when there is no successful one). This is the Omega paper's "mean number
  of conflicts per successful transaction" counted per transaction, so it can
  exceed 1 when most transactions fail entirely.
- `claim_conflict_fraction` = claims rejected / claims attempted.
- `busy_seconds`: decision time the caller reports through `add_busy`; busyness
  is busy_seconds over the caller's elapsed (virtual or real) time.
- `decision_seconds`: one sample per `add_busy` call (p50/p90/p99 in `as_dict`).
- `wait_first_attempt` / `wait_placed`: per job, submission to its first
  decision, and submission to the result that left it with nothing pending.
- `blocked`: parked jobs and the reason they were parked.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np


def _percentiles(samples: list[float]) -> dict[str, float | int]:
    if not samples:
        return {"n": 0}
    data = np.asarray(samples, dtype=np.float64)
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return {
        "n": len(samples),
        "mean": float(data.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(data.max()),
    }


@attrs.define(slots=True)
class SchedulerFigures:
    """Counters and samples; see the module docstring for definitions."""

    decisions: int = 0
    transactions: int = 0
    successful_transactions: int = 0
    conflicted_transactions: int = 0
    claims_attempted: int = 0
    claims_accepted: int = 0
    preemptions: int = 0
    conflicts_by_reason: dict[str, int] = attrs.field(factory=dict)
    busy_seconds: float = 0.0
    decision_seconds: list[float] = attrs.field(factory=list)
    wait_first_attempt: list[float] = attrs.field(factory=list)
    wait_placed: list[float] = attrs.field(factory=list)
    blocked: dict[str, str] = attrs.field(factory=dict)

    @property
    def claims_rejected(self) -> int:
        return self.claims_attempted - self.claims_accepted

    @property
    def conflict_fraction(self) -> float:
        if not self.successful_transactions:
            return 0.0
        return self.conflicted_transactions / self.successful_transactions

    @property
    def claim_conflict_fraction(self) -> float:
        if not self.claims_attempted:
            return 0.0
        return self.claims_rejected / self.claims_attempted

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
            "conflict_fraction": self.conflict_fraction,
            "claims_attempted": self.claims_attempted,
            "claims_accepted": self.claims_accepted,
            "claims_rejected": self.claims_rejected,
            "claim_conflict_fraction": self.claim_conflict_fraction,
            "preemptions": self.preemptions,
            "conflicts_by_reason": dict(sorted(self.conflicts_by_reason.items())),
            "busy_seconds": self.busy_seconds,
            "decision_seconds": _percentiles(self.decision_seconds),
            "wait_first_attempt_s": _percentiles(self.wait_first_attempt),
            "wait_placed_s": _percentiles(self.wait_placed),
            "blocked_jobs": len(self.blocked),
            "blocked": dict(sorted(self.blocked.items())),
        }
