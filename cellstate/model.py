"""The cell's vocabulary: machines, jobs, tasks, priority bands and their states.

Specs (what a person or an agent asks for) are frozen attrs classes validated
on construction. Records (`Machine`, `Job`, `Task`) are what the cell state
owns; they are mutable slotted classes because the state machine updates them
in place on its hot path (a commit touches one task and one machine per claim),
and nothing outside `CellState` may change them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from cellstate import selectors
from cellstate.ledger import EMPTY, Account, Need, quota_id
from cellstate.resources import REQUIRED, Resources

# The cell's rules: how commands are judged. A release that changes what a
# command does (not only what it may say) raises RULES, keeps the old
# behaviour under the old number, and switches at a `RaiseRules` command in
# the log, so replicas that rebuild from dumps cut at different points of an
# old log still reach the same state.
# 1: the release before the ledger (523456b).
# 2: a fine-grained claim ignores victims that left; a transaction naming a
#    task twice gets `duplicate_claim`; re-registering keeps an operator's
#    drain or down; squeezed best-effort tasks are reported preempted;
#    reservations are clamped to 0..limit.
# 3: jobs change while they run (versions, updates, scale, drain); a
#    transaction that would stop a task its job cannot spare is refused
#    `budget_exceeded`; a drain's deadline evicts what is left.
# 4: every machine records the version and actor of its last change, and a
#    rejected claim names them (`Machine.changed`, `Rejection.by`/`at`).
# 5: owners have fair-share weights (`SetWeights`), and a job may be submitted
#    with the placements a plan read (`SubmitPlan`); both are refused under
#    older rules, whose releases cannot decode them.
# 6: API tokens with roles live in the cell (`CreateToken`, `RevokeToken`),
#    and every command a client sends records who sent it (`Author`).
# 7: a quota may limit a dimension to zero (none of it); older releases could not
#    say so (their parsers refuse zero), and older rules refuse it. A claim refused
#    for quota names no machine change (`Rejection.by`): the machine was not the cause.
#    A claim's victims give their quota back for it: a task replaced in place no longer
#    needs a task's worth of quota to spare. A transaction may stop a task on a draining
#    machine as `drained` (it is evicted, pending again), within its job's budget.
# 8: a job keeps its name: an update whose spec names another is refused
#    (`name_changed`), as one naming another owner or scheduler class always was.
#    A task its agent restarts in place keeps how its last run ended (`exit_code`,
#    `reason`: `restart after exit:3`, or `restart after start_error: ...` for a run
#    that never started), so a crash loop shows why it loops.
# 9: ended jobs are forgotten some time after they end (`PurgeJobs`, which older
#    releases cannot decode), so a cell running batch work does not grow for good.
# 10: an operator removes machines that are down (`RemoveMachines`, which older releases
#    cannot decode), so a cell whose machines come and go does not grow for good.
# 11: a job may be scaled to zero tasks (`ScaleJob` to 0): it is kept, idle, with its
#    versions, and not purged as an ended one; older releases refuse a size of 0.
# 12: a job may choose its machines by a label selector in the kubectl syntax (`selector`:
#    `zone in (a,b),!spot`), which older releases cannot read.
# 13: an agent's running report may carry the port its task declared (`TaskReport.port`),
#    which the cell keeps as the task's endpoint; older releases would drop it, so older
#    rules ignore it and agents do not send it.
# 14: an operator labels machines (`LabelMachines`, which older releases cannot decode),
#    kept over what their agents register.
RULES = 14
MAX_WEIGHT = 1_000_000.0
FIRST_RULES = 1
MAX_TASKS_PER_JOB = 100_000
MAX_LABELS = 64
# The machine label an agent publishes its own HTTP address under (host:port): where
# `omega logs` fetches a task's output from.
AGENT_LABEL = "omega.agent"
# Labels under this prefix are the agents' own, which an operator may not set or remove.
AGENT_LABEL_PREFIX = "omega."
MAX_COMMAND_ARGS = 256
MAX_TEXT = 4096
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62})$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,62})$")
OWNER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


R = TypeVar("R")


def quick(cls: type[R]) -> Callable[..., R]:
    """A constructor of the frozen slotted attrs class `cls` taking every field, in order,
    positionally: the object `cls(...)` makes, for about half its cost.

    A frozen class's own `__init__` sets each field through `object.__setattr__`, which
    looks the attribute up anew each time; this one writes each slot through its
    descriptor. It is for the records made once per task on the cell's hot paths (a day's
    simulation makes 900,000 claims and as many reports), so `cls` may have no validator,
    converter or post-init hook: it would be skipped."""
    fields = attrs.fields(cls)  # type: ignore[arg-type]
    for field in fields:
        if field.validator is not None or field.converter is not None:
            raise TypeError(f"{cls.__name__}.{field.name} is checked on construction")
    if hasattr(cls, "__attrs_post_init__"):
        raise TypeError(f"{cls.__name__} has a post-init hook")
    names = [field.name for field in fields]
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    scope.update({f"set_{name}": cls.__dict__[name].__set__ for name in names})
    lines = [f"def make({', '.join(names)}):", "    obj = new(cls)"]
    lines += [f"    set_{name}(obj, {name})" for name in names]
    lines.append("    return obj")
    # The source is built from the class's own field names, nothing else.
    exec("\n".join(lines), scope)
    make: Callable[..., R] = scope["make"]
    make.__qualname__ = make.__name__ = f"quick_{cls.__name__}"
    return make


class Band(enum.IntEnum):
    """Borg's priority bands; a band owns the priorities `100*band .. 100*band+99`."""

    BEST_EFFORT = 0
    BATCH = 1
    PRODUCTION = 2
    MONITORING = 3

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def of(cls, priority: int) -> Band:
        number = priority // 100
        # A tuple index, not `cls(number)`: every task is built with its band, and an
        # enum lookup by value costs ten times as much.
        return _BANDS[number] if 0 <= number < len(_BANDS) else cls(number)

    @classmethod
    def parse(cls, text: str) -> Band:
        return cls[text.upper().replace("-", "_")]


