"""Commands: the only way a cell's state changes, and what each one answers.

Every command carries its own time (`at`, seconds) and an `id` chosen by the
client, so that applying it is a pure function of the state and the command,
and so that a command retried after a failover is applied once. Results and
events are values too: results answer the client, events describe what
changed, in order, for agents and people.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from cellstate.model import (
    Band,
    Claim,
    CommitResult,
    JobSpec,
    MachineSpec,
    MachineState,
    Role,
    RolloutState,
    SchedulerClass,
    TaskState,
    Transaction,
    quick,
    sorted_dict,
)
from cellstate.resources import Limit, Resources

# -- commands ---------------------------------------------------------------------


@attrs.frozen(slots=True)
class Author:
    """Who sent a command: the name and role of the token the API took it under.
    Stamped by the replica that took the request, never by the client; None in
    commands from before rules 6 and in those a leader issues itself."""

    name: str
    role: Role


@attrs.frozen(slots=True)
class RegisterMachines:
    """Register machines, or update the capacity, labels and domain of known ones.
    A registration is also how a machine that was down comes back up."""

    machines: tuple[MachineSpec, ...]
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class SetMachineState:
    """An operator's word on a machine. Draining, with `deadline` seconds: its
    tasks move elsewhere within their budgets, and whatever is still on it
    that long after `at` is evicted (rules 3)."""

    machine: str
    state: MachineState
    at: float = 0.0
    id: str = ""
    by: Author | None = None
    deadline: float | None = None


@attrs.frozen(slots=True)
class SubmitJob:
    job: str
    spec: JobSpec
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class SubmitPlan:
    """Submit `job` and place it exactly as a plan read the cell (rules 5):
    `omega plan` ran the real scheduler core on a snapshot and recorded each
    claim with the sequence number of its machine; `omega submit --plan` sends
    them back. One command, so one log entry, does both or neither:

    - if any claimed machine's sequence number moved since the plan read it,
      the whole command is refused `plan_stale`, naming those machines, and
      nothing is submitted;
    - otherwise the job is submitted and its claims committed all-or-nothing
      under the coarse rule; if one is refused (quota, which spans machines),
      the submission is taken back too and the command is refused
      `plan_refused` with the claims' reasons.

    Why not `SubmitJob` then a coarse all-or-nothing `Commit`: between two log
    entries the job's scheduler may place its pending tasks itself, and a stale
    plan would leave a job submitted without its plan. Tasks the plan did not
    place stay pending for the job's scheduler, as after any submission."""

    job: str
    spec: JobSpec
    claims: tuple[Claim, ...]
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class KillJob:
    job: str
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class UpdateJob:
    """Make `spec` the job's next version. If what its tasks run changed, the
    job's scheduler rolls the placed tasks over to it (`UpdatePolicy`); if only
    its size did, it scales. A spec equal to the current one changes nothing."""

    job: str
    spec: JobSpec
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class RevertJob:
    """Make the spec of an earlier `version` the job's next version."""

    job: str
    version: int
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class ScaleJob:
    """Run `tasks` tasks of the job (a new version of the same shape)."""

    job: str
    tasks: int
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class PromoteJob:
    """Let a canary update go on to replace the rest of the job's tasks."""

    job: str
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class EndRollout:
    """The owning scheduler's verdict on the job's update to `version`:
    `succeeded` (every task runs it, healthy) or `failed` (with `reason`)."""

    job: str
    version: int
    state: RolloutState
    reason: str = ""
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class Commit:
    txn: Transaction
    at: float = 0.0
    id: str = ""
    by: Author | None = None


class ReportedState(enum.StrEnum):
    """What an agent may say of a task: `lost` means the process is gone without
    an exit status (the task returns to pending)."""

    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"
    LOST = "lost"


@attrs.frozen(slots=True)
class TaskReport:
    """An agent's word on one incarnation of a task it runs on `machine`.

    `healthy` is the verdict of the job's health check on a running task (None:
    not judged, or no check); a running report with a new verdict is news even
    when the state is unchanged. Absent in logs written before checks: None.

    `port` is the port the running incarnation declared in its port file (None: none
    yet, or not said); like a verdict, a new port is news in an unchanged state
    (rules 13). Written only when given, so reports without one keep their bytes."""

    task: str
    machine: str
    incarnation: int
    state: ReportedState
    exit_code: int | None = None
    reason: str | None = None
    healthy: bool | None = None
    port: int | None = None


# `TaskReport(task, machine, incarnation, state, exit_code, reason, healthy, port)` with
# every field given (see `model.quick`): the simulator makes one per task it ends.
new_report: Callable[
    [str, str, int, ReportedState, int | None, str | None, bool | None, int | None],
    TaskReport,
] = quick(TaskReport)


@attrs.frozen(slots=True)
class ReportTasks:
    reports: tuple[TaskReport, ...]
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class TaskUsage:
    task: str
    incarnation: int
    cpu: int
    memory: int


