"""How fast the `omega` read commands answer: each one a fresh process against a real cell.

A user types `omega jobs` and waits for the whole of it: interpreter start, imports, the
request and the printing. So each read command (`jobs`, `tasks`, `nodes`, `status`, all with
`--json`) runs as a subprocess, `--runs` times, against a local cell that `omega up` starts
(3 replicas, one batch scheduler, `--hollow` hollow machines, one job placed on them;
`harness.upcell` drives it), and the median wall time of each is what counts: the target is
at most 150 ms on a 2-core machine.

    python -m bench.cli [--runs 10] [--hollow 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from harness.upcell import Cell, up_cell

READS = (
    ("jobs", ("jobs", "--json")),
    ("tasks", ("tasks", "--json")),
    ("nodes", ("nodes", "--json")),
    ("status", ("status", "--json")),
)
TARGET_MS = 150.0
JOB_SPEC = """\
name: bench-cli
scheduler: batch
tasks: 8
command: ["sleep", "600"]
resources: {cpu: 100m, memory: 16Mi}
"""


def populate(cell: Cell, spec_dir: Path, timeout_s: float = 60.0) -> None:
    """Submit one job and wait until its tasks are placed, so every read has rows to print."""
    spec = spec_dir / "bench-cli.yaml"
    spec.write_text(JOB_SPEC)
    cell.omega("submit", str(spec))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        placed = [t for t in json.loads(cell.omega("tasks", "--json").stdout) if t["machine"]]
        if len(placed) >= 8:
            return
        time.sleep(0.2)
    raise SystemExit("the bench job's tasks were never placed")


def time_reads(cell: Cell, runs: int) -> dict[str, list[float]]:
    """Wall milliseconds of each read command, `runs` times, interleaved so that a passing
    burst of background load does not land on one command only."""
    times: dict[str, list[float]] = {name: [] for name, _ in READS}
    for _ in range(runs):
        for name, args in READS:
            start = time.perf_counter()
            cell.omega(*args)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cli", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="runs of each command")
    parser.add_argument("--hollow", type=int, default=20, help="hollow machines in the cell")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs {args.runs}: must be at least 1")
    up_args = ("--agents", "0", "--hollow", str(args.hollow), "--schedulers", "batch")
    with (
        tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp,
        up_cell(Path(tmp) / "cell", *up_args) as cell,
    ):
        cell.start()
        populate(cell, Path(tmp))
        times = time_reads(cell, args.runs)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"omega read commands, {args.runs} runs each against a 3-replica local cell:")
    for name, values in times.items():
        verdict = "ok" if medians[name] <= TARGET_MS else f"over {TARGET_MS:.0f} ms"
        print(
            f"  omega {name:<6} --json  median {medians[name]:6.1f} ms  "
            f"min {min(values):6.1f}  max {max(values):6.1f}  ({verdict})"
        )
    print(
        json.dumps(
            {
                "runs": args.runs,
                "median_ms": {name: round(m, 1) for name, m in medians.items()},
                "max_median_ms": round(max(medians.values()), 1),
                "target_ms": TARGET_MS,
            }
        )
    )


if __name__ == "__main__":
    main()
