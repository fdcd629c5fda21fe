"""Scheduler policy against a real CellState: plan, commit, assert (Nomad-style)."""

from __future__ import annotations

import attrs
import pytest

from cellstate import (
    Commit,
    MachineSpec,
    MachineState,
    RegisterMachines,
    ReportedState,
    ReportTasks,
    ReportUsage,
    Resources,
    SchedulerClass,
    SetMachineState,
    TaskReport,
    TaskUsage,
)
from tests.cellfixtures import GI, cell_with, commit, submit
from tests.schedfixtures import core, domains, placements, step

BATCH, SERVICE, BE = SchedulerClass.BATCH, SchedulerClass.SERVICE, SchedulerClass.BEST_EFFORT


def test_best_fit_packs_the_fullest_machine_first():
    cell = cell_with(machines=3, cpu=4000, memory=8 * GI)
    submit(cell, "filler", tasks=1, cpu=2000)
    commit(cell, ("filler.0", "m1"))
    submit(cell, "job", tasks=3, cpu=1000)
    decision, result = step(core(BATCH, sampling=False), cell)
    assert result.accepted == 3 and not result.rejected
    # m1 is fullest: it takes two tasks until full, then the next machine.
    assert placements(cell, "job") == {"m1": 2, "m0": 1}
    assert decision.explanations["job"].placed == 3


def test_worst_fit_levels_load_starting_with_the_emptiest_machine():
    """The same cell as best fit's test: worst fit (a stack with `rank="worst_fit"`, as
    cell compaction compares) puts the first tasks on the empty machines and never
    two on one machine while another has more room left."""
    from schedulers.stack import STACKS, Stack

    cell = cell_with(machines=3, cpu=4000, memory=8 * GI)
    submit(cell, "filler", tasks=1, cpu=2000)
    commit(cell, ("filler.0", "m1"))
    submit(cell, "job", tasks=4, cpu=1000)
    worst = attrs.evolve(STACKS[BATCH], rank="worst_fit")
    _, result = step(core(BATCH, sampling=False, stack=worst), cell)
    assert result.accepted == 4
    # m0 and m2 (4000 free) take two each before m1 (2000 free) takes any.
    assert placements(cell, "job") == {"m0": 2, "m2": 2}
    with pytest.raises(ValueError, match="only best_fit"):
        Stack((), spread=True, rank="worst_fit")


def test_batch_fills_machines_in_one_decision_without_overcommitting():
    cell = cell_with(machines=4, cpu=4000, memory=8 * GI)
    submit(cell, "job", tasks=16, cpu=1000)
    _, result = step(core(BATCH), cell)
    assert result.accepted == 16
    assert sorted(placements(cell, "job").values()) == [4, 4, 4, 4]


def test_service_spreads_across_failure_domains():
    cell = cell_with(machines=12, cpu=16000, domains=3)
    submit(cell, "web", tasks=6, cpu=500, scheduler=SERVICE)
    _, result = step(core(SERVICE), cell)
    assert result.accepted == 6
    assert sorted(domains(cell, "web").values()) == [2, 2, 2]
    # and across machines within a domain
    assert max(placements(cell, "web").values()) == 1


@pytest.mark.parametrize("seed", range(8))
def test_three_replicas_in_two_racks_of_three_machines_use_all_three(seed):
    # `omega up --agents 3`: rack d0 holds m0 and m2, rack d1 holds m1 alone. With one
    # replica in each rack the racks tie, and a random pick put the third on m1 beside the
    # second half of the time, while m0 or m2 in the other rack held none.
    cell = cell_with(machines=3, cpu=16000, domains=2)
    submit(cell, "web", tasks=3, cpu=500, scheduler=SERVICE)
    _, result = step(core(SERVICE, seed=seed), cell)
    assert result is not None and result.accepted == 3
    assert sorted(placements(cell, "web").values()) == [1, 1, 1], placements(cell, "web")
    assert sorted(domains(cell, "web").values()) == [1, 2]


def test_service_spreads_by_label_key():
    cell = cell_with(machines=0)
    cell.apply(
        RegisterMachines(
            tuple(
                MachineSpec(f"m{i}", Resources(16000, 8 * GI), labels={"zone": f"z{i % 2}"})
                for i in range(8)
            ),
            at=1.0,
        )
    )
    submit(cell, "web", tasks=4, cpu=500, scheduler=SERVICE, spread="zone")
    step(core(SERVICE), cell)
    zones = [cell.machines[m].labels["zone"] for m in placements(cell, "web")]
    assert sorted(zones) == ["z0", "z0", "z1", "z1"]


