"""Why a job is (not) placed: metrics collected while deciding, and their summary.

`JobMetric` is Nomad's `AllocMetric` for one job in one decision: how many
machines were evaluated, how many each feasibility filter removed (by the
reason codes of `cellstate.reasons`: `machine_not_up`, `constraint:<key>`,
`anti_affinity`), how many were exhausted on which dimension
(`insufficient:<dim>`: too little free; `no_capacity:<dim>`: none at all, as
for a job asking for a device no machine has), how many were scored, how many
tasks were placed and how many needed preemption. The policy fills it in as
it decides; there is no second code path that recomputes it.

`Explanation` is what `SchedulerCore.explain` returns and `omega explain`
prints: the last decision's metric plus what the core knows across decisions
(attempts, conflicts lost by reason, parked reason).
"""

from __future__ import annotations

from typing import Any

import attrs

from cellstate import reasons

# Reasons that say a machine lacks resources, rather than that a rule excludes it.
_EXHAUSTED = (reasons.insufficient(""), reasons.no_capacity(""))


@attrs.define(slots=True)
class JobMetric:
    """One job in one decision; mutable while the decision is built."""

    job: str
    wanted: int = 0
    placed: int = 0
    preempting: int = 0
    machines_evaluated: int = 0
    machines_feasible: int = 0
    machines_scored: int = 0
    # Placements that scored a sample of the feasible machines, and those of them
    # whose sample lacked room, so that every feasible machine was scored after all.
    sampled: int = 0
    rescored: int = 0
    filtered: dict[str, int] = attrs.field(factory=dict)
    exhausted: dict[str, int] = attrs.field(factory=dict)
    unplaced_reason: str | None = None
    # Tasks the owner's quota in the job's band kept out of this decision (not claimed,
    # so not refused: `unplaced_reason` says which dimension).
    quota_held: int = 0

    def count(self, reason: str, machines: int) -> None:
        if machines:
            bucket = self.exhausted if reason.startswith(_EXHAUSTED) else self.filtered
            bucket[reason] = bucket.get(reason, 0) + machines

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(slots=True)
class Explanation:
    """The data `omega explain JOB` prints."""

    job: str
    scheduler: str
    known: bool
    pending_tasks: int = 0
    attempts: int = 0
    parked: str | None = None
    conflicts: dict[str, int] = attrs.field(factory=dict)
    # Rejected claims by who last changed the machine (`Rejection.by`).
    lost_to: dict[str, int] = attrs.field(factory=dict)
    last: JobMetric | None = None

    def summary(self) -> str:
        """One line in the Kubernetes style: `0/5 machines fit: 3 insufficient:cpu, ...`."""
        if not self.known:
            return f"job {self.job}: not seen by scheduler {self.scheduler}"
        attempts = f"{self.attempts} attempt" + ("" if self.attempts == 1 else "s")
        parts = [f"job {self.job}: {self.pending_tasks} pending, {attempts}"]
        if self.last is not None:
            m = self.last
            if m.quota_held:
                parts.append(f"{m.quota_held} held back by quota ({m.unplaced_reason})")
            if m.machines_evaluated or not m.quota_held:
                removed = {**m.filtered, **m.exhausted}
                detail = ", ".join(
                    f"{v} {k}" for k, v in sorted(removed.items(), key=lambda kv: -kv[1])
                )
                parts.append(
                    f"{m.machines_feasible}/{m.machines_evaluated} machines fit"
                    + (f": {detail}" if detail else "")
                )
                parts.append(f"{m.machines_scored} scored, placed {m.placed}/{m.wanted}")
            else:
                parts.append(f"placed {m.placed}/{m.wanted}")
        if self.conflicts:
            parts.append(
                "conflicts lost: "
                + ", ".join(f"{v} {k}" for k, v in sorted(self.conflicts.items()))
                + (" to " + _counts(self.lost_to) if self.lost_to else "")
            )
        if self.parked:
            parts.append(f"parked: {self.parked}")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["last"] = self.last.as_dict() if self.last is not None else None
        return data


def _counts(counts: dict[str, int]) -> str:
    """`batch-2 x3, agent x1`: largest first."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} x{v}" for k, v in ranked)
