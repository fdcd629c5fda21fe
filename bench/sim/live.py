"""Live mode: the simulator's workload against a real local cell, side by side with the simulator.

    python -m bench.sim live [--preset B] [--model real|paper] [--seconds 60]
                             [--machines 1000] [--rate 1] [--seed S] --out DIR

Starts a 3-replica `LocalCluster`, one hollow agent process for `--machines`
machines (sized like the workload's first machine type; hollow tasks "run" for
their job's `duration`), and the paper's Omega setup as real processes: one
`service` and one `batch` scheduler with the preset's decision times as
`--think-job/--think-task`, and the simulation's transaction model (`--model`: one
job per transaction under either; `paper` is the Omega paper's model, whose think
time counts every unscheduled task; see `schedulers.core.PaperModel`). It then submits the workload's jobs at their arrival
times for `--seconds` of wall time. The job stream is drawn exactly as the
simulator draws it (same seed, same per-class streams, same job names), so the
simulator run that follows, for the same simulated duration, sees the same jobs.

`--machines` scales arrival rates with the cell as `Workload.with_machines`
does; `--rate` multiplies every class's arrival rate on top (small cells and
short runs otherwise see almost no jobs). Both runs start from an empty cell
(no prefill target, no prefill jobs), since the live cell has none.

Under `--model paper` with coarse detection the two runs would differ in one respect:
the simulator's sequence numbers move on claims only, the store's on every change
(the default, fine detection, is the same in both).

Per scheduler the table shows transactions, conflict fraction (conflicted
per conflict-free transaction, `schedulers.metrics.conflict_fraction` on both
sides), busyness, and the mean wait from a job's submission
to its first task's placement (both computed from the cell's tasks, the same
way for both runs). Every process started here is killed by pid at the end.
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from cellsim.engine import DAY, OWNER, Simulation, omega_schedulers
from cellsim.workload import GIB, Workload, load
from cellstate import JobSpec, Resources, SchedulerClass

if TYPE_CHECKING:
    from cellstore.cellclient import SyncCellClient

SCHEDULERS = ("service", "batch")
COLUMNS = (
    "transactions",
    "conflict_fraction",
    "busyness",
    "jobs",
    "jobs_placed",
    "wait_first_placed_mean",
    "tasks_placed",
    "machines_used",
)


@attrs.frozen(slots=True)
class Arrival:
    at: float
    job: str
    spec: JobSpec


def arrivals(workload: Workload, seconds: float, seed: int) -> list[Arrival]:
    """The jobs `Simulation(workload, seed=seed)` submits in its first `seconds`, in order.

    Mirrors the engine's draws: per class, a stream from
    `SeedSequence(seed).spawn(3)[0].spawn(classes)`; one interarrival first, then
    per arrival the next interarrival, tasks, duration, cpu, memory."""
    class_seeds = np.random.SeedSequence(seed).spawn(3)[0]
    rngs = [np.random.default_rng(s) for s in class_seeds.spawn(len(workload.classes))]
    out = []
    for index, job_class in enumerate(workload.classes):
        rng = rngs[index]
        at = job_class.interarrival.sample(rng)
        count = 0
        while at < seconds:
            following = at + job_class.interarrival.sample(rng)
            tasks = max(1, round(job_class.tasks.sample(rng)))
            duration = job_class.duration.sample(rng)
            cpu = max(1, round(job_class.cpu.sample(rng) * 1000))
            memory = max(1, round(job_class.memory.sample(rng) * GIB))
            job = f"{job_class.name[0]}{count}"
            count += 1
            spec = JobSpec(
                name=job,
                owner=OWNER,
                scheduler=SchedulerClass(job_class.name),
                resources=Resources(cpu, memory),
                tasks=tasks,
                duration=duration,
            )
            out.append(Arrival(at, job, spec))
            at = following
    out.sort(key=lambda a: (a.at, a.job))
    return out


def spread(tasks: list[dict[str, Any]], kind_of: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Per job class, tasks ever placed and the distinct machines they were placed on:
    random fit spreads them, best fit packs them."""
    placed: dict[str, int] = {}
    machines: dict[str, set[str]] = {}
    for task in tasks:
        kind = kind_of.get(task["job"])
        if kind is None or task.get("placed_at") is None or not task.get("machine"):
            continue
        placed[kind] = placed.get(kind, 0) + 1
        machines.setdefault(kind, set()).add(task["machine"])
    return {kind: (placed[kind], len(machines[kind])) for kind in placed}


