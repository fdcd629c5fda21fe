"""Optimistic validation of scheduler transactions: Omega's commit protocol.

A scheduler decides against its own copy of the cell, which may be stale by
the time its transaction is applied: other schedulers committed meanwhile,
tasks ended, machines failed. So the cell validates each claim against the
*latest* state, at apply time, inside the replicated log. Because the log
orders every commit, validation needs no locks, and every replica and every
scheduler copy reaches the same verdicts.

Two conflict-detection rules, as in the Omega paper:
- `fine`: a claim is accepted if it still fits *now*: task pending, machine
  up and matching the job's constraints, every resource dimension free (after
  releasing the claim's victims), owner quota not exceeded. Two schedulers
  that both placed a task on one machine can both win if the machine has room.
- `coarse`: additionally the machine's sequence number must equal the one the
  scheduler saw. Any change to the machine since then (a placement, an exit, a
  usage report) is a conflict, even if the claim would still fit. Coarse runs
  the fine checks too (the store never trusts a scheduler to keep its
  invariants), so a claim judged against one state is never accepted by
  coarse and refused by fine. Across the claims of one transaction the two
  can part ways only through owner quota, which spans machines: a claim that
  coarse refused leaves quota for a later one that fine had to refuse.

Two transaction modes:
- `incremental`: each claim stands alone; accepted claims apply even if others
  are rejected.
- `all-or-nothing` (gang scheduling): every claim is validated against the
  state as earlier claims of the same transaction would leave it; if any is
  rejected nothing applies, and the other claims are reported `aborted`.

Claims in one transaction see each other: two claims on one machine must fit
together. For the coarse rule the sequence number a claim is compared with is
the machine's number before this transaction touched it, since a scheduler
reads all its claims from one version.

Reason codes (the same words `omega explain` prints): `task_unknown`,
`task_not_pending`, `machine_unknown`, `machine_not_up`, `machine_changed`,
`constraint:<label>`, `anti_affinity`, `insufficient:cpu`,
`insufficient:memory`, `victim_gone`, `victim_not_preemptible`,
`quota_exceeded:<dimension>`, `aborted`.

Best-effort tasks live on reclaimed resources: their limits count against
capacity minus the *reservations* of other tasks (usage plus margin), not
against those tasks' limits. After a transaction, any machine where
reservations and best-effort limits together exceed capacity sheds
best-effort tasks until they fit (`CellState._squeeze_best_effort`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cellstate.commands import Event, TaskPlaced
from cellstate.model import (
    ACTIVE_STATES,
    NON_PREEMPTIBLE,
    Claim,
    CommitResult,
    ConflictMode,
    MachineState,
    Rejection,
    TaskState,
    Transaction,
    TxnMode,
)

if TYPE_CHECKING:
    from cellstate.model import Machine, Task
    from cellstate.state import CellState

TASK_UNKNOWN = "task_unknown"
TASK_NOT_PENDING = "task_not_pending"
MACHINE_UNKNOWN = "machine_unknown"
MACHINE_NOT_UP = "machine_not_up"
MACHINE_CHANGED = "machine_changed"
ANTI_AFFINITY = "anti_affinity"
INSUFFICIENT_CPU = "insufficient:cpu"
INSUFFICIENT_MEMORY = "insufficient:memory"
VICTIM_GONE = "victim_gone"
VICTIM_NOT_PREEMPTIBLE = "victim_not_preemptible"
QUOTA_CPU = "quota_exceeded:cpu"
QUOTA_MEMORY = "quota_exceeded:memory"
ABORTED = "aborted"

PENDING = TaskState.PENDING
UP = MachineState.UP


class _Overlay:
    """What earlier claims of one all-or-nothing transaction would take, so that
    later claims are judged as if those had applied."""

    __slots__ = ("claimed", "evicted", "jobs_on", "machines", "quota")

    def __init__(self) -> None:
        self.claimed: set[str] = set()
        self.evicted: set[str] = set()
        # machine id -> jobs with a task claimed onto it (for anti-affinity)
        self.jobs_on: dict[str, set[str]] = {}
        # machine id -> [used_cpu, used_memory, reserved_cpu, reserved_memory, be_cpu, be_memory]
        self.machines: dict[str, list[int]] = {}
        self.quota: dict[tuple[str, int], list[int]] = {}

    def take(self, task: Task, machine: Machine, victims: list[Task]) -> None:
        self.claimed.add(task.id)
        self.jobs_on.setdefault(machine.id, set()).add(task.job)
        delta = self.machines.setdefault(machine.id, [0, 0, 0, 0, 0, 0])
        for victim in victims:
            self.evicted.add(victim.id)
            if victim.best_effort:
                delta[4] -= victim.cpu
                delta[5] -= victim.memory
            else:
                delta[0] -= victim.cpu
                delta[1] -= victim.memory
                delta[2] -= victim.reserved_cpu
                delta[3] -= victim.reserved_memory
                quota = self.quota.setdefault((victim.owner, victim.priority // 100), [0, 0])
                quota[0] -= victim.cpu
                quota[1] -= victim.memory
        if task.best_effort:
            delta[4] += task.cpu
            delta[5] += task.memory
        else:
            delta[0] += task.cpu
            delta[1] += task.memory
            delta[2] += task.cpu
            delta[3] += task.memory
            quota = self.quota.setdefault((task.owner, task.priority // 100), [0, 0])
            quota[0] += task.cpu
            quota[1] += task.memory


_NO_DELTA = (0, 0, 0, 0, 0, 0)


def _validate(
    cell: CellState,
    claim: Claim,
    coarse: bool,
    seqnums: dict[str, int],
    overlay: _Overlay | None,
) -> tuple[str | None, Task | None, Machine | None, list[Task]]:
    """Judge one claim against the latest state (plus `overlay`); return the
    reason it is rejected (None if accepted), its task, machine and victims."""
    task = cell.tasks.get(claim.task)
    if task is None:
        return TASK_UNKNOWN, None, None, []
    if task.state is not PENDING or (overlay is not None and task.id in overlay.claimed):
        return TASK_NOT_PENDING, task, None, []
    machine = cell.machines.get(claim.machine)
    if machine is None:
        return MACHINE_UNKNOWN, task, None, []
    if machine.state is not UP:
        return MACHINE_NOT_UP, task, machine, []
    if coarse and claim.seqnum != seqnums.get(machine.id, machine.seqnum):
        return MACHINE_CHANGED, task, machine, []

    spec = cell.jobs[task.job].spec
    if spec.constraints:
        labels = machine.labels
        for key, value in spec.constraints.items():
            if labels.get(key) != value:
                return f"constraint:{key}", task, machine, []
    if spec.anti_affinity:
        tasks = cell.tasks
        job = task.job
        if any(tasks[tid].job == job for tid in machine.tasks) or (
            overlay is not None and job in overlay.jobs_on.get(machine.id, ())
        ):
            return ANTI_AFFINITY, task, machine, []

    victims: list[Task] = []
    free_used_cpu = free_used_memory = free_res_cpu = free_res_memory = 0
    if claim.victims:
        band = task.priority // 100
        for vid in claim.victims:
            victim = cell.tasks.get(vid)
            if (
                victim is None
                or victim.machine != machine.id
                or victim.state not in ACTIVE_STATES
                or (overlay is not None and vid in overlay.evicted)
                or vid in {v.id for v in victims}
            ):
                return VICTIM_GONE, task, machine, []
            victim_band = victim.priority // 100
            if victim_band >= band or victim_band >= NON_PREEMPTIBLE:
                return VICTIM_NOT_PREEMPTIBLE, task, machine, []
            victims.append(victim)
            if victim.best_effort:
                free_res_cpu += victim.cpu
                free_res_memory += victim.memory
            else:
                free_used_cpu += victim.cpu
                free_used_memory += victim.memory
                free_res_cpu += victim.reserved_cpu
                free_res_memory += victim.reserved_memory

    delta = overlay.machines.get(machine.id, _NO_DELTA) if overlay is not None else _NO_DELTA
    if task.best_effort:
        taken_cpu = machine.reserved_cpu + machine.be_cpu + delta[2] + delta[4] - free_res_cpu
        taken_memory = (
            machine.reserved_memory + machine.be_memory + delta[3] + delta[5] - free_res_memory
        )
    else:
        taken_cpu = machine.used_cpu + delta[0] - free_used_cpu
        taken_memory = machine.used_memory + delta[1] - free_used_memory
    if taken_cpu + task.cpu > machine.cpu:
        return INSUFFICIENT_CPU, task, machine, []
    if taken_memory + task.memory > machine.memory:
        return INSUFFICIENT_MEMORY, task, machine, []

    if cell.quotas and not task.best_effort:
        key = (task.owner, task.priority // 100)
        limit = cell.quotas.get(key)
        if limit is not None:
            usage = cell.owner_usage.get(key, (0, 0))
            pending = overlay.quota.get(key, (0, 0)) if overlay is not None else (0, 0)
            if usage[0] + pending[0] + task.cpu > limit[0]:
                return QUOTA_CPU, task, machine, []
            if usage[1] + pending[1] + task.memory > limit[1]:
                return QUOTA_MEMORY, task, machine, []
    return None, task, machine, victims


def apply_transaction(
    cell: CellState, txn: Transaction, at: float, events: list[Event]
) -> CommitResult:
    """Validate and apply one transaction; see the module docstring."""
    coarse = txn.conflicts is ConflictMode.COARSE
    # Sequence numbers as the scheduler read them: before this txn's own claims.
    seqnums: dict[str, int] = {}
    rejected: list[Rejection] = []
    preempted: list[str] = []
    touched: dict[str, Machine] = {}

    if txn.mode is TxnMode.INCREMENTAL:
        accepted = 0
        for claim in txn.claims:
            reason, task, machine, victims = _validate(cell, claim, coarse, seqnums, None)
            if reason is not None:
                rejected.append(Rejection(claim.task, claim.machine, reason))
                continue
            _apply_claim(cell, task, machine, victims, at, seqnums, touched, preempted, events)  # type: ignore[arg-type]
            accepted += 1
    else:
        overlay = _Overlay()
        plan = []
        for claim in txn.claims:
            reason, task, machine, victims = _validate(cell, claim, coarse, seqnums, overlay)
            if reason is not None:
                rejected.append(Rejection(claim.task, claim.machine, reason))
                continue
            overlay.take(task, machine, victims)  # type: ignore[arg-type]
            plan.append((task, machine, victims))
        if rejected:
            failed = {r.task for r in rejected}
            aborted = [
                Rejection(c.task, c.machine, ABORTED) for c in txn.claims if c.task not in failed
            ]
            return CommitResult(0, tuple(rejected) + tuple(aborted), ())
        for task, machine, victims in plan:
            _apply_claim(cell, task, machine, victims, at, seqnums, touched, preempted, events)  # type: ignore[arg-type]
        accepted = len(plan)

    for machine in touched.values():
        cell._squeeze_best_effort(machine, events)
    return CommitResult(accepted, tuple(rejected), tuple(preempted))


def _apply_claim(
    cell: CellState,
    task: Task,
    machine: Machine,
    victims: list[Task],
    at: float,
    seqnums: dict[str, int],
    touched: dict[str, Machine],
    preempted: list[str],
    events: list[Event],
) -> None:
    if machine.id not in seqnums:
        seqnums[machine.id] = machine.seqnum
    for victim in victims:
        cell._evict(victim, "preempted", events)
        preempted.append(victim.id)
    cell._place(task, machine, at)
    if not task.best_effort:
        touched[machine.id] = machine
    events.append(TaskPlaced(task.id, machine.id, task.incarnation))
