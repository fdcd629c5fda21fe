"""Jobs that change while they run, in the cell state: versions, replacement
claims, stops, disruption budgets at commit, scale, revert, canaries and the
rollout record, drain deadlines; all kept in snapshots."""

from __future__ import annotations

import attrs
import pytest

from cellstate import (
    CellState,
    Claim,
    Commit,
    CommitResult,
    EndRollout,
    Error,
    ExpireHeartbeats,
    HealthCheck,
    Heartbeat,
    JobSpec,
    Limit,
    Ok,
    PromoteJob,
    ReportedState,
    ReportTasks,
    RevertJob,
    RolloutState,
    ScaleJob,
    SchedulerClass,
    SetMachineState,
    SetQuota,
    Stop,
    StopReason,
    TaskReport,
    TaskState,
    Transaction,
    UpdateJob,
    UpdatePolicy,
)
from cellstate.model import FieldError, MachineState
from cellstate.wire import SpecError, parse
from tests.cellfixtures import cell_with, commit, submit

CHECK = HealthCheck(http="/healthz")
POLICY = UpdatePolicy(max_parallel=2, min_healthy_time=1.0, healthy_deadline=5.0)


def run(cell: CellState, tid: str, healthy: bool | None = True, at: float = 5.0) -> None:
    task = cell.tasks[tid]
    for state in (ReportedState.STARTING, ReportedState.RUNNING):
        report = TaskReport(tid, task.machine or "", task.incarnation, state, healthy=healthy)
        cell.apply(ReportTasks((report,), at=at))


def service(tasks: int = 4, machines: int = 4, **spec) -> CellState:
    """A cell running `tasks` healthy tasks of service job `web` (v1), one per machine."""
    cell = cell_with(machines=machines, cpu=4000)
    spec.setdefault("check", CHECK)
    spec.setdefault("update", POLICY)
    submit(cell, "web", tasks=tasks, scheduler=SchedulerClass.SERVICE, **spec)
    commit(cell, *((f"web.{i}", f"m{i % machines}") for i in range(tasks)))
    for i in range(tasks):
        run(cell, f"web.{i}")
    assert cell.jobs["web"].available == tasks
    return cell


def update(cell: CellState, job: str = "web", at: float = 10.0, **changes):
    spec = attrs.evolve(cell.jobs[job].spec, **changes)
    return cell.apply(UpdateJob(job, spec, at=at))


def txn(cell: CellState, *claims: Claim, stops: tuple[Stop, ...] = (), at: float = 11.0):
    out = cell.apply(Commit(Transaction("test", claims, cell.version, stops=stops), at=at))
    assert isinstance(out.result, CommitResult)
    return out.result


def test_update_makes_a_version_and_starts_a_rollout_over_the_placed_tasks():
    cell = service()
    out = update(cell, command=("serve", "--v2"))
    assert out.result == Ok()
    job = cell.jobs["web"]
    assert job.spec_version == 2 and len(job.versions) == 2
    assert job.versions[0].command == () and job.spec.command == ("serve", "--v2")
    assert job.rollout is not None and job.rollout.state is RolloutState.ROLLING
    assert job.rollout.version == 2 and job.rollout.previous == 1
    assert all(not job.current(t) for t in cell.job_tasks(job))
    # The same spec again (a retried update) changes nothing.
    assert update(cell, command=("serve", "--v2")).result == Ok()
    assert job.spec_version == 2
    cell.check_invariants()


@pytest.mark.parametrize("rules", [7, 8])
def test_an_update_naming_another_job_is_refused_under_rules_8(rules):
    cell = service()
    cell.rules = rules
    before = cell.snapshot()
    out = update(cell, name="db", command=("serve", "--v2"))
    if rules == 7:  # a log written by the release before keeps replaying as it ran
        assert out.result == Ok() and cell.jobs["web"].spec.name == "db"
        return
    assert isinstance(out.result, Error)
    assert (out.result.code, out.result.field) == ("name_changed", "spec.name")
    assert "'db' is not this job's name ('web')" in out.result.message
    assert _essence(cell.snapshot()) == _essence(before)