def first_placement_waits(
    tasks: list[dict[str, Any]], kind_of: dict[str, str]
) -> dict[str, list[float]]:
    """Per job class, each job's wait from submission to its first task's placement."""
    submitted: dict[str, float] = {}
    placed: dict[str, float] = {}
    for task in tasks:
        job = task["job"]
        if task.get("submitted_at") is not None:
            submitted[job] = min(submitted.get(job, math.inf), task["submitted_at"])
        if task.get("placed_at") is not None:
            placed[job] = min(placed.get(job, math.inf), task["placed_at"])
    waits: dict[str, list[float]] = {}
    for job, at in placed.items():
        if job in submitted and job in kind_of:
            waits.setdefault(kind_of[job], []).append(at - submitted[job])
    return waits


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


# -- the simulated run ---------------------------------------------------------------------


def simulated(
    workload: Workload, seconds: float, seed: int, model: str = "real"
) -> dict[str, dict[str, Any]]:
    setups = omega_schedulers(workload, model=model)
    sim = Simulation(workload, setups, days=seconds / DAY, seed=seed)
    result = sim.run()
    kind_of = {job: str(j.spec.scheduler) for job, j in sim.cell.jobs.items()}
    tasks = [
        {
            "job": t.job,
            "submitted_at": t.submitted_at,
            "placed_at": t.placed_at,
            "machine": t.machine,
        }
        for t in sim.cell.tasks.values()
    ]
    waits = first_placement_waits(tasks, kind_of)
    spreads = spread(tasks, kind_of)
    counts = _counts(kind_of)
    rows = {}
    for row in result.rows:
        name = row["scheduler"]
        if name not in SCHEDULERS:
            continue
        rows[name] = {
            "transactions": row["transactions"],
            "conflict_fraction": row["conflict_fraction"],
            "busyness": row["busyness_mean"],
            "jobs": counts.get(name, 0),
            "jobs_placed": len(waits.get(name, [])),
            "wait_first_placed_mean": _mean(waits.get(name, [])),
            "tasks_placed": spreads.get(name, (0, 0))[0],
            "machines_used": spreads.get(name, (0, 0))[1],
        }
    return rows