def test_constraints_filter_with_counted_reasons():
    cell = cell_with(machines=0)
    cell.apply(
        RegisterMachines(
            tuple(
                MachineSpec(
                    f"m{i}", Resources(4000, 8 * GI), labels={"disk": "ssd" if i < 2 else "hdd"}
                )
                for i in range(5)
            ),
            at=1.0,
        )
    )
    cell.apply(SetMachineState("m0", MachineState.DOWN, at=1.5))
    submit(cell, "db", tasks=2, cpu=1000, constraints={"disk": "ssd"})
    sched = core(BATCH)
    decision, result = step(sched, cell)
    assert result.accepted == 2
    assert set(placements(cell, "db")) == {"m1"}
    metric = decision.explanations["db"]
    assert metric.filtered == {"machine_not_up": 1, "constraint:disk": 3}
    assert metric.machines_evaluated == 5 and metric.machines_feasible == 1


def test_a_selector_chooses_machines_as_kubectl_l_does_and_counts_each_key():
    """`selector` (rules 12): every requirement must hold; a machine without the label
    matches `notin` and `!key`. The scheduler places only there, counts what it filtered
    by the requirement's key, and the store refuses a claim elsewhere alike."""
    cell = cell_with(machines=0)
    labels = [
        {"zone": "a"},
        {"zone": "b", "spot": "yes"},
        {"zone": "b"},
        {"zone": "c"},
        {},
        {"zone": "a", "tier": "old"},
    ]
    specs = [
        MachineSpec(f"m{i}", Resources(4000, 8 * GI), labels=found)
        for i, found in enumerate(labels)
    ]
    cell.apply(RegisterMachines(tuple(specs), at=1.0))
    chosen = "zone in (a,b),!spot,tier notin (old)"
    submit(cell, "picky", tasks=8, cpu=1000, selector=chosen)
    decision, result = step(core(BATCH, sampling=False), cell)
    assert result is not None and result.accepted == 8 and not result.rejected
    assert set(placements(cell, "picky")) == {"m0", "m2"}
    metric = decision.explanations["picky"]
    assert metric.filtered == {"constraint:zone": 2, "constraint:spot": 1, "constraint:tier": 1}
    # The store judges a claim by the same selector: on m3 it is refused, naming the key.
    submit(cell, "late", tasks=1, cpu=1000, selector=chosen)
    out = commit(cell, ("late.0", "m3"))
    assert [r.reason for r in out.result.rejected] == ["constraint:zone"]
    cell.check_invariants()


def test_jobs_of_one_decision_share_static_filters_only_with_the_same_constraints():
    # The static filters' result is worked out once per decision and constraints
    # (`feasible.static_feasible`); each job is still counted as if alone.
    cell = cell_with(machines=0)
    disks = ("ssd", "ssd", "hdd", "hdd", "hdd")
    specs = [
        MachineSpec(f"m{i}", Resources(4000, 8 * GI), labels={"disk": d})
        for i, d in enumerate(disks)
    ]
    cell.apply(RegisterMachines(tuple(specs), at=1.0))
    cell.apply(SetMachineState("m4", MachineState.DOWN, at=1.5))
    submit(cell, "fast", tasks=1, cpu=1000, constraints={"disk": "ssd"})
    submit(cell, "slow", tasks=1, cpu=1000, constraints={"disk": "hdd"})
    submit(cell, "fast-too", tasks=1, cpu=1000, constraints={"disk": "ssd"})
    submit(cell, "any", tasks=1, cpu=1000)
    decision, result = step(core(BATCH, sampling=False), cell)
    assert result.accepted == 4
    assert set(placements(cell, "fast")) | set(placements(cell, "fast-too")) <= {"m0", "m1"}
    assert set(placements(cell, "slow")) <= {"m2", "m3"}
    metrics = decision.explanations
    for job in ("fast", "fast-too"):
        assert metrics[job].filtered == {"machine_not_up": 1, "constraint:disk": 2}
    assert metrics["slow"].filtered == {"machine_not_up": 1, "constraint:disk": 2}
    assert metrics["any"].filtered == {"machine_not_up": 1}
    assert metrics["any"].machines_feasible == 4


def test_a_later_job_of_the_decision_sees_the_room_an_earlier_one_took():
    # Room masks are kept per decision and task shape (`room_at_least`): a
    # placement must update them, or the next job counts a full machine as fitting.
    cell = cell_with(machines=2, cpu=4000)
    submit(cell, "first", tasks=4, cpu=1000)
    submit(cell, "second", tasks=1, cpu=1000)
    decision, result = step(core(BATCH, sampling=False), cell)
    assert result.accepted == 5
    (full,) = placements(cell, "first")
    assert set(placements(cell, "second")) == {"m0", "m1"} - {full}
    assert decision.explanations["first"].exhausted == {}
    assert decision.explanations["second"].exhausted == {"insufficient:cpu": 1}