def test_an_update_refuses_another_scheduler_class_or_unknown_job_changing_nothing():
    cell = service()
    before = cell.snapshot()
    out = update(cell, scheduler=SchedulerClass.BATCH, priority=100)
    assert isinstance(out.result, Error)
    assert (out.result.code, out.result.field) == ("scheduler_changed", "spec.scheduler")
    spec = cell.jobs["web"].spec
    out = cell.apply(UpdateJob("nope", spec, at=10.0))
    assert isinstance(out.result, Error) and out.result.field == "job"
    out = cell.apply(ScaleJob("web", -1, at=10.0))
    assert isinstance(out.result, Error) and out.result.field == "tasks"
    out = cell.apply(SetMachineState("nope", MachineState.DRAINING, at=10.0))
    assert isinstance(out.result, Error) and out.result.field == "machine"
    out = cell.apply(RevertJob("web", 7, at=10.0))
    assert isinstance(out.result, Error) and out.result.field == "version"
    assert _essence(cell.snapshot()) == _essence(before)


def test_an_update_block_with_max_parallel_zero_is_refused_at_the_edge():
    with pytest.raises(FieldError, match="at least one task") as refused:
        UpdatePolicy(max_parallel=0)
    assert refused.value.field == "max_parallel"
    doc = {
        "name": "web",
        "owner": "alice",
        "scheduler": "service",
        "resources": {"cpu": 1, "memory": "1Gi"},
        "update": {"max_parallel": 0},
    }
    with pytest.raises(SpecError) as caught:
        parse(doc, JobSpec)
    assert caught.value.field == "$.update.max_parallel"


def test_replacement_runs_beside_the_old_task_which_stops_once_it_is_healthy():
    cell = service(machines=4)
    update(cell, command=("v2",))
    result = txn(cell, Claim("web.0", "m1", cell.machines["m1"].seqnum, replace=True))
    assert result == CommitResult(accepted=1)
    old = cell.tasks["web.0"]
    new = cell.tasks[old.replaced_by]  # type: ignore[index]
    assert new.id == "web.0.1" and new.replaces == "web.0"
    assert (new.index, new.spec_version, new.state) == (0, 2, TaskState.ASSIGNED)
    assert old.state is TaskState.RUNNING
    # Not yet: the replacement is not healthy.
    result = txn(cell, stops=(Stop("web.0", StopReason.REPLACED),))
    assert result.rejected[0].reason == "stop_unjustified"
    # A second replacement of the same task is refused.
    result = txn(cell, Claim("web.0", "m2", cell.machines["m2"].seqnum, replace=True))
    assert result.rejected[0].reason == "not_replaceable"
    run(cell, new.id, at=12.0)
    result = txn(cell, stops=(Stop("web.0", StopReason.REPLACED),), at=13.0)
    assert result == CommitResult(accepted=0)
    assert old.state is TaskState.KILLED and old.reason == "replaced"
    assert cell.jobs["web"].available == 4
    cell.check_invariants()


def test_the_budget_refuses_stops_beyond_max_unavailable():
    cell = service(tasks=4, machines=4)  # max_parallel 2: budget 2
    update(cell, command=("v2",))
    # Stop-first replacements of three healthy tasks: the third breaks the budget.
    claims = [Claim(f"web.{i}", f"m{i}", 0, (f"web.{i}",), replace=True) for i in range(3)]
    result = txn(cell, *claims)
    assert result.accepted == 2
    assert [(r.task, r.reason) for r in result.rejected] == [("web.2", "budget_exceeded")]
    job = cell.jobs["web"]
    assert job.available == 2
    assert sum(t.state is TaskState.KILLED for t in cell.job_tasks(job)) == 2
    cell.check_invariants()


