"""Micro-benchmark: how fast `SchedulerCore.decide` builds transactions.

A cell of `--machines` machines (40 failure domains); before each decision
`--claims / --job-tasks` new jobs of `--job-tasks` tasks arrive, and a batch
core, then a service core (anti-affinity, spread over domains), places them in
one decision, with sampling on and off. Every decision is committed and
applied, so the next one sees a changed cell (and the table refreshes the
changed rows). Only `decide` is timed (table refresh included).

With `--devices` machines also declare disk and gpus and every task asks for
some of both: four dimensions instead of two, as `bench.apply` counts.

    python -m bench.decide [--machines 10000] [--claims 1000] [--decisions 20] [--devices]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from cellstate import (
    CellState,
    Commit,
    JobSpec,
    MachineSpec,
    RegisterMachines,
    Resources,
    SchedulerClass,
    SubmitJob,
)
from schedulers import SchedulerCore

# With --devices: what each machine adds, and what each task asks of it.
MACHINE_DEVICES = {"disk": 1 << 40, "gpu": 8}
TASK_DEVICES = {"disk": 10 << 30, "gpu": 1}


def build_cell(machines: int, devices: bool = False) -> CellState:
    cell = CellState()
    extra = MACHINE_DEVICES if devices else {}
    cell.apply(
        RegisterMachines(
            tuple(
                MachineSpec(f"m{i}", Resources(32_000, 128 << 30, **extra), domain=f"rack-{i % 40}")
                for i in range(machines)
            ),
            at=0.0,
        )
    )
    return cell


def run(
    kind: SchedulerClass,
    machines: int,
    claims: int,
    decisions: int,
    job_tasks: int,
    sampling: bool,
    seed: int,
    devices: bool = False,
) -> dict:
    cell = build_cell(machines, devices)
    demand = Resources(250, 512 << 20, **(TASK_DEVICES if devices else {}))
    per_decision = max(1, claims // job_tasks)
    core = SchedulerCore(
        kind.value, kind, rng=random.Random(seed), sampling=sampling, max_claims=claims
    )
    core.has_work(cell)  # the first table build is not part of a decision
    elapsed = 0.0
    placed = done = 0
    for d in range(decisions):
        for j in range(per_decision):
            spec = JobSpec(
                name=f"job{d}-{j}",
                owner="bench",
                scheduler=kind,
                resources=demand,
                tasks=job_tasks,
                anti_affinity=kind is SchedulerClass.SERVICE,
            )
            cell.apply(SubmitJob(f"job{d}-{j}", spec, at=1.0 + d))
        began = time.perf_counter()
        decision = core.decide(cell, 2.0 + d)
        elapsed += time.perf_counter() - began
        if decision is None:
            break
        result = cell.apply(Commit(decision.transaction, at=2.0 + d)).result
        core.on_result(cell, decision, result, 2.0 + d)
        placed += decision.tasks
        done += 1
    cell.check_invariants()
    return {
        "decisions": done,
        "placements": placed,
        "seconds": elapsed,
        "decisions_per_s": done / elapsed if elapsed else 0.0,
        "placements_per_s": placed / elapsed if elapsed else 0.0,
        "ms_per_decision": 1000 * elapsed / done if done else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--claims", type=int, default=1000)
    parser.add_argument("--decisions", type=int, default=20)
    parser.add_argument("--job-tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--devices", action="store_true", help="machines and tasks also have disk and gpus"
    )
    args = parser.parse_args()
    figures: dict = {
        "machines": args.machines,
        "claims_per_decision": args.claims,
        "dimensions": 4 if args.devices else 2,
        "seed": args.seed,
    }
    for kind in (SchedulerClass.BATCH, SchedulerClass.SERVICE):
        for sampling in (True, False):
            key = f"{kind.value}{'' if sampling else '_nosampling'}"
            figures[key] = run(
                kind,
                args.machines,
                args.claims,
                args.decisions,
                args.job_tasks,
                sampling,
                args.seed,
                args.devices,
            )
    print(
        f"decide on {args.machines} machines, {figures['dimensions']} dimensions, "
        f"{args.claims} tasks/decision: "
        + "; ".join(
            f"{k} {v['ms_per_decision']:.2f} ms ({v['placements_per_s']:,.0f} placements/s)"
            for k, v in figures.items()
            if isinstance(v, dict)
        )
    )
    print(
        json.dumps(
            {
                **figures,
                "decisions_per_s": {
                    k: round(v["decisions_per_s"], 1)
                    for k, v in figures.items()
                    if isinstance(v, dict)
                },
                "placements_per_s": {
                    k: round(v["placements_per_s"])
                    for k, v in figures.items()
                    if isinstance(v, dict)
                },
            }
        )
    )


if __name__ == "__main__":
    main()
