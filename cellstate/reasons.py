"""The one vocabulary of reasons: why a claim was refused, or a machine filtered out.

The commit protocol answers with these codes, the schedulers' feasibility
filters count machines by them, and `omega explain` prints them, so a reason
given before a commit and a rejection after it read the same (the Kubernetes
scheduling framework's lesson: "0/5 machines fit: 3 insufficient:cpu").

Codes with a parameter name it after a colon: `constraint:<label key>`,
`insufficient:<dimension>` (the machine has some of it, not enough free),
`no_capacity:<dimension>` (the machine has none of it at all, e.g. no gpu),
`quota_exceeded:<dimension>`.
"""

from __future__ import annotations

TASK_UNKNOWN = "task_unknown"
TASK_NOT_PENDING = "task_not_pending"
# A transaction named the same task in an earlier claim; that claim has its own verdict.
DUPLICATE_CLAIM = "duplicate_claim"
MACHINE_UNKNOWN = "machine_unknown"
MACHINE_NOT_UP = "machine_not_up"
MACHINE_CHANGED = "machine_changed"
ANTI_AFFINITY = "anti_affinity"
VICTIM_GONE = "victim_gone"
VICTIM_NOT_PREEMPTIBLE = "victim_not_preemptible"
# Stopping the task would leave its job more tasks unavailable than its
# `max_unavailable` allows.
BUDGET_EXCEEDED = "budget_exceeded"
# A replacement claim for a task that is not placed, is already replaced, or
# already runs its job's current version.
NOT_REPLACEABLE = "not_replaceable"
# A stop of a task that has no running replacement (`replaced`) or whose
# index is within its job's size (`scaled`).
STOP_UNJUSTIFIED = "stop_unjustified"
# A stop of a task that has already ended.
TASK_FINISHED = "task_finished"
# A claim of a failed all-or-nothing transaction that was itself acceptable.
ABORTED = "aborted"
# A scheduler found room for fewer tasks than it wanted, no machine being
# charged to any other reason (e.g. every feasible machine filled up).
NO_ROOM = "no_room"


def constraint(key: str) -> str:
    return f"constraint:{key}"


def insufficient(dimension: str) -> str:
    return f"insufficient:{dimension}"


def no_capacity(dimension: str) -> str:
    return f"no_capacity:{dimension}"


def quota_exceeded(dimension: str) -> str:
    return f"quota_exceeded:{dimension}"


def short(dimension: str, capacity: int) -> str:
    """The reason a machine of `capacity` in `dimension` cannot take a demand."""
    return no_capacity(dimension) if capacity == 0 else insufficient(dimension)
