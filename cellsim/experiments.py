"""The Omega paper's simulator experiments, one function each.

Every experiment runs `engine.Simulation` over a sweep, writes one CSV (one
row per run and scheduler, plus one per job class) and one PNG, and returns
the CSV's path. `run_experiment(name, **options)` dispatches by name:

- `tjob`: service scheduler decision time t_job from 0.01 s to 100 s (paper
  Figures 5/6): busyness, wait time, conflict fraction of both schedulers.
- `batch-load`: batch arrival rate times 1, 2, 4, ... until the batch
  scheduler saturates (busyness >= 0.95, or jobs abandoned or never tried).
- `shards`: 1..32 sharded batch schedulers at a high batch load.
- `modes`: fine vs coarse conflict detection x incremental vs all-or-nothing.
- `monolithic`: one scheduler thread for all jobs (single-path: service
  decision time for every job; multi-path: per-class decision times) against
  Omega's separate schedulers, across t_job(service).
- `sampling`: candidate sampling vs plain best-fit, with 1 and 4 batch schedulers.

Options common to all: preset ('A', 'B', 'C' or a TOML path), days, machines
(arrival rates scale with the machine count, so the load per machine stays),
seed, out (directory), values (the sweep's points), core_factory (tests).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from cellsim.engine import CoreFactory, SchedulerSetup, fmt, omega_schedulers
from cellsim.executors import Executor, Handle, InProcess, Point, executor
from cellsim.workload import Workload, load
from cellstate import ConflictMode, SchedulerClass, TxnMode

RUN_COLUMNS = ("experiment", "preset", "machines", "days", "seed", "variant", "x", "model")
METRIC_COLUMNS = (
    "scheduler",
    "kind",
    "jobs",
    "jobs_attempted",
    "jobs_fully_placed",
    "jobs_abandoned",
    "wait_first_mean",
    "wait_first_p90",
    "wait_full_mean",
    "wait_full_p90",
    "busyness_median_daily",
    "busyness_mean",
    "attempts",
    "attempts_no_claims",
    "transactions",
    "conflicted",
    "conflict_fraction",
    "claims",
    "claims_rejected",
    "claim_conflict_fraction",
    "core_conflict_fraction",
    "core_claim_conflict_fraction",
    "preemptions",
)
COLUMNS = RUN_COLUMNS + METRIC_COLUMNS


@attrs.define
class Context:
    name: str
    workload: Workload
    preset: str
    days: float
    seed: int
    out: Path
    core_factory: CoreFactory | None
    plot: Path | None = None  # also draw `paper_figure` of the rows here
    model: str = "real"  # every scheduler's transaction model (`SchedulerSetup.model`)
    runner: Executor = attrs.field(factory=InProcess)
    rows: list[dict[str, object]] = attrs.field(factory=list)
    pending: list[Run] = attrs.field(factory=list)
    timings: list[tuple[str, float, float]] = attrs.field(factory=list)

    def run(
        self, variant: str, x: object, workload: Workload, schedulers: Sequence[SchedulerSetup]
    ) -> Run:
        """Hand one simulation to the executor; its rows join the CSV in this order."""
        if self.model != "real":
            schedulers = [attrs.evolve(s, model=self.model) for s in schedulers]
        point = Point(workload, tuple(schedulers), self.days, self.seed, self.core_factory)
        run = Run(self, variant, x, workload, self.runner.submit(point))
        self.pending.append(run)
        return run

    def settle(self, upto: Run | None = None) -> None:
        """Take the results of the runs handed out so far (up to `upto`), in order."""
        while self.pending:
            run = self.pending.pop(0)
            run.settled = self._rows(run)
            if run is upto:
                return

    def drop_after(self, run: Run) -> None:
        """Forget the runs handed out after `run` (an experiment that stopped early)."""
        self.settle(run)
        self.pending.clear()

    def _rows(self, run: Run) -> list[dict[str, object]]:
        result = run.handle.result()
        self.timings.append((f"{run.variant} {run.x}", result.wall_s, self.days))
        common = {
            "experiment": self.name,
            "preset": self.preset,
            "model": self.model,
            "machines": run.workload.machines,
            "days": self.days,
            "seed": self.seed,
            "variant": run.variant,
            "x": run.x,
        }
        rows = []
        for row in result.rows:
            figures = result.figures.get(str(row["scheduler"]), {})
            row = {
                **common,
                **row,
                "core_conflict_fraction": figures.get("conflict_fraction", math.nan),
                "core_claim_conflict_fraction": figures.get("claim_conflict_fraction", math.nan),
                "preemptions": figures.get("preemptions", 0),
            }
            rows.append(row)
        self.rows.extend(rows)
        summary = " ".join(
            f"{r['scheduler']}: busy={fmt(r['busyness_mean'])} "
            f"wait={fmt(r['wait_first_mean'])}s conflicts={fmt(r['conflict_fraction'])}"
            for r in rows
            if not str(r["scheduler"]).startswith("class:")
        )
        print(
            f"[{self.name}] {run.variant} x={run.x} ({result.wall_s:.1f}s wall, "
            f"{result.stats['events']} events) {summary}",
            flush=True,
        )
        return rows

    def write(self, plot: Callable[[Context, Path], None] | None = None) -> Path:
        self.settle()
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"{self.name}.csv"
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in self.rows:
            writer.writerow([fmt(row.get(c, "")) for c in COLUMNS])
        path.write_text(buffer.getvalue())
        if plot is not None and self.rows:
            plot(self, self.out / f"{self.name}.png")
        if self.plot is not None and self.rows:
            paper_figure(self, self.plot)
        return path


class Run:
    """One simulation handed to the executor; `rows()` waits for it (and for the runs
    handed out before it, whose rows come first)."""

    def __init__(
        self, ctx: Context, variant: str, x: object, workload: Workload, handle: Handle
    ) -> None:
        self.ctx, self.variant, self.x, self.workload, self.handle = (
            ctx,
            variant,
            x,
            workload,
            handle,
        )
        self.settled: list[dict[str, object]] | None = None

    def rows(self) -> list[dict[str, object]]:
        if self.settled is None:
            self.ctx.settle(self)
        assert self.settled is not None
        return self.settled


def _pick(rows: list[dict], scheduler: str, variant: object = None) -> list[dict]:
    return [
        r
        for r in rows
        if r["scheduler"] == scheduler and (variant is None or r["variant"] == variant)
    ]


# -- experiments ---------------------------------------------------------------------


def tjob(
    ctx: Context, values: Sequence[float] | None = None, batch_schedulers: Sequence[int] = (1,)
) -> Path:
    """Sweep the service scheduler's t_job (paper: 0.01 s .. 100 s), once per number of
    batch schedulers (the paper's lines for 1..32 batch schedulers)."""
    for count in batch_schedulers:
        # One batch scheduler keeps the variant `omega`, so the default CSV is unchanged.
        variant = "omega" if tuple(batch_schedulers) == (1,) else f"{count} batch"
        for t_job in values or (0.01, 0.1, 1.0, 10.0, 100.0):
            workload = ctx.workload.with_think("service", t_job=t_job)
            ctx.run(variant, t_job, workload, omega_schedulers(workload, batch_shards=count))
    return ctx.write(
        _plot_sweep("t_job(service) [s]", ("service", "class:batch"), log_x=True, by_variant=True)
    )


def batch_load(
    ctx: Context, values: Sequence[float] | None = None, saturation: float = 0.95
) -> Path:
    """Multiply the batch arrival rate until the batch scheduler saturates."""
    runs = []
    for multiplier in values or (1, 2, 4, 8, 16, 32, 64):
        workload = ctx.workload.with_rate("batch", multiplier)
        runs.append(ctx.run("omega", multiplier, workload, omega_schedulers(workload)))
    # Every point is handed out at once (they may run in parallel); the CSV keeps them up
    # to the first that saturates, as a sweep that stopped there would.
    for run in runs:
        batch = _pick(run.rows(), "batch")[0]
        if (
            batch["busyness_mean"] >= saturation
            or batch["jobs_abandoned"]
            or batch["jobs_attempted"] < batch["jobs"]
        ):
            ctx.drop_after(run)
            break
    return ctx.write(_plot_sweep("batch load (x lambda_batch)", ("batch", "service"), log_x=True))


def shards(ctx: Context, values: Sequence[int] | None = None, load: float = 8.0) -> Path:
    """1..32 sharded batch schedulers, at `load` times the batch arrival rate."""
    workload = ctx.workload.with_rate("batch", load)
    for count in values or (1, 2, 4, 8, 16, 32):
        ctx.run("omega", count, workload, omega_schedulers(workload, batch_shards=count))
    return ctx.write(
        _plot_sweep("batch schedulers (shards)", ("class:batch", "service"), log_x=True)
    )


MODES = tuple(
    (f"{conflicts.value}-{mode.value}", conflicts, mode)
    for conflicts in (ConflictMode.FINE, ConflictMode.COARSE)
    for mode in (TxnMode.INCREMENTAL, TxnMode.ALL_OR_NOTHING)
)


def modes(ctx: Context, values: Sequence[float] | None = None) -> Path:
    """Fine vs coarse conflict detection x incremental vs all-or-nothing."""
    for t_job in values or (1.0,):
        workload = ctx.workload.with_think("service", t_job=t_job)
        for variant, conflicts, mode in MODES:
            ctx.run(
                variant, t_job, workload, omega_schedulers(workload, conflicts=conflicts, mode=mode)
            )
    return ctx.write(_plot_variants(("service", "batch")))


def monolithic(ctx: Context, values: Sequence[float] | None = None) -> Path:
    """Omega vs a monolithic scheduler (single- and multi-path) on the same workload."""
    for t_job in values or (0.01, 0.1, 1.0, 10.0):
        workload = ctx.workload.with_think("service", t_job=t_job)
        ctx.run("omega", t_job, workload, omega_schedulers(workload))
        b_job, b_task = workload.think_time("batch")
        s_job, s_task = workload.think_time("service")
        single = [
            SchedulerSetup("service", SchedulerClass.SERVICE, s_job, s_task, thread="mono"),
            SchedulerSetup("batch", SchedulerClass.BATCH, s_job, s_task, thread="mono"),
        ]
        ctx.run("single-path", t_job, workload, single)
        multi = [
            SchedulerSetup("service", SchedulerClass.SERVICE, s_job, s_task, thread="mono"),
            SchedulerSetup("batch", SchedulerClass.BATCH, b_job, b_task, thread="mono"),
        ]
        ctx.run("multi-path", t_job, workload, multi)
    return ctx.write(
        _plot_sweep("t_job(service) [s]", ("batch", "service"), log_x=True, by_variant=True)
    )


def sampling(ctx: Context, values: Sequence[int] | None = None, load: float = 4.0) -> Path:
    """Candidate sampling vs plain best fit, with 1 and 4 batch schedulers."""
    workload = ctx.workload.with_rate("batch", load)
    for count in values or (1, 4):
        for variant, on in (("sampling", True), ("best-fit", False)):
            ctx.run(
                variant,
                count,
                workload,
                omega_schedulers(workload, batch_shards=count, sampling=on),
            )
    return ctx.write(_plot_sweep("batch schedulers", ("class:batch", "service"), by_variant=True))


EXPERIMENTS: dict[str, Callable[..., Path]] = {
    "tjob": tjob,
    "batch-load": batch_load,
    "shards": shards,
    "modes": modes,
    "monolithic": monolithic,
    "sampling": sampling,
}


def run_experiment(
    name: str,
    *,
    preset: str = "B",
    days: float = 1.0,
    machines: int | None = None,
    seed: int = 1,
    out: str | Path = "out/sim",
    core_factory: CoreFactory | None = None,
    plot: str | Path | None = None,
    model: str = "real",
    jobs: int | None = 1,
    cluster: str | None = None,
    **options: Any,
) -> Path:
    """Run experiment `name` (see `EXPERIMENTS`); return the path of its CSV. With `plot`,
    also draw `paper_figure` of the CSV's rows to that PNG. The points run in `jobs` local
    processes (None: one per core; 1: in this process) or on the Dask `cluster`
    (`cellsim.executors`); the CSV is the same whichever ran them."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; one of {', '.join(EXPERIMENTS)}")
    workload = load(preset)
    if machines is not None and machines != workload.machines:
        workload = workload.with_machines(machines)
    ctx = Context(
        name,
        workload,
        workload.name,
        days,
        seed,
        Path(out),
        core_factory,
        Path(plot) if plot is not None else None,
        model,
        executor(jobs, cluster),
    )
    try:
        return EXPERIMENTS[name](ctx, **options)
    finally:
        ctx.runner.close()


# -- plots -----------------------------------------------------------------------------

_PANELS = (
    ("busyness_mean", "scheduler busyness"),
    ("wait_first_mean", "mean job wait [s]"),
    ("conflict_fraction", "conflict fraction"),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_sweep(
    xlabel: str, schedulers: Sequence[str], log_x: bool = False, by_variant: bool = False
):
    def plot(ctx: Context, path: Path) -> None:
        plt = _pyplot()
        fig, axes = plt.subplots(1, len(_PANELS), figsize=(15, 4))
        variants = list(dict.fromkeys(r["variant"] for r in ctx.rows)) if by_variant else [None]
        for ax, (column, title) in zip(axes, _PANELS, strict=True):
            for variant in variants:
                for scheduler in schedulers:
                    rows = _pick(ctx.rows, scheduler, variant)
                    xs = [float(r["x"]) for r in rows]
                    ys = [float(r[column]) for r in rows]
                    label = scheduler if variant is None else f"{variant}: {scheduler}"
                    ax.plot(xs, ys, marker="o", label=label)
            ax.set_xlabel(xlabel)
            ax.set_title(title)
            if log_x:
                ax.set_xscale("log")
            ax.grid(True, alpha=0.3)
        _finish(plt, fig, axes, ctx, path)

    return plot


def _finish(plt: Any, fig: Any, axes: Any, ctx: Context, path: Path) -> None:
    """Legend, a title naming the run, and the PNG."""
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"{ctx.name} ({ctx.preset}, {ctx.workload.machines} machines, "
        f"{ctx.days:g} days, seed {ctx.seed})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_variants(schedulers: Sequence[str]):
    def plot(ctx: Context, path: Path) -> None:
        plt = _pyplot()
        fig, axes = plt.subplots(1, len(_PANELS), figsize=(15, 4))
        variants = list(dict.fromkeys(r["variant"] for r in ctx.rows))
        width = 0.8 / len(schedulers)
        for ax, (column, title) in zip(axes, _PANELS, strict=True):
            for k, scheduler in enumerate(schedulers):
                ys = []
                for variant in variants:
                    rows = _pick(ctx.rows, scheduler, variant)
                    ys.append(float(rows[0][column]) if rows else math.nan)
                ax.bar([i + k * width for i in range(len(variants))], ys, width, label=scheduler)
            ax.set_xticks([i + width * (len(schedulers) - 1) / 2 for i in range(len(variants))])
            ax.set_xticklabels(variants, rotation=20, fontsize=8)
            ax.set_title(title)
        _finish(plt, fig, axes, ctx, path)

    return plot


# The x axis of each experiment's sweep, for `paper_figure`.
_SWEEP_AXES = {
    "tjob": ("t_job(service) [s]", True),
    "batch-load": ("batch load (x lambda_batch)", True),
    "shards": ("batch schedulers", True),
    "modes": ("t_job(service) [s]", True),
    "monolithic": ("t_job(service) [s]", True),
    "sampling": ("batch schedulers", False),
}


def paper_figure(ctx: Context, path: Path) -> None:
    """The Omega paper's figure shape (Figs 5-8): conflict fraction and median daily
    busyness of the service and batch schedulers against the sweep (t_job for `tjob`,
    `modes`, `monolithic`), one line per variant: per conflict mode (`modes --values`), per
    number of batch schedulers (`tjob --batch-schedulers`), per scheduler architecture.
    Drawn from `ctx.rows`, the rows the CSV holds."""
    plt = _pyplot()
    xlabel, log_x = _SWEEP_AXES.get(ctx.name, ("x", False))
    panels = (("conflict_fraction", "conflict fraction"), ("busyness_median_daily", "busyness"))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    variants = list(dict.fromkeys(r["variant"] for r in ctx.rows))
    for column, (scheduler, kind) in enumerate((("service", "service"), ("class:batch", "batch"))):
        for row, (metric, label) in enumerate(panels):
            ax = axes[row][column]
            for variant in variants:
                rows = sorted(_pick(ctx.rows, scheduler, variant), key=lambda r: float(r["x"]))
                ys = [float(r[metric]) for r in rows]
                ax.plot([float(r["x"]) for r in rows], ys, marker="o", label=str(variant))
            ax.set_title(f"{kind} scheduler: {label}")
            ax.set_ylabel(label)
            if row == len(panels) - 1:
                ax.set_xlabel(xlabel)
            if log_x:
                ax.set_xscale("log")
            if metric == "busyness_median_daily":
                ax.set_ylim(0, 1.05)
            ax.grid(True, alpha=0.3)
    _finish(plt, fig, axes[0], ctx, path)