def test_where_a_jobs_tasks_are_is_carried_across_decisions_until_a_task_moves_otherwise():
    # Reading every task of every pending job for each decision was a service
    # scheduler's largest cost at a million tasks; the core keeps the rows its
    # accepted claims add, trusted while `Job.moves` counts only those.
    cell = cell_with(machines=3, cpu=8000)
    submit(cell, "web", tasks=4, cpu=500, scheduler=SERVICE, anti_affinity=True)
    sched = core(SERVICE, max_claims=2)
    step(sched, cell)
    held = set(placements(cell, "web"))
    job, moves, known = sched._known_rows["web"]
    assert job is cell.jobs["web"] and moves == job.moves == 2
    assert set(known.tolist()) == {cell.machines[m].index for m in held}
    # Someone else puts a task of the job on the last machine: a move the core
    # did not make, so it reads the tasks again and sees no machine left.
    (last,) = {"m0", "m1", "m2"} - held
    commit(cell, ("web.2", last), at=6.0)
    assert cell.jobs["web"].moves == 3
    decision, _ = step(sched, cell, now=7.0)
    assert decision is None or not decision.transaction.claims


def test_anti_affinity_one_task_per_machine_and_reasons():
    cell = cell_with(machines=3, cpu=8000)
    submit(cell, "web", tasks=4, cpu=500, scheduler=SERVICE, anti_affinity=True)
    sched = core(SERVICE)
    decision, result = step(sched, cell)
    assert result.accepted == 3
    assert set(placements(cell, "web").values()) == {1}
    assert decision.explanations["web"].unplaced_reason is not None
    # The fourth task: every machine holds one of the job's tasks already.
    decision, _ = step(core(SERVICE, name="again"), cell)
    assert decision is None
    explanation = sched.explain(cell, "web")
    again = core(SERVICE, name="probe")
    assert again.decide(cell, 6.0) is None
    assert again.explain(cell, "web").last.filtered == {"anti_affinity": 3}
    assert explanation.pending_tasks == 1


