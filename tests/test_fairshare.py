"""Weighted DRF across owners (#18 part 1): `SetWeights` in the cell and its
snapshot, and the scheduler core's fair ordering within a band."""

from __future__ import annotations

import random

import orjson

from cellstate import (
    CellState,
    Error,
    Ok,
    ReportedState,
    ReportTasks,
    SetWeights,
    TaskReport,
    TaskState,
)
from cellstate.fairshare import shares
from tests.cellfixtures import cell_with, submit
from tests.schedfixtures import core, step


def _running(cell: CellState, owner: str) -> int:
    return sum(
        1
        for t in cell.tasks.values()
        if t.owner == owner and t.state in (TaskState.ASSIGNED, TaskState.RUNNING)
    )


def test_weights_are_kept_checked_whole_and_default_to_one():
    cell = cell_with()
    assert cell.apply(SetWeights({"team-a": 3, "team-b": 1.5}, at=3.0)).result == Ok()
    assert cell.weights == {"team-a": 3.0, "team-b": 1.5}
    for bad, field in (
        ({"team-a": 5, "team-b": 0}, "weights.team-b"),
        ({"team-a": -1}, "weights.team-a"),
        ({"Team A": 2}, "weights.Team A"),
        ({"team-a": 2e9}, "weights.team-a"),
    ):
        result = cell.apply(SetWeights(bad, at=4.0)).result
        assert isinstance(result, Error) and result.field == field, result
        assert cell.weights == {"team-a": 3.0, "team-b": 1.5}  # nothing changed
    assert isinstance(cell.apply(SetWeights({}, at=4.0)).result, Error)
    # Setting the default forgets the owner; others keep theirs.
    assert cell.apply(SetWeights({"team-b": 1}, at=5.0)).result == Ok()
    assert cell.weights == {"team-a": 3.0}


def test_weights_wait_for_rules_5():
    cell = CellState(rules=4)
    result = cell.apply(SetWeights({"team-a": 3}, at=1.0)).result
    assert isinstance(result, Error) and result.code == "rules_too_old"
    assert cell.weights == {}


def test_snapshot_keeps_weights_and_old_snapshots_dump_as_they_were():
    cell = cell_with()
    submit(cell, "j", tasks=2, owner="team-a")
    before = cell.snapshot()
    assert b'"weights"' not in before
    assert CellState.restore(before).snapshot() == before
    cell.apply(SetWeights({"team-b": 2, "team-a": 3}, at=3.0))
    data = cell.snapshot()
    assert orjson.loads(data)["weights"] == [["team-a", 3.0], ["team-b", 2.0]]
    restored = CellState.restore(data)
    assert restored.weights == {"team-a": 3.0, "team-b": 2.0}
    assert restored.snapshot() == data


def _flood(weights: dict[str, float]) -> tuple[CellState, dict[str, int]]:
    """team-a floods a cell of 80 task slots first, team-b after; one decision."""
    cell = cell_with(machines=10, cpu=8000, memory=64 << 30)
    if weights:
        cell.apply(SetWeights(weights, at=1.5))
    submit(cell, "a1", tasks=500, owner="team-a", at=2.0)
    submit(cell, "a2", tasks=500, owner="team-a", at=2.1)
    submit(cell, "b1", tasks=500, owner="team-b", at=3.0)
    step(core(max_claims=1000), cell)
    return cell, {owner: _running(cell, owner) for owner in ("team-a", "team-b")}


def test_an_owner_flooding_the_cell_no_longer_starves_another():
    """Before weighted DRF the budget went round-robin across jobs in submission order
    and the first placed filled the cell: team-a took all 80 slots, team-b none."""
    _, placed = _flood({})
    assert placed == {"team-a": 40, "team-b": 40}
    cell, placed = _flood({"team-a": 3})
    assert placed == {"team-a": 60, "team-b": 20}
    # Within an owner, its jobs still share round-robin.
    assert _running_job(cell, "a1") == _running_job(cell, "a2") == 30
    share = shares(cell)
    assert share["team-a"] == (3.0, 0.75) and share["team-b"] == (1.0, 0.25)


def _running_job(cell: CellState, job: str) -> int:
    return sum(1 for tid in cell.jobs[job].task_ids if cell.tasks[tid].machine is not None)


def test_placed_shares_converge_to_the_weights_under_churn():
    """Both owners arrive on a cell team-a already fills; as tasks finish, what is
    freed goes to whoever is furthest below its weighted share."""
    cell = cell_with(machines=10, cpu=8000, memory=64 << 30)
    cell.apply(SetWeights({"team-a": 3}, at=1.0))
    submit(cell, "early", tasks=80, owner="team-a", at=1.0)
    sched = core(max_claims=1000)
    step(sched, cell, now=1.5)
    assert _running(cell, "team-a") == 80
    submit(cell, "a", tasks=5000, owner="team-a", at=2.0)
    submit(cell, "b", tasks=5000, owner="team-b", at=2.0)
    rng = random.Random(5)
    now = 3.0
    for _ in range(60):
        placed = [t for t in cell.tasks.values() if t.state is TaskState.ASSIGNED]
        done = rng.sample(placed, 8)
        reports = tuple(
            TaskReport(t.id, t.machine, t.incarnation, ReportedState.EXITED, exit_code=0)
            for t in done
        )
        assert not isinstance(cell.apply(ReportTasks(reports, at=now)).result, Error)
        step(sched, cell, now=now)
        now += 1.0
    a, b = _running(cell, "team-a"), _running(cell, "team-b")
    assert a + b == 80
    assert abs(a / b - 3.0) <= 0.3, (a, b)
