"""Micro-benchmark: claims validated and applied per second by `CellState`.

A 10,000-machine cell takes transactions of `--claims` claims each, built the
way a scheduler builds them (against the current version, machines chosen at
random), and applies them in fine and in coarse mode. Only `apply` is timed.
With `--dimensions 4` (the default) machines and tasks carry cpu, memory, disk
and a device (gpu), so every claim is counted in four dimensions by the
ledger; `--dimensions 2` is cpu and memory alone. `--replica` applies as a
store replica does, building no events (nobody reads a replica's events).
The garbage collector runs as in every process that holds a cell (replicas,
schedulers, agents: `cellstore.heap`), young generations only: a collection
of the oldest, over every machine and task, would land in some timed apply
and not others. `--gc default` measures with Python's default thresholds.

This host's speed moves by ±20 % from one run to the next, with nothing else
running, so each mode is run `--repeat` times (3 by default), in alternating
order, each on a fresh cell; the headline is a mode's best run, as `timeit`
reports (noise only ever adds time), and the median and every run are given
beside it.

    python -m bench.apply [--machines 10000] [--claims 100] [--total 200000] [--dimensions 4]
                          [--replica] [--gc cell|default] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from cellstate import (
    CellState,
    Claim,
    Commit,
    ConflictMode,
    JobSpec,
    MachineSpec,
    RegisterMachines,
    Resources,
    SchedulerClass,
    SubmitJob,
    Transaction,
)
from cellstore import heap


def build_cell(machines: int, total: int, job_size: int, dimensions: int = 4) -> CellState:
    extra = {"disk": 4 << 40, "gpu": 64} if dimensions == 4 else {}
    demand = {"disk": 1 << 30, "gpu": 1} if dimensions == 4 else {}
    cell = CellState()
    cell.apply(
        RegisterMachines(
            tuple(
                MachineSpec(f"m{i}", Resources(64_000, 256 << 30, **extra), domain=f"rack-{i % 40}")
                for i in range(machines)
            ),
            at=0.0,
        )
    )
    for j in range(total // job_size):
        spec = JobSpec(
            name=f"job{j}",
            owner="bench",
            scheduler=SchedulerClass.BATCH,
            resources=Resources(100, 128 << 20, **demand),
            tasks=job_size,
        )
        cell.apply(SubmitJob(f"job{j}", spec, at=1.0))
    return cell


def run(
    mode: ConflictMode,
    machines: int,
    claims: int,
    total: int,
    seed: int,
    dimensions: int,
    replica: bool = False,
) -> dict:
    rng = random.Random(seed)
    cell = build_cell(machines, total, job_size=min(10_000, total), dimensions=dimensions)
    cell.keep_events = not replica
    names = [m.id for m in cell.machine_list]
    pending = [t.id for t in cell.tasks.values()]
    applied = accepted = 0
    elapsed = 0.0
    for start in range(0, len(pending), claims):
        batch = pending[start : start + claims]
        txn_claims = []
        for tid in batch:
            machine = cell.machines[names[rng.randrange(machines)]]
            txn_claims.append(Claim(tid, machine.id, machine.seqnum))
        command = Commit(
            Transaction("bench", tuple(txn_claims), cell.version, conflicts=mode), at=2.0
        )
        began = time.perf_counter()
        outcome = cell.apply(command)
        elapsed += time.perf_counter() - began
        applied += len(batch)
        accepted += outcome.result.accepted
    cell.check_invariants()
    return {
        "claims": applied,
        "accepted": accepted,
        "seconds": elapsed,
        "claims_per_s": applied / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--claims", type=int, default=100, help="claims per transaction")
    parser.add_argument("--total", type=int, default=200_000, help="claims per mode")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dimensions", type=int, choices=(2, 4), default=4)
    parser.add_argument("--replica", action="store_true", help="build no events, as a replica")
    parser.add_argument(
        "--gc",
        choices=("cell", "default"),
        default="cell",
        help="garbage collection as the cell's processes run it (default) or Python's default",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each mode; the best is the headline"
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: runs of each mode must be at least 1")
    for flag in ("machines", "claims", "total"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} {getattr(args, flag)}: must be at least 1")
    if args.gc == "cell":
        heap.tune_for_large_heaps()
    modes = (ConflictMode.FINE, ConflictMode.COARSE)
    rates: dict[str, list[float]] = {mode.value: [] for mode in modes}
    for round_ in range(args.repeat):
        # Alternate which mode goes first: a run on a heap the other just freed
        # is not the same run as one on a fresh heap.
        for mode in modes if round_ % 2 == 0 else modes[::-1]:
            result = run(
                mode,
                args.machines,
                args.claims,
                args.total,
                args.seed,
                args.dimensions,
                args.replica,
            )
            rates[mode.value].append(result["claims_per_s"])
            print(
                f"{mode.value:>6}: {result['claims']:,} claims ({result['accepted']:,} accepted) "
                f"in {result['seconds']:.3f} s = {result['claims_per_s']:,.0f} claims/s"
            )
    summary = {}
    for mode in modes:
        runs = rates[mode.value]
        summary[mode.value] = (max(runs), statistics.median(runs))
        print(
            f"{mode.value:>6}: best {max(runs):,.0f}, median {statistics.median(runs):,.0f} "
            f"claims/s over {len(runs)} runs"
        )
    print(
        json.dumps(
            {
                "machines": args.machines,
                "claims_per_txn": args.claims,
                "dimensions": args.dimensions,
                "replica": args.replica,
                "gc": args.gc,
                "repeat": args.repeat,
                "claims_per_s_fine": round(summary["fine"][0]),
                "claims_per_s_coarse": round(summary["coarse"][0]),
                "median_claims_per_s_fine": round(summary["fine"][1]),
                "median_claims_per_s_coarse": round(summary["coarse"][1]),
                "runs_fine": [round(r) for r in rates["fine"]],
                "runs_coarse": [round(r) for r in rates["coarse"]],
            }
        )
    )


if __name__ == "__main__":
    main()
