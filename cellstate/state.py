"""`CellState`: the whole truth of one cell, changed only by applying commands.

Applying a command is a pure function of the state and the command: no clock,
no randomness, no I/O. Time and ids travel inside commands. Raft replicas,
every scheduler's local copy and the simulator run this very class, so the
same commands in the same order give byte-identical snapshots everywhere.

Every applied command bumps `version` (duplicates and refusals too, so that
the version is the position in the log) and yields the events it caused.

Every resource is counted by the ledger (`ledger`): the state books and
unbooks tasks with it, and only the state writes. The commit protocol
(`commit`) judges transactions and hands back what to apply.

Invariants kept by every command (`check_invariants` verifies them):
- per machine and dimension (cpu, memory, disk, devices), limits of
  non-best-effort tasks <= capacity, and their reservations plus best-effort
  limits <= capacity, which makes devices and disk exclusive;
- every reservation lies between zero and its task's limit;
- a task is active (assigned, starting, running) on exactly the machine it
  names, and on no other;
- task states only move along `model.TRANSITIONS`;
- a refused command, a rejected claim and a failed all-or-nothing transaction
  change nothing but the version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from cellstate import invariants, snapshot
from cellstate.commands import (
    Command,
    Commit,
    Error,
    Event,
    ExpireHeartbeats,
    Heartbeat,
    JobKilled,
    JobSubmitted,
    KillJob,
    MachineChanged,
    Ok,
    Outcome,
    RaiseRules,
    RegisterMachines,
    ReportedState,
    ReportScheduler,
    ReportTasks,
    ReportUsage,
    Result,
    SetMachineState,
    SetQuota,
    Stale,
    SubmitJob,
    TaskEvicted,
    TaskHealthChanged,
    TaskPlaced,
    TaskStateChanged,
)
from cellstate.commit import accepted
from cellstate.ledger import EMPTY, Account, Ledger, Need
from cellstate.model import (
    ACTIVE_STATES,
    NAME_RE,
    OWNER_RE,
    RULES,
    TERMINAL_STATES,
    TRANSITIONS,
    Band,
    CellConfig,
    CommitResult,
    Job,
    Machine,
    MachineState,
    Rejection,
    Task,
    TaskState,
    task_id,
)
from cellstate.resources import MAX_CELL_DEVICE_KINDS, Resources

PENDING = TaskState.PENDING


class CellState:
    """One cell's machines, jobs, tasks, claims and quotas.

    Reading the attributes is free; changing them other than through `apply`
    breaks every promise above.
    """

    def __init__(self, config: CellConfig | None = None, rules: int = RULES) -> None:
        """A new, empty cell judging commands by `rules` (`model.RULES`): the
        current ones by default; a replica or copy that replays a log from its
        start begins at `FIRST_RULES` and follows the log's `RaiseRules`."""
        self.config = config or CellConfig()
        self.rules = rules
        # False where nobody reads events (a replica answers results; its watchers
        # replay commands): `apply` then answers none, and commits skip building them.
        self.keep_events = True
        self.version = 0
        self.now = 0.0
        self.machines: dict[str, Machine] = {}
        self.machine_list: list[Machine] = []
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, Task] = {}
        self.schedulers: dict[str, ReportScheduler] = {}
        # Quota set and taken per owner and band; machines' books are on each
        # `Machine.account`. Quota limits are serialised, the rest derived.
        self.ledger = Ledger()
        # Derived (rebuilt on restore, never serialised):
        # Device names the cell's machines, jobs and quotas use (`MAX_CELL_DEVICE_KINDS`).
        self.device_kinds: set[str] = set()
        self.pending_jobs: dict[str, None] = {}
        self.recent: dict[str, tuple[int, Result]] = {}
        # Machines whose seqnum moved since the owner of this copy last
        # drained the set; None until someone asks (schedulers do).
        self.changed_machines: set[str] | None = None

    # -- applying commands ----------------------------------------------------

    def apply(self, command: Command) -> Outcome:
        """Apply one command; return the new version, its result and its events.

        Never raises for a command that is well-typed: a command that cannot be
        applied returns an `Error` and changes nothing but the version.
        """
        self.version += 1
        at = command.at
        if at > self.now:
            self.now = at
        cid = command.id
        if cid:
            seen = self.recent.get(cid)
            if seen is not None:
                return Outcome(self.version, seen[1], ())
        events: list[Event] = []
        result = _HANDLERS[type(command)](self, command, events)
        if cid:
            recent = self.recent
            recent[cid] = (self.version, result)
            if len(recent) > self.config.dedup_window:
                del recent[next(iter(recent))]
        return Outcome(self.version, result, tuple(events) if self.keep_events else ())

    # -- machines ---------------------------------------------------------------

    def _register_machines(self, cmd: RegisterMachines, events: list[Event]) -> Result:
        seen: set[str] = set()
        for i, spec in enumerate(cmd.machines):
            field = f"machines[{i}]"
            if spec.id in seen:
                return Error("duplicate_machine", f"machine {spec.id!r} appears twice", field)
            seen.add(spec.id)
            known = self.machines.get(spec.id)
            if known is not None:
                shrunk = known.account.copy()
                shrunk.resize(spec.capacity.amounts)
                # Best-effort tasks on reclaimed cpu and memory are shed below;
                # anything else held beyond the new capacity has nowhere to go.
                if (breach := shrunk.breach(squeeze=True)) is not None:
                    return Error(
                        "capacity_below_claims",
                        f"machine {spec.id!r} capacity {spec.capacity.human()} is below what "
                        f"its tasks hold ({breach}); drain it first",
                        f"{field}.capacity",
                    )
        refused = self._admit_devices([spec.capacity for spec in cmd.machines], "machines")
        if refused is not None:
            return refused
        at = cmd.at
        for spec in cmd.machines:
            machine = self.machines.get(spec.id)
            if machine is None:
                machine = Machine(
                    id=spec.id,
                    index=len(self.machine_list),
                    account=Account(spec.capacity.amounts),
                    labels=dict(spec.labels),
                    domain=spec.domain,
                    last_heartbeat=at,
                )
                self.machines[spec.id] = machine
                self.machine_list.append(machine)
            else:
                machine.account.resize(spec.capacity.amounts)
                machine.labels = dict(spec.labels)
                machine.domain = spec.domain
                # An agent's restart re-registers its machine: that brings back
                # a machine marked down for silence, not one an operator drained
                # or took down.
                machine.state = (
                    machine.operator_state or MachineState.UP
                    if self.rules >= 2
                    else MachineState.UP
                )
                machine.last_heartbeat = at
            self._touch(machine)
            events.append(MachineChanged(machine.id, machine.state))
            self._squeeze_best_effort(machine, events)
        return Ok()

    def _set_machine_state(self, cmd: SetMachineState, events: list[Event]) -> Result:
        machine = self.machines.get(cmd.machine)
        if machine is None:
            return Error("machine_unknown", f"no machine {cmd.machine!r}", "machine")
        if self.rules >= 2:
            machine.operator_state = None if cmd.state is MachineState.UP else cmd.state
        if machine.state == cmd.state:
            return Ok()
        if cmd.state is MachineState.DOWN:
            self._machine_down(machine, events)
        else:
            machine.state = cmd.state
            machine.last_heartbeat = cmd.at
            self._touch(machine)
            events.append(MachineChanged(machine.id, machine.state))
        return Ok()

    def _heartbeat(self, cmd: Heartbeat, events: list[Event]) -> Result:
        stale = []
        machines = self.machines
        for mid in cmd.machines:
            machine = machines.get(mid)
            if machine is None or (
                machine.state is MachineState.DOWN
                and (machine.operator_state is None or self.rules < 2)
            ):
                # Unknown, or marked down for silence: the agent must register again.
                stale.append(mid)
            else:
                machine.last_heartbeat = cmd.at
        return Stale(machines=tuple(stale)) if stale else Ok()

    def _expire_heartbeats(self, cmd: ExpireHeartbeats, events: list[Event]) -> Result:
        deadline = cmd.at - cmd.timeout
        for machine in self.machine_list:
            if machine.state is not MachineState.DOWN and machine.last_heartbeat < deadline:
                self._machine_down(machine, events)
        return Ok()

    def _machine_down(self, machine: Machine, events: list[Event]) -> None:
        machine.state = MachineState.DOWN
        self._touch(machine)
        events.append(MachineChanged(machine.id, machine.state))
        for tid in sorted(machine.tasks):
            self._evict(self.tasks[tid], "lost", events)

    # -- jobs -------------------------------------------------------------------

    def _submit_job(self, cmd: SubmitJob, events: list[Event]) -> Result:
        if not NAME_RE.match(cmd.job):
            return Error("invalid_id", f"job id {cmd.job!r} must match {NAME_RE.pattern}", "job")
        known = self.jobs.get(cmd.job)
        if known is not None:
            if known.spec == cmd.spec:
                return Ok()  # a retried submit of the same job
            return Error("job_exists", f"job {cmd.job!r} exists with another spec", "job")
        spec = cmd.spec
        refused = self._admit_devices([spec.resources], "spec.resources")
        if refused is not None:
            return refused
        job = Job(id=cmd.job, spec=spec, submitted_at=cmd.at, counts={PENDING: spec.tasks})
        self.jobs[job.id] = job
        tasks = self.tasks
        best_effort = spec.band is Band.BEST_EFFORT
        demand = spec.resources.amounts
        need = Need(demand)
        for index in range(spec.tasks):
            tid = task_id(job.id, index)
            tasks[tid] = Task(
                id=tid,
                job=job.id,
                owner=spec.owner,
                index=index,
                priority=spec.priority,
                best_effort=best_effort,
                demand=demand,
                need=need,
                submitted_at=cmd.at,
            )
        self.pending_jobs[job.id] = None
        events.append(JobSubmitted(job.id))
        return Ok()

    def _kill_job(self, cmd: KillJob, events: list[Event]) -> Result:
        job = self.jobs.get(cmd.job)
        if job is None:
            return Error("job_unknown", f"no job {cmd.job!r}", "job")
        if job.killed:
            return Ok()
        job.killed = True
        for task in self.job_tasks(job):
            state = task.state
            if state in TERMINAL_STATES:
                continue
            if state in ACTIVE_STATES:
                machine = self._release(task)
                events.append(TaskEvicted(task.id, machine.id, task.incarnation, "killed"))
            self._move(task, job, TaskState.KILLED)
            task.finished_at = cmd.at
            task.reason = "killed"
        events.append(JobKilled(job.id))
        return Ok()

    def _set_quota(self, cmd: SetQuota, events: list[Event]) -> Result:
        if not OWNER_RE.match(cmd.owner):
            return Error(
                "invalid_owner", f"owner {cmd.owner!r} must match {OWNER_RE.pattern}", "owner"
            )
        if cmd.band is Band.BEST_EFFORT:
            return Error(
                "quota_unlimited_band", "the best-effort band has no quota: it is unlimited", "band"
            )
        if cmd.limit is not None:
            refused = self._admit_devices([cmd.limit], "limit")
            if refused is not None:
                return refused
        self.ledger.set_limit(
            (cmd.owner, cmd.band), None if cmd.limit is None else cmd.limit.amounts
        )
        return Ok()

    def _admit_devices(self, vectors: list[Resources], field: str) -> Error | None:
        """Record the device kinds `vectors` name, or refuse them (changing nothing) if
        the cell would know more than `MAX_CELL_DEVICE_KINDS`."""
        new = {dim for vector in vectors for dim in vector.devices()} - self.device_kinds
        if not new:
            return None
        if len(self.device_kinds) + len(new) > MAX_CELL_DEVICE_KINDS:
            return Error(
                "too_many_device_kinds",
                f"device kinds {sorted(new)} would make {len(self.device_kinds) + len(new)} "
                f"in this cell; at most {MAX_CELL_DEVICE_KINDS}",
                field,
            )
        self.device_kinds |= new
        return None

    def _raise_rules(self, cmd: RaiseRules, events: list[Event]) -> Result:
        if not self.rules <= cmd.rules <= RULES:
            return Error(
                "rules_unknown",
                f"rules {cmd.rules} are not in {self.rules}..{RULES} (this cell's to this build's)",
                "rules",
            )
        if self.rules < 2 <= cmd.rules:
            self._enter_rules_2(events)
        self.rules = cmd.rules
        return Ok()

    def _enter_rules_2(self, events: list[Event]) -> None:
        """What rules 2 keep that rules 1 did not record: a draining machine was
        drained by an operator (nothing else drains), and reservations lie in
        0..limit (an old log may have driven them out)."""
        for machine in self.machine_list:
            if machine.state is MachineState.DRAINING:
                machine.operator_state = MachineState.DRAINING
            clamped_any = False
            for tid in machine.tasks:
                task = self.tasks[tid]
                if task.best_effort:
                    continue
                clamped = {
                    dim: max(0, min(task.demand.get(dim, 0), amount))
                    for dim, amount in task.reserved.items()
                }
                if clamped != task.reserved:
                    self.ledger.reserve(task, machine.account, clamped)
                    clamped_any = True
            if clamped_any:
                self._touch(machine)
                self._squeeze_best_effort(machine, events)

    def _report_scheduler(self, cmd: ReportScheduler, events: list[Event]) -> Result:
        # Only explanations of jobs still waiting are worth keeping.
        jobs = self.pending_jobs
        kept = {job: why for job, why in sorted(cmd.explanations.items()) if job in jobs}
        self.schedulers[cmd.name] = ReportScheduler(
            cmd.name, cmd.kind, dict(sorted(cmd.figures.items())), kept, cmd.at
        )
        return Ok()

    # -- agents' reports ----------------------------------------------------------

    def _report_tasks(self, cmd: ReportTasks, events: list[Event]) -> Result:
        stale = []
        for report in cmd.reports:
            task = self.tasks.get(report.task)
            if (
                task is None
                or task.machine != report.machine
                or task.incarnation != report.incarnation
            ):
                stale.append(report.task)
                continue
            state = task.state
            new = _REPORTED[report.state]
            if state is new:
                if new is TaskState.RUNNING:
                    self._judge(task, report.healthy, events)
                continue  # a retried report
            if state not in ACTIVE_STATES:
                # A late exit of a killed task is news to nobody; anything else
                # means the agent runs what the cell no longer wants.
                if new not in TERMINAL_STATES:
                    stale.append(report.task)
                continue
            job = self.jobs[task.job]
            if new is PENDING:
                self._evict(task, report.reason or "lost", events)
                continue
            assert new in TRANSITIONS[state], (state, new)
            if new is TaskState.STARTING and state is TaskState.RUNNING:
                task.restarts += 1
            if new is TaskState.STARTING:
                # A (re)start is a new run: nobody has judged it yet.
                self._judge(task, None, events, reset=True)
            if new is TaskState.RUNNING and task.started_at is None:
                task.started_at = cmd.at
            if new in TERMINAL_STATES:
                self._release(task)
                task.finished_at = cmd.at
                task.exit_code = report.exit_code
                task.reason = report.reason
                if new is TaskState.FAILED or report.exit_code:
                    job.failures += 1
            self._move(task, job, new)
            events.append(TaskStateChanged(task.id, task.machine, task.incarnation, new))
            if new is TaskState.RUNNING:
                self._judge(task, report.healthy, events)
        return Stale(tasks=tuple(stale)) if stale else Ok()

    def _judge(
        self, task: Task, healthy: bool | None, events: list[Event], reset: bool = False
    ) -> None:
        """Take an agent's health verdict on `task` (None says nothing, unless
        `reset`). A task whose job has no check is never judged: its health
        stays None whatever an agent claims."""
        if healthy is None and not reset:
            return
        if self.jobs[task.job].spec.check is None or task.healthy is healthy:
            return
        task.healthy = healthy
        events.append(TaskHealthChanged(task.id, task.machine, task.incarnation, healthy))

    def _report_usage(self, cmd: ReportUsage, events: list[Event]) -> Result:
        stale = []
        margin = self.config.reservation_margin
        decay_s = self.config.reservation_decay_s
        clamp = self.rules >= 2
        for usage in cmd.usages:
            task = self.tasks.get(usage.task)
            if (
                task is None
                or task.incarnation != usage.incarnation
                or task.state not in ACTIVE_STATES
            ):
                stale.append(usage.task)
                continue
            elapsed = max(0.0, cmd.at - task.usage_at) if task.usage_at else decay_s
            measured = {"cpu": usage.cpu, "memory": usage.memory}
            task.usage = measured
            task.usage_at = cmd.at
            if task.best_effort:
                continue
            reserved = dict(task.reserved)
            for dim, used in measured.items():
                limit = task.demand.get(dim, 0)
                reserved[dim] = _reservation(
                    limit, used, task.reserved.get(dim, 0), margin, elapsed, decay_s, clamp
                )
            if reserved == task.reserved:
                continue
            machine = self.machines[task.machine]  # type: ignore[index]
            self.ledger.reserve(task, machine.account, reserved)
            self._touch(machine)
            self._squeeze_best_effort(machine, events)
        return Stale(tasks=tuple(stale)) if stale else Ok()

    # -- transactions -------------------------------------------------------------

    def _commit(self, cmd: Commit, events: list[Event]) -> Result:
        rejected: list[Rejection] = []
        preempted: list[str] = []
        touched: dict[str, Machine] = {}
        placed = 0
        keep_events = self.keep_events
        for task, machine, victims in accepted(self, cmd.txn, rejected):
            placed += 1
            for victim in victims:
                self._evict(victim, "preempted", events)
                preempted.append(victim.id)
            self._place(task, machine, cmd.at)
            if keep_events:
                events.append(TaskPlaced(task.id, machine.id, task.incarnation))
            # Only a machine holding best-effort tasks can be overcommitted.
            if not task.best_effort and machine.account.be_packed:
                touched[machine.id] = machine
        for machine in touched.values():
            squeezed = self._squeeze_best_effort(machine, events)
            if self.rules >= 2:
                preempted.extend(squeezed)
        return CommitResult(placed, tuple(rejected), tuple(preempted))

    # -- the few primitives every change goes through ----------------------------

    def _touch(self, machine: Machine) -> None:
        machine.seqnum += 1
        if self.changed_machines is not None:
            self.changed_machines.add(machine.id)

    def _move(self, task: Task, job: Job, new: TaskState) -> None:
        """Move a task to a new state, keeping the job's counts and the set of
        jobs with pending work in step."""
        counts = job.counts
        old = task.state
        counts[old] -= 1
        counts[new] = counts.get(new, 0) + 1
        task.state = new
        if new is PENDING:
            self.pending_jobs[job.id] = None
        elif old is PENDING and counts[PENDING] == 0:
            del self.pending_jobs[job.id]

    def _place(self, task: Task, machine: Machine, at: float) -> None:
        if not task.best_effort:
            task.reserved, task.reserved_packed = task.demand, task.need.whole
        self.ledger.add(task, machine.account)
        machine.tasks[task.id] = None
        # `_touch`, written out: this is the commit's hot path.
        machine.seqnum += 1
        if self.changed_machines is not None:
            self.changed_machines.add(machine.id)
        task.machine = machine.id
        task.placed_at = at
        task.healthy = None
        self._move(task, self.jobs[task.job], TaskState.ASSIGNED)

    def _release(self, task: Task) -> Machine:
        """Take an active task's claim off its machine; the caller sets its state."""
        machine = self.machines[task.machine]  # type: ignore[index]
        self.ledger.remove(task, machine.account)
        task.reserved, task.reserved_packed = EMPTY, 0
        del machine.tasks[task.id]
        self._touch(machine)
        return machine

    def _evict(self, task: Task, reason: str, events: list[Event]) -> None:
        """Take a placed task off its machine and make it pending again as a new
        incarnation (preempted or lost)."""
        machine = self._release(task)
        events.append(TaskEvicted(task.id, machine.id, task.incarnation, reason))
        task.machine = None
        task.incarnation += 1
        task.evictions += 1
        task.reason = reason
        task.placed_at = task.started_at = None
        task.healthy = None
        task.usage = {}
        task.usage_at = 0.0
        self._move(task, self.jobs[task.job], PENDING)

    def _squeeze_best_effort(self, machine: Machine, events: list[Event]) -> list[str]:
        """Preempt best-effort tasks while the machine is overcommitted (the
        reclaimed resources were wanted back); return their ids. Lowest
        priority first, then the most recently placed, so that every copy picks
        the same victims whatever order it learnt the tasks in."""
        squeezed = []
        while machine.account.overcommitted():
            tasks = self.tasks
            victim = min(
                (tasks[tid] for tid in machine.tasks if tasks[tid].best_effort),
                key=lambda t: (t.priority, -(t.placed_at or 0.0), _reverse(t.id)),
            )
            self._evict(victim, "preempted", events)
            squeezed.append(victim.id)
        return squeezed

    # -- reading ------------------------------------------------------------------

    def job_tasks(self, job: Job) -> Iterator[Task]:
        tasks = self.tasks
        for index in range(job.spec.tasks):
            yield tasks[task_id(job.id, index)]

    def pending_tasks(self, job: Job) -> Iterator[Task]:
        if job.counts.get(PENDING, 0):
            for task in self.job_tasks(job):
                if task.state is PENDING:
                    yield task

    # -- snapshots ----------------------------------------------------------------

    def snapshot(self) -> bytes:
        return snapshot.dump(self)

    @classmethod
    def restore(cls, data: bytes) -> CellState:
        cell = cls()
        snapshot.load_into(cell, data)
        return cell

    def check_invariants(self) -> None:
        invariants.check(self)