@pytest.mark.parametrize("rules", [6, 7])
def test_a_task_replaced_in_place_gives_its_quota_to_its_replacement(rules):
    cell = service(tasks=2, machines=2)
    cell.rules = rules
    spec = cell.jobs["web"].spec
    cell.apply(SetQuota(spec.owner, spec.band, Limit.of({"cpu": 2 * spec.resources.cpu})))
    update(cell, command=("v2",))
    # Beside the old task, the replacement would need a third task's quota.
    beside = txn(cell, Claim("web.0", "m1", cell.machines["m1"].seqnum, replace=True))
    assert [r.reason for r in beside.rejected] == ["quota_exceeded:cpu"]
    # In its place, the old task stops in the same commit and its quota is the
    # replacement's (rules 7); rules 6 refused it, and an update at full quota stuck.
    in_place = Claim("web.0", "m0", cell.machines["m0"].seqnum, ("web.0",), replace=True)
    result = txn(cell, in_place)
    if rules == 6:
        assert [r.reason for r in result.rejected] == ["quota_exceeded:cpu"]
        return
    assert result.accepted == 1 and not result.rejected
    assert cell.ledger.usage()[(spec.owner, spec.band)]["cpu"] == 2 * spec.resources.cpu
    cell.check_invariants()


@pytest.mark.parametrize("rules", [6, 7])
def test_a_task_on_a_draining_machine_may_be_stopped_drained_and_comes_back_pending(rules):
    cell = service(tasks=2, machines=2)
    cell.rules = rules
    on_m1 = Stop("web.1", StopReason.DRAINED)
    # Not draining: nothing justifies it.
    assert [r.reason for r in txn(cell, stops=(on_m1,)).rejected] == ["stop_unjustified"]
    cell.apply(SetMachineState("m0", MachineState.DRAINING, at=10.0))
    result = txn(cell, stops=(Stop("web.0", StopReason.DRAINED),))
    task = cell.tasks["web.0"]
    if rules == 6:
        assert [r.reason for r in result.rejected] == ["stop_unjustified"]
        assert task.state is TaskState.RUNNING
        return
    assert not result.rejected
    # Evicted as a drain's deadline evicts: pending again, off the machine, its quota free.
    assert (task.state, task.reason, task.machine) == (TaskState.PENDING, "drained", None)
    assert "web.0" not in cell.machines["m0"].tasks and cell.jobs["web"].available == 1
    cell.check_invariants()


def test_the_budget_binds_preemption_by_another_scheduler():
    cell = cell_with(machines=1, cpu=4000)
    submit(
        cell,
        "low",
        tasks=4,
        cpu=1000,
        scheduler=SchedulerClass.BATCH,
        update=UpdatePolicy(max_parallel=1),
    )
    commit(cell, *((f"low.{i}", "m0") for i in range(4)))
    for i in range(4):
        run(cell, f"low.{i}", healthy=None)
    submit(cell, "prod", tasks=1, cpu=2000, scheduler=SchedulerClass.SERVICE)
    out = commit(cell, ("prod.0", "m0", None, ("low.0", "low.1")))
    assert out.result.rejected[0].reason == "budget_exceeded"
    out = commit(cell, ("prod.0", "m0", None, ("low.0",)))
    assert out.result.rejected[0].reason == "insufficient:cpu"
    assert cell.jobs["low"].available == 4
    cell.check_invariants()


def test_scale_up_adds_tasks_and_down_leaves_placed_ones_to_budgeted_stops():
    cell = service(tasks=4, machines=4)
    assert cell.apply(ScaleJob("web", 6, at=10.0)).result == Ok()
    job = cell.jobs["web"]
    assert job.spec.tasks == 6 and job.spec_version == 2
    assert job.rollout is None  # same shape: nothing to roll
    assert {t.id for t in cell.pending_tasks(job)} == {"web.4", "web.5"}
    assert cell.apply(ScaleJob("web", 1, at=11.0)).result == Ok()
    assert {t.reason for t in cell.job_tasks(job) if t.index >= 4} == {"scaled"}
    # Three placed tasks beyond the size; the budget (2) lets all of them go
    # only because one healthy task is all a job of one needs.
    stops = tuple(Stop(f"web.{i}", StopReason.SCALED) for i in (3, 2, 1))
    result = txn(cell, stops=stops)
    assert not result.rejected
    result = txn(cell, stops=(Stop("web.0", StopReason.SCALED),))
    assert result.rejected[0].reason == "stop_unjustified"
    assert job.available == 1
    cell.check_invariants()


