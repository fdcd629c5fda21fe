"""The hollow executor under a mock clock: reports at the simulated times."""

from __future__ import annotations

import random

import trio
import trio.testing

from agents.hollow import HollowExecutor, TimerHeap
from agents.task import ReportedState, TaskReport, TaskSpec
from cellstate.model import HealthCheck, RestartPolicy


def run_hollow(body, **kwargs) -> list[tuple[float, TaskReport]]:
    """Run `body(executor)` with a hollow executor on a MockClock; returns
    (virtual time, report) pairs."""
    seen: list[tuple[float, TaskReport]] = []

    async def main() -> None:
        timers = TimerHeap()
        async with trio.open_nursery() as nursery:
            await nursery.start(timers.run)
            ex = HollowExecutor(
                machine="h1",
                timers=timers,
                report=lambda r: seen.append((trio.current_time(), r)),
                **kwargs,
            )
            await body(ex)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return seen


def test_task_runs_for_its_duration() -> None:
    async def body(ex: HollowExecutor) -> None:
        ex.start(
            "j.0", 1, TaskSpec(argv=(), duration=5.0, cpu_millicores=1000, memory_bytes=1 << 30)
        )
        await trio.sleep(1)
        assert ex.running() == [("j.0", 1)]
        (usage,) = ex.usage()
        assert 300 <= usage.cpu <= 900 and usage.memory > 0
        await trio.sleep(10)
        assert ex.running() == []

    seen = run_hollow(body, start_delay=0.5)
    assert [(t, r.state, r.exit_code) for t, r in seen] == [
        (0.0, ReportedState.STARTING, None),
        (0.5, ReportedState.RUNNING, None),
        (5.5, ReportedState.EXITED, 0),
    ]


def test_task_without_duration_runs_until_stopped() -> None:
    async def body(ex: HollowExecutor) -> None:
        ex.start("s.0", 2, TaskSpec(argv=(), duration=None))
        await trio.sleep(3600)
        assert ex.running() == [("s.0", 2)]
        assert await ex.stop("s.0", 2, "preempted")
        assert not await ex.stop("s.0", 2, "again")

    seen = run_hollow(body)
    assert [r.state for _, r in seen] == [
        ReportedState.STARTING,
        ReportedState.RUNNING,
        ReportedState.FAILED,
    ]
    assert seen[-1][0] == 3600.0 and seen[-1][1].reason == "stopped:preempted"


def test_an_agent_leaving_reports_its_tasks_lost_not_failed() -> None:
    async def body(ex: HollowExecutor) -> None:
        ex.start("s.0", 1, TaskSpec(argv=(), duration=None))
        ex.start("b.0", 1, TaskSpec(argv=(), duration=60.0))
        await trio.sleep(10)
        await ex.stop_all()
        assert ex.running() == []

    seen = run_hollow(body)
    ended = {r.task: (r.state, r.reason) for _, r in seen[-2:]}
    assert ended == {
        "s.0": (ReportedState.LOST, "stopped:agent shutdown"),
        "b.0": (ReportedState.LOST, "stopped:agent shutdown"),
    }


def test_stop_cancels_the_pending_exit() -> None:
    async def body(ex: HollowExecutor) -> None:
        ex.start("j.0", 1, TaskSpec(argv=(), duration=10.0))
        await trio.sleep(2)
        await ex.stop("j.0", 1)
        await trio.sleep(20)

    seen = run_hollow(body)
    assert [r.state for _, r in seen][-1] is ReportedState.FAILED
    assert all(r.state is not ReportedState.EXITED for _, r in seen)


def test_restart_always_runs_again_after_backoff() -> None:
    async def body(ex: HollowExecutor) -> None:
        ex.start("s.0", 1, TaskSpec(argv=(), duration=2.0, restart=RestartPolicy.ALWAYS))
        await trio.sleep(6.5)
        await ex.stop("s.0", 1)

    seen = run_hollow(body)
    running = [t for t, r in seen if r.state is ReportedState.RUNNING]
    assert running == [0.0, 3.0, 6.0]  # 2 s run + 1 s back-off


def test_many_tasks_finish_at_their_own_times() -> None:
    rng = random.Random(7)
    durations = {f"j.{i}": rng.uniform(1, 1000) for i in range(5_000)}

    async def body(ex: HollowExecutor) -> None:
        for task, duration in durations.items():
            ex.start(task, 1, TaskSpec(argv=(), duration=duration))
        await trio.sleep(2000)
        assert ex.running() == []

    seen = run_hollow(body)
    exits = {r.task: t for t, r in seen if r.state is ReportedState.EXITED}
    assert len(exits) == len(durations)
    assert all(abs(exits[t] - d) < 1e-6 for t, d in durations.items())
    times = [t for t, r in seen if r.state is ReportedState.EXITED]
    assert times == sorted(times)


def test_task_with_a_check_reports_healthy_once_running() -> None:
    async def body(ex: HollowExecutor) -> None:
        ex.start("w.0", 1, TaskSpec(argv=(), check=HealthCheck(http="/healthz")))
        ex.start("b.0", 1, TaskSpec(argv=()))
        await trio.sleep(1)

    seen = run_hollow(body, start_delay=0.5)
    running = {r.task: r for _, r in seen if r.state is ReportedState.RUNNING}
    assert running["w.0"].healthy is True
    assert running["b.0"].healthy is None  # no check: never judged
