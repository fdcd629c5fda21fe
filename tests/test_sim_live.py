"""Live mode of the simulator (`python -m bench.sim live`): a short run against a real cell."""

from __future__ import annotations

import csv
import json

import pytest

from bench.sim.__main__ import main


@pytest.mark.slow
def test_live_table_has_both_schedulers_with_live_transactions(tmp_path, capsys):
    main(
        [
            "live",
            "--preset",
            "B",
            "--seconds",
            "10",
            "--machines",
            "100",
            "--rate",
            "1000",
            "--seed",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["bench"] == "sim.live"
    header = lines[-4].split()
    assert header[:3] == ["scheduler", "sim_transactions", "live_transactions"]
    with open(summary["csv"]) as f:
        rows = {r["scheduler"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"service", "batch"}
    for name, row in rows.items():
        assert int(row["live_transactions"]) > 0, name
        assert int(row["sim_transactions"]) > 0, name
        assert row["sim_jobs"] == row["live_jobs"], name  # the same job stream in both runs


@pytest.mark.slow
def test_live_runs_the_paper_model_as_the_simulation_does(tmp_path, capsys):
    """`--model paper` on both sides: live schedulers place by random fit, one job per
    transaction, as the simulation beside them; best fit would pack the batch job's 1-core
    tasks four to a 4-core machine, random fit spreads them over about three times as many."""
    main(
        [
            "live",
            "--preset",
            "synthetic",
            "--model",
            "paper",
            "--seconds",
            "10",
            "--machines",
            "100",
            "--rate",
            "300",
            "--seed",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["model"] == "paper"
    assert lines[-5] == "model paper, one job per transaction, on both sides:"
    with open(summary["csv"]) as f:
        rows = {r["scheduler"]: r for r in csv.DictReader(f)}
    batch = rows["batch"]
    tasks = int(batch["live_tasks_placed"])
    assert tasks == int(batch["sim_tasks_placed"]) > 20
    packed = -(-tasks // 4)
    for side in ("sim", "live"):
        assert int(batch[f"{side}_machines_used"]) >= 2 * packed, (side, batch)
        assert int(batch[f"{side}_transactions"]) >= int(batch[f"{side}_jobs"]), (side, batch)