def test_a_job_scaled_to_zero_is_kept_idle_and_scales_up_again():
    """`ScaleJob` to 0 (rules 11): placed tasks are the scheduler's to stop within the
    budget, the job runs until they have, then is idle: not ended, never purged, its
    versions kept; a scale up places new tasks. A spec of none is refused where a job
    is submitted or updated, and by the edge."""
    from cellstate import JobState, PurgeJobs, SubmitJob
    from cellstate.commands import RaiseRules

    cell = service(tasks=2, machines=2)
    assert cell.apply(ScaleJob("web", 0, at=10.0)).result == Ok()
    job = cell.jobs["web"]
    assert job.spec.tasks == 0 and job.state is JobState.RUNNING
    assert "web" in cell.unsettled  # placed tasks beyond its size: the scheduler's work
    assert not txn(cell, stops=(Stop("web.1", StopReason.SCALED),)).rejected
    assert not txn(cell, stops=(Stop("web.0", StopReason.SCALED),)).rejected
    assert job.state is JobState.IDLE and "web" not in cell.unsettled
    assert not cell.pending_jobs and job.available == 0
    cell.check_invariants()
    # Idle is not ended: the leader's purge passes it by, however long ago it stopped.
    assert cell.apply(PurgeJobs(1e9, at=1e9 + 1)).result == Ok()
    assert "web" in cell.jobs
    restored = CellState.restore(cell.snapshot())
    assert restored.jobs["web"].state is JobState.IDLE
    assert restored.snapshot() == cell.snapshot()
    assert cell.apply(ScaleJob("web", 2, at=20.0)).result == Ok()
    assert job.state is JobState.PENDING and job.spec_version == 3
    fresh = list(cell.pending_tasks(job))
    assert [t.index for t in fresh] == [0, 1]
    assert {"web.0", "web.1"}.isdisjoint(t.id for t in fresh)  # new tasks, new ids
    cell.check_invariants()

    empty = attrs.evolve(job.spec, tasks=0)
    for refused in (
        cell.apply(SubmitJob("none", empty, at=21.0)).result,
        cell.apply(UpdateJob("web", empty, at=21.0)).result,
    ):
        assert isinstance(refused, Error) and refused.field == "spec.tasks", refused
        assert "at least 1 task" in refused.message
    assert "none" not in cell.jobs and job.spec.tasks == 2
    with pytest.raises(SpecError, match=r"must be in 1\.\.100000, got 0"):
        parse(
            {
                "name": "x",
                "owner": "o",
                "scheduler": "batch",
                "tasks": 0,
                "resources": {"cpu": "1", "memory": "1Gi"},
            },
            JobSpec,
        )

    # Older rules refuse it, as older releases do: they cannot read a spec of none.
    old = service(tasks=1, machines=1)
    old.rules = 10
    refused = old.apply(ScaleJob("web", 0, at=10.0)).result
    assert isinstance(refused, Error) and refused.field == "tasks", refused
    assert old.jobs["web"].spec.tasks == 1
    assert old.apply(RaiseRules(11, at=11.0)).result == Ok()
    assert old.apply(ScaleJob("web", 0, at=12.0)).result == Ok()


def test_revert_makes_an_old_spec_the_next_version_keeping_the_size():
    cell = service(tasks=2, machines=2)
    update(cell, command=("v2",))
    cell.apply(ScaleJob("web", 3, at=11.0))
    assert cell.apply(RevertJob("web", 1, at=12.0)).result == Ok()
    job = cell.jobs["web"]
    assert job.spec_version == 4 and job.spec.command == () and job.spec.tasks == 3
    # Back to what the placed tasks run: nothing to roll, and the update is over.
    assert job.rollout is None
    assert job.rollouts[-1].state is RolloutState.SUPERSEDED
    cell.check_invariants()