@attrs.frozen(slots=True)
class ReportUsage:
    usages: tuple[TaskUsage, ...]
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class Heartbeat:
    machines: tuple[str, ...]
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class SilentMachine:
    """A machine the leader found silent, and the heartbeat stamp it last saw on it."""

    machine: str
    last_heartbeat: float


@attrs.frozen(slots=True)
class ExpireHeartbeats:
    """Mark down machines the leader found silent.

    With `silent`, exactly the machines named, each only if its heartbeat stamp is still the
    one the leader saw (a heartbeat committed in between keeps it up). The leader times the
    silence on its own monotonic clock from when it took over, so neither a failover nor a
    skewed clock can make a healthy machine look silent (`cellstore.cell`). Without it (logs
    written before), every machine not heard from for `timeout` seconds before `at`."""

    timeout: float
    at: float = 0.0
    id: str = ""
    by: Author | None = None
    silent: tuple[SilentMachine, ...] | None = None


@attrs.frozen(slots=True)
class RaiseRules:
    """Apply the cell's rules of `rules` (see `model.RULES`) from this point of
    the log on. The leader issues it once every replica runs a release that
    knows those rules; a log replayed from before it keeps the old rules."""

    rules: int
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class PurgeJobs:
    """Forget the jobs that ended before `before` (rules 9), as Nomad's job garbage
    collection and Kubernetes' TTL after finished do: killed, done or failed, every task
    ended, no update in progress, the last task ended (a job none of whose tasks ran: it
    was submitted) before `before`. Whole jobs of at most `max_tasks` tasks between them
    (0: any number; at least one job), so that one command is never a long apply on every
    replica's Raft thread. The leader issues it (`job_retention_s`); what such a job did
    stays in the log, for `omega events`, until the log is compacted."""

    before: float
    max_tasks: int = 0
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class RemoveMachines:
    """Forget machines that are down (rules 10), as `kubectl delete node` and Nomad's
    `node purge` do: a machine retired or replaced leaves every copy's tables. All or
    none: each must be known and down (a down machine holds no task). The machines after
    a removed one move up a row (`Machine.index`). An agent still running registers its
    machine again, as a new one."""

    machines: tuple[str, ...]
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class LabelMachines:
    """An operator's labels on machines (rules 14), as `kubectl label nodes` and Nomad's
    `node meta apply`: `labels` set, the keys in `remove` taken away, on every machine
    named, all or none. They are kept over what the machine's agent registers
    (`Machine.label_overlay`), so an agent's restart does not undo them. Keys under
    `omega.` are the agent's own (its address) and are refused. Tasks already placed
    stay where they are; a selector is judged anew for every claim."""

    machines: tuple[str, ...]
    labels: dict[str, str] = attrs.field(factory=dict, converter=sorted_dict)
    remove: tuple[str, ...] = ()
    at: float = 0.0
    id: str = ""
    by: Author | None = None


def _as_limit(value: Limit | Resources | None) -> Limit | None:
    return Limit(dict(value.amounts)) if isinstance(value, Resources) else value


@attrs.frozen(slots=True)
class SetQuota:
    """Set (or with `limit=None`, clear) an owner's quota in one priority band. A zero in
    `limit` means none of that dimension (rules 7; older rules refuse it), a dimension it
    does not name is unlimited. A `Resources` given as the limit is taken as its `Limit`."""

    owner: str
    band: Band
    limit: Limit | None = attrs.field(converter=_as_limit)
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class SetWeights:
    """Set owners' fair-share weights (rules 5): each scheduler orders pending jobs
    within a band by their owner's dominant share divided by its weight. An owner
    not named keeps its weight; 1 is every owner's default, so setting 1 forgets it."""

    weights: dict[str, float]
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class ReportScheduler:
    """A scheduler's own figures and its explanation of every job it could not
    place, kept in the cell so that `omega status` and `omega explain` can read
    them from any replica."""

    name: str
    kind: SchedulerClass
    figures: dict[str, float]
    explanations: dict[str, str]
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class CreateToken:
    """Issue an API token (rules 6): only `digest`, the SHA-256 of its secret in
    hex, enters the log, so neither the log nor a snapshot can sign anyone in.
    An `agent` token is bound to `machines` (names, or `fnmatch` patterns such
    as `hollow-*`): it may register, heartbeat and report for those alone.
    Creating a token exactly as it exists is a no-op (so a restarted `omega up`
    may issue its tokens again); a different one under a taken name needs
    `replace`."""

    name: str
    role: Role
    digest: str
    machines: tuple[str, ...] = ()
    replace: bool = False
    at: float = 0.0
    id: str = ""
    by: Author | None = None


