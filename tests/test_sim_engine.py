"""The simulator drives the real cell state and the real scheduler core.

Small cells, known answers: a lone scheduler never conflicts; two schedulers
forced onto one machine conflict at the rate the timeline dictates; coarse
detection conflicts at least as often as fine; and a seed gives the same CSV
bytes, whatever PYTHONHASHSEED is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellsim.engine import SchedulerSetup, Simulation, omega_schedulers, simulate
from cellsim.experiments import run_experiment
from cellsim.workload import PRESETS, Distribution, load, parse
from cellstate import ConflictMode, SchedulerClass
from tests.test_sim_support import tiny_workload

ROOT = Path(__file__).resolve().parent.parent
DAY = 86_400.0


def _row(result, scheduler):
    return next(r for r in result.rows if r["scheduler"] == scheduler)


def test_presets_load_and_sample_within_bounds():
    for name in ("A", "B", "C"):
        workload = load(name)
        assert {c.name for c in workload.classes} == {"batch", "service"}
        assert workload.machines > 0 and 0 <= workload.prefill < 1
    assert (PRESETS / "cluster_b.toml").exists()
    dist = Distribution.parse("x", {"dist": "lognormal", "median": 10, "sigma": 2, "max": 50})
    rng = np.random.default_rng(1)
    assert all(dist.sample(rng) <= 50 for _ in range(200))
    faster = load("B").with_rate("batch", 4.0)
    assert faster.job_class("batch").interarrival.mean() == pytest.approx(1.0)


def test_one_scheduler_never_conflicts():
    workload = tiny_workload(machines=10, batch_mean=8.0, prefill=0.5)
    result = simulate(workload, [SchedulerSetup("batch", SchedulerClass.BATCH)], days=0.03, seed=3)
    batch = _row(result, "batch")
    assert batch["transactions"] > 50
    assert batch["conflicted"] == 0 and batch["claims_rejected"] == 0
    assert batch["conflict_fraction"] == 0.0


def _one_slot_cell(periods: int, t_batch: float, t_service: float):
    """One machine with room for exactly one task; one batch and one service job
    arrive together every 100 s; tasks run 10 s."""
    whole = {"dist": "constant", "value": 4.0}
    job = {
        "interarrival": {"dist": "constant", "value": 100.0},
        "tasks": 1,
        "duration": 10.0,
        "cpu": whole,
        "memory_gib": 1.0,
    }
    workload = parse(
        {
            "cell": {"machines": 1, "cpu": 4.0, "memory_gib": 16.0, "domains": 1},
            "schedulers": {
                "batch": {"t_job": t_batch, "t_task": 0.0},
                "service": {"t_job": t_service, "t_task": 0.0},
            },
            "jobs": {"batch": job, "service": job},
        }
    )
    return simulate(
        workload, omega_schedulers(workload), days=(periods * 100.0 + 50.0) / DAY, seed=1
    )


@pytest.mark.parametrize(
    ("t_batch", "t_service", "loser", "winner"),
    [
        (0.1, 0.5, "service", "batch"),
        (0.5, 0.1, "batch", "service"),
    ],
)
def test_two_schedulers_on_one_machine_conflict_once_per_arrival(t_batch, t_service, loser, winner):
    # Each period both schedulers decide against the empty machine at once; the
    # faster commits first and wins; the slower one's claim no longer fits, so
    # it conflicts exactly once, then places its task after the winner's exits
    # (or, for service, by preempting it). Per period: loser 1 conflicted and
    # 1 successful transaction (conflict fraction 1), winner 1 successful.
    periods = 6
    result = _one_slot_cell(periods, t_batch, t_service)
    lose, win = _row(result, loser), _row(result, winner)
    assert lose["conflicted"] == periods
    assert lose["transactions"] - lose["conflicted"] == periods
    assert lose["conflict_fraction"] == pytest.approx(1.0)
    assert win["conflicted"] == 0
    assert lose["jobs_fully_placed"] == win["jobs_fully_placed"] == periods
    # Both decided the moment their job arrived.
    assert lose["wait_first_mean"] == win["wait_first_mean"] == 0.0


def test_coarse_conflicts_at_least_as_often_as_fine_on_average():
    # Service jobs arrive often and think for 2 s, so batch commits meanwhile.
    workload = tiny_workload(
        machines=16, batch_mean=10.0, service_mean=10.0, prefill=0.2, service_duration=30.0
    ).with_think("service", t_job=2.0)
    fine, coarse = [], []
    for seed in range(1, 6):
        for conflicts, out in ((ConflictMode.FINE, fine), (ConflictMode.COARSE, coarse)):
            result = simulate(
                workload, omega_schedulers(workload, conflicts=conflicts), days=0.01, seed=seed
            )
            out.append(
                sum(
                    r["conflicted"]
                    for r in result.rows
                    if not str(r["scheduler"]).startswith("class:")
                )
            )
    assert sum(coarse) > 0
    assert np.mean(coarse) >= np.mean(fine)


def test_same_seed_same_csv(tmp_path):
    options = {"preset": "A", "machines": 40, "days": 0.02}
    one = run_experiment("modes", seed=5, out=tmp_path / "one", **options)
    two = run_experiment("modes", seed=5, out=tmp_path / "two", **options)
    assert one.read_bytes() == two.read_bytes()
    assert one.with_suffix(".png").exists()
    other = run_experiment("modes", seed=6, out=tmp_path / "x", **options)
    assert other.read_bytes() != one.read_bytes()


def test_same_seed_same_csv_across_hash_seeds(tmp_path):
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"h{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cellsim",
                "tjob",
                "--preset",
                "A",
                "--machines",
                "40",
                "--days",
                "0.02",
                "--seed",
                "3",
                "--values",
                "0.1,10",
                "--out",
                str(out),
            ],
            check=True,
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=120,
        )
        outputs.append((out / "tjob.csv").read_bytes())
    assert outputs[0] == outputs[1]


def test_a_run_keeps_the_cell_invariants():
    workload = tiny_workload(machines=12, batch_mean=3.0, prefill=0.5)
    sim = Simulation(workload, omega_schedulers(workload, batch_shards=2), days=0.02, seed=9)
    result = sim.run()
    sim.cell.check_invariants()
    assert result.stats["tasks_placed"] > 0 and result.stats["tasks_ended"] > 0