def test_a_canary_update_waits_for_promotion():
    cell = service(update=attrs.evolve(POLICY, canary=1))
    update(cell, command=("v2",))
    job = cell.jobs["web"]
    assert job.rollout is not None and job.rollout.state is RolloutState.CANARY
    out = cell.apply(PromoteJob("web", at=12.0))
    assert out.result == Ok() and job.rollout.state is RolloutState.ROLLING
    out = cell.apply(PromoteJob("web", at=13.0))
    assert isinstance(out.result, Error) and out.result.code == "no_canary"


def test_a_failed_update_with_auto_revert_rolls_back_to_the_last_stable_version():
    cell = service(update=attrs.evolve(POLICY, auto_revert=True))
    update(cell, command=("v2",))
    job = cell.jobs["web"]
    ok = cell.apply(EndRollout("web", 2, RolloutState.SUCCEEDED, at=20.0))
    assert ok.result == Ok() and job.stable_version == 2
    update(cell, command=("v3",), at=30.0)
    out = cell.apply(EndRollout("web", 3, RolloutState.FAILED, "web.0.1 unhealthy", at=40.0))
    assert out.result == Ok()
    failed = job.rollouts[-2]
    assert (failed.version, failed.state, failed.reverted_to) == (3, RolloutState.REVERTED, 4)
    assert job.spec_version == 4 and job.spec.command == ("v2",)
    assert job.rollout is not None and job.rollout.version == 4
    # A verdict on an update no longer in progress is refused.
    stale = cell.apply(EndRollout("web", 3, RolloutState.FAILED, at=41.0))
    assert isinstance(stale.result, Error) and stale.result.code == "rollout_unknown"


def test_a_drain_deadline_evicts_what_is_left():
    cell = service(tasks=2, machines=2)
    out = cell.apply(SetMachineState("m0", MachineState.DRAINING, at=10.0, deadline=30.0))
    assert out.result == Ok()
    # The tasks on a draining machine may be replaced though they run the current version.
    assert cell.replaceable(cell.tasks["web.0"]) and not cell.replaceable(cell.tasks["web.1"])
    cell.apply(ExpireHeartbeats(timeout=1e9, at=39.0))
    assert cell.tasks["web.0"].state is TaskState.RUNNING
    cell.apply(ExpireHeartbeats(timeout=1e9, at=40.0))
    task = cell.tasks["web.0"]
    assert (task.state, task.reason) == (TaskState.PENDING, "drained")
    assert cell.machines["m0"].state is MachineState.DRAINING
    out = cell.apply(SetMachineState("m1", MachineState.DOWN, at=41.0, deadline=5.0))
    assert isinstance(out.result, Error) and out.result.field == "deadline"
    cell.check_invariants()


def test_a_silent_rack_reviews_each_job_once_after_every_machine_is_down(monkeypatch):
    # A review reads all of a job's tasks. Reviewing per machine made a rack of 20 machines
    # holding 70,000 tasks of 8 jobs cost 160 full reads in one apply, which stalled every
    # replica's tick for 10-18 s under load and deposed leader after leader (bench.store).
    cell = service(tasks=4, machines=4)
    update(cell, command=("v2",))
    txn(cell, Claim("web.0", "m1", cell.machines["m1"].seqnum, replace=True))
    submit(cell, "batch", tasks=8)
    commit(cell, *((f"batch.{i}", f"m{i % 4}") for i in range(8)))
    reviewed: list[str] = []
    settled = CellState.settled
    monkeypatch.setattr(
        CellState, "settled", lambda self, job: reviewed.append(job.id) or settled(self, job)
    )
    for machine in cell.machine_list:
        cell.apply(Heartbeat((machine.id,), at=20.0))
    cell.apply(Heartbeat(("m3",), at=30.0))
    cell.apply(ExpireHeartbeats(timeout=5.0, at=31.0))
    assert [m.state for m in cell.machine_list].count(MachineState.DOWN) == 3
    assert sorted(reviewed) == ["batch", "web"]
    # The replaced task was lost with its machine and its replacement's rollout goes on.
    assert cell.tasks["web.0"].state is TaskState.KILLED
    assert list(cell.unsettled) == ["web"]
    cell.check_invariants()


