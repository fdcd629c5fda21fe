"""What-if plans (#18 part 3): `SubmitPlan` submits a job placed exactly as a plan
read the cell, or nothing; `omega.plan` runs the real scheduler core on a snapshot."""

from __future__ import annotations

import orjson
import pytest

from cellstate import (
    Band,
    CellState,
    Claim,
    CommitResult,
    Error,
    JobSpec,
    Resources,
    SchedulerClass,
    SetQuota,
    SubmitPlan,
    TaskState,
)
from omega.plan import TokenError, decode_token, encode_token, make_plan
from tests.cellfixtures import GI, cell_with, commit, submit
from tests.schedfixtures import core, step


def _spec(tasks: int = 3, cpu: int = 1000, name: str = "web") -> JobSpec:
    return JobSpec(
        name=name,
        owner="alice",
        scheduler=SchedulerClass.BATCH,
        resources=Resources(cpu, GI),
        tasks=tasks,
    )


def _planned(cell: CellState, spec: JobSpec, job: str = "web-1") -> dict:
    return make_plan(cell.snapshot(), spec, job)


def _claims(found: dict) -> tuple[Claim, ...]:
    return tuple(
        Claim(p["task"], p["machine"], p["seqnum"], tuple(p["victims"]))
        for p in found["placements"]
    )


def test_a_plan_commits_exactly_what_it_planned():
    cell = cell_with(machines=3, cpu=2000)
    submit(cell, "other", tasks=2, cpu=1500)
    step(core(), cell)
    spec = _spec(tasks=5)
    found = _planned(cell, spec)
    # "other" left 500m on each of two machines: only the third takes web's tasks.
    assert found["fits"] == 2 and found["tasks"] == 5
    assert found["explanation"]["unplaced_reason"] == "insufficient:cpu"
    out = cell.apply(SubmitPlan("web-1", spec, _claims(found), at=9.0))
    assert isinstance(out.result, CommitResult) and out.result.accepted == 2
    placed = {t.id: t.machine for t in cell.job_tasks(cell.jobs["web-1"]) if t.machine}
    assert placed == {p["task"]: p["machine"] for p in found["placements"]}
    assert cell.jobs["web-1"].counts[TaskState.PENDING] == 3  # the rest, for its scheduler
    cell.check_invariants()


def test_a_changed_machine_refuses_the_plan_naming_it_and_submits_nothing():
    cell = cell_with(machines=3, cpu=4000)
    spec = _spec(tasks=2)
    found = _planned(cell, spec)
    used = {p["machine"] for p in found["placements"]}
    moved = sorted(used)[0]
    submit(cell, "rival", tasks=1, cpu=100)
    rival = next(iter(cell.jobs["rival"].task_ids))
    commit(cell, (rival, moved), scheduler="batch")
    before = cell.snapshot()
    out = cell.apply(SubmitPlan("web-1", spec, _claims(found), at=9.0))
    assert isinstance(out.result, Error) and out.result.code == "plan_stale"
    assert moved in out.result.message and "by batch" in out.result.message
    assert "web-1" not in cell.jobs
    # Nothing changed but the version and the cell's clock (every command moves both).
    after, earlier = orjson.loads(cell.snapshot()), orjson.loads(before)
    assert after.pop("version") == earlier.pop("version") + 1
    assert after.pop("now") == 9.0
    earlier.pop("now")
    assert after == earlier


def test_a_plan_refused_at_commit_takes_the_submission_back():
    cell = cell_with(machines=2, cpu=4000)
    spec = _spec(tasks=2)
    found = _planned(cell, spec)
    # Quota spans machines: no machine's seqnum moves, the commit still refuses.
    cell.apply(SetQuota("alice", Band.BATCH, Resources(1000, 8 * GI), at=5.0))
    tasks_before = dict(cell.tasks)
    out = cell.apply(SubmitPlan("web-1", spec, _claims(found), at=9.0))
    assert isinstance(out.result, Error) and out.result.code == "plan_refused"
    assert "quota_exceeded:cpu" in out.result.message
    assert "web-1" not in cell.jobs and cell.tasks == tasks_before
    assert "web-1" not in cell.pending_jobs
    cell.check_invariants()


def test_a_plan_places_only_what_the_quota_admits():
    cell = cell_with(machines=2, cpu=4000)
    cell.apply(SetQuota("alice", Band.BATCH, Resources(2500), at=5.0))
    spec = _spec(tasks=4)
    found = _planned(cell, spec)
    assert found["fits"] == 2 and found["explanation"]["quota_held"] == 2
    assert found["explanation"]["unplaced_reason"] == "quota_exceeded:cpu"
    out = cell.apply(SubmitPlan("web-1", spec, _claims(found), at=9.0))
    assert isinstance(out.result, CommitResult) and out.result.accepted == 2


def test_claims_must_be_the_jobs_own():
    cell = cell_with()
    submit(cell, "x", tasks=1)
    out = cell.apply(
        SubmitPlan("web-1", _spec(), (Claim("x.0", "m0", cell.machines["m0"].seqnum),), at=3.0)
    )
    assert isinstance(out.result, Error) and out.result.field == "claims[0]"


def test_plans_wait_for_rules_5():
    cell = CellState(rules=4)
    out = cell.apply(SubmitPlan("web-1", _spec(), (), at=1.0))
    assert isinstance(out.result, Error) and out.result.code == "rules_too_old"


def test_tokens_round_trip_and_refuse_other_specs_and_garbage():
    spec = _spec()
    claims = [Claim("web-1.0", "m0", 4, ("v.1",))]
    token = encode_token("web-1", spec, claims)
    assert decode_token(token, spec) == ("web-1", claims)
    with pytest.raises(TokenError, match="another spec"):
        decode_token(token, _spec(tasks=4))
    for bad in ("", "nonsense!", token[:-5], "e30"):
        with pytest.raises(TokenError, match="not a token"):
            decode_token(bad, spec)