def _counts(kind_of: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in kind_of.values():
        counts[kind] = counts.get(kind, 0) + 1
    return counts


# -- the live run --------------------------------------------------------------------------


def _spawn(argv: list[str], log: Path, procs: list[subprocess.Popen]) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    procs.append(proc)
    return proc


def live(
    workload: Workload,
    jobs: list[Arrival],
    seconds: float,
    base: Path,
    model: str = "real",
    log=print,
) -> dict[str, dict[str, Any]]:
    import trio

    from cellstore.cellclient import CellClient, SyncCellClient
    from harness.cluster import LocalCluster, cell_options, stop_processes

    mtype = workload.machine_types[0]
    procs: list[subprocess.Popen] = []
    with LocalCluster(base / "store", **cell_options()) as cluster:
        cell = SyncCellClient(cluster.api, cluster.token, timeout_s=10.0)
        store = ["--addr", ",".join(cluster.api), f"--token={cluster.token}"]
        store += cluster.client_args()
        try:
            began = time.monotonic()
            agent = _spawn(
                [
                    "-m",
                    "agents",
                    "--name",
                    "hollow",
                    "--hollow",
                    str(workload.machines),
                    "--cpu",
                    f"{round(mtype.cpu * 1000)}m",
                    "--memory",
                    f"{round(mtype.memory * 1024)}Mi",
                    "--work-dir",
                    str(base / "agent"),
                    *store,
                ],
                base / "agent.log",
                procs,
            )
            while _up(cell) < workload.machines:
                if agent.poll() is not None or time.monotonic() - began > 120:
                    raise RuntimeError(f"hollow agent not ready; see {base / 'agent.log'}")
                time.sleep(0.2)
            log(f"live: {workload.machines} hollow machines up in {time.monotonic() - began:.1f}s")
            for name in SCHEDULERS:
                t_job, t_task = workload.think_time(name)
                _spawn(
                    [
                        "-m",
                        "schedulers",
                        "--kind",
                        name,
                        "--name",
                        name,
                        "--think-job",
                        str(t_job),
                        "--think-task",
                        str(t_task),
                        "--report-period",
                        "0.5",
                        # The simulation's transaction model: one job per transaction.
                        "--model",
                        model,
                        "--max-jobs",
                        "1",
                        # The simulated core runs without conflict avoidance: so does this.
                        "--avoidance",
                        "off",
                        *store,
                    ],
                    base / f"{name}.log",
                    procs,
                )
            began = time.monotonic()
            while {s["name"] for s in cell.summary()["schedulers"]} < set(SCHEDULERS):
                if any(p.poll() is not None for p in procs) or time.monotonic() - began > 60:
                    raise RuntimeError(f"schedulers did not report; see {base}/*.log")
                time.sleep(0.2)

            async def submit_all() -> None:
                async with CellClient.connect(cluster.api, cluster.token) as client:
                    start = trio.current_time()
                    for arrival in jobs:
                        await trio.sleep_until(start + arrival.at)
                        await client.submit(arrival.spec, arrival.job, id=f"live-{arrival.job}")
                    await trio.sleep_until(start + seconds)

            log(f"live: submitting {len(jobs)} jobs over {seconds:g}s")
            trio.run(submit_all)
            time.sleep(1.5)  # let the schedulers' last reports (every 0.5 s) land
            summary = cell.summary()
            tasks = cell.tasks()
        finally:
            stop_processes(procs, grace_s=5.0)
            cell.close()
    kind_of = {a.job: str(a.spec.scheduler) for a in jobs}
    waits = first_placement_waits(tasks, kind_of)
    spreads = spread(tasks, kind_of)
    counts = _counts(kind_of)
    rows = {}
    for report in summary["schedulers"]:
        name, fig = report["name"], report.get("figures", {})
        if name not in SCHEDULERS:
            continue
        rows[name] = {
            "transactions": int(fig.get("transactions", 0)),
            "conflict_fraction": fig.get("conflict_fraction", math.nan),
            "busyness": fig.get("busyness", math.nan),
            "jobs": counts.get(name, 0),
            "jobs_placed": len(waits.get(name, [])),
            "wait_first_placed_mean": _mean(waits.get(name, [])),
            "tasks_placed": spreads.get(name, (0, 0))[0],
            "machines_used": spreads.get(name, (0, 0))[1],
        }
    return rows


def _up(cell: SyncCellClient) -> int:
    from cellstore.cellclient import CellError

    try:
        return int(cell.summary()["machines"].get("up", 0))
    except CellError:
        return 0


# -- both, side by side --------------------------------------------------------------------


def prepare(preset: str, machines: int, rate: float) -> Workload:
    workload = attrs.evolve(load(preset), prefill=0.0, prefill_jobs=())
    if machines and machines != workload.machines:
        workload = workload.with_machines(machines)
    if rate != 1.0:
        for job_class in workload.classes:
            workload = workload.with_rate(job_class.name, rate)
    return workload


def table(sim_rows: dict[str, dict], live_rows: dict[str, dict]) -> list[dict[str, Any]]:
    out = []
    for name in SCHEDULERS:
        row: dict[str, Any] = {"scheduler": name}
        for column in COLUMNS:
            row[f"sim_{column}"] = sim_rows.get(name, {}).get(column, math.nan)
            row[f"live_{column}"] = live_rows.get(name, {}).get(column, math.nan)
        out.append(row)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def render(rows: list[dict[str, Any]]) -> str:
    header = ["scheduler", *(f"{side}_{c}" for c in COLUMNS for side in ("sim", "live"))]
    cells = [header] + [[_fmt(r[h]) for h in header] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    workload = prepare(args.preset, args.machines, args.rate)
    jobs = arrivals(workload, args.seconds, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        began = time.perf_counter()
        live_rows = live(workload, jobs, args.seconds, Path(tmp), args.model)
        live_wall = time.perf_counter() - began
    sim_rows = simulated(workload, args.seconds, args.seed, args.model)
    rows = table(sim_rows, live_rows)
    print(f"model {args.model}, one job per transaction, on both sides:")
    print(render(rows))
    path = (
        args.out
        / f"live_{workload.name}_{args.model}_{workload.machines}m_{args.seconds:g}s_seed{args.seed}.csv"
    )
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(
            [{k: _fmt(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
        )
    return {
        "bench": "sim.live",
        "csv": str(path),
        "preset": workload.name,
        "model": args.model,
        "machines": workload.machines,
        "seconds": args.seconds,
        "rate": args.rate,
        "seed": args.seed,
        "jobs": len(jobs),
        "live_wall_s": round(live_wall, 2),
    }
