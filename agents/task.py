"""What an executor needs to run one task, shared by the real and hollow executors.

`TaskSpec` is the slice of a `JobSpec` that matters on the machine; `Backoff`
is the restart delay policy; `Reporter` is how an executor tells the agent
loop about state changes (a plain callable taking a `cellstate` `TaskReport`,
for instance a trio memory channel's `send_nowait`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import attrs

from cellstate.commands import ReportedState, TaskReport, TaskUsage
from cellstate.model import JobSpec, RestartPolicy

__all__ = [
    "Backoff",
    "ReportedState",
    "Reporter",
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
    """How to run one task: command, environment, limits, stop grace, restarts.

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
        }

    @classmethod
    def from_json(cls, data: dict) -> TaskSpec:
        return cls(**data)


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
    """Whether a task that ended with (`state`, `exit_code`) runs again in place."""
    if policy is RestartPolicy.ALWAYS:
        return True
    if policy is RestartPolicy.ON_FAILURE:
        return not (state is ReportedState.EXITED and exit_code == 0)
    return False
