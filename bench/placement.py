"""End-to-end placement throughput: real store, real scheduler processes.

A 3-replica store (`LocalCluster` in a temp dir), `--machines` machines
registered through the API in batches, then one service, two batch (shards 0/2
and 1/2, or both unsharded with `--unsharded`) and one best-effort scheduler
process place `--tasks` tasks submitted as `--jobs` jobs (20% service, 60%
batch, 20% best-effort). The clock runs from the first submission to the
moment the cell's summary counts every task assigned. Then the same on a fresh
store with a single batch scheduler (every job batch) with avoidance off, the
policy before avoidance existed: the baseline.

`--avoidance both` (the default) runs the four schedulers twice, on fresh
stores, first with conflict avoidance off and then on (`schedulers.avoid`,
the schedulers' `--avoidance`), so one run prints before and after; `off` or
`on` runs one of them. Each phase also reports how well the cell is packed at
the end: how many machines hold tasks and their mean cpu and memory
utilisation (what they hold over what they have).

Schedulers are started and caught up before the jobs arrive, so process start
and copy catch-up are not measured. Registered machines have no agents, so
the replicas run with a long heartbeat timeout.

    python -m bench.placement [--machines 10000] [--tasks 100000] [--jobs 100]
                              [--avoidance both|off|on]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench import scale
from cellstate import JobSpec, MachineSpec, Resources, SchedulerClass, parse_cpu, parse_memory
from cellstore.cellclient import CellClient, CellError, CellSummary
from harness.cluster import LocalCluster, agentless_options, start_scheduler, stop_processes

REGISTER_BATCH = 1000
SUBMIT_ATTEMPTS = 5  # per job, when the store answers `unavailable`
SUBMIT_IN_FLIGHT = 16
MIX = (("service", 0.2), ("batch", 0.6), ("best-effort", 0.2))


async def register(client: CellClient, machines: int) -> None:
    capacity = Resources(parse_cpu("32"), parse_memory("128Gi"))
    for start in range(0, machines, REGISTER_BATCH):
        await client.register_machines(
            [
                MachineSpec(f"m{i}", capacity, domain=f"rack-{i % 40}")
                for i in range(start, min(machines, start + REGISTER_BATCH))
            ]
        )


def job_plan(tasks: int, jobs: int, mixed: bool) -> list[tuple[str, str, int]]:
    """(job id, scheduler kind, tasks) for `jobs` jobs sharing `tasks` tasks."""
    sizes = [tasks // jobs + (1 if j < tasks % jobs else 0) for j in range(jobs)]
    plan = []
    bounds, edge = [], 0.0
    for kind, share in MIX:
        edge += share
        bounds.append((kind, edge))
    for j, size in enumerate(sizes):
        kind = "batch"
        if mixed:
            kind = next(k for k, edge in bounds if (j + 0.5) / jobs <= edge + 1e-9)
        plan.append((f"bench-{j}", kind, size))
    return plan


async def submit(client: CellClient, plan: list[tuple[str, str, int]]) -> None:
    resources = Resources(parse_cpu("1"), parse_memory("2Gi"))

    async def one(job: str, kind: str, size: int) -> None:
        spec = JobSpec(job, "bench", SchedulerClass(kind), resources, tasks=size)
        for attempt in range(SUBMIT_ATTEMPTS):
            try:  # the command id makes a retried request apply once; a lost answer may 409
                await client.submit(spec, job)
                return
            except CellError as exc:
                if exc.code == "job_exists":
                    return
                # A store starved of CPU by other work can give up on a request;
                # the run is worth more than that one answer.
                if exc.code != "unavailable" or attempt == SUBMIT_ATTEMPTS - 1:
                    raise
                await trio.sleep(1.0)

    # A few submissions in flight, as a client script would: each waits only for its own
    # commit, and the schedulers start on the first jobs while the rest arrive.
    limit = trio.CapacityLimiter(SUBMIT_IN_FLIGHT)

    async def limited(job: str, kind: str, size: int) -> None:
        async with limit:
            await one(job, kind, size)

    async with trio.open_nursery() as nursery:
        for job, kind, size in plan:
            nursery.start_soon(limited, job, kind, size)


async def wait_assigned(client: CellClient, total: int, timeout_s: float) -> CellSummary:
    deadline = trio.current_time() + timeout_s
    while True:
        summary = await client.summary()
        if summary["tasks"].get("assigned", 0) >= total:
            return summary
        if trio.current_time() > deadline:
            raise TimeoutError(f"only {summary['tasks']} after {timeout_s}s")
        # Each summary walks every machine on the replica: polling it faster than this
        # took CPU from the run it measures, at 0.2 s of resolution.
        await trio.sleep(0.2)


async def packing(client: CellClient) -> dict[str, float]:
    """Machines holding tasks, and their mean cpu and memory utilisation."""
    held = [m for m in await client.machines() if m["tasks"]]
    if not held:
        return {"machines_used": 0, "cpu_utilisation": 0.0, "memory_utilisation": 0.0}

    def mean(dim: str) -> float:
        return sum(m["used"][dim] / m["capacity"][dim] for m in held) / len(held)  # type: ignore[literal-required]

    return {
        "machines_used": len(held),
        "cpu_utilisation": mean("cpu_milli"),
        "memory_utilisation": mean("memory_bytes"),
    }


async def wait_reporting(client: CellClient, names: list[str], timeout_s: float = 120) -> None:
    with trio.fail_after(timeout_s):
        while True:
            summary = await client.summary()
            if set(names) <= {s["name"] for s in summary["schedulers"]}:
                return
            await trio.sleep(0.1)


def phase(
    base: Path,
    machines: int,
    tasks: int,
    jobs: int,
    schedulers: list[tuple[str, str, tuple[str, ...]]],
    mixed: bool,
    timeout_s: float,
    measure_scale: bool = False,
) -> dict[str, Any]:
    """One store, `schedulers` processes, `tasks` tasks: the measured run; with
    `measure_scale`, then what the filled cell costs (`bench.scale`)."""
    logs = base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    # The machines have no agents: a day-long heartbeat timeout keeps them up.
    with LocalCluster(base / "store", **agentless_options()) as cluster:
        try:

            async def run() -> dict[str, Any]:
                async with CellClient.connect(cluster.api, cluster.token) as client:
                    began = time.perf_counter()
                    await register(client, machines)
                    registered = time.perf_counter() - began
                    for kind, name, args in schedulers:
                        procs.append(
                            start_scheduler(
                                cluster,
                                logs / f"{name}.log",
                                kind,
                                name,
                                "--report-period",
                                "1",
                                *args,
                            )
                        )
                    await wait_reporting(client, [name for _, name, _ in schedulers])
                    plan = job_plan(tasks, jobs, mixed)
                    began = time.perf_counter()
                    await submit(client, plan)
                    submitted = time.perf_counter() - began
                    summary = await wait_assigned(client, tasks, timeout_s)
                    elapsed = time.perf_counter() - began
                    # At once: measuring what the filled cell costs takes minutes at scale.
                    print(
                        f"placed {tasks} tasks in {elapsed:.2f} s "
                        f"({tasks / elapsed:.0f}/s; submitting took {submitted:.2f} s)",
                        flush=True,
                    )
                    names = [name for _, name, _ in schedulers]
                    used = scale.processes(cluster, dict(zip(names, procs, strict=True)))
                    stop_processes(procs)
                    final = await client.summary()
                    figures = None
                    if measure_scale:
                        figures = {
                            **used,
                            "snapshot": await trio.to_thread.run_sync(
                                scale.snapshot_figures, cluster
                            ),
                            "new_scheduler_load_s": await trio.to_thread.run_sync(
                                scale.new_scheduler_load, cluster, logs
                            ),
                            "restart": await trio.to_thread.run_sync(
                                scale.restart_catch_up, cluster
                            ),
                        }
                    packed = await packing(client)
                    return {
                        **packed,
                        "scale": figures,
                        "register_s": registered,
                        "submit_s": submitted,
                        "elapsed_s": elapsed,
                        "placements_per_s": tasks / elapsed,
                        "version": summary["version"],
                        "schedulers": {s["name"]: s["figures"] for s in final["schedulers"]},
                    }

            return trio.run(run)
        finally:
            stop_processes(procs)


def describe(title: str, result: dict[str, Any]) -> None:
    print(
        f"{title}: {result['placements_per_s']:.0f} placements/s "
        f"({result['elapsed_s']:.2f} s; register {result['register_s']:.2f} s, "
        f"submit {result['submit_s']:.2f} s, log version {result['version']})"
    )
    print(
        f"  packing: {result['machines_used']} machines hold tasks, mean utilisation "
        f"cpu {100 * result['cpu_utilisation']:.1f}%, "
        f"memory {100 * result['memory_utilisation']:.1f}%"
    )
    for name, f in sorted(result["schedulers"].items()):
        print(
            f"  {name:12} txns {f.get('transactions', 0):5.0f}  "
            f"accepted {f.get('claims_accepted', 0):7.0f}  "
            f"rejected {f.get('claims_rejected', 0):6.0f}  "
            f"conflict_fraction {f.get('conflict_fraction', math.nan):.3f}  "
            f"spilled {f.get('claims_spilled', 0):.0f}  "
            f"fallbacks {f.get('sample_fallbacks', 0):.0f}/{f.get('sampled', 0):.0f}  "
            f"busyness {f.get('busyness', 0):.2f}  "
            f"decision p50 {1000 * f.get('decision_seconds.p50', 0):.0f} ms  "
            f"busy/commit/catch-up {f.get('busy_seconds', 0):.1f}/"
            f"{f.get('commit_seconds', 0):.1f}/{f.get('catchup_seconds', 0):.1f} s"
        )
        reasons = {
            k.split(".", 1)[1]: int(v) for k, v in f.items() if k.startswith("conflicts_by_reason.")
        }
        if reasons:
            print(f"  {'':12} rejected by reason: {reasons}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--max-claims", type=int, default=1000)
    parser.add_argument("--unsharded", action="store_true", help="two unsharded batch schedulers")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--avoidance",
        default="both",
        choices=["both", "off", "on"],
        help="the four schedulers' conflict avoidance: off then on (both), or one",
    )
    args = parser.parse_args()
    claims = ("--max-claims", str(args.max_claims))
    settings = ["off", "on"] if args.avoidance == "both" else [args.avoidance]
    phases: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-placement-") as tmp:
        base = Path(tmp)
        for avoidance in settings:
            flags = (*claims, "--avoidance", avoidance)
            batch = [
                (
                    "batch",
                    f"batch-{i}",
                    (*flags, *(() if args.unsharded else ("--shard", f"{i}/2"))),
                )
                for i in range(2)
            ]
            omega = [
                ("service", "service", flags),
                *batch,
                ("best-effort", "best-effort", flags),
            ]
            phases[avoidance] = mixed = phase(
                base / f"omega-{avoidance}",
                args.machines,
                args.tasks,
                args.jobs,
                omega,
                True,
                args.timeout,
                # What the filled cell costs, measured once, after the last phase.
                avoidance == settings[-1],
            )
            describe(
                f"4 schedulers, avoidance {avoidance}, {args.tasks} tasks on "
                f"{args.machines} machines",
                mixed,
            )
        scale.describe(mixed["scale"])
        baseline = None
        if not args.no_baseline:
            baseline = phase(
                base / "baseline",
                args.machines,
                args.tasks,
                args.jobs,
                # The policy as it was before avoidance: the unchanged yardstick.
                [("batch", "baseline", (*claims, "--avoidance", "off"))],
                False,
                args.timeout,
            )
            describe("baseline, 1 batch scheduler, avoidance off", baseline)
    print(
        json.dumps(
            {
                "bench": "placement",
                "machines": args.machines,
                "tasks": args.tasks,
                "jobs": args.jobs,
                "avoidance": {name: summary(result) for name, result in phases.items()},
                "baseline": summary(baseline) if baseline else None,
                "target_placements_per_s": 3750,
                "peak_rss_bytes": mixed["scale"]["peak_rss_bytes"],
                "cpu_seconds": {
                    k: round(v, 1) for k, v in mixed["scale"]["cpu_seconds"].items() if v
                },
                "snapshot_bytes": mixed["scale"]["snapshot"]["snapshot_bytes"],
                "dump_bytes": mixed["scale"]["snapshot"]["dump_bytes"],
                "replica_catch_up_s": round(mixed["scale"]["restart"]["seconds"], 3),
                "new_scheduler_load_s": round(mixed["scale"]["new_scheduler_load_s"], 3),
            }
        )
    )


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """One phase's figures for the JSON line."""
    return {
        "placements_per_s": round(result["placements_per_s"], 1),
        "elapsed_s": round(result["elapsed_s"], 3),
        "conflict_fraction": {
            n: f.get("conflict_fraction") for n, f in sorted(result["schedulers"].items())
        },
        "machines_used": result["machines_used"],
        "cpu_utilisation": round(result["cpu_utilisation"], 4),
        "memory_utilisation": round(result["memory_utilisation"], 4),
    }


if __name__ == "__main__":
    main()
