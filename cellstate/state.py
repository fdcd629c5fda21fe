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

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import attrs

from cellstate import invariants, snapshot
from cellstate.commands import (
    Command,
    Commit,
    CreateToken,
    EndRollout,
    Error,
    Event,
    ExpireHeartbeats,
    Heartbeat,
    JobKilled,
    JobPurged,
    JobSubmitted,
    JobUpdated,
    KillJob,
    LabelMachines,
    MachineChanged,
    MachineLabeled,
    MachineRemoved,
    Ok,
    Outcome,
    PromoteJob,
    PurgeJobs,
    RaiseRules,
    RegisterMachines,
    RemoveMachines,
    ReportedState,
    ReportScheduler,
    ReportTasks,
    ReportUsage,
    Result,
    RevertJob,
    RevokeToken,
    RolloutChanged,
    ScaleJob,
    SetMachineState,
    SetQuota,
    SetWeights,
    Stale,
    SubmitJob,
    SubmitPlan,
    TaskEvicted,
    TaskHealthChanged,
    TaskPlaced,
    TaskStateChanged,
    UpdateJob,
)
from cellstate.commit import accepted, judge_stops
from cellstate.ledger import EMPTY, Account, Ledger, Need, quota_id
from cellstate.model import (
    ACTIVE_STATES,
    AGENT_LABEL_PREFIX,
    LABEL_KEY_RE,
    MAX_LABELS,
    MAX_TASKS_PER_JOB,
    MAX_WEIGHT,
    NAME_RE,
    OWNER_RE,
    RULES,
    TERMINAL_STATES,
    TOKEN_NAME_RE,
    TRANSITIONS,
    Band,
    CellConfig,
    CommitResult,
    ConflictMode,
    Job,
    JobSpec,
    Machine,
    MachineState,
    Rejection,
    Role,
    Rollout,
    RolloutState,
    StopReason,
    Task,
    TaskState,
    TokenRecord,
    Transaction,
    TxnMode,
    task_id,
)
from cellstate.resources import DIMENSIONS, MAX_CELL_DEVICE_KINDS, Limit, Resources

