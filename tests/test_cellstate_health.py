"""A task's health in the cell state: taken only from agents' reports, reset
when its run changes (placement, eviction, restart), kept in snapshots."""

from __future__ import annotations

import attrs
import pytest

from cellstate import (
    CellState,
    HealthCheck,
    ReportedState,
    ReportTasks,
    SetMachineState,
    TaskHealthChanged,
    TaskReport,
)
from cellstate.model import MachineState
from tests.cellfixtures import cell_with, commit, submit

CHECK = HealthCheck(http="/healthz")
RUNNING = ReportedState.RUNNING


def report(cell: CellState, task: str, state: ReportedState, healthy=None, inc=None, at=5.0):
    t = cell.tasks[task]
    return cell.apply(
        ReportTasks(
            (
                TaskReport(
                    task,
                    t.machine or "m0",
                    t.incarnation if inc is None else inc,
                    state,
                    healthy=healthy,
                ),
            ),
            at=at,
        )
    )


def running_cell(check: HealthCheck | None = CHECK) -> CellState:
    cell = cell_with(machines=2)
    submit(cell, "web", tasks=2, check=check)
    commit(cell, ("web.0", "m0"), ("web.1", "m1"))
    for tid in ("web.0", "web.1"):
        report(cell, tid, ReportedState.STARTING)
    return cell


def test_running_report_sets_health_and_a_new_verdict_is_a_change():
    cell = running_cell()
    out = report(cell, "web.0", RUNNING)
    assert cell.tasks["web.0"].healthy is None  # running, not judged yet
    assert not any(isinstance(e, TaskHealthChanged) for e in out.events)
    out = report(cell, "web.0", RUNNING, healthy=True)
    assert cell.tasks["web.0"].healthy is True
    assert TaskHealthChanged("web.0", "m0", 0, True) in out.events
    # Same state, new verdict: not a retried no-op.
    out = report(cell, "web.0", RUNNING, healthy=False)
    assert cell.tasks["web.0"].healthy is False
    assert out.events == (TaskHealthChanged("web.0", "m0", 0, False),)
    # A retry of the same verdict changes nothing; a report without one says nothing.
    assert report(cell, "web.0", RUNNING, healthy=False).events == ()
    assert report(cell, "web.0", RUNNING).events == ()
    assert cell.tasks["web.0"].healthy is False
    # Starting from assigned straight to running with a verdict, in one report.
    report(cell, "web.1", RUNNING, healthy=True)
    assert cell.tasks["web.1"].healthy is True


def test_a_job_without_check_is_never_judged():
    cell = running_cell(check=None)
    out = report(cell, "web.0", RUNNING, healthy=True)
    assert cell.tasks["web.0"].healthy is None
    assert not any(isinstance(e, TaskHealthChanged) for e in out.events)


def test_restart_and_eviction_reset_health():
    cell = running_cell()
    report(cell, "web.0", RUNNING, healthy=True)
    report(cell, "web.0", ReportedState.STARTING)  # a restart in place
    task = cell.tasks["web.0"]
    assert task.healthy is None and task.restarts == 1
    report(cell, "web.0", RUNNING, healthy=True)
    cell.apply(SetMachineState("m0", MachineState.DOWN, at=6.0))  # lost: pending again
    assert task.state == "pending" and task.healthy is None and task.incarnation == 1
    commit(cell, ("web.0", "m1"), at=7.0)
    assert task.healthy is None


