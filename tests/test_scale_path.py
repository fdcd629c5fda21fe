"""The path `python -m bench.placement --machines 100000 --tasks 1000000` measures, at a size
CI can afford: 20,000 hollow machines registered through the API, four competing scheduler
processes placing every task through the 3-replica store, then what the filled cell costs
(peak memory and CPU per process, the snapshot, a restarted replica catching up, a new
scheduler loading its copy). No timing is asserted; that everything completes and adds up is."""

from __future__ import annotations

from pathlib import Path

from bench.placement import phase

MACHINES, TASKS, JOBS = 20_000, 20_000, 40


def test_a_20000_machine_cell_is_filled_and_measured(tmp_path: Path) -> None:
    claims = ("--max-claims", "1000")
    schedulers = [
        ("service", "service", claims),
        ("batch", "batch-0", (*claims, "--shard", "0/2")),
        ("batch", "batch-1", (*claims, "--shard", "1/2")),
        ("best-effort", "best-effort", claims),
    ]
    result = phase(tmp_path, MACHINES, TASKS, JOBS, schedulers, True, 600.0, True)

    figures = result["schedulers"]
    assert set(figures) == {"service", "batch-0", "batch-1", "best-effort"}
    # Every task was placed; best-effort ones may have been squeezed and placed again.
    assert sum(f["claims_accepted"] for f in figures.values()) >= TASKS
    assert all(f["claims_accepted"] > 0 for f in figures.values())

    scale = result["scale"]
    processes = {"replica-0", "replica-1", "replica-2", *figures}
    assert set(scale["peak_rss_bytes"]) == processes
    assert all(v and v > 20 << 20 for v in scale["peak_rss_bytes"].values())
    assert all(v and v > 0 for v in scale["cpu_seconds"].values())
    # A snapshot holding 20,000 machines and 20,000 tasks is more than a megabyte.
    assert scale["snapshot"]["snapshot_bytes"] > 1 << 20
    assert scale["restart"]["version"] >= result["version"]
    assert scale["restart"]["seconds"] > 0
    assert scale["new_scheduler_load_s"] > 0