def _reverse(text: str) -> tuple[int, ...]:
    return tuple(-ord(ch) for ch in text)


def _reservation(
    limit: int,
    usage: int,
    current: int,
    margin: float,
    elapsed: float,
    decay_s: float,
    clamp: bool = True,
) -> int:
    """Borg's reservation: usage plus a safety margin, never above the limit;
    it rises at once and decays towards its target over `decay_s`."""
    target = min(limit, usage + int(limit * margin))
    if clamp:
        # Within 0..limit whatever the report said (rules 2): the edge refuses
        # absurd reports, and the ledger must hold even for an old log's.
        target = max(0, target)
    if target >= current:
        return target
    reserved = max(target, current - int(limit * min(1.0, elapsed / decay_s)))
    return min(limit, reserved) if clamp else reserved


_REPORTED = {
    ReportedState.STARTING: TaskState.STARTING,
    ReportedState.RUNNING: TaskState.RUNNING,
    ReportedState.EXITED: TaskState.EXITED,
    ReportedState.FAILED: TaskState.FAILED,
    ReportedState.LOST: PENDING,
}

_HANDLERS: dict[type, Callable[[CellState, Any, list[Event]], Result]] = {
    RegisterMachines: CellState._register_machines,
    SetMachineState: CellState._set_machine_state,
    SubmitJob: CellState._submit_job,
    KillJob: CellState._kill_job,
    Commit: CellState._commit,
    ReportTasks: CellState._report_tasks,
    ReportUsage: CellState._report_usage,
    Heartbeat: CellState._heartbeat,
    ExpireHeartbeats: CellState._expire_heartbeats,
    SetQuota: CellState._set_quota,
    ReportScheduler: CellState._report_scheduler,
    RaiseRules: CellState._raise_rules,
}
