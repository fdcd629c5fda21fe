"""`--model paper`: the Omega paper's transaction model on the real cell state and core.

Known answers on one-machine cells: the think time is `t_job + t_task` per unscheduled
task, placed or not; a job with tasks left waits 1 s and goes to the back of the queue;
it is abandoned after 100 attempts that placed nothing (or 1,000 in all); under coarse
detection only a rival's claim is a conflict, not a task's exit.
"""

from __future__ import annotations

import random

from cellsim.engine import DAY, SchedulerSetup, Simulation, omega_schedulers, simulate
from cellsim.workload import load, parse
from cellstate import ACTIVE_STATES, ConflictMode, SchedulerClass
from schedulers.core import PaperModel, SchedulerCore
from tests.cellfixtures import GI, cell_with, submit
from tests.schedfixtures import step

BATCH, SERVICE = SchedulerClass.BATCH, SchedulerClass.SERVICE


def _cell(jobs: dict, t_job: float = 0.1, t_task: float = 0.0, machines: int = 1):
    return parse(
        {
            "cell": {"machines": machines, "cpu": 4.0, "memory_gib": 16.0, "domains": 1},
            "schedulers": {k: {"t_job": t_job, "t_task": t_task} for k in jobs},
            "jobs": jobs,
        }
    )


def _job(every: float, tasks: int, duration: float) -> dict:
    return {
        "interarrival": {"dist": "constant", "value": every},
        "tasks": tasks,
        "duration": duration,
        "cpu": 1.0,
        "memory_gib": 1.0,
    }


def _row(result, scheduler: str) -> dict:
    return next(r for r in result.rows if r["scheduler"] == scheduler)


def test_think_time_counts_unscheduled_tasks_and_a_stuck_job_is_abandoned_after_100():
    """One 4-core machine; a job of 6 one-core tasks that never end arrives at 150 s.
    Attempt 1 thinks 0.2 + 6 x 0.1 s and places 4; each later attempt thinks 0.2 + 2 x 0.1 s,
    1 s after the last, and places nothing; the 100th such attempt abandons the job."""
    workload = _cell({"batch": _job(150.0, 6, 1e9)}, t_job=0.2, t_task=0.1)
    setup = SchedulerSetup("batch", BATCH, 0.2, 0.1, model="paper")
    result = simulate(workload, [setup], days=299.0 / DAY, seed=1)
    batch = _row(result, "batch")
    assert batch["jobs_abandoned"] == 1
    assert batch["attempts"] == 101 and batch["attempts_no_claims"] == 100
    figures = result.figures["batch"]
    assert abs(figures["busy_seconds"] - (0.8 + 100 * 0.4)) < 1e-6
    assert figures["claims_accepted"] == 4
    assert figures["transactions"] == batch["transactions"] == 1  # attempts without claims: none


def test_a_job_with_tasks_left_goes_to_the_back_of_the_queue_after_1_s():
    cell = cell_with(machines=1, cpu=4000, memory=16 * GI)
    submit(cell, "big", tasks=6, cpu=1000, at=1.0)
    submit(cell, "small", tasks=1, cpu=1000, at=2.0)
    core = SchedulerCore("batch", BATCH, rng=random.Random(1), paper=PaperModel())
    decision, result = step(core, cell, now=5.0)
    assert decision.jobs == ("big",) and result.accepted == 4 and decision.unscheduled == 6
    assert core.wakes_at() == 6.0
    decision, _ = step(core, cell, now=5.5)  # big waits until 6.0: small goes first
    assert decision is not None and decision.considered == ("small",)
    assert decision.transaction.claims == ()  # no room: an attempt all the same
    decision, _ = step(core, cell, now=6.0)
    assert decision.considered == ("big",)  # back in the queue, ahead of small (6.5)


def test_attempts_limit_abandons_even_with_progress():
    cell = cell_with(machines=1, cpu=4000, memory=16 * GI)
    submit(cell, "big", tasks=9, cpu=1000)
    core = SchedulerCore(
        "batch", BATCH, rng=random.Random(1), paper=PaperModel(max_attempts=2, max_futile=100)
    )
    step(core, cell, now=5.0)
    step(core, cell, now=6.0)
    assert core.parked == {"big": "insufficient:cpu"}
    assert PaperModel().max_attempts == 1000 and PaperModel().max_futile == 100


def test_coarse_paper_seqnums_move_on_claims_only():
    """A lone scheduler whose tasks end while it thinks: the cell's own sequence numbers
    moved (a coarse conflict for the real model); the paper's did not."""
    workload = _cell({"batch": _job(2.0, 1, 5.0)}, t_job=3.0)
    runs = {}
    for model in ("real", "paper"):
        setup = SchedulerSetup("batch", BATCH, 3.0, 0.0, conflicts=ConflictMode.COARSE, model=model)
        runs[model] = _row(simulate(workload, [setup], days=600.0 / DAY, seed=1), "batch")
    assert runs["real"]["conflicted"] > 10
    assert runs["paper"]["conflicted"] == 0 and runs["paper"]["transactions"] > 100


def test_coarse_paper_seqnums_refuse_a_rivals_machine_that_fine_accepts():
    """Batch and service jobs of one task arrive together every 100 s on one roomy
    machine; batch commits first. Coarse: service's claim finds the machine moved."""
    jobs = {"batch": _job(100.0, 1, 10.0), "service": _job(100.0, 1, 10.0)}
    workload = _cell(jobs)
    for conflicts, expected in ((ConflictMode.COARSE, 5), (ConflictMode.FINE, 0)):
        setups = [
            SchedulerSetup("batch", BATCH, 1.0, 0.0, conflicts=conflicts, model="paper"),
            SchedulerSetup("service", SERVICE, 2.0, 0.0, conflicts=conflicts, model="paper"),
        ]
        result = simulate(workload, setups, days=550.0 / DAY, seed=1)
        assert _row(result, "service")["conflicted"] == expected, conflicts
        assert _row(result, "batch")["conflicted"] == 0
        figures = result.figures["service"]
        if expected:
            assert figures["conflicts_by_rival"] == {"batch": expected}


def test_synthetic_preset_is_googles_example_workload():
    workload = load("synthetic")
    assert workload.machines == 10_000
    batch, service = workload.job_class("batch"), workload.job_class("service")
    assert (batch.interarrival.mean(), batch.tasks.mean(), batch.duration.mean()) == (10, 100, 100)
    assert (service.interarrival.mean(), service.tasks.mean(), service.duration.mean()) == (
        20,
        10,
        500,
    )
    assert {batch.cpu.mean(), service.cpu.mean(), batch.memory.mean()} == {1.0, 2.0}
    assert [j.tasks for j in workload.prefill_jobs] == [1, 1, 1000]
    sim = Simulation(workload.with_machines(50), omega_schedulers(workload), days=30.0 / DAY)
    sim.build_cell()
    assert sum(m.account.used["memory"] > 0 for m in sim.cell.machine_list) == 50
    sim.run()
    # The trace's jobs that end do so by 8.9 s: its first one runs on alone.
    running = [t for t in sim.cell.tasks.values() if t.state in ACTIVE_STATES]
    assert [t.job for t in running] == ["q0"]