@attrs.frozen(slots=True)
class RevokeToken:
    """Revoke the token `name` (rules 6): every replica refuses it once applied."""

    name: str
    at: float = 0.0
    id: str = ""
    by: Author | None = None


Command = (
    RegisterMachines
    | SetMachineState
    | SubmitJob
    | KillJob
    | Commit
    | ReportTasks
    | ReportUsage
    | Heartbeat
    | ExpireHeartbeats
    | SetQuota
    | ReportScheduler
    | RaiseRules
    | UpdateJob
    | RevertJob
    | ScaleJob
    | PromoteJob
    | EndRollout
    | SetWeights
    | SubmitPlan
    | CreateToken
    | RevokeToken
    | PurgeJobs
    | RemoveMachines
    | LabelMachines
)

COMMAND_TYPES: dict[str, type] = {
    "register_machines": RegisterMachines,
    "set_machine_state": SetMachineState,
    "submit_job": SubmitJob,
    "kill_job": KillJob,
    "commit": Commit,
    "report_tasks": ReportTasks,
    "report_usage": ReportUsage,
    "heartbeat": Heartbeat,
    "expire_heartbeats": ExpireHeartbeats,
    "set_quota": SetQuota,
    "report_scheduler": ReportScheduler,
    "raise_rules": RaiseRules,
    "update_job": UpdateJob,
    "revert_job": RevertJob,
    "scale_job": ScaleJob,
    "promote_job": PromoteJob,
    "end_rollout": EndRollout,
    "set_weights": SetWeights,
    "submit_plan": SubmitPlan,
    "create_token": CreateToken,
    "revoke_token": RevokeToken,
    "purge_jobs": PurgeJobs,
    "remove_machines": RemoveMachines,
    "label_machines": LabelMachines,
}

# -- results ----------------------------------------------------------------------


@attrs.frozen(slots=True)
class Ok:
    pass


@attrs.frozen(slots=True)
class Error:
    """A command refused as a whole; it changed nothing. `field` names the
    offending part of the command, when there is one."""

    code: str
    message: str
    field: str | None = None


@attrs.frozen(slots=True)
class Stale:
    """Reports and heartbeats the cell could not use: for tasks, the incarnation
    is no longer on that machine (the agent must stop it); for machines, they
    are unknown or down (the agent must register again)."""

    tasks: tuple[str, ...] = ()
    machines: tuple[str, ...] = ()


Result = Ok | Error | CommitResult | Stale

# -- events -----------------------------------------------------------------------


@attrs.frozen(slots=True)
class MachineChanged:
    machine: str
    state: MachineState


@attrs.frozen(slots=True)
class MachineRemoved:
    """A machine that was down is forgotten (`RemoveMachines`)."""

    machine: str


@attrs.frozen(slots=True)
class MachineLabeled:
    """A machine's labels changed by an operator (`LabelMachines`): what they are now."""

    machine: str
    labels: dict[str, str]


@attrs.frozen(slots=True)
class JobSubmitted:
    job: str


@attrs.frozen(slots=True)
class JobKilled:
    job: str


@attrs.frozen(slots=True)
class JobPurged:
    """An ended job and its tasks are forgotten (`PurgeJobs`)."""

    job: str


@attrs.frozen(slots=True)
class JobUpdated:
    """The job has a new spec version (an update, a revert or a scale)."""

    job: str
    version: int


@attrs.frozen(slots=True)
class RolloutChanged:
    """The job's update to `version` started, was promoted, or ended."""

    job: str
    version: int
    state: RolloutState
    reason: str = ""


# Not frozen, unlike its siblings: a commit builds one per accepted claim, and a
# frozen class's __init__ sets each field through object.__setattr__, which made
# building it a tenth of a claim's cost. Nothing writes to an event once built.
@attrs.define(slots=True, unsafe_hash=True)
class TaskPlaced:
    task: str
    machine: str
    incarnation: int


@attrs.frozen(slots=True)
class TaskStateChanged:
    task: str
    machine: str | None
    incarnation: int
    state: TaskState


@attrs.frozen(slots=True)
class TaskEvicted:
    """A placed incarnation is gone from its machine: `killed`, `preempted` or
    `lost`. Its agent must stop it; preempted and lost tasks are pending again."""

    task: str
    machine: str
    incarnation: int
    reason: str


@attrs.frozen(slots=True)
class TaskHealthChanged:
    """A running incarnation's health check verdict changed (None: not judged)."""

    task: str
    machine: str | None
    incarnation: int
    healthy: bool | None


Event = (
    MachineChanged
    | JobSubmitted
    | JobKilled
    | TaskPlaced
    | TaskStateChanged
    | TaskEvicted
    | TaskHealthChanged
    | JobUpdated
    | RolloutChanged
    | JobPurged
    | MachineRemoved
    | MachineLabeled
)


@attrs.frozen(slots=True)
class Outcome:
    version: int
    result: Result
    events: tuple[Event, ...]
