"""Ended jobs are forgotten (`PurgeJobs`, rules 9), as Nomad's job garbage collection does:
a cell that runs batch work for months must not keep every task it ever ran.

What goes: jobs killed, done or failed whose every task ended before the cut (a job none of
whose tasks ran: submitted before it). What stays: anything with a task pending or placed,
and what ended after the cut. A purge is a command like any other: replicas, copies and
snapshots agree on what it left, device kinds included."""

from __future__ import annotations

from cellstate import (
    CellState,
    JobPurged,
    KillJob,
    Ok,
    PurgeJobs,
    ReportedState,
    ReportTasks,
    TaskReport,
)
from cellstate.commands import RaiseRules
from cellstate.model import RULES
from tests.cellfixtures import GI, cell_with, commit, submit


def exit_all(cell: CellState, job: str, at: float, code: int = 0) -> None:
    reports = tuple(
        TaskReport(t.id, t.machine, t.incarnation, ReportedState.EXITED, code)  # type: ignore[arg-type]
        for t in cell.job_tasks(cell.jobs[job])
    )
    assert isinstance(cell.apply(ReportTasks(reports, at=at)).result, Ok)


def a_cell_of_every_kind_of_job() -> CellState:
    """done (ended at 10), killed while running (at 20), killed never run (at 30), failed
    (ended at 50), running, and pending."""
    cell = cell_with(machines=4, cpu=8000, memory=16 * GI, extra={"fpga": 2})
    submit(cell, "done", tasks=2, cpu=500)
    submit(cell, "gone", tasks=2, cpu=500)
    submit(cell, "never", tasks=1, cpu=500, constraints={"zone": "none"})
    submit(cell, "failed", tasks=1, cpu=500, extra={"fpga": 1})
    submit(cell, "running", tasks=2, cpu=500)
    submit(cell, "waiting", tasks=1, cpu=500, constraints={"zone": "none"})
    commit(cell, ("done.0", "m0"), ("done.1", "m1"), ("gone.0", "m0"), ("gone.1", "m2"))
    commit(cell, ("failed.0", "m3"), ("running.0", "m1"), ("running.1", "m2"))
    exit_all(cell, "done", at=10.0)
    cell.apply(KillJob("gone", at=20.0))
    cell.apply(KillJob("never", at=30.0))
    exit_all(cell, "failed", at=50.0, code=3)
    return cell


def test_a_purge_forgets_what_ended_before_the_cut_and_keeps_the_rest():
    cell = a_cell_of_every_kind_of_job()
    assert [j.id for j in cell.purgeable(40.0)] == ["done", "gone", "never"]
    tasks_before = len(cell.tasks)
    outcome = cell.apply(PurgeJobs(40.0, at=60.0, id="p1"))
    assert isinstance(outcome.result, Ok)
    assert [e.job for e in outcome.events if isinstance(e, JobPurged)] == ["done", "gone", "never"]
    assert list(cell.jobs) == ["failed", "running", "waiting"]
    assert len(cell.tasks) == tasks_before - 5
    assert not any(t.job in ("done", "gone", "never") for t in cell.tasks.values())
    assert "never" not in cell.needs
    cell.check_invariants()
    # Nothing more to purge at the same cut: the command changes nothing.
    again = cell.apply(PurgeJobs(40.0, at=61.0, id="p2"))
    assert again.events == ()
    # Later, the failed job goes too; the running and pending ones never do.
    cell.apply(PurgeJobs(1e9, at=62.0, id="p3"))
    assert list(cell.jobs) == ["running", "waiting"]
    cell.check_invariants()


def test_a_purged_job_s_id_is_free_again_and_machines_keep_their_books():
    cell = a_cell_of_every_kind_of_job()
    used = {m.id: dict(m.account.used) for m in cell.machine_list}
    cell.apply(PurgeJobs(40.0, at=60.0))
    assert {m.id: dict(m.account.used) for m in cell.machine_list} == used
    submit(cell, "done", tasks=1, cpu=500, at=70.0)
    assert cell.jobs["done"].counts == {"pending": 1}


def test_replicas_and_snapshots_agree_on_what_a_purge_left():
    """A replica that purged and one restored from its snapshot judge the next commands
    alike: the device kind only a purged job named no longer counts."""
    cell = a_cell_of_every_kind_of_job()
    cell.apply(PurgeJobs(1e9, at=60.0))
    assert "fpga" in cell.device_kinds  # the machines declare it
    restored = CellState.restore(cell.snapshot())
    assert restored.device_kinds == cell.devices_in_use() == cell.device_kinds
    assert restored.snapshot() == cell.snapshot()

    # A kind only a job named: gone with the job, in the live cell as in a restored one.
    lone = cell_with(machines=1, extra={"tpu": 1})
    submit(lone, "t", tasks=1, cpu=100, extra={"qpu": 1})
    assert "qpu" in lone.device_kinds
    lone.apply(KillJob("t", at=5.0))
    lone.apply(PurgeJobs(10.0, at=11.0))
    assert "qpu" not in lone.device_kinds
    assert CellState.restore(lone.snapshot()).device_kinds == lone.device_kinds


def test_older_rules_refuse_a_purge_and_keep_every_job():
    cell = CellState(rules=8)
    refused = cell.apply(PurgeJobs(1e9, at=1.0)).result
    assert refused.code == "rules_too_old", refused
    assert cell.apply(RaiseRules(RULES, at=2.0)).result == Ok()
    assert isinstance(cell.apply(PurgeJobs(1e9, at=3.0)).result, Ok)


def test_a_purge_takes_whole_jobs_up_to_its_bound_and_at_least_one():
    """One command is one apply on every replica's Raft thread: the leader bounds it."""
    cell = cell_with(machines=1)
    for name, tasks in (("a", 3), ("b", 3), ("c", 5), ("d", 1)):
        submit(cell, name, tasks=tasks, cpu=10)
        cell.apply(KillJob(name, at=5.0))
    assert [j.id for j in cell.purgeable(10.0, max_tasks=6)] == ["a", "b"]
    assert [j.id for j in cell.purgeable(10.0, max_tasks=2)] == ["a"]  # larger, still one
    cell.apply(PurgeJobs(10.0, max_tasks=6, at=11.0))
    assert list(cell.jobs) == ["c", "d"]
    cell.apply(PurgeJobs(10.0, max_tasks=6, at=12.0))
    assert cell.jobs == {}
    cell.check_invariants()


def test_when_a_job_ended_is_kept_without_reading_its_tasks_and_survives_a_restore():
    cell = a_cell_of_every_kind_of_job()
    ended = {job.id: job.ended_at for job in cell.jobs.values()}
    assert ended == {
        "done": 10.0,
        "gone": 20.0,
        "never": 30.0,
        "failed": 50.0,
        "running": 0.0,
        "waiting": 0.0,
    }
    restored = CellState.restore(cell.snapshot())
    assert {job.id: job.ended_at for job in restored.jobs.values()} == ended
    restored.check_invariants()
