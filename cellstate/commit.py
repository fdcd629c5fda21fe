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
  A named victim that has already left the machine (exited, killed, moved) is
  simply not there to evict: the claim is judged on fit without it.
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
together. A transaction that names one task in two claims gets its later
claims refused `duplicate_claim`; every claim gets exactly one verdict.
For the coarse rule the sequence number a claim is compared with is
the machine's number before this transaction touched it, since a scheduler
reads all its claims from one version.

Reason codes come from `reasons`, the vocabulary `omega explain` and the
schedulers' filters share: `task_unknown`, `task_not_pending`,
`duplicate_claim`, `machine_unknown`, `machine_not_up`, `machine_changed`,
`constraint:<label>`, `anti_affinity`, `insufficient:<dimension>`,
`no_capacity:<dimension>`, `victim_gone` (coarse only, and any mode under
the cell's rules 1, see `model.RULES`),
`victim_not_preemptible`, `quota_exceeded:<dimension>`, `aborted`.

Under rules 4 a refused claim also says what it lost to: the cell version
and the actor (a scheduler's name for a commit; `agent`, `operator`,
`expiry`... for other commands) of the last change to its machine
(`Machine.changed`, `Rejection.by`/`at`). With `insufficient:<dimension>`
that names the rival, when, and the dimension it took; with
`machine_changed`, the change that moved the sequence number.

What fits is the ledger's rule (`ledger`): best-effort tasks live on
reclaimed resources, counting against capacity minus the *reservations* of
other tasks in cpu and memory, and devices and disk are never shared. After
a transaction, any machine where reservations and best-effort limits
together exceed capacity sheds best-effort tasks until they fit; they are
reported among the transaction's `preempted`.

Division of labour: this module only judges. `accepted` walks a transaction
and yields each claim to apply; `CellState` applies it (every write to the
state is the state's own) before the walk goes on, so a later claim of an
incremental transaction is judged against the state the earlier ones left.
An all-or-nothing transaction is judged whole against an overlay first and
yields nothing unless every claim passed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from cellstate import reasons, selectors
from cellstate.ledger import Account, Ledger
from cellstate.model import (
    ACTIVE_STATES,
    NON_PREEMPTIBLE,
    Claim,
    ConflictMode,
    MachineState,
    Rejection,
    Stop,
    StopReason,
    TaskState,
    Transaction,
    TxnMode,
)

if TYPE_CHECKING:
    from cellstate.model import JobSpec, Machine, Task
    from cellstate.state import CellState

PENDING = TaskState.PENDING
RUNNING = TaskState.RUNNING
UP = MachineState.UP
# What to apply: the task (a replacement not yet in the cell when the last
# item, the task it replaces, is given), its machine, and the victims.
Placement = tuple["Task", "Machine", Sequence["Task"], "Task | None"]
# Most claims name none; one shared empty tuple rather than a list per claim.
NO_VICTIMS: tuple[Task, ...] = ()
# The rules that first check disruption budgets (`model.RULES`).
BUDGET_RULES = 3
# The rules under which a claim's victims give their quota back for the claim (a task
# replaced in place frees what its replacement needs), and a claim refused for quota names
# no machine change (the owner's other tasks took the quota, not the machine's last change).
QUOTA_RULES = 7
_QUOTA_EXCEEDED = reasons.quota_exceeded("")


class _Overlay:
    """What earlier claims of one all-or-nothing transaction would take, so that
    later claims are judged as if those had applied."""

    __slots__ = ("claimed", "deltas", "evicted", "jobs_on", "lost", "pending")

    def __init__(self) -> None:
        self.claimed: set[str] = set()
        self.evicted: set[str] = set()
        # job id -> its available tasks that earlier claims stop
        self.lost: dict[str, int] = {}
        # machine id -> jobs with a task claimed onto it (for anti-affinity)
        self.jobs_on: dict[str, set[str]] = {}
        # machine id -> the change to its books; owners' quota in `pending`
        self.deltas: dict[str, Account] = {}
        self.pending = Ledger()

    def take(self, task: Task, machine: Machine, victims: Sequence[Task], claimed: str) -> None:
        self.claimed.add(claimed)
        self.jobs_on.setdefault(machine.id, set()).add(task.job)
        delta = self.deltas.get(machine.id)
        if delta is None:
            delta = self.deltas[machine.id] = Account.delta()
        for victim in victims:
            self.evicted.add(victim.id)
            self.pending.remove(victim, delta)
        # A placed regular task reserves its whole demand.
        self.pending.add(task, delta, reserved=task.need.whole)


def _victims(
    cell: CellState,
    claim: Claim,
    task: Task,
    machine: Machine,
    coarse: bool,
    overlay: _Overlay | None,
) -> tuple[list[Task], str | None]:
    """The claim's victims still on the machine, or the reason to refuse it.

    A victim that has left is `victim_gone` under coarse detection (the
    machine changed) and simply absent under fine detection (only fit counts)."""
    victims: list[Task] = []
    for vid in claim.victims:
        victim = cell.tasks.get(vid)
        if claim.replace and vid == claim.task and victim is not None:
            # The replaced task itself, stopped first: same job, any band.
            if victim.machine != machine.id or victim in victims:
                return [], reasons.VICTIM_GONE
            victims.append(victim)
            continue
        if (
            victim is None
            or victim.machine != machine.id
            or victim.state not in ACTIVE_STATES
            or (overlay is not None and vid in overlay.evicted)
            or victim in victims
        ):
            if coarse or cell.rules < 2:
                return [], reasons.VICTIM_GONE
            continue
        if victim.band >= task.band or victim.band >= NON_PREEMPTIBLE:
            return [], reasons.VICTIM_NOT_PREEMPTIBLE
        victims.append(victim)
    return victims, None


def _budget(cell: CellState, stopped: list[Task], lost: dict[str, int]) -> str | None:
    """`budget_exceeded` if stopping `stopped` would leave a job fewer running,
    healthy tasks than its size less its `max_unavailable`; otherwise count
    them in `lost` (what earlier claims of the transaction stop) and pass.

    Only a task that counts as available is a loss: stopping one that is
    pending, starting or unhealthy disrupts nothing."""
    counted: dict[str, int] = {}
    for task in stopped:
        if task.healthy_at is None:
            continue
        job = cell.jobs[task.job]
        budget = job.spec.max_unavailable
        if budget is None:
            continue
        n = counted.get(job.id, lost.get(job.id, 0)) + 1
        if job.available - n < job.spec.tasks - budget:
            return reasons.BUDGET_EXCEEDED
        counted[job.id] = n
    lost.update(counted)
    return None


def judge_stops(
    cell: CellState, txn: Transaction, rejected: list[Rejection], aborted: bool
) -> Iterator[tuple[Task, Stop]]:
    """Judge `txn`'s stops after its claims applied; yield each task to stop
    (the caller stops it before asking for the next) and append a `Rejection`
    for each refused. A stop is justified by its reason: `replaced` needs the
    task's replacement running and healthy, `scaled` an index beyond the job's
    size, `drained` a task on a draining machine that nothing replaces yet (rules 7);
    and it must fit the job's budget. An all-or-nothing transaction whose
    claims failed stops nothing."""
    for stop in txn.stops:
        reason = reasons.ABORTED if aborted else _stop_refusal(cell, stop)
        if reason is not None:
            rejected.append(Rejection(stop.task, "", reason))
            continue
        yield cell.tasks[stop.task], stop


def _stop_refusal(cell: CellState, stop: Stop) -> str | None:
    task = cell.tasks.get(stop.task)
    if task is None:
        return reasons.TASK_UNKNOWN
    if cell.rules < BUDGET_RULES:
        return reasons.STOP_UNJUSTIFIED
    if task.state is not PENDING and task.state not in ACTIVE_STATES:
        return reasons.TASK_FINISHED
    if stop.reason is StopReason.REPLACED:
        successor = cell.tasks.get(task.replaced_by) if task.replaced_by else None
        if successor is None or successor.healthy_at is None:
            return reasons.STOP_UNJUSTIFIED
    elif stop.reason is StopReason.DRAINED:
        machine = cell.machines.get(task.machine) if task.machine else None
        if (
            cell.rules < QUOTA_RULES
            or task.state not in ACTIVE_STATES
            or machine is None
            or machine.state is not MachineState.DRAINING
            or cell.replacement(task) is not None
        ):
            return reasons.STOP_UNJUSTIFIED
    elif task.index < cell.jobs[task.job].spec.tasks:
        return reasons.STOP_UNJUSTIFIED
    return _budget(cell, [task], {})


def accepted(cell: CellState, txn: Transaction, rejected: list[Rejection]) -> Iterator[Placement]:
    """Judge `txn` against `cell`; yield (task, machine, victims, replaced) for each
    claim to apply, and append a `Rejection` to `rejected` for each claim refused.

    The caller applies each yielded placement before asking for the next: an
    incremental transaction's later claims are judged against the state the
    earlier ones left. An all-or-nothing one is judged whole against an overlay
    (`_Overlay`) first. See the module docstring for the rules.

    Every claim of every commit is judged in this one loop, written out rather
    than a function per claim: it is the cell's hottest path."""
    coarse = txn.conflicts is ConflictMode.COARSE
    tasks, machines, jobs = cell.tasks, cell.machines, cell.jobs
    # Coarse detection compares each claim with its machine as it was before this
    # transaction's own claims, so every claim can be compared up front; the loop
    # then pays nothing per claim unless some claim is stale.
    stale = (
        {
            id(claim)
            for claim in txn.claims
            if (machine := machines.get(claim.machine)) is not None
            and claim.seqnum != machine.seqnum
        }
        if coarse
        else set()
    )
    named: set[str] = set()
    # Rules 1 judged a repeated task like any other claim (see `_rules_1_verdicts`).
    dedup = cell.rules >= 2
    # Counted once, so that a transaction without repeats (all but a broken
    # scheduler's) pays nothing per claim for the check.
    repeats = dedup and len({claim.task for claim in txn.claims}) < len(txn.claims)
    overlay = None if txn.mode is TxnMode.INCREMENTAL else _Overlay()
    plan: list[Placement] = []
    # All-or-nothing, per claim: its Rejection, or None if it passed (and is in `plan`).
    verdicts: list[Rejection | None] = []
    # Where a refusal goes: straight into the answer, or (all-or-nothing) among the verdicts.
    refused = rejected if overlay is None else verdicts
    refusal = cell.ledger.refusal
    pending = overlay.pending if overlay is not None else None
    for claim in txn.claims:
        if repeats:
            if claim.task in named:
                refused.append(_rejection(claim, reasons.DUPLICATE_CLAIM, None))
                continue
            named.add(claim.task)
        task = tasks.get(claim.task)
        if task is None:
            refused.append(_rejection(claim, reasons.TASK_UNKNOWN, None))
            continue
        if overlay is not None and task.id in overlay.claimed:
            refused.append(_rejection(claim, reasons.TASK_NOT_PENDING, None))
            continue
        old = None
        if claim.replace:
            if cell.rules < BUDGET_RULES or not cell.replaceable(task):
                refused.append(_rejection(claim, reasons.NOT_REPLACEABLE, None))
                continue
            # The task is a new one, not yet in the cell, replacing `old`.
            old, task = task, cell.successor(task)
        elif task.state is not PENDING:
            refused.append(_rejection(claim, reasons.TASK_NOT_PENDING, None))
            continue
        machine = machines.get(claim.machine)
        if machine is None:
            refused.append(_rejection(claim, reasons.MACHINE_UNKNOWN, None))
            continue
        if machine.state is not UP:
            refused.append(_rejection(claim, reasons.MACHINE_NOT_UP, machine))
            continue
        if stale and id(claim) in stale:
            refused.append(_rejection(claim, reasons.MACHINE_CHANGED, machine))
            continue
        spec = jobs[task.job].spec
        if spec.constraints or spec.selector or spec.anti_affinity:
            reason = _placement_refusal(cell, task, spec, machine, overlay)
            if reason is not None:
                refused.append(_rejection(claim, reason, machine))
                continue
        delta = overlay.deltas.get(machine.id) if overlay is not None else None
        quota = pending
        victims: Sequence[Task] = NO_VICTIMS
        if claim.victims:
            victims, reason = _victims(cell, claim, task, machine, coarse, overlay)
            if reason is None and cell.rules >= BUDGET_RULES:
                reason = _budget(cell, victims, overlay.lost if overlay is not None else {})
            if reason is not None:
                refused.append(_rejection(claim, reason, machine))
                continue
            if victims:
                delta = delta.copy() if delta is not None else Account.delta()
                # What the victims hold, on the machine and of their owners' quota, is
                # given back in this commit, before the claim takes its own.
                freed = Ledger()
                for victim in victims:
                    freed.remove(victim, delta)
                if cell.rules >= QUOTA_RULES:
                    for key, taken in pending.taken.items() if pending is not None else ():
                        freed.taken[key] = freed.taken.get(key, 0) + taken
                    quota = freed
        reason = refusal(task, machine.account, delta, quota)
        if reason is not None:
            blamed = (
                None
                if reason.startswith(_QUOTA_EXCEEDED) and cell.rules >= QUOTA_RULES
                else machine
            )
            refused.append(_rejection(claim, reason, blamed))
            continue
        if overlay is None:
            yield task, machine, victims, old
        else:
            verdicts.append(None)
            overlay.take(task, machine, victims, claim.task)
            plan.append((task, machine, victims, old))
    if overlay is None:
        return
    if len(plan) < len(txn.claims):
        if not dedup:
            rejected.extend(_rules_1_verdicts(txn, verdicts))
            return
        for claim, verdict in zip(txn.claims, verdicts, strict=True):
            # An aborted claim lost to its own transaction, not to the machine.
            rejected.append(
                verdict
                if verdict is not None
                else Rejection(claim.task, claim.machine, reasons.ABORTED)
            )
        return
    yield from plan


def _placement_refusal(
    cell: CellState, task: Task, spec: JobSpec, machine: Machine, overlay: _Overlay | None
) -> str | None:
    """Why the job's constraints or anti-affinity keep `task` off `machine`; None if
    they do not."""
    labels = machine.labels
    for key, value in spec.constraints.items():
        if labels.get(key) != value:
            return reasons.constraint(key)
    if spec.selector:
        for requirement in selectors.parsed(spec.selector).requirements:
            if not requirement(labels):
                return reasons.constraint(requirement.key)
    if spec.anti_affinity:
        tasks = cell.tasks
        job = task.job
        if any(tasks[tid].job == job for tid in machine.tasks) or (
            overlay is not None and job in overlay.jobs_on.get(machine.id, ())
        ):
            return reasons.ANTI_AFFINITY
    return None


def _rejection(claim: Claim, reason: str, machine: Machine | None) -> Rejection:
    """A refused claim, naming the last change to its machine (the version and
    who made it), if the machine is known and the cell records changes."""
    changed = machine.changed if machine is not None else None
    if changed is None:
        return Rejection(claim.task, claim.machine, reason)
    return Rejection(claim.task, claim.machine, reason, changed[1], changed[0])


def _rules_1_verdicts(txn: Transaction, verdicts: list[Rejection | None]) -> list[Rejection]:
    """A failed all-or-nothing transaction's answer as rules 1 gave it: the
    refused claims (without what they lost to), then `aborted` for the claims of
    tasks not refused, so that a task named twice could go without a verdict."""
    refused = [
        Rejection(c.task, c.machine, v.reason)
        for c, v in zip(txn.claims, verdicts, strict=True)
        if v is not None
    ]
    failed = {r.task for r in refused}
    aborted = [
        Rejection(c.task, c.machine, reasons.ABORTED) for c in txn.claims if c.task not in failed
    ]
    return refused + aborted
