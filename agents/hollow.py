"""The hollow executor: the executor's interface with no processes behind it.

A hollow task reports `starting` when started, `running` after `start_delay`
(and healthy, if its job has a check), and `exited(0)` after its spec's
`duration` (None: it runs until stopped), all on trio's clock, so a
`MockClock` drives it in tests and one process can stand in for thousands of
machines in benchmarks. Restart policy `always` starts it
again after the back-off's initial delay; hollow tasks never fail by
themselves. Usage is synthetic: a fixed, per-task fraction of the request.

All timers of all hollow executors sharing a `TimerHeap` live in one binary
heap served by a single trio task (cancelled timers are dropped lazily), so
the cost is O(log n) per event and one sleeping task however many tasks run.
"""

from __future__ import annotations

import heapq
import itertools
import math
import zlib
from collections.abc import Callable

import attrs
import structlog
import trio

from agents.task import (
    Backoff,
    ReportedState,
    Reporter,
    ReportingExecutor,
    TaskKey,
    TaskSpec,
    TaskUsage,
)
from cellstate.model import RestartPolicy

log = structlog.get_logger("agents.hollow")


@attrs.define(eq=False)
class Timer:
    """A handle on a scheduled callback; `cancel()` makes it a no-op."""

    deadline: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerHeap:
    """Many timers on trio's clock served by one task: `run` it in a nursery
    (or use `nursery.start`), then `call_at` from anywhere in the same run."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._sleep: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(deadline, callback)
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))
        if self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(trio.current_time() + delay, callback)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fire timers as they fall due, forever (until cancelled)."""
        task_status.started()
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, timer = heapq.heappop(heap)
                if not timer.cancelled:
                    timer.callback()
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None


@attrs.define(eq=False)
class _HollowRun:
    task: str
    incarnation: int
    spec: TaskSpec
    timer: Timer | None = None
    running: bool = False
    usage_fraction: float = 0.5


class HollowExecutor(ReportingExecutor):
    """A `agents.task.TaskExecutor`, as `agents.executor.Executor` is; runs nothing."""

    def __init__(
        self,
        *,
        machine: str,
        report: Reporter,
        timers: TimerHeap,
        start_delay: float = 0.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.machine = machine
        self.start_delay = start_delay
        self.backoff = backoff or Backoff()
        self._timers = timers
        self._report_fn = report
        self._runs: dict[TaskKey, _HollowRun] = {}

    # -- public API (`TaskExecutor`) ------------------------------------------------------

    def start(self, task: str, incarnation: int, spec: TaskSpec) -> bool:
        key = (task, incarnation)
        if key in self._runs:
            return False
        # Synthetic usage: 30..90% of the request, fixed per task.
        fraction = 0.3 + 0.6 * (zlib.crc32(task.encode()) % 1000) / 1000
        run = _HollowRun(task, incarnation, spec, usage_fraction=fraction)
        self._runs[key] = run
        self._report(run, ReportedState.STARTING)
        self._schedule_run(run, self.start_delay)
        return True

    def adopt(self, recovered: object) -> bool:
        """Hollow tasks do not survive their process; nothing to adopt."""
        return False

    async def stop(
        self, task: str, incarnation: int, reason: str = "stopped", *, lost: bool = False
    ) -> bool:
        """A hollow task obeys SIGTERM at once: reported failed, `stopped:<reason>`
        (lost, if the agent is leaving: see `Executor.stop_all`)."""
        run = self._runs.pop((task, incarnation), None)
        if run is None:
            return False
        if run.timer is not None:
            run.timer.cancel()
        state = ReportedState.LOST if lost else ReportedState.FAILED
        self._report(run, state, None, f"stopped:{reason}")
        return True

    async def stop_all(self, reason: str = "agent shutdown") -> None:
        for task, incarnation in list(self._runs):
            await self.stop(task, incarnation, reason, lost=True)

    def running(self) -> list[TaskKey]:
        return sorted(self._runs)

    def usage(self) -> list[TaskUsage]:
        return [
            TaskUsage(
                run.task,
                run.incarnation,
                round(run.spec.cpu_millicores * run.usage_fraction),
                round(run.spec.memory_bytes * run.usage_fraction),
            )
            for run in self._runs.values()
            if run.running
        ]

    def declare_ports(self, undeclared: bool = False) -> None:
        pass  # a simulated run listens nowhere

    def rotate_output(self, limit: int) -> int:
        return 0  # a simulated run writes nothing

    def forget(self, known: Callable[[str], bool]) -> int:
        return 0  # a simulated run leaves nothing behind

    # -- simulation ----------------------------------------------------------------------

    def _schedule_run(self, run: _HollowRun, delay: float) -> None:
        run.timer = self._timers.call_later(delay, lambda: self._on_running(run))

    def _on_running(self, run: _HollowRun) -> None:
        run.running = True
        # A simulated task passes its simulated check the moment it runs.
        self._report(run, ReportedState.RUNNING, healthy=True if run.spec.check else None)
        if run.spec.duration is None:
            run.timer = None
        else:
            run.timer = self._timers.call_later(run.spec.duration, lambda: self._on_exit(run))

    def _on_exit(self, run: _HollowRun) -> None:
        run.running = False
        if run.spec.restart is RestartPolicy.ALWAYS:
            self._report(run, ReportedState.STARTING, 0, "restart after exit:0")
            self._schedule_run(run, self.backoff.initial + self.start_delay)
            return
        self._runs.pop((run.task, run.incarnation), None)
        run.timer = None
        self._report(run, ReportedState.EXITED, 0)
