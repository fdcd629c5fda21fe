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