PENDING = TaskState.PENDING
ASSIGNED = TaskState.ASSIGNED
RUNNING = TaskState.RUNNING
KILLED = TaskState.KILLED
# (A module name is read in a few nanoseconds, `TaskState.STARTING` in seventy: every
# task report reads several.)
STARTING = TaskState.STARTING
FAILED = TaskState.FAILED
TERMINAL = TERMINAL_STATES
# The rules that first know jobs that change while they run (`model.RULES`).
LIFECYCLE_RULES = 3
# The rules that first record who last changed each machine (`Machine.changed`).
ATTRIBUTION_RULES = 4
# The rules that first know owners' fair-share weights (`SetWeights`).
FAIR_RULES = 5
# The rules that first know API tokens and record who sent each command.
TOKEN_RULES = 6
# The rules that first let a quota limit a dimension to none (a zero in `SetQuota.limit`).
ZERO_QUOTA_RULES = 7
# The rules that first hold a job to its name across updates.
NAME_RULES = 8
# The rules that first keep how a task restarted in place last ended.
LAST_RUN_RULES = 8
# The rules that first forget ended jobs (`PurgeJobs`).
PURGE_RULES = 9
# The rules that first forget machines (`RemoveMachines`).
REMOVE_RULES = 10
# The rules that first let a job be scaled to zero tasks (`ScaleJob` to 0).
IDLE_RULES = 11
# The rules that first let a job choose machines by a label selector (`JobSpec.selector`).
SELECTOR_RULES = 12
# The rules that first keep the port a running task declared (`TaskReport.port`).
PORT_RULES = 13
# The rules that first let an operator label machines (`LabelMachines`).
LABEL_RULES = 14
# Task states in which a job still has work: a job with a task in one is never purged.
LIVE_STATES = (TaskState.PENDING, *ACTIVE_STATES)


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
        # replay commands; the simulator reads the cell): `apply` then answers none,
        # and commits and task reports skip building them.
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
        # Owners' fair-share weights (rules 5); an owner not here weighs 1.
        self.weights: dict[str, float] = {}
        # API tokens by name (rules 6), and the same records by digest: what a
        # replica looks a request's token up in.
        self.tokens: dict[str, TokenRecord] = {}
        self.token_digests: dict[str, TokenRecord] = {}
        # Derived (rebuilt on restore, never serialised):
        # Device names the cell's machines, jobs and quotas use (`MAX_CELL_DEVICE_KINDS`).
        self.device_kinds: set[str] = set()
        self.pending_jobs: dict[str, None] = {}
        # Jobs with lifecycle work for their scheduler: an update in progress,
        # placed tasks beyond their size, replaced tasks still running, tasks on
        # draining machines (`settled`).
        self.unsettled: dict[str, None] = {}
        # Per job, its current demand packed for the ledger (shared by new tasks).
        self.needs: dict[str, tuple[dict[str, int], Need]] = {}
        self.recent: dict[str, tuple[int, Result]] = {}
        # Machines whose seqnum moved since the owner of this copy last
        # drained the set; None until someone asks (schedulers do).
        self.changed_machines: set[str] | None = None
        # Bumped whenever machines leave `machine_list`, so that rows move up: whoever
        # keeps something per row (a scheduler's table) reads them all again.
        self.layout = 0
        # What the command being applied stamps on each machine it changes
        # (`Machine.changed`); None before rules 4. Set by `apply`.
        self.stamp: tuple[int, str] | None = None

    # -- applying commands ----------------------------------------------------

    def apply(self, command: Command) -> Outcome:
        """Apply one command; return the new version, its result and its events.

        Never raises for a command that is well-typed: a command that cannot be
        applied returns an `Error` and changes nothing but the version.
        """
        self.version += 1
        if self.rules >= ATTRIBUTION_RULES:
            actor = command.txn.scheduler if isinstance(command, Commit) else ACTORS[type(command)]
            self.stamp = (self.version, actor)
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
                # What the operator set or took away stays so (rules 14).
                overlay = machine.label_overlay
                machine.labels = _overlaid(
                    spec.labels,
                    {k: v for k, v in overlay.items() if v is not None},
                    [k for k, v in overlay.items() if v is None],
                )
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
        if cmd.deadline is not None:
            if cmd.state is not MachineState.DRAINING:
                return Error(
                    "invalid", f"a deadline is for draining, not for {cmd.state}", "deadline"
                )
            if not 0 <= cmd.deadline <= 30 * 86_400:
                return Error(
                    "invalid", f"{cmd.deadline} is out of range: use 0..2592000 s", "deadline"
                )
            if self.rules < LIFECYCLE_RULES:
                return _too_old(self.rules, LIFECYCLE_RULES, "drain deadlines", "deadline")
        if self.rules >= LIFECYCLE_RULES:
            deadline = None if cmd.deadline is None else cmd.at + cmd.deadline
            machine.drain_deadline = deadline if cmd.state is MachineState.DRAINING else None
        if self.rules >= 2:
            machine.operator_state = None if cmd.state is MachineState.UP else cmd.state
        if machine.state == cmd.state:
            return Ok()
        if cmd.state is MachineState.DOWN:
            jobs = self._machine_down(machine, events)
        else:
            jobs = {self.tasks[tid].job for tid in machine.tasks}
            machine.state = cmd.state
            machine.last_heartbeat = cmd.at
            self._touch(machine)
            events.append(MachineChanged(machine.id, machine.state))
        if self.rules >= LIFECYCLE_RULES:
            for jid in sorted(jobs):
                self._review(self.jobs[jid])
        return Ok()

    def removable(self, before: float, limit: int = 0) -> list[str]:
        """Machines marked down for silence, and silent since before `before` (their last
        heartbeat, or their registration, came earlier), in the cell's order, at most `limit`
        (0: all): what the leader removes once they have been gone long enough
        (`RemoveMachines`). Not one an operator took down: whether it goes is the operator's
        word (`omega node remove`), and its agent may still be running."""
        found: list[str] = []
        down = MachineState.DOWN
        for machine in self.machine_list:
            if (
                machine.state is down
                and machine.operator_state is None
                and machine.last_heartbeat < before
            ):
                found.append(machine.id)
                if len(found) == limit:
                    break
        return found

    def _remove_machines(self, cmd: RemoveMachines, events: list[Event]) -> Result:
        if self.rules < REMOVE_RULES:
            return _too_old(self.rules, REMOVE_RULES, "removing machines", "machines")

        def down(machine: Machine, field: str) -> Error | None:
            if machine.state is MachineState.DOWN:
                return None
            return Error(
                "machine_not_down",
                f"machine {machine.id!r} is {machine.state}: only a machine that is down can "
                "be removed (take it down first; its tasks are placed elsewhere)",
                field,
            )

        named = self._named(cmd.machines, "remove", down)
        if isinstance(named, Error):
            return named
        seen = set(cmd.machines)
        for mid in cmd.machines:
            del self.machines[mid]
            events.append(MachineRemoved(mid))
        self.machine_list = [m for m in self.machine_list if m.id not in seen]
        for index, machine in enumerate(self.machine_list):
            machine.index = index
        if self.changed_machines is not None:
            self.changed_machines -= seen
        self.layout += 1
        # As a replica restored from a snapshot taken now counts them.
        self.device_kinds = self.devices_in_use()
        return Ok()

    def _named(
        self,
        machines: Sequence[str],
        verb: str,
        check: Callable[[Machine, str], Error | None],
    ) -> list[Machine] | Error:
        """The machines a command names, each known and named once and passing `check`
        (given the machine and its field), in order; or the first refusal, naming its
        field."""
        if not machines:
            return Error("invalid", f"name at least one machine to {verb}", "machines")
        found: list[Machine] = []
        seen: set[str] = set()
        for i, mid in enumerate(machines):
            field = f"machines[{i}]"
            if mid in seen:
                return Error("duplicate_machine", f"machine {mid!r} appears twice", field)
            seen.add(mid)
            machine = self.machines.get(mid)
            if machine is None:
                return Error("machine_unknown", f"no machine {mid!r}", field)
            refused = check(machine, field)
            if refused is not None:
                return refused
            found.append(machine)
        return found

    def _label_machines(self, cmd: LabelMachines, events: list[Event]) -> Result:
        if self.rules < LABEL_RULES:
            return _too_old(self.rules, LABEL_RULES, "labelling machines", "machines")
        if not cmd.labels and not cmd.remove:
            return Error("invalid", "nothing to do: set a label (key=value) or remove one (key-)")
        for key, value in cmd.labels.items():
            refused = _machine_label(key, f"labels.{key}")
            if refused is not None:
                return refused
            if not isinstance(value, str) or len(value) > 256:
                return Error(
                    "invalid", "must be a string of at most 256 characters", f"labels.{key}"
                )
        for i, key in enumerate(cmd.remove):
            refused = _machine_label(key, f"remove[{i}]")
            if refused is not None:
                return refused
            if key in cmd.labels:
                return Error("invalid", f"label {key!r} is both set and removed", f"remove[{i}]")

        def room(machine: Machine, field: str) -> Error | None:
            if len(_overlaid(machine.labels, cmd.labels, cmd.remove)) <= MAX_LABELS:
                return None
            return Error(
                "invalid", f"machine {machine.id!r} would have more than {MAX_LABELS} labels", field
            )

        named = self._named(cmd.machines, "label", room)
        if isinstance(named, Error):
            return named
        for machine in named:
            mid = machine.id
            overlay = dict(machine.label_overlay)
            overlay.update(cmd.labels)
            overlay.update(dict.fromkeys(cmd.remove))
            machine.label_overlay = dict(sorted(overlay.items()))
            # A new dict, not the old one written through: copies' tables see a machine's
            # labels change by identity (`schedulers.table`).
            machine.labels = _overlaid(machine.labels, cmd.labels, cmd.remove)
            self._touch(machine)
            events.append(MachineLabeled(mid, dict(machine.labels)))
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
        # Jobs are reviewed once, after every machine is down: a review reads all of a
        # job's tasks, and a rack going silent holds most jobs' tasks on each machine.
        jobs: set[str] = set()
        if cmd.silent is not None:
            for silent in cmd.silent:
                machine = self.machines.get(silent.machine)
                if (
                    machine is not None
                    and machine.state is not MachineState.DOWN
                    and machine.last_heartbeat == silent.last_heartbeat
                ):
                    jobs |= self._machine_down(machine, events)
        else:
            deadline = cmd.at - cmd.timeout
            for machine in self.machine_list:
                if machine.state is not MachineState.DOWN and machine.last_heartbeat < deadline:
                    jobs |= self._machine_down(machine, events)
        if self.rules >= LIFECYCLE_RULES:
            jobs |= self._end_drains(cmd.at, events)
            for jid in sorted(jobs):
                self._review(self.jobs[jid])
        return Ok()

    def _end_drains(self, at: float, events: list[Event]) -> set[str]:
        """Evict whatever is still on a draining machine past its deadline (the
        leader's periodic `ExpireHeartbeats` carries the clock): the operator
        asked for it by a time, budgets or not. Returns the jobs that lost
        tasks, for the caller to review."""
        jobs: set[str] = set()
        for machine in self.machine_list:
            due = machine.drain_deadline
            if due is None or due > at:
                continue
            machine.drain_deadline = None
            jobs.update(self.tasks[tid].job for tid in machine.tasks)
            for tid in sorted(machine.tasks):
                self._evict(self.tasks[tid], "drained", events)
        return jobs

    def _machine_down(self, machine: Machine, events: list[Event]) -> set[str]:
        """Mark `machine` down and evict its tasks; the jobs that lost tasks, which the
        caller reviews (`_review`) once every machine it takes down is down."""
        machine.state = MachineState.DOWN
        self._touch(machine)
        events.append(MachineChanged(machine.id, machine.state))
        jobs = {self.tasks[tid].job for tid in machine.tasks}
        for tid in sorted(machine.tasks):
            self._evict(self.tasks[tid], "lost", events)
        return jobs

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
        refused = self._admit_spec(spec)
        if refused is not None:
            return refused
        job = Job(id=cmd.job, spec=spec, submitted_at=cmd.at, counts={PENDING: spec.tasks})
        job.add_version(spec, cmd.at)
        self.jobs[job.id] = job
        tasks = self.tasks
        task_ids = job.task_ids
        best_effort = spec.band is Band.BEST_EFFORT
        demand = spec.resources.amounts
        need = Need(demand)
        checked = spec.check is not None
        # Read once for every task of the job: a day's simulation submits 900,000 here.
        jid, owner, priority, at = job.id, spec.owner, spec.priority, cmd.at
        band = spec.band
        quota = quota_id(owner, band)
        for index in range(spec.tasks):
            tid = task_id(jid, index)
            tasks[tid] = Task(
                tid,
                jid,
                owner,
                index,
                priority,
                best_effort,
                demand,
                need,
                submitted_at=at,
                checked=checked,
                band=band,
                quota=quota,
            )
            task_ids[tid] = None
        self.pending_jobs[job.id] = None
        events.append(JobSubmitted(job.id))
        return Ok()

    def _submit_plan(self, cmd: SubmitPlan, events: list[Event]) -> Result:
        """See `SubmitPlan`: both or neither."""
        if self.rules < FAIR_RULES:
            return _too_old(self.rules, FAIR_RULES, "planned submissions", "claims")
        if cmd.job in self.jobs:
            return Error("job_exists", f"job {cmd.job!r} exists; plan again", "job")
        empty = _no_tasks(cmd.spec)  # (the rest of `_admit_spec` is `_submit_job`'s, below)
        if empty is not None:
            return empty
        mine = {task_id(cmd.job, i) for i in range(cmd.spec.tasks)}
        moved = []
        for i, claim in enumerate(cmd.claims):
            if claim.task not in mine or claim.replace:
                return Error(
                    "invalid", f"claim of {claim.task!r} is not of job {cmd.job!r}", f"claims[{i}]"
                )
            machine = self.machines.get(claim.machine)
            if machine is None:
                moved.append(f"{claim.machine} (gone)")
            elif machine.seqnum != claim.seqnum:
                by = (
                    f" by {machine.changed[1]} at version {machine.changed[0]}"
                    if machine.changed
                    else ""
                )
                moved.append(f"{machine.id} (seqnum {claim.seqnum} -> {machine.seqnum}{by})")
        if moved:
            unique = list(dict.fromkeys(moved))
            return Error(
                "plan_stale",
                f"machines changed since the plan: {', '.join(unique)}; nothing was submitted",
                "claims",
            )
        kinds = set(self.device_kinds)
        submitted: list[Event] = []
        result = self._submit_job(SubmitJob(cmd.job, cmd.spec, cmd.at, cmd.id), submitted)
        if not isinstance(result, Ok):
            return result
        if not cmd.claims:
            events.extend(submitted)
            return CommitResult()
        txn = Transaction(
            "plan", cmd.claims, self.version, TxnMode.ALL_OR_NOTHING, ConflictMode.COARSE
        )
        placed: list[Event] = []
        committed = self._commit(Commit(txn, cmd.at, cmd.id), placed)
        assert isinstance(committed, CommitResult)
        if committed.rejected:
            self._unsubmit(self.jobs[cmd.job])
            self.device_kinds = kinds
            why = sorted(
                {f"{r.reason} on {r.machine}" for r in committed.rejected if r.reason != "aborted"}
            )
            return Error(
                "plan_refused",
                f"the plan's claims were refused ({'; '.join(why)}); nothing was submitted",
                "claims",
            )
        events.extend(submitted)
        events.extend(placed)
        return committed

    def _unsubmit(self, job: Job) -> None:
        """Take back a submission that placed nothing (`_submit_plan`)."""
        for tid in job.task_ids:
            del self.tasks[tid]
        del self.jobs[job.id]
        self.pending_jobs.pop(job.id, None)
        self.unsettled.pop(job.id, None)
        self.needs.pop(job.id, None)

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
            job.ended_at = max(job.ended_at, cmd.at)
        events.append(JobKilled(job.id))
        self.unsettled.pop(job.id, None)
        return Ok()

    # -- forgetting ended jobs (rules 9) ----------------------------------------

    def purgeable(self, before: float, max_tasks: int = 0) -> list[Job]:
        """The jobs `PurgeJobs(before, max_tasks)` forgets, in the cell's order: no task
        pending or placed, no lifecycle work left, and the last task ended (none ran: the
        job was submitted) before `before`; whole jobs of at most `max_tasks` tasks between
        them (0: any number), and at least one."""
        found: list[Job] = []
        taken = 0
        unsettled = self.unsettled
        for job in self.jobs.values():
            if job.ended_at >= before or job.submitted_at >= before or job.id in unsettled:
                continue
            if not job.spec.tasks and not job.killed:
                continue  # scaled to zero: kept, idle, until it is scaled up or killed
            counts = job.counts
            if any(counts.get(state) for state in LIVE_STATES):
                continue
            size = len(job.task_ids)
            if max_tasks and found and taken + size > max_tasks:
                break
            found.append(job)
            taken += size
        return found

    def _purge_jobs(self, cmd: PurgeJobs, events: list[Event]) -> Result:
        if self.rules < PURGE_RULES:
            return _too_old(self.rules, PURGE_RULES, "purging ended jobs")
        gone = self.purgeable(cmd.before, cmd.max_tasks)
        tasks = self.tasks
        for job in gone:
            # Ended tasks hold no machine, no reservation and no quota: nothing to give back.
            for tid in job.task_ids:
                del tasks[tid]
            del self.jobs[job.id]
            self.needs.pop(job.id, None)
            events.append(JobPurged(job.id))
        if gone:
            # As a replica restored from a snapshot taken now counts them: a device kind
            # only a purged job asked for no longer counts against the cell's limit.
            self.device_kinds = self.devices_in_use()
        return Ok()

    def devices_in_use(self) -> set[str]:
        """The device kinds the cell's machines, jobs and quotas name (`device_kinds`)."""
        return {
            dim
            for vector in (
                *(m.account.capacity for m in self.machine_list),
                *(job.spec.resources.amounts for job in self.jobs.values()),
                *self.ledger.limits.values(),
            )
            for dim in vector
            if dim not in DIMENSIONS
        }

    # -- changing running jobs (rules 3) -------------------------------------------

    def _changeable(self, jid: str) -> Job | Error:
        if self.rules < LIFECYCLE_RULES:
            return _too_old(self.rules, LIFECYCLE_RULES, "jobs that change while they run")
        job = self.jobs.get(jid)
        if job is None:
            return Error("job_unknown", f"no job {jid!r}", "job")
        if job.killed:
            return Error("job_killed", f"job {jid!r} was killed; submit it anew", "job")
        return job

    def _update_job(self, cmd: UpdateJob, events: list[Event]) -> Result:
        job = self._changeable(cmd.job)
        if isinstance(job, Error):
            return job
        spec, old = cmd.spec, job.spec
        if spec.scheduler != old.scheduler:
            return Error(
                "scheduler_changed",
                f"{spec.scheduler} is not this job's scheduler class ({old.scheduler}); "
                "a job keeps its class for life: submit a new job instead",
                "spec.scheduler",
            )
        if spec.owner != old.owner:
            return Error(
                "owner_changed",
                f"{spec.owner!r} is not this job's owner ({old.owner!r}); a job keeps its owner",
                "spec.owner",
            )
        if spec.name != old.name and self.rules >= NAME_RULES:
            # Its id names the job to commands; its name is what people read, and a spec
            # file of another job sent by mistake would otherwise run under this one.
            return Error(
                "name_changed",
                f"{spec.name!r} is not this job's name ({old.name!r}); a job keeps its name: "
                "submit a new job instead",
                "spec.name",
            )
        if spec == old:
            return Ok()  # nothing to change, or a retried update
        refused = self._admit_spec(spec)
        if refused is not None:
            return refused
        self._new_version(job, spec, cmd.at, events)
        return Ok()

    def _revert_job(self, cmd: RevertJob, events: list[Event]) -> Result:
        job = self._changeable(cmd.job)
        if isinstance(job, Error):
            return job
        if not 1 <= cmd.version <= job.spec_version:
            return Error(
                "version_unknown",
                f"job {job.id!r} has versions 1..{job.spec_version}, not {cmd.version}",
                "version",
            )
        # A revert undoes a change of what runs, not a scale: the size stays.
        spec = attrs.evolve(job.versions[cmd.version - 1], tasks=job.spec.tasks)
        if spec != job.spec:
            self._new_version(job, spec, cmd.at, events)
        return Ok()

    def _scale_job(self, cmd: ScaleJob, events: list[Event]) -> Result:
        job = self._changeable(cmd.job)
        if isinstance(job, Error):
            return job
        if cmd.tasks == 0 and self.rules < IDLE_RULES:
            return _too_old(self.rules, IDLE_RULES, "scaling a job to zero tasks", "tasks")
        if not 0 <= cmd.tasks <= MAX_TASKS_PER_JOB:
            return Error(
                "invalid", f"{cmd.tasks} is out of range: use 0..{MAX_TASKS_PER_JOB}", "tasks"
            )
        if cmd.tasks != job.spec.tasks:
            self._new_version(job, attrs.evolve(job.spec, tasks=cmd.tasks), cmd.at, events)
        return Ok()

    def _promote_job(self, cmd: PromoteJob, events: list[Event]) -> Result:
        job = self._changeable(cmd.job)
        if isinstance(job, Error):
            return job
        rollout = job.rollout
        if rollout is None or rollout.state is not RolloutState.CANARY:
            what = "no update in progress" if rollout is None else f"its update is {rollout.state}"
            return Error("no_canary", f"job {job.id!r} has no canary to promote: {what}", "job")
        self._rollout_to(job, rollout, RolloutState.ROLLING, cmd.at, "promoted", events)
        return Ok()

    def _end_rollout(self, cmd: EndRollout, events: list[Event]) -> Result:
        job = self._changeable(cmd.job)
        if isinstance(job, Error):
            return job
        return self._verdict(job, cmd.version, cmd.state, cmd.reason, cmd.at, events)

    def _verdict(
        self,
        job: Job,
        version: int,
        state: RolloutState,
        reason: str,
        at: float,
        events: list[Event],
    ) -> Result:
        """Take the owning scheduler's verdict on the job's update to `version`."""
        rollout = job.rollout
        if rollout is None or rollout.version != version:
            return Error(
                "rollout_unknown",
                f"job {job.id!r} has no update to version {version} in progress",
                "version",
            )
        if state is RolloutState.ROLLING:
            if rollout.state is not RolloutState.CANARY:
                return Error("no_canary", f"job {job.id!r} has no canary to promote", "state")
            self._rollout_to(job, rollout, state, at, reason or "canaries healthy", events)
            return Ok()
        if state is RolloutState.SUCCEEDED:
            self._rollout_to(job, rollout, state, at, reason, events)
            job.stable_version = job.spec_version
            self._review(job)
            return Ok()
        if state is not RolloutState.FAILED:
            return Error(
                "invalid",
                f"{state} is not a verdict: use succeeded, failed or rolling (promote)",
                "state",
            )
        stable = job.stable_version
        if job.spec.policy.auto_revert and job.shapes[stable - 1] != job.shapes[-1]:
            self._rollout_to(job, rollout, RolloutState.REVERTED, at, reason, events)
            self._new_version(
                job, attrs.evolve(job.versions[stable - 1], tasks=job.spec.tasks), at, events
            )
            rollout.reverted_to = job.spec_version
        else:
            self._rollout_to(job, rollout, RolloutState.FAILED, at, reason, events)
        self._review(job)
        return Ok()

    def _rollout_to(
        self,
        job: Job,
        rollout: Rollout,
        state: RolloutState,
        at: float,
        reason: str,
        events: list[Event],
    ) -> None:
        rollout.state = state
        rollout.updated_at = at
        rollout.reason = reason
        events.append(RolloutChanged(job.id, rollout.version, state, reason))

    def _new_version(self, job: Job, spec: JobSpec, at: float, events: list[Event]) -> None:
        """Make `spec` the job's next version; retarget its pending tasks, size it,
        and start a rollout if placed tasks run another shape."""
        job.add_version(spec, at)
        events.append(JobUpdated(job.id, job.spec_version))
        for task in list(self.job_tasks(job)):
            if task.state is PENDING:
                self._retarget(task, job)
            # A replacement in flight that runs another shape than the new version
            # is abandoned while the task it replaces still runs: that one is
            # kept (a revert) or replaced anew, never both.
            old = self.tasks[task.replaces] if task.replaces is not None else None
            if (
                old is not None
                and old.replaced_by == task.id
                and old.state in ACTIVE_STATES
                and task.state not in TERMINAL
                and not job.current(task)
            ):
                self._retire(task, "superseded", at, events)
                old.replaced_by = None
        self._resize(job, at, events)
        active = job.rollout
        outdated = any(
            t.state in ACTIVE_STATES and not job.current(t) and self.replacement(t) is None
            for t in self.job_tasks(job)
        )
        if active is not None and (outdated or job.shapes[active.version - 1] != job.shapes[-1]):
            self._rollout_to(
                job, active, RolloutState.SUPERSEDED, at, f"version {job.spec_version}", events
            )
            active = None
        if active is not None:
            self._review(job)
            return  # a scale during an update: the update goes on
        if outdated:
            canary = job.spec.policy.canary
            rollout = Rollout(
                version=job.spec_version,
                previous=job.stable_version,
                state=RolloutState.CANARY if canary else RolloutState.ROLLING,
                started_at=at,
                updated_at=at,
            )
            job.rollouts.append(rollout)
            events.append(RolloutChanged(job.id, rollout.version, rollout.state))
        else:
            # Nothing placed runs another shape: this version is complete already.
            job.stable_version = job.spec_version
        self._review(job)

    def _retarget(self, task: Task, job: Job) -> None:
        """Make an unplaced task one of the job's current version."""
        spec = job.spec
        task.spec_version = job.spec_version
        if task.demand is not spec.resources.amounts:
            task.demand = spec.resources.amounts
            task.need = self._need_of(job)
        task.priority = spec.priority
        task.band = spec.band
        task.quota = quota_id(task.owner, spec.band)
        task.best_effort = spec.band is Band.BEST_EFFORT
        task.checked = spec.check is not None

    def _need_of(self, job: Job) -> Need:
        # Tasks of one version share one packed `Need`.
        amounts = job.spec.resources.amounts
        cached = self.needs.get(job.id)
        if cached is None or cached[0] is not amounts:
            cached = self.needs[job.id] = (amounts, Need(amounts))
        return cached[1]

    def _resize(self, job: Job, at: float, events: list[Event]) -> None:
        """Give every index below the job's size a task, and kill the pending
        tasks beyond it; placed ones beyond it are the scheduler's to stop
        (`Stop` with reason `scaled`), within the job's budget."""
        size = job.spec.tasks
        held: set[int] = set()
        for task in list(self.job_tasks(job)):
            if task.state is KILLED:
                continue
            if task.index >= size and task.state is PENDING:
                self._retire(task, "scaled", at, events)
                continue
            held.add(task.index)
        for index in range(size):
            if index not in held:
                self._new_task(job, index, at)

    def _new_task(self, job: Job, index: int, at: float) -> Task:
        tid = task_id(job.id, index)
        if tid in self.tasks:
            job.serial += 1
            tid = task_id(job.id, index, job.serial)
        task = self._task_of(job, index)
        task.id, task.submitted_at = tid, at
        self._enlist(job, task)
        return task

    def _task_of(self, job: Job, index: int) -> Task:
        """A task of the job's current version at `index`, not yet part of the cell."""
        spec = job.spec
        return Task(
            id="",
            job=job.id,
            owner=spec.owner,
            index=index,
            priority=spec.priority,
            best_effort=spec.band is Band.BEST_EFFORT,
            demand=spec.resources.amounts,
            need=self._need_of(job),
            spec_version=job.spec_version,
            checked=spec.check is not None,
        )

    def _enlist(self, job: Job, task: Task) -> None:
        """Make a new pending task, with its id, one of the cell's."""
        self.tasks[task.id] = task
        job.task_ids[task.id] = None
        job.counts[PENDING] = job.counts.get(PENDING, 0) + 1
        self.pending_jobs[job.id] = None

    def successor(self, old: Task) -> Task:
        """The task that would replace `old`: its index, its job's current
        version; not yet part of the cell (the commit protocol judges it)."""
        return self._task_of(self.jobs[old.job], old.index)

    def replacement(self, task: Task) -> Task | None:
        """The live task that replaces `task`, if any (one that ended does not)."""
        if task.replaced_by is None:
            return None
        successor = self.tasks[task.replaced_by]
        return None if successor.state in TERMINAL else successor

    def replaceable(self, task: Task) -> bool:
        """Whether a claim may place a replacement for `task`: it is placed, not
        replaced yet, and runs an old shape or sits on a draining machine."""
        if task.state not in ACTIVE_STATES:
            return False
        job = self.jobs[task.job]
        if job.killed or task.index >= job.spec.tasks:
            return False
        if self.replacement(task) is not None:
            return False
        machine = self.machines[task.machine]  # type: ignore[index]
        return not job.current(task) or machine.state is MachineState.DRAINING

    def settled(self, job: Job) -> bool:
        """Whether `job` has no lifecycle work: no update in progress, nothing
        placed beyond its size, no replaced task still running, nothing on a
        draining machine."""
        if job.killed:
            return True
        if job.rollout is not None:
            return False
        size, tasks, machines = job.spec.tasks, self.tasks, self.machines
        for tid in job.task_ids:
            task = tasks[tid]
            if task.state not in ACTIVE_STATES:
                continue
            if task.index >= size:
                return False
            if self.replacement(task) is not None:
                return False
            if machines[task.machine].state is MachineState.DRAINING:  # type: ignore[index]
                return False
        return True

    def _review(self, job: Job) -> None:
        if self.settled(job):
            self.unsettled.pop(job.id, None)
        else:
            self.unsettled[job.id] = None

    def _retire(self, task: Task, reason: str, at: float, events: list[Event]) -> None:
        """Stop a task for good: its index is served by another task, or gone."""
        if task.state in ACTIVE_STATES:
            machine = self._release(task)
            events.append(TaskEvicted(task.id, machine.id, task.incarnation, reason))
        job = self.jobs[task.job]
        self._move(task, job, KILLED)
        task.finished_at = at
        task.reason = reason
        if at > job.ended_at:
            job.ended_at = at

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
            if self.rules < ZERO_QUOTA_RULES and 0 in cmd.limit.amounts.values():
                return _too_old(self.rules, ZERO_QUOTA_RULES, "quotas of zero", "limit")
            refused = self._admit_devices([cmd.limit], "limit")
            if refused is not None:
                return refused
        self.ledger.set_limit(
            (cmd.owner, cmd.band), None if cmd.limit is None else cmd.limit.amounts
        )
        return Ok()

    def _set_weights(self, cmd: SetWeights, events: list[Event]) -> Result:
        if self.rules < FAIR_RULES:
            return _too_old(self.rules, FAIR_RULES, "weights", "weights")
        if not cmd.weights:
            return Error("invalid", "name at least one owner's weight", "weights")
        # Judged whole before any is kept: a refused command changes nothing.
        for owner, weight in cmd.weights.items():
            if not OWNER_RE.match(owner):
                return Error(
                    "invalid_owner",
                    f"owner {owner!r} must match {OWNER_RE.pattern}",
                    f"weights.{owner}",
                )
            # `not <` also refuses NaN.
            if not 0 < weight <= MAX_WEIGHT:
                return Error(
                    "invalid_weight",
                    f"weight {weight!r} of owner {owner!r} must be above 0 and at most "
                    f"{MAX_WEIGHT:g}",
                    f"weights.{owner}",
                )
        for owner, weight in cmd.weights.items():
            if weight == 1:
                self.weights.pop(owner, None)
            else:
                self.weights[owner] = float(weight)
        return Ok()

    # -- API tokens (rules 6) ---------------------------------------------------

    def _create_token(self, cmd: CreateToken, events: list[Event]) -> Result:
        if self.rules < TOKEN_RULES:
            return _too_old(self.rules, TOKEN_RULES, "tokens", "name")
        if not TOKEN_NAME_RE.match(cmd.name):
            return Error(
                "invalid_name",
                f"token name {cmd.name!r} must match {TOKEN_NAME_RE.pattern}",
                "name",
            )
        if len(cmd.digest) != 64 or cmd.digest.strip("0123456789abcdef"):
            return Error("invalid_digest", "digest must be 64 lower-case hex digits", "digest")
        if cmd.role is Role.AGENT:
            if not cmd.machines:
                return Error(
                    "invalid_machines",
                    "an agent token must name the machines it is for",
                    "machines",
                )
            for i, pattern in enumerate(cmd.machines):
                if not pattern or len(pattern) > 253:
                    return Error(
                        "invalid_machines",
                        f"machine {pattern!r} must be 1 to 253 characters",
                        f"machines[{i}]",
                    )
        elif cmd.machines:
            return Error(
                "invalid_machines",
                f"only agent tokens are bound to machines, not {cmd.role} ones",
                "machines",
            )
        record = TokenRecord(cmd.name, cmd.role, cmd.digest, cmd.machines, cmd.at)
        known = self.tokens.get(cmd.name)
        if known is not None:
            if attrs.evolve(known, created=cmd.at) == record:
                return Ok()
            if not cmd.replace:
                return Error(
                    "token_exists",
                    f"a different token is named {cmd.name!r}; revoke it first",
                    "name",
                )
        holder = self.token_digests.get(cmd.digest)
        if holder is not None and holder.name != cmd.name:
            return Error("token_exists", f"token {holder.name!r} has that digest", "digest")
        if known is not None:
            del self.token_digests[known.digest]
        self.tokens[cmd.name] = record
        self.token_digests[cmd.digest] = record
        return Ok()

    def _revoke_token(self, cmd: RevokeToken, events: list[Event]) -> Result:
        if self.rules < TOKEN_RULES:
            return _too_old(self.rules, TOKEN_RULES, "tokens", "name")
        record = self.tokens.pop(cmd.name, None)
        if record is None:
            return Error("token_unknown", f"no token {cmd.name!r}", "name")
        del self.token_digests[record.digest]
        return Ok()

    def _admit_spec(self, spec: JobSpec) -> Error | None:
        """Why a spec a job is submitted or updated with is refused; None if it is not."""
        if spec.selector and self.rules < SELECTOR_RULES:
            return _too_old(self.rules, SELECTOR_RULES, "machine selectors", "spec.selector")
        return _no_tasks(spec) or self._admit_devices([spec.resources], "spec.resources")

    def _admit_devices(self, vectors: Sequence[Resources | Limit], field: str) -> Error | None:
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
        if self.rules < LIFECYCLE_RULES <= cmd.rules:
            # Tasks on machines drained before rules 3 are now the schedulers' to move.
            self.unsettled = {jid: None for jid, job in self.jobs.items() if not self.settled(job)}
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
        keep_events = self.keep_events
        find = self.tasks.get
        for report in cmd.reports:
            task = find(report.task)
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
                if new is RUNNING:
                    self._judge(task, report.healthy, events)
                    if report.port is not None:
                        self._declare(task, report.port)
                elif new is STARTING and report.reason and self.rules >= LAST_RUN_RULES:
                    # A restart after a run that never started (`restart after start_error:
                    # ...`): not counted, for a retried report reads the same, but kept, so
                    # that a task looping in `starting` shows why.
                    task.exit_code, task.reason = report.exit_code, report.reason
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
            if new is STARTING and state is RUNNING:
                task.restarts += 1
                if self.rules >= LAST_RUN_RULES:
                    # How the run that ended ended: what a crash loop is read by.
                    task.exit_code, task.reason = report.exit_code, report.reason
            if new is STARTING:
                # A (re)start is a new run: nobody has judged it yet, nor heard its port.
                self._judge(task, None, events, reset=True)
                task.port = None
            if new is RUNNING and task.started_at is None:
                task.started_at = cmd.at
            if new in TERMINAL_STATES:
                self._release(task)
                task.finished_at = cmd.at
                if cmd.at > job.ended_at:
                    job.ended_at = cmd.at
                task.exit_code = report.exit_code
                task.reason = report.reason
                if new is FAILED or report.exit_code:
                    job.failures += 1
            self._move(task, job, new)
            if keep_events:
                events.append(TaskStateChanged(task.id, task.machine, task.incarnation, new))
            if new is RUNNING:
                self._judge(task, report.healthy, events)
                if report.port is not None:
                    self._declare(task, report.port)
        return Stale(tasks=tuple(stale)) if stale else Ok()

    def _declare(self, task: Task, port: int) -> None:
        """Keep the port a running task declared; older rules keep none, as older
        releases, which decode a report without its port, keep none."""
        if self.rules >= PORT_RULES:
            task.port = port

    def _judge(
        self, task: Task, healthy: bool | None, events: list[Event], reset: bool = False
    ) -> None:
        """Take an agent's health verdict on `task` (None says nothing, unless
        `reset`). A task whose job has no check is never judged: its health
        stays None whatever an agent claims."""
        if healthy is None and not reset:
            return
        if not task.checked or task.healthy is healthy:
            return
        task.healthy = healthy
        self._availability(task, self.jobs[task.job])
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
        reviews: dict[str, None] = {}
        at = cmd.at
        jobs, stamp, changed = self.jobs, self.stamp, self.changed_machines
        book = self.ledger.add
        for task, machine, victims, old in accepted(self, cmd.txn, rejected):
            placed += 1
            for victim in victims:
                if victim is old:
                    # Stop first: its replacement needs the room it holds.
                    self._retire(victim, "replaced", at, events)
                    continue
                self._evict(victim, "preempted", events)
                preempted.append(victim.id)
            if old is not None:
                task = self._adopt(task, old, at)
                reviews[task.job] = None
            # Put the pending task on the machine: the state's half of an accepted
            # claim, written out here (with `_touch`, and `_move` from pending to
            # assigned) because every claim of every commit runs it.
            account = machine.account
            if task.best_effort:
                book(task, account)
            else:
                task.reserved, task.reserved_packed = task.demand, task.need.whole
                book(task, account)
                # Only a machine holding best-effort tasks can be overcommitted.
                if account.be_packed:
                    touched[machine.id] = machine
            machine.tasks[task.id] = None
            machine.seqnum += 1
            machine.changed = stamp
            if changed is not None:
                changed.add(machine.id)
            task.machine = machine.id
            task.placed_at = at
            task.healthy = None
            # Neither state is running, so availability does not change.
            job = jobs[task.job]
            job.moves += 1
            counts = job.counts
            counts[PENDING] -= 1
            counts[ASSIGNED] = counts.get(ASSIGNED, 0) + 1
            task.state = ASSIGNED
            if not counts[PENDING]:
                del self.pending_jobs[job.id]
            if keep_events:
                events.append(TaskPlaced(task.id, machine.id, task.incarnation))
        for machine in touched.values():
            squeezed = self._squeeze_best_effort(machine, events)
            if self.rules >= 2:
                preempted.extend(squeezed)
        if cmd.txn.stops:
            aborted = len(rejected) > 0 and cmd.txn.mode is TxnMode.ALL_OR_NOTHING
            for task, stop in judge_stops(self, cmd.txn, rejected, aborted):
                if stop.reason is StopReason.DRAINED:
                    # Moved, not ended: pending again, as a drain's deadline leaves it.
                    self._evict(task, stop.reason, events)
                else:
                    self._retire(task, stop.reason, cmd.at, events)
                reviews[task.job] = None
        for jid in reviews:
            self._review(self.jobs[jid])
        for verdict in cmd.txn.verdicts:
            found = self._changeable(verdict.job)
            answer = (
                found
                if isinstance(found, Error)
                else self._verdict(
                    found, verdict.version, verdict.state, verdict.reason, cmd.at, events
                )
            )
            if isinstance(answer, Error):
                rejected.append(Rejection(verdict.job, "", answer.code))
        return CommitResult(placed, tuple(rejected), tuple(preempted))

    def _adopt(self, new: Task, old: Task, at: float) -> Task:
        """Make `new` (a `successor` the commit protocol accepted) a task of the
        cell, pending, as `old`'s replacement."""
        job = self.jobs[old.job]
        job.serial += 1
        new.id = task_id(job.id, new.index, job.serial)
        new.submitted_at = at
        new.replaces = old.id
        old.replaced_by = new.id
        self._enlist(job, new)
        return new

    # -- the few primitives every change goes through ----------------------------

    def _touch(self, machine: Machine) -> None:
        machine.seqnum += 1
        machine.changed = self.stamp
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
            job.pending_from = 0  # it may lie before the mark
        elif old is PENDING and counts[PENDING] == 0:
            del self.pending_jobs[job.id]
        if old is RUNNING or new is RUNNING:
            self._availability(task, job)

    def _availability(self, task: Task, job: Job) -> None:
        """Keep `job.available` and `task.healthy_at` in step with whether the task
        is running and healthy (or running with no check to judge it)."""
        ok = task.state is RUNNING and (task.healthy is True or not task.checked)
        if ok == (task.healthy_at is not None):
            return
        if ok:
            job.available += 1
            # Rules 1 and 2 kept no time of becoming healthy, and their snapshots load it
            # as the start (`snapshot._load_job_2`): the same here, or an upgraded replica
            # replaying an old tail would disagree with one whose old dump came after it.
            task.healthy_at = self.now if self.rules >= LIFECYCLE_RULES else task.started_at or 0.0
        else:
            job.available -= 1
            task.healthy_at = None

    def _release(self, task: Task) -> Machine:
        """Take an active task's claim off its machine; the caller sets its state."""
        machine = self.machines[task.machine]  # type: ignore[index]
        self.jobs[task.job].moves += 1
        self.ledger.remove(task, machine.account)
        task.reserved, task.reserved_packed = EMPTY, 0
        del machine.tasks[task.id]
        # `_touch`, written out: every task that ends comes here.
        machine.seqnum += 1
        machine.changed = self.stamp
        if self.changed_machines is not None:
            self.changed_machines.add(machine.id)
        return machine

    def _evict(self, task: Task, reason: str, events: list[Event]) -> None:
        """Take a placed task off its machine and make it pending again as a new
        incarnation (preempted or lost); one that a replacement already serves
        is retired instead, and one of an old version comes back as the
        current version."""
        job = self.jobs[task.job]
        if self.replacement(task) is not None or (
            # Beyond its job's size (a scale-down not yet done): nothing to come back for.
            task.index >= job.spec.tasks and self.rules >= LIFECYCLE_RULES
        ):
            # It ends here, for the reason it was evicted (preempted, lost, drained).
            self._retire(task, reason, self.now, events)
            return
        task.replaced_by = None  # its replacement ended: it is the index's task again
        machine = self._release(task)
        events.append(TaskEvicted(task.id, machine.id, task.incarnation, reason))
        task.machine = None
        task.incarnation += 1
        task.evictions += 1
        task.reason = reason
        task.placed_at = task.started_at = None
        task.healthy = None
        task.port = None
        task.usage = {}
        task.usage_at = 0.0
        self._move(task, job, PENDING)
        if task.spec_version != job.spec_version:
            self._retarget(task, job)

    def _squeeze_best_effort(self, machine: Machine, events: list[Event]) -> list[str]:
        """Preempt best-effort tasks while the machine is overcommitted (the
        reclaimed resources were wanted back); return their ids. Lowest
        priority first, then the most recently placed, so that every copy picks
        the same victims whatever order it learnt the tasks in."""
        squeezed: list[str] = []
        account = machine.account
        if not account.overcommitted():
            return squeezed
        tasks = self.tasks
        # One sort, then victims in its order: what picking the least one again and again
        # picked (evicting one changes no other's key), without a key per task per victim.
        candidates = sorted(
            (tasks[tid] for tid in machine.tasks if tasks[tid].best_effort),
            key=lambda t: (t.priority, -(t.placed_at or 0.0), _Descending(t.id)),
        )
        for victim in candidates:
            self._evict(victim, "preempted", events)
            squeezed.append(victim.id)
            if not account.overcommitted():
                break
        return squeezed

    # -- reading ------------------------------------------------------------------

    def job_tasks(self, job: Job) -> Iterator[Task]:
        """Every task of the job, replaced and scaled-away ones included."""
        tasks = self.tasks
        for tid in job.task_ids:
            yield tasks[tid]

    def pending_tasks(self, job: Job) -> Iterator[Task]:
        """The job's pending tasks in creation order (`Job.pending_from` skips those before).
        Tasks are only ever appended to a job, and one that becomes pending again resets
        the mark (`_move`), so the mark stays true."""
        return iter(self.first_pending(job, len(job.task_ids)))

    def first_pending(self, job: Job, count: int) -> list[Task]:
        """The first `count` of `pending_tasks(job)` (all of them if fewer), as a list:
        what a scheduler takes of a job per decision, without a generator step per task."""
        pending = job.counts.get(PENDING, 0)
        if count <= 0 or not pending:
            return []
        tasks = self.tasks
        start = job.pending_from
        if len(job.task_ids) - start == pending:
            # Every task from the mark on is pending (a job just submitted, or the rest of
            # one): no state to test, task by task.
            return [tasks[tid] for tid in islice(job.task_ids, start, start + count)]
        found: list[Task] = []
        for position, tid in enumerate(islice(job.task_ids, start, None), start):
            task = tasks[tid]
            if task.state is PENDING:
                if not found:
                    job.pending_from = position
                found.append(task)
                if len(found) == count:
                    break
        return found

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