def test_a_replaced_task_that_is_lost_does_not_come_back():
    cell = service(tasks=2, machines=2)
    update(cell, command=("v2",))
    txn(cell, Claim("web.0", "m1", cell.machines["m1"].seqnum, replace=True))
    cell.apply(SetMachineState("m0", MachineState.DOWN, at=12.0))
    old = cell.tasks["web.0"]
    assert (old.state, old.reason) == (TaskState.KILLED, "lost")
    # A lost old-version task without a replacement comes back as the current version.
    lost = cell.tasks["web.1"]
    cell.apply(SetMachineState("m1", MachineState.DOWN, at=13.0))
    assert (lost.state, lost.spec_version) == (TaskState.PENDING, 2)
    cell.check_invariants()


def test_snapshots_keep_versions_rollouts_replacements_and_drains():
    cell = service(tasks=3, machines=3, update=attrs.evolve(POLICY, canary=1))
    update(cell, command=("v2",))
    txn(cell, Claim("web.0", "m1", cell.machines["m1"].seqnum, replace=True))
    cell.apply(ScaleJob("web", 4, at=12.0))
    cell.apply(SetMachineState("m2", MachineState.DRAINING, at=13.0, deadline=60.0))
    blob = cell.snapshot()
    back = CellState.restore(blob)
    back.check_invariants()
    assert back.snapshot() == blob
    job = back.jobs["web"]
    assert job.spec_version == 3 and job.rollout is not None
    assert back.tasks["web.0"].replaced_by == "web.0.1"
    assert back.machines["m2"].drain_deadline == 73.0
    assert job.available == cell.jobs["web"].available


def _essence(blob: bytes) -> dict:
    import orjson

    doc = orjson.loads(blob)
    del doc["version"], doc["recent"], doc["now"]
    return doc


def test_pending_tasks_skip_the_placed_head_yet_find_a_task_that_came_back():
    # A scheduler reads a big job's pending tasks a few per decision; the cell marks
    # where they start so it does not walk the placed ones again.
    cell = cell_with(machines=2, cpu=4000)
    submit(cell, "big", tasks=5)
    commit(cell, ("big.0", "m0"), ("big.1", "m0"), ("big.2", "m1"))
    job = cell.jobs["big"]
    assert [t.id for t in cell.pending_tasks(job)] == ["big.3", "big.4"]
    assert job.pending_from == 3
    task = cell.tasks["big.1"]
    report = TaskReport("big.1", "m0", task.incarnation, ReportedState.LOST)
    cell.apply(ReportTasks((report,), at=4.0))
    assert cell.tasks["big.1"].state is TaskState.PENDING
    assert job.pending_from == 0  # the task that came back lies before the mark
    assert [t.id for t in cell.pending_tasks(job)] == ["big.1", "big.3", "big.4"]
    cell.check_invariants()
    commit(cell, ("big.1", "m1"), ("big.3", "m1"), ("big.4", "m1"), at=5.0)
    assert list(cell.pending_tasks(job)) == []
    cell.check_invariants()  # no pending task before the mark


def test_first_pending_takes_a_few_from_the_mark_in_order():
    # What a scheduler takes of a job per decision: the first `count` pending tasks,
    # read from the mark, which moves to the first of them.
    cell = cell_with(machines=2, cpu=4000)
    submit(cell, "big", tasks=6)
    commit(cell, ("big.0", "m0"), ("big.2", "m1"))
    job = cell.jobs["big"]
    assert cell.first_pending(job, 0) == []
    assert job.pending_from == 0  # asking for none reads nothing
    assert [t.id for t in cell.first_pending(job, 2)] == ["big.1", "big.3"]
    assert job.pending_from == 1
    assert [t.id for t in cell.first_pending(job, 10)] == ["big.1", "big.3", "big.4", "big.5"]
    commit(cell, ("big.1", "m0"), ("big.3", "m0"), at=5.0)
    assert [t.id for t in cell.first_pending(job, 1)] == ["big.4"]
    assert job.pending_from == 4