def test_insufficient_resources_counted_per_dimension():
    cell = cell_with(machines=0)
    cell.apply(
        RegisterMachines(
            (
                MachineSpec("small-cpu", Resources(500, 64 * GI)),
                MachineSpec("small-mem", Resources(64000, GI // 2)),
            ),
            at=1.0,
        )
    )
    submit(cell, "big", tasks=1, cpu=1000, memory=GI)
    sched = core(BATCH)
    assert sched.decide(cell, 5.0) is None
    last = sched.explain(cell, "big").last
    assert last.exhausted == {"insufficient:cpu": 1, "insufficient:memory": 1}
    assert "insufficient:cpu" in sched.explain(cell, "big").summary()


def _full_of_batch(cell, job="batchy", per_machine=4):
    submit(cell, job, tasks=per_machine * len(cell.machines), cpu=1000, priority=150)
    _, result = step(core(BATCH, name="b"), cell)
    assert result.accepted == per_machine * len(cell.machines)


def test_service_preempts_lowest_band_with_fewest_victims():
    cell = cell_with(machines=2, cpu=4000)
    submit(cell, "small", tasks=4, cpu=500, priority=110)
    submit(cell, "big", tasks=2, cpu=1000, priority=190)
    commit(cell, *[(f"small.{i}", "m0") for i in range(4)], ("big.0", "m0"), ("big.1", "m1"))
    submit(cell, "prod", tasks=2, cpu=1000, priority=200)
    commit(cell, ("prod.0", "m1"), ("prod.1", "m1"))
    # m0: 4 x 500 (prio 110) + 1000 (prio 190) = 3000 used; m1: 1000 (190) + 2000 (prod)
    submit(cell, "web", tasks=1, cpu=2000, scheduler=SERVICE, priority=250)
    decision, result = step(core(SERVICE, sampling=False), cell)
    claim = decision.transaction.claims[0]
    # m0 needs 1000 more: two prio-110 tasks; m1 would need the prio-190 task.
    assert claim.machine == "m0"
    assert len(claim.victims) == 2 and all(v.startswith("small.") for v in claim.victims)
    assert result.accepted == 1 and set(result.preempted) == set(claim.victims)
    assert decision.explanations["web"].preempting == 1


@pytest.mark.parametrize("seed", range(4))
def test_a_service_that_preempts_still_spreads_over_domains(seed):
    # Every machine full of batch tasks of one priority: every victim set costs
    # the same, and all three replicas used to preempt their way onto one machine.
    # A replica in another domain is worth a victim; a second one on a machine
    # that the first preemption left room on is not worth another.
    cell = cell_with(machines=4, cpu=4000, domains=2)
    _full_of_batch(cell)
    submit(cell, "web", tasks=3, cpu=500, scheduler=SERVICE)
    _, result = step(core(SERVICE, seed=seed), cell)
    assert result is not None and result.accepted == 3 and len(result.preempted) == 2
    assert sorted(domains(cell, "web").values()) == [1, 2], placements(cell, "web")


def test_preemption_never_takes_production_or_same_band():
    cell = cell_with(machines=1, cpu=4000)
    submit(cell, "prod", tasks=4, cpu=1000, priority=200)
    commit(cell, *[(f"prod.{i}", "m0") for i in range(4)])
    submit(cell, "mon", tasks=1, cpu=1000, scheduler=SERVICE, priority=300)
    sched = core(SERVICE)
    assert sched.decide(cell, 5.0) is None  # production is never a victim
    # A batch-band service task cannot preempt batch tasks (not strictly lower).
    cell2 = cell_with(machines=1, cpu=2000)
    _full_of_batch(cell2, per_machine=2)
    submit(cell2, "svc", tasks=1, cpu=1000, scheduler=SERVICE, priority=199)
    assert core(SERVICE).decide(cell2, 5.0) is None


def test_gang_placed_whole_or_not_at_all():
    cell = cell_with(machines=2, cpu=4000)
    submit(cell, "gang", tasks=9, cpu=1000, gang=True)
    sched = core(BATCH)
    assert sched.decide(cell, 5.0) is None  # 9 tasks, room for 8: nothing claimed
    assert sched.explain(cell, "gang").last.placed == 0
    submit(cell, "gang2", tasks=8, cpu=1000, gang=True)
    decision, result = step(sched, cell)
    assert decision.transaction.mode.value == "all-or-nothing"
    assert decision.jobs == ("gang2",) and result.accepted == 8


def test_gang_conflict_rejects_whole_transaction():
    cell = cell_with(machines=2, cpu=4000)
    submit(cell, "gang", tasks=8, cpu=1000, gang=True)
    sched = core(BATCH)
    decision = sched.decide(cell, 5.0)
    submit(cell, "thief", tasks=1, cpu=1000)
    commit(cell, ("thief.0", decision.transaction.claims[0].machine))
    result = cell.apply(Commit(decision.transaction, at=6.0)).result
    sched.on_result(cell, decision, result, 6.0)
    assert result.accepted == 0 and len(result.rejected) == 8
    assert sched.figures.conflicts_by_reason["aborted"] == 7
    assert all(t.machine is None for t in cell.job_tasks(cell.jobs["gang"]))


def test_best_effort_uses_only_reclaimed_resources():
    cell = cell_with(machines=1, cpu=4000, memory=8 * GI)
    submit(cell, "svc", tasks=1, cpu=4000, memory=4 * GI, priority=200)
    commit(cell, ("svc.0", "m0"))
    submit(cell, "scav", tasks=4, cpu=1000, memory=GI // 2, scheduler=BE)
    sched = core(BE)
    # Reservation = limit until usage is reported: no reclaimable cpu.
    assert sched.decide(cell, 5.0) is None
    assert sched.explain(cell, "scav").last.exhausted == {"insufficient:cpu": 1}
    cell.apply(ReportTasks((TaskReport("svc.0", "m0", 0, ReportedState.RUNNING),), at=6.0))
    cell.apply(ReportUsage((TaskUsage("svc.0", 0, 1000, GI),), at=7.0))
    # reservation = usage + 10% of limit = 1400m; 2600m reclaimable -> 2 tasks.
    _decision, result = step(sched, cell, now=8.0)
    assert result.accepted == 2
    machine = cell.machines["m0"]
    assert machine.account.best_effort["cpu"] == 2000 and machine.account.used["cpu"] == 4000


def test_regular_placement_accounts_for_earlier_jobs_in_same_decision():
    cell = cell_with(machines=2, cpu=4000)
    for j in range(4):
        submit(cell, f"j{j}", tasks=2, cpu=1000)
    _, result = step(core(BATCH), cell)
    assert result.accepted == 8 and not result.rejected


def test_spread_domain_names_the_failure_domain_not_a_label():
    # The three tightest machines (best fit's first choices) are all in d0: a
    # `spread: domain` read as a label no machine has would put every task there.
    cell = cell_with(machines=9, cpu=16000, domains=3)
    submit(cell, "filler", tasks=3, cpu=8000)
    commit(cell, ("filler.0", "m0"), ("filler.1", "m3"), ("filler.2", "m6"))
    submit(cell, "web", tasks=3, cpu=500, scheduler=SERVICE, spread="domain")
    _, result = step(core(SERVICE), cell)
    assert result is not None and result.accepted == 3
    assert sorted(domains(cell, "web").values()) == [1, 1, 1]