def _machine_label(key: str, field: str) -> Error | None:
    """Why an operator may not set or remove label `key`; None if they may."""
    if not isinstance(key, str) or not LABEL_KEY_RE.match(key):
        return Error("invalid", f"label key {key!r} must match {LABEL_KEY_RE.pattern}", field)
    if key.startswith(AGENT_LABEL_PREFIX):
        return Error(
            "invalid",
            f"label {key!r} is its agent's own (keys under {AGENT_LABEL_PREFIX!r} are)",
            field,
        )
    return None


def _overlaid(
    labels: Mapping[str, str], set_: Mapping[str, str], remove: Iterable[str]
) -> dict[str, str]:
    """`labels` with `set_` written over them and the keys in `remove` taken away, in key
    order (as every labels dict the cell keeps)."""
    merged = {**labels, **set_}
    for key in remove:
        merged.pop(key, None)
    return dict(sorted(merged.items()))


def _no_tasks(spec: JobSpec) -> Error | None:
    """A spec of no task is refused where a job is submitted or updated: only a scale
    takes a job to zero (rules 11), keeping it, idle. (The edge refuses it first.)"""
    if spec.tasks:
        return None
    return Error(
        "invalid",
        "0 tasks: a job is submitted and updated with at least 1 task "
        "(`omega scale JOB 0` keeps a job, idle, with none)",
        "spec.tasks",
    )