@pytest.mark.parametrize("rules", [7, 8])
def test_a_restart_in_place_keeps_how_the_last_run_ended_under_rules_8(rules):
    cell = running_cell()
    cell.rules = rules
    report(cell, "web.0", RUNNING)
    restart = TaskReport(
        "web.0", "m0", 0, ReportedState.STARTING, exit_code=3, reason="restart after exit:3"
    )
    cell.apply(ReportTasks((restart,), at=6.0))
    task = cell.tasks["web.0"]
    assert task.restarts == 1 and task.state == "starting"
    if rules == 7:  # a log of the release before replays as it ran
        assert (task.exit_code, task.reason) == (None, None)
        return
    # A crash loop shows why it loops, and keeps showing it while the next run runs.
    assert (task.exit_code, task.reason) == (3, "restart after exit:3")
    report(cell, "web.0", RUNNING, at=7.0)
    assert (task.state, task.exit_code, task.reason) == ("running", 3, "restart after exit:3")
    restored = CellState.restore(cell.snapshot())
    assert restored.tasks["web.0"].reason == "restart after exit:3"
    # Its end replaces it.
    end = TaskReport("web.0", "m0", 0, ReportedState.EXITED, exit_code=0)
    cell.apply(ReportTasks((end,), at=8.0))
    assert (task.state, task.exit_code, task.reason) == ("exited", 0, None)


def test_a_task_that_cannot_start_keeps_why_while_it_loops_in_starting():
    cell = running_cell()  # both tasks reported starting
    again = TaskReport(
        "web.0", "m0", 0, ReportedState.STARTING, reason="restart after start_error: nope"
    )
    cell.apply(ReportTasks((again,), at=6.0))
    task = cell.tasks["web.0"]
    assert (task.state, task.reason, task.restarts) == ("starting", again.reason, 0)
    cell.apply(ReportTasks((again,), at=7.0))  # a retry, or the next restart: the same
    assert (task.reason, task.restarts) == (again.reason, 0)
    cell.rules = 7
    other = attrs.evolve(again, task="web.1", machine="m1")
    cell.apply(ReportTasks((other,), at=8.0))
    assert cell.tasks["web.1"].reason is None  # older rules replay as they ran


def test_stale_incarnation_report_is_ignored():
    cell = running_cell()
    report(cell, "web.0", RUNNING, healthy=True)
    cell.apply(SetMachineState("m0", MachineState.DOWN, at=6.0))
    commit(cell, ("web.0", "m1"), at=7.0)
    report(cell, "web.0", ReportedState.STARTING)
    out = report(cell, "web.0", RUNNING, healthy=False, inc=0)
    assert out.result.tasks == ("web.0",)  # type: ignore[union-attr]
    assert cell.tasks["web.0"].healthy is None


def test_unhealthy_end_keeps_the_last_verdict():
    cell = running_cell()
    report(cell, "web.0", RUNNING, healthy=False)
    t = cell.tasks["web.0"]
    cell.apply(
        ReportTasks(
            (TaskReport("web.0", "m0", 0, ReportedState.FAILED, reason="unhealthy"),), at=8.0
        )
    )
    assert t.state == "failed" and t.reason == "unhealthy" and t.healthy is False


def test_health_is_in_snapshots_byte_identical():
    cell = running_cell()
    report(cell, "web.0", RUNNING, healthy=True)
    report(cell, "web.1", RUNNING, healthy=False)
    blob = cell.snapshot()
    back = CellState.restore(blob)
    assert back.snapshot() == blob
    assert back.tasks["web.0"].healthy is True and back.tasks["web.1"].healthy is False
    back.check_invariants()


def test_format_2_rows_written_before_checks_load_with_health_unknown():
    import orjson

    cell = running_cell()
    doc = orjson.loads(cell.snapshot())
    # Written as format 2 was, before checks: one spec, rows without the
    # columns of format 3 (id, index, healthy_at, replaces, replaced_by) and
    # without `healthy`.
    doc["format"] = 2
    doc["machines"] = [row[:8] for row in doc["machines"]]
    doc["jobs"] = [
        [jid, specs[-1], times[0], 1, killed, [row[2:-4] for row in rows]]
        for jid, specs, times, killed, _stable, _serial, _rollouts, rows in doc["jobs"]
    ]
    for job in doc["jobs"]:
        job[1].pop("check", None)
    back = CellState.restore(orjson.dumps(doc))
    assert all(t.healthy is None for t in back.tasks.values())
    assert back.jobs["web"].spec.check is None
