"""`python -m bench.apply` as a user runs it: each mode `--repeat` times, its best and median
in the JSON line it prints last, every claim accepted; bad `--repeat` refused."""

from __future__ import annotations

import json
import subprocess
import sys


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.apply", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_each_mode_runs_repeat_times_and_the_best_is_the_headline() -> None:
    done = _bench("--machines", "200", "--total", "2000", "--claims", "50", "--repeat", "2")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["repeat"] == 2
    for mode in ("fine", "coarse"):
        runs = figures[f"runs_{mode}"]
        assert len(runs) == 2 and all(r > 0 for r in runs)
        assert figures[f"claims_per_s_{mode}"] == max(runs)
        assert min(runs) <= figures[f"median_claims_per_s_{mode}"] <= max(runs)
    # Every run applied every claim: none was refused by the cell.
    assert done.stdout.count("2,000 claims (2,000 accepted)") == 4


def test_repeat_below_one_is_refused_naming_the_flag() -> None:
    done = _bench("--repeat", "0")
    assert done.returncode == 2
    assert "--repeat 0" in done.stderr and "at least 1" in done.stderr