_BANDS = tuple(Band)
BAND_NAMES = tuple(band.label for band in Band)
MAX_PRIORITY = 100 * len(Band) - 1
# Tasks in these bands are never preempted (Borg: production and above).
NON_PREEMPTIBLE = Band.PRODUCTION


class SchedulerClass(enum.StrEnum):
    SERVICE = "service"
    BATCH = "batch"
    BEST_EFFORT = "best-effort"


DEFAULT_PRIORITY = {
    SchedulerClass.SERVICE: 200,
    SchedulerClass.BATCH: 100,
    SchedulerClass.BEST_EFFORT: 0,
}


class MachineState(enum.StrEnum):
    UP = "up"
    DRAINING = "draining"
    DOWN = "down"


class TaskState(enum.StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"
    KILLED = "killed"


ACTIVE_STATES = frozenset({TaskState.ASSIGNED, TaskState.STARTING, TaskState.RUNNING})
TERMINAL_STATES = frozenset({TaskState.EXITED, TaskState.FAILED, TaskState.KILLED})

# Legal moves of a task. Lost and preempted tasks go back to PENDING with a new
# incarnation; running -> starting is a restart in place by the agent.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.ASSIGNED, TaskState.KILLED}),
    TaskState.ASSIGNED: frozenset(
        {
            TaskState.STARTING,
            TaskState.RUNNING,
            TaskState.EXITED,
            TaskState.FAILED,
            TaskState.KILLED,
            TaskState.PENDING,
        }
    ),
    TaskState.STARTING: frozenset(
        {TaskState.RUNNING, TaskState.EXITED, TaskState.FAILED, TaskState.KILLED, TaskState.PENDING}
    ),
    TaskState.RUNNING: frozenset(
        {
            TaskState.STARTING,
            TaskState.EXITED,
            TaskState.FAILED,
            TaskState.KILLED,
            TaskState.PENDING,
        }
    ),
    TaskState.EXITED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.KILLED: frozenset(),
}


class JobState(enum.StrEnum):
    PENDING = "pending"  # no task placed yet
    RUNNING = "running"  # some task placed or running
    IDLE = "idle"  # scaled to zero (rules 11), its last tasks stopped: kept, not ended
    DONE = "done"  # every task finished (exited 0)
    FAILED = "failed"  # every task finished, some failed or exited non-zero
    KILLED = "killed"