def _too_old(rules: int, needed: int, what: str, field: str | None = None) -> Error:
    return Error(
        "rules_too_old",
        f"{what} need rules {needed}; this cell still judges by rules {rules}, which its "
        "leader raises once every replica runs this release: retry in a moment",
        field,
    )


class _Descending:
    """A task id that sorts as the tuple of its characters' negated code points did (the
    order every copy has always used): the greater character first where two ids differ,
    the shorter first where one is the other's prefix. Compared only on a tie of the keys
    before it, so nothing is computed for the ids that never tie."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __lt__(self, other: _Descending) -> bool:
        a, b = self.text, other.text
        if a.startswith(b) or b.startswith(a):
            return len(a) < len(b)
        return a > b


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

# Who a command's changes to a machine are attributed to (a `Commit`'s are its
# scheduler's): what a claim that conflicted with them is told it lost to.
ACTORS: dict[type, str] = {
    RegisterMachines: "agent",
    ReportTasks: "agent",
    ReportUsage: "agent",
    Heartbeat: "agent",
    SetMachineState: "operator",
    SubmitJob: "operator",
    KillJob: "operator",
    SetQuota: "operator",
    SetWeights: "operator",
    SubmitPlan: "plan",
    UpdateJob: "operator",
    RevertJob: "operator",
    ScaleJob: "operator",
    PromoteJob: "operator",
    ExpireHeartbeats: "expiry",
    ReportScheduler: "scheduler",
    EndRollout: "scheduler",
    RaiseRules: "rules",
    CreateToken: "admin",
    RevokeToken: "admin",
    PurgeJobs: "retention",
    RemoveMachines: "operator",
    LabelMachines: "operator",
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
    SetWeights: CellState._set_weights,
    SubmitPlan: CellState._submit_plan,
    ReportScheduler: CellState._report_scheduler,
    RaiseRules: CellState._raise_rules,
    UpdateJob: CellState._update_job,
    RevertJob: CellState._revert_job,
    ScaleJob: CellState._scale_job,
    PromoteJob: CellState._promote_job,
    EndRollout: CellState._end_rollout,
    CreateToken: CellState._create_token,
    RevokeToken: CellState._revoke_token,
    PurgeJobs: CellState._purge_jobs,
    RemoveMachines: CellState._remove_machines,
    LabelMachines: CellState._label_machines,
}
