"""What an executor needs to run one task, shared by the real and hollow executors.

`TaskSpec` is the slice of a `JobSpec` that matters on the machine; `Backoff`
is the restart delay policy; `Reporter` is how an executor tells the agent
loop about state changes (a plain callable taking a `cellstate` `TaskReport`,
for instance a trio memory channel's `send_nowait`); `TaskExecutor` is what the
agent loop asks of an executor, real (`agents.executor.Executor`) or hollow
(`agents.hollow.HollowExecutor`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

import attrs

from cellstate.commands import ReportedState, TaskReport, TaskUsage
from cellstate.model import HealthCheck, JobSpec, RestartPolicy
from cellstate.wire import internal

if TYPE_CHECKING:
    from agents.executor import RecoveredTask

__all__ = [
    "Backoff",
    "ReportedState",
    "Reporter",
    "ReportingExecutor",
    "TaskExecutor",
    "TaskKey",
    "TaskReport",
    "TaskSpec",
    "TaskUsage",
    "should_restart",
    "task_dir_name",
]

Reporter = Callable[[TaskReport], None]
TaskKey = tuple[str, int]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class TaskExecutor(Protocol):
    """Runs task incarnations on one machine and reports their states through its
    `Reporter`; every method is called from trio. `agents.executor.Executor` runs real
    processes, `agents.hollow.HollowExecutor` simulated ones: the agent loop drives both
    through this interface alone."""

    def start(self, task: str, incarnation: int, spec: TaskSpec) -> bool:
        """Start `task`/`incarnation`; False if it already runs here (harmless)."""
        ...

    def adopt(self, recovered: RecoveredTask) -> bool:
        """Take over a task a previous agent process left running; False if it cannot."""
        ...

    async def stop(self, task: str, incarnation: int, reason: str = "stopped") -> bool:
        """Stop it (with its grace period); False if it was not running here."""
        ...

    async def stop_all(self, reason: str = "agent shutdown") -> None:
        """Stop every task as the agent leaves: each is reported lost (the cell runs it
        again), not failed, for nobody asked it to end."""
        ...

    def running(self) -> list[TaskKey]: ...

    def usage(self) -> list[TaskUsage]:
        """The latest usage sample of every running task."""
        ...

    def declare_ports(self, undeclared: bool = False) -> None:
        """Report the port each running task declared, where it is news (`undeclared`:
        only of tasks that have declared none yet)."""
        ...

    def rotate_output(self, limit: int) -> int:
        """Keep each run's captured output to about `limit` bytes a stream; the bytes
        moved aside."""
        ...

    def forget(self, known: Callable[[str], bool]) -> int:
        """Let go of what ended runs of tasks the cell no longer `known`s (purged with their
        job) left here: their directories and output. The number let go of."""
        ...


def task_of_dir(name: str) -> str | None:
    """The task a `task_dir_name` names (None: not one), for ids that need no escaping, as
    every id the cell makes (`cellstate.model.NAME_RE`, `.` and numbers)."""
    task, dot, incarnation = name.rpartition(".")
    if not dot or not incarnation.isdigit() or task_dir_name(task, int(incarnation)) != name:
        return None
    return task


def task_dir_name(task: str, incarnation: int) -> str:
    """`<task>.<incarnation>`, safe as a file and cgroup name."""
    safe = _UNSAFE.sub(lambda m: f"%{ord(m.group()):02x}", task).lstrip(".") or "_"
    return f"{safe}.{incarnation}"


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _environment(env: Mapping[str, str]) -> dict[str, str]:
    return dict(env)


@attrs.frozen
class TaskSpec:
    """How to run one task: command, environment, limits, stop grace, restarts,
    and the health check the agent runs on it while it runs.

    `duration` is used only by the hollow executor (None: runs until stopped).
    """

    # Named converters, not `tuple`/`dict`: a type checker reads a converter's argument type
    # as the field's `__init__` type, and the builtins' are generic.
    argv: tuple[str, ...] = attrs.field(converter=_strings)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_environment)
    cpu_millicores: int = 0
    memory_bytes: int = 0
    grace_period: float = 10.0
    restart: RestartPolicy = attrs.field(default=RestartPolicy.NEVER, converter=RestartPolicy)
    duration: float | None = None
    check: HealthCheck | None = None

    @classmethod
    def from_job(cls, job: JobSpec) -> TaskSpec:
        return cls(
            argv=job.command,
            env=job.env,
            cpu_millicores=job.resources.cpu,
            memory_bytes=job.resources.memory,
            grace_period=job.grace_period,
            restart=job.restart,
            duration=job.duration,
            check=job.check,
        )

    def to_json(self) -> dict:
        return {
            "argv": list(self.argv),
            "env": dict(self.env),
            "cpu_millicores": self.cpu_millicores,
            "memory_bytes": self.memory_bytes,
            "grace_period": self.grace_period,
            "restart": str(self.restart),
            "duration": self.duration,
            "check": None if self.check is None else internal.unstructure(self.check, HealthCheck),
        }

    @classmethod
    def from_json(cls, data: dict) -> TaskSpec:
        # State files written before checks have no "check".
        check = data.get("check")
        return cls(
            **{k: v for k, v in data.items() if k != "check"},
            check=None if check is None else internal.structure(check, HealthCheck),
        )


@attrs.frozen
class Backoff:
    """Exponential restart delay: `initial * factor**(n-1)` for the n-th quick
    failure in a row, capped at `maximum`; a run that lasted `reset_after`
    seconds or more resets the count."""

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    reset_after: float = 60.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return self.initial
        return min(self.maximum, self.initial * self.factor ** (failures - 1))


def should_restart(policy: RestartPolicy, state: ReportedState, exit_code: int | None) -> bool:
    """Whether a task that ended with (`state`, `exit_code`) runs again in place.
    A task killed for failing its health check ended `failed`: a failure."""
    if policy is RestartPolicy.ALWAYS:
        return True
    if policy is RestartPolicy.ON_FAILURE:
        return not (state is ReportedState.EXITED and exit_code == 0)
    return False


class _Incarnation(Protocol):
    task: str
    incarnation: int


class ReportingExecutor:
    """What the real and the hollow executor share: how a run's news reaches the agent
    loop, as a `TaskReport` from this executor's machine."""

    machine: str
    _report_fn: Reporter

    def _report(
        self,
        run: _Incarnation,
        state: ReportedState,
        exit_code: int | None = None,
        reason: str | None = None,
        healthy: bool | None = None,
        port: int | None = None,
    ) -> None:
        self._report_fn(
            TaskReport(
                run.task, self.machine, run.incarnation, state, exit_code, reason, healthy, port
            )
        )