class RestartPolicy(enum.StrEnum):
    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


class TxnMode(enum.StrEnum):
    INCREMENTAL = "incremental"
    ALL_OR_NOTHING = "all-or-nothing"


class ConflictMode(enum.StrEnum):
    FINE = "fine"
    COARSE = "coarse"


# -- validators -----------------------------------------------------------------


class FieldError(ValueError):
    """A value refused by a record's own rules; `field` names the attribute."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _match(pattern: re.Pattern[str], what: str):
    def check(instance: Any, attribute: attrs.Attribute, value: str) -> None:
        if not isinstance(value, str) or not pattern.match(value):
            raise FieldError(
                attribute.name, f"{value!r} is not a valid {what}: must match {pattern.pattern}"
            )

    return check


def _labels(instance: Any, attribute: attrs.Attribute, value: dict[str, str]) -> None:
    if len(value) > MAX_LABELS:
        raise FieldError(attribute.name, f"has {len(value)} entries; at most {MAX_LABELS}")
    for key, item in value.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.match(key):
            raise FieldError(attribute.name, f"key {key!r} must match {LABEL_KEY_RE.pattern}")
        if not isinstance(item, str) or len(item) > 256:
            raise FieldError(
                f"{attribute.name}.{key}", "must be a string of at most 256 characters"
            )


def sorted_dict(value: dict[str, str]) -> dict[str, str]:
    # Canonical key order keeps serialised state byte-identical however the
    # input was ordered.
    return dict(sorted(value.items()))


def _text(limit: int = MAX_TEXT):
    def check(instance: Any, attribute: attrs.Attribute, value: str) -> None:
        if len(value) > limit:
            raise FieldError(attribute.name, f"is {len(value)} characters; at most {limit}")

    return check


def _argv(instance: Any, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    if len(value) > MAX_COMMAND_ARGS:
        raise FieldError(attribute.name, f"has {len(value)} items; at most {MAX_COMMAND_ARGS}")
    for item in value:
        if len(item) > MAX_TEXT:
            raise FieldError(attribute.name, f"has an item longer than {MAX_TEXT} characters")


def _machine_selector(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if len(value) > MAX_TEXT:
        raise FieldError(attribute.name, f"is {len(value)} characters; at most {MAX_TEXT}")
    try:
        selectors.parse(value)
    except selectors.SelectorError as exc:
        raise FieldError(attribute.name, str(exc)) from None


def _priority(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if not 0 <= value <= MAX_PRIORITY:
        raise FieldError(
            "priority",
            f"{value} is out of range: use 0..{MAX_PRIORITY} or a band ({', '.join(BAND_NAMES)})",
        )


def _non_negative(instance: Any, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and not value >= 0:
        raise FieldError(attribute.name, f"must be >= 0, got {value}")


def _required_dimensions(what: str):
    def check(instance: Any, attribute: attrs.Attribute, value: Resources) -> None:
        for dim in REQUIRED:
            if not value.get(dim):
                raise FieldError(f"{attribute.name}.{dim}", f"is required: every {what} has some")

    return check


# -- specs ------------------------------------------------------------------------

CHECK_KINDS = ("exec", "http", "tcp")
MIN_CHECK_INTERVAL = 0.1
MAX_CHECK_SECONDS = 3600.0
MAX_CHECK_FAILURES = 100
_HTTP_PATH_RE = re.compile(r"^/[!-~]{0,1023}$")


def _check_seconds(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not MIN_CHECK_INTERVAL <= value <= MAX_CHECK_SECONDS:
        raise FieldError(
            attribute.name,
            f"{value} is out of range: use {MIN_CHECK_INTERVAL}..{MAX_CHECK_SECONDS:g} seconds",
        )


@attrs.frozen(slots=True)
class HealthCheck:
    """How an agent judges whether a running task is healthy: exactly one of
    `exec` (a command run in the task's directory with its environment; exit 0
    passes), `http` (a GET of this path on the task's port; 2xx or 3xx passes)
    or `tcp` (a connection to the task's port is accepted). A task declares its
    port by writing it to the file named by `$OMEGA_PORT_FILE`. The check runs
    every `interval` seconds, each try bounded by `timeout`; `failures` failed
    tries in a row make the task unhealthy (its restart policy then acts)."""

    exec: tuple[str, ...] | None = attrs.field(default=None)
    http: str | None = None
    tcp: bool = False
    interval: float = attrs.field(default=10.0, validator=_check_seconds)
    timeout: float = attrs.field(default=5.0, validator=_check_seconds)
    failures: int = 3

    def __attrs_post_init__(self) -> None:
        given = [
            kind
            for kind, value in (("exec", self.exec), ("http", self.http), ("tcp", self.tcp))
            if value
        ]
        if len(given) != 1:
            # Field "": the error is the check's as a whole (`$.check: ...`).
            raise FieldError(
                "",
                f"give exactly one of {', '.join(CHECK_KINDS)}"
                + (f" (got {', '.join(given)})" if given else ""),
            )
        if self.exec is not None:
            _argv(self, attrs.fields(HealthCheck).exec, self.exec)
        if self.http is not None and not _HTTP_PATH_RE.match(self.http):
            raise FieldError(
                "http",
                f"{self.http!r} is not a path: give one starting with '/' (e.g. /healthz), "
                "of printable ASCII without spaces, at most 1024 characters",
            )
        if self.timeout > self.interval:
            raise FieldError(
                "timeout", f"{self.timeout} is longer than the interval ({self.interval})"
            )
        if not 1 <= self.failures <= MAX_CHECK_FAILURES:
            raise FieldError(
                "failures", f"{self.failures} is out of range: use 1..{MAX_CHECK_FAILURES}"
            )

    @property
    def kind(self) -> str:
        return "exec" if self.exec else "http" if self.http else "tcp"


MAX_UPDATE_SECONDS = 86_400.0


def _update_seconds(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0 <= value <= MAX_UPDATE_SECONDS:
        raise FieldError(
            attribute.name, f"{value} is out of range: use 0..{MAX_UPDATE_SECONDS:g} seconds"
        )


@attrs.frozen(slots=True)
class UpdatePolicy:
    """How a job's running tasks move to a new spec version (Nomad's update
    block), and how many of them the job can spare at once.

    At most `max_parallel` replacements are in flight at a time; each new
    task must be healthy (running, and passing its check if it has one) for
    `min_healthy_time` to count as done, and within `healthy_deadline` of its
    placement, or the update fails; an update that completes no task for
    `progress_deadline` fails too. With `canary: N`, N new tasks run beside
    the old ones until the job is promoted (by hand, or once they are healthy
    with `auto_promote`). With `auto_revert`, a failed update rolls the job
    back to its last version that completed an update.

    `max_unavailable` is the job's disruption budget (default `max_parallel`):
    how many of its tasks may be not running-and-healthy when a transaction
    stops one, checked by the store at commit for updates, scale-downs,
    drains and preemptions alike."""

    max_parallel: int = 1
    min_healthy_time: float = attrs.field(default=10.0, validator=_update_seconds)
    healthy_deadline: float = attrs.field(default=300.0, validator=_update_seconds)
    progress_deadline: float = attrs.field(default=600.0, validator=_update_seconds)
    canary: int = 0
    auto_promote: bool = False
    auto_revert: bool = False
    max_unavailable: int | None = None

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.max_parallel <= MAX_TASKS_PER_JOB:
            raise FieldError(
                "max_parallel",
                f"{self.max_parallel} is out of range: use 1..{MAX_TASKS_PER_JOB} "
                "(an update replaces at least one task at a time)",
            )
        if not 0 <= self.canary <= MAX_TASKS_PER_JOB:
            raise FieldError("canary", f"{self.canary} is out of range: use 0..{MAX_TASKS_PER_JOB}")
        if self.max_unavailable is not None and not 0 <= self.max_unavailable <= MAX_TASKS_PER_JOB:
            raise FieldError(
                "max_unavailable",
                f"{self.max_unavailable} is out of range: use 0..{MAX_TASKS_PER_JOB}",
            )
        if self.healthy_deadline <= self.min_healthy_time:
            raise FieldError(
                "healthy_deadline",
                f"{self.healthy_deadline} must be longer than min_healthy_time "
                f"({self.min_healthy_time})",
            )
        if self.progress_deadline < self.healthy_deadline:
            raise FieldError(
                "progress_deadline",
                f"{self.progress_deadline} must be at least healthy_deadline "
                f"({self.healthy_deadline})",
            )

    @property
    def budget(self) -> int:
        return self.max_parallel if self.max_unavailable is None else self.max_unavailable


@attrs.frozen(slots=True)
class MachineSpec:
    """What an agent registers: a machine's identity, capacity and placement facts."""

    id: str = attrs.field(validator=_match(NAME_RE, "machine id"))
    capacity: Resources = attrs.field(validator=_required_dimensions("machine"))
    labels: dict[str, str] = attrs.field(factory=dict, converter=sorted_dict, validator=_labels)
    domain: str = attrs.field(default="default", validator=_match(NAME_RE, "failure domain"))


@attrs.frozen(slots=True)
class JobSpec:
    """What a person submits: a job of `tasks` identical tasks."""

    name: str = attrs.field(validator=_match(NAME_RE, "job name"))
    owner: str = attrs.field(validator=_match(OWNER_RE, "owner"))
    scheduler: SchedulerClass
    resources: Resources = attrs.field(validator=_required_dimensions("task"))
    tasks: int = attrs.field(default=1)
    priority: int = attrs.field(default=-1)
    command: tuple[str, ...] = attrs.field(default=(), validator=_argv)
    env: dict[str, str] = attrs.field(factory=dict, converter=sorted_dict)
    labels: dict[str, str] = attrs.field(factory=dict, converter=sorted_dict, validator=_labels)
    constraints: dict[str, str] = attrs.field(
        factory=dict, converter=sorted_dict, validator=_labels
    )
    # Machine labels its tasks' machines must match, in the kubectl syntax of `omega -l`
    # (`zone in (a,b),!spot`): what `constraints` says and more (rules 12).
    selector: str = attrs.field(default="", validator=_machine_selector)
    spread: str | None = None
    anti_affinity: bool = False
    gang: bool = False
    restart: RestartPolicy = RestartPolicy.NEVER
    grace_period: float = attrs.field(default=10.0, validator=_non_negative)
    duration: float | None = attrs.field(default=None, validator=_non_negative)
    # Run by the agent on every running task; None: tasks are never judged.
    check: HealthCheck | None = None
    # How running tasks move to a new version; None: one at a time, with
    # the defaults, and no disruption budget (any number may be stopped).
    update: UpdatePolicy | None = None

    def __attrs_post_init__(self) -> None:
        # 0 is a job scaled to zero (rules 11); the edge refuses it in a spec a person
        # sends (`wire`): a job is submitted, and updated, with at least one task.
        if not 0 <= self.tasks <= MAX_TASKS_PER_JOB:
            raise FieldError("tasks", f"must be in 1..{MAX_TASKS_PER_JOB}, got {self.tasks}")
        if self.priority == -1:
            object.__setattr__(self, "priority", DEFAULT_PRIORITY[self.scheduler])
        _priority(self, attrs.fields(JobSpec).priority, self.priority)
        if self.scheduler is SchedulerClass.BEST_EFFORT and self.band is not Band.BEST_EFFORT:
            raise FieldError(
                "priority", "a best-effort job's priority must be in the best-effort band (0..99)"
            )
        if self.scheduler is not SchedulerClass.BEST_EFFORT and self.band is Band.BEST_EFFORT:
            raise FieldError(
                "priority",
                f"{self.priority} is in the best-effort band; use scheduler 'best-effort' for it",
            )
        if self.grace_period > 3600:
            raise FieldError("grace_period", "must be at most 3600 seconds")

    @property
    def band(self) -> Band:
        return Band.of(self.priority)

    @property
    def max_unavailable(self) -> int | None:
        """The job's disruption budget; None: unlimited (no update block)."""
        return None if self.update is None else self.update.budget

    @property
    def policy(self) -> UpdatePolicy:
        return self.update or DEFAULT_UPDATE

    def shape(self) -> JobSpec:
        """What a task runs, without how many run or how they are updated: two
        versions of one shape need no rollout between them."""
        return attrs.evolve(self, tasks=1, update=None)


DEFAULT_UPDATE = UpdatePolicy()


class RolloutState(enum.StrEnum):
    CANARY = "canary"  # canaries placed beside the old tasks, awaiting promotion
    ROLLING = "rolling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # a newer version came before it ended
    REVERTED = "reverted"  # failed, and the job rolled back (a new version)


ROLLOUT_ACTIVE = frozenset({RolloutState.CANARY, RolloutState.ROLLING})


@attrs.define(slots=True, eq=False)
class Rollout:
    """One update of a job's tasks to `version`, from `previous`."""

    version: int
    previous: int
    state: RolloutState
    started_at: float
    updated_at: float
    reason: str = ""
    # The version the job was reverted to when this rollout failed.
    reverted_to: int | None = None


# -- records owned by the cell state ----------------------------------------------


@attrs.define(slots=True, eq=False)
class Machine:
    id: str
    index: int
    # The machine's books (capacity, and what its tasks use, reserve and hold
    # as best-effort), kept by the ledger; derived from the tasks on load.
    account: Account
    labels: dict[str, str]
    domain: str
    state: MachineState = MachineState.UP
    # The state an operator set (draining or down), kept through an agent's
    # re-registration; None when the operator last set it up, or never did.
    operator_state: MachineState | None = None
    seqnum: int = 0
    last_heartbeat: float = 0.0
    tasks: dict[str, None] = attrs.field(factory=dict)
    # The cell version and the actor that last moved `seqnum`: a commit's
    # scheduler, or `agent`, `operator`, `expiry`... (`state.ACTORS`). A
    # rejected claim names them as what it lost to. One tuple, set whole, so
    # the commit's hot path pays one store. None: not since rules 4.
    changed: tuple[int, str] | None = None
    # When a drain evicts whatever is still on the machine; None: never.
    drain_deadline: float | None = None
    # The labels an operator set (a value) or took away (None) with `LabelMachines`
    # (rules 14): `labels` is what the agent registered with these applied over it, and
    # stays so when the agent registers again.
    label_overlay: dict[str, str | None] = attrs.field(factory=dict)


@attrs.define(slots=True, eq=False)
class Job:
    id: str
    spec: JobSpec
    submitted_at: float
    spec_version: int = 1
    killed: bool = False
    # Count of tasks per state; a job's state is derived from it.
    counts: dict[str, int] = attrs.field(factory=dict)
    failures: int = 0
    # Every spec version, oldest first: `versions[v - 1]` is version v.
    versions: list[JobSpec] = attrs.field(factory=list)
    # When each version was made.
    version_times: list[float] = attrs.field(factory=list)
    # The job's tasks, replaced and scaled-away ones included, in creation order.
    task_ids: dict[str, None] = attrs.field(factory=dict)
    # Tasks created after submission (replacements, scale-ups), for their ids.
    serial: int = 0
    # Derived: tasks running and healthy (or running with no check), and per
    # version the first version of the same shape (`JobSpec.shape`).
    available: int = 0
    shapes: list[int] = attrs.field(factory=list)
    # Derived, never serialised: how many times one of its tasks was put on or taken off a
    # machine. Whoever knew where this job's tasks were at one count knows it still at the
    # same count, without reading every task again (a scheduler's `feasible.job_rows`).
    moves: int = attrs.field(default=0, eq=False)
    # Derived, never serialised: a position in `task_ids` before which none of its tasks is
    # pending. A scheduler takes a big job's pending tasks a few per decision; reading them
    # from the first task each time made placing the job quadratic (`pending_tasks`).
    pending_from: int = attrs.field(default=0, eq=False)
    # Derived, never serialised: when the last of its tasks to end ended (0: none has), which
    # `PurgeJobs` reads rather than every task of every ended job.
    ended_at: float = attrs.field(default=0.0, eq=False)
    # The last version whose rollout completed (the first, at submission).
    stable_version: int = 1
    rollouts: list[Rollout] = attrs.field(factory=list)

    @property
    def rollout(self) -> Rollout | None:
        """The update in progress, if any."""
        last = self.rollouts[-1] if self.rollouts else None
        return last if last is not None and last.state in ROLLOUT_ACTIVE else None

    def add_version(self, spec: JobSpec, at: float) -> None:
        first = len(self.versions) + 1
        if self.versions:
            # (A job's first version, at every submission, has nothing to compare with,
            # and building a shape is a whole new spec.)
            shape = spec.shape()
            first = next(
                (v for v, old in enumerate(self.versions, 1) if old.shape() == shape), first
            )
        self.versions.append(spec)
        self.version_times.append(at)
        self.shapes.append(first)
        self.spec = spec
        self.spec_version = len(self.versions)

    def current(self, task: Task) -> bool:
        """Whether `task` runs what the job's current version runs."""
        shapes = self.shapes
        return shapes[task.spec_version - 1] == shapes[-1]

    @property
    def state(self) -> JobState:
        if self.killed:
            return JobState.KILLED
        total = self.spec.tasks
        if not total:
            # Scaled to zero: whatever its tasks did, it has not ended; running while the
            # tasks beyond its size are still being stopped.
            counts = self.counts
            placed = any(counts.get(state) for state in ACTIVE_STATES)
            return JobState.RUNNING if placed else JobState.IDLE
        finished = self.counts.get(TaskState.EXITED, 0) + self.counts.get(TaskState.FAILED, 0)
        if finished == total:
            return JobState.FAILED if self.failures else JobState.DONE
        if self.counts.get(TaskState.PENDING, 0) == total:
            return JobState.PENDING
        return JobState.RUNNING


@attrs.define(slots=True, eq=False)
class Task:
    id: str
    job: str
    owner: str
    index: int
    priority: int
    best_effort: bool
    # The job spec's `resources.amounts` (shared, never written through), and
    # the same packed for the ledger (shared by the job's tasks).
    demand: dict[str, int]
    need: Need
    spec_version: int = 1
    state: TaskState = TaskState.PENDING
    machine: str | None = None
    incarnation: int = 0
    submitted_at: float = 0.0
    placed_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # How it ended (or, restarted in place, how its last run ended: rules 8), or why it
    # was evicted.
    exit_code: int | None = None
    reason: str | None = None
    restarts: int = 0
    evictions: int = 0
    # Measured usage in the reclaimable dimensions, as last reported: replaced on
    # change, never mutated, so the tasks never measured share one empty mapping.
    usage: Mapping[str, int] = attrs.field(default=EMPTY)
    # What the ledger books as this task's reservation while it is placed
    # (regular tasks only): replaced on change, never mutated.
    reserved: Mapping[str, int] = attrs.field(default=EMPTY)
    reserved_packed: int = 0
    usage_at: float = 0.0
    # The agent's last word on the running incarnation's health check; None
    # when the job has no check or this run has not been judged yet.
    healthy: bool | None = None
    # Whether this task's spec version has a check (else running is healthy).
    checked: bool = False
    # Since when it has been running and healthy; None while it is not.
    healthy_at: float | None = None
    # The task this one was placed to replace (an update or a drain), and the
    # task that replaces this one.
    replaces: str | None = None
    replaced_by: str | None = None
    # The port its running incarnation declared (`$OMEGA_PORT_FILE`), as its agent
    # reported it (rules 13): with its machine's host, where the task serves.
    port: int | None = None
    # Derived from `priority` and `owner` unless given: a job's tasks share them, and the
    # cell works them out once per job rather than per task (a day's simulation makes
    # 900,000 tasks).
    band: Band = attrs.field(
        default=attrs.Factory(lambda self: Band.of(self.priority), takes_self=True)
    )
    # Where the ledger books its quota: (owner, band) as a `quota_id`, made once, not per claim.
    quota: int = attrs.field(
        default=attrs.Factory(lambda self: quota_id(self.owner, self.band), takes_self=True),
        eq=False,
        repr=False,
    )


# An API token's name: what `omega token revoke` and the audit trail show.
TOKEN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class Role(enum.StrEnum):
    """What an API token may do (rules 6); `cellstore.access` declares which
    roles each endpoint admits."""

    ADMIN = "admin"
    OPERATOR = "operator"
    SCHEDULER = "scheduler"
    AGENT = "agent"
    READ_ONLY = "read-only"


@attrs.frozen(slots=True)
class TokenRecord:
    """An API token as the cell keeps it: never the secret, only its SHA-256
    (`digest`, hex). `machines` binds an agent token to machine names or
    `fnmatch` patterns."""

    name: str
    role: Role
    digest: str
    machines: tuple[str, ...]
    created: float


@attrs.frozen(slots=True)
class CellConfig:
    """Constants of the cell's rules; part of the state, so every copy agrees."""

    # Borg-style reservation: usage plus a margin, decaying from the limit.
    reservation_margin: float = 0.1
    reservation_decay_s: float = 300.0
    # How many command ids are remembered for idempotent retries.
    dedup_window: int = 20_000


def task_id(job: str, index: int, serial: int = 0) -> str:
    """A task's id: `job.index` for the tasks a job is submitted with, and
    `job.index.serial` for those made later (replacements, scale-ups), so that
    a replacement can run beside the task it replaces."""
    return f"{job}.{index}.{serial}" if serial else f"{job}.{index}"


# -- transactions -----------------------------------------------------------------


@attrs.frozen(slots=True)
class Claim:
    """A scheduler's claim: place `task` on `machine`, which it read at `seqnum`,
    preempting `victims` (tasks on that machine in strictly lower bands)."""

    task: str
    machine: str
    seqnum: int = 0
    victims: tuple[str, ...] = ()
    # Place a new task of the job's current version in place of `task` (a
    # placed task being updated or drained) instead of placing `task` itself.
    # `task` keeps running until a `Stop` retires it, unless it is among the
    # victims (stop first, where only its own machine has room).
    replace: bool = False


# `Claim(task, machine, seqnum, victims, replace)` with every field given (see `quick`):
# schedulers make one per task they place.
new_claim: Callable[[str, str, int, tuple[str, ...], bool], Claim] = quick(Claim)


class StopReason(enum.StrEnum):
    REPLACED = "replaced"  # its replacement runs
    SCALED = "scaled"  # its index is beyond the job's size
    # On a draining machine, with no quota to spare for a replacement beside it: evicted,
    # pending again, for its scheduler to place elsewhere (rules 7).
    DRAINED = "drained"


@attrs.frozen(slots=True)
class Stop:
    """A scheduler's request to stop a task for good (it is killed with `reason`)."""

    task: str
    reason: StopReason


@attrs.frozen(slots=True)
class Verdict:
    """The owning scheduler's word on a job's update to `version`: `succeeded`,
    `failed` (with `reason`), or `rolling` (its canaries are healthy: promote)."""

    job: str
    version: int
    state: RolloutState
    reason: str = ""


@attrs.frozen(slots=True)
class Transaction:
    scheduler: str
    claims: tuple[Claim, ...]
    base_version: int = 0
    mode: TxnMode = TxnMode.INCREMENTAL
    conflicts: ConflictMode = ConflictMode.FINE
    # Judged after the claims, each on its own (`Rejection.machine` is "").
    stops: tuple[Stop, ...] = ()
    # Applied last; a refused one is a `Rejection` naming the job.
    verdicts: tuple[Verdict, ...] = ()


@attrs.frozen(slots=True)
class Rejection:
    """A refused claim (or stop, or verdict) and why. For a claim on a known
    machine, also what it lost to: who last changed the machine (`by`: a
    scheduler's name, or `agent`, `operator`, `expiry`...) and at which cell
    version (`at`); None when the machine is unknown, the claim was only
    `aborted`, or the change predates rules 4.
    The dimension of a fit conflict is in the reason (`insufficient:cpu`)."""

    task: str
    machine: str
    reason: str
    by: str | None = None
    at: int | None = None


@attrs.frozen(slots=True)
class CommitResult:
    """Claim-by-claim verdict of a transaction.

    Every claim not in `rejected` was accepted (the scheduler knows its claims,
    so accepted ids are not repeated: results stay small when conflicts are
    rare). `preempted` lists the victims this commit evicted."""

    accepted: int = 0
    rejected: tuple[Rejection, ...] = ()
    preempted: tuple[str, ...] = ()

    @property
    def conflicted(self) -> bool:
        return bool(self.rejected)
