"""Command line: `python -m cellsim <experiment> [options] --out DIR`.

Runs one experiment (or `perf`: one simulated run timed and profiled), prints
a line per run and a summary, and, last, one JSON line with the CSV's path.
The seed is printed; the same seed reproduces the same CSV byte for byte.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellsim.engine import Simulation, omega_schedulers
from cellsim.experiments import EXPERIMENTS, run_experiment
from cellsim.workload import load


def _values(text: str | None) -> list[float] | None:
    if not text:
        return None
    return [float(v) if "." in v or "e" in v else int(v) for v in text.split(",")]


def perf(args: argparse.Namespace) -> dict[str, object]:
    """Time one run of the Omega setup; with --profile, show where time goes."""
    workload = load(args.preset)
    if args.machines and args.machines != workload.machines:
        workload = workload.with_machines(args.machines)
    sim = Simulation(workload, omega_schedulers(workload), days=args.days, seed=args.seed)
    began = time.perf_counter()
    sim.build_cell()
    built = time.perf_counter() - began
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    result = sim.run()
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - began
    for row in result.rows:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    print(
        f"cell build + prefill {built:.1f}s; {args.days:g} simulated days of "
        f"{workload.machines} machines ({workload.name}) in {wall:.1f}s wall; {result.stats}"
    )
    if profiler:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "perf.prof"
        profiler.dump_stats(path)
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
    return {
        "bench": "sim.perf",
        "preset": workload.name,
        "machines": workload.machines,
        "days": args.days,
        "seed": args.seed,
        "wall_s": round(wall, 2),
        **result.stats,
    }


def parser(
    prog: str = "python -m cellsim", experiments: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """The command line's options; `experiments` adds choices a caller runs itself
    (`python -m bench.sim` adds `live`, which needs a real cell)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "perf", *experiments])
    parser.add_argument("--preset", default="B", help="A, B, C or a TOML file")
    parser.add_argument("--days", type=float, default=1.0, help="simulated days per run")
    parser.add_argument(
        "--machines", type=int, default=None, help="cell size (arrival rates scale with it)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--values", default=None, help="sweep points, comma-separated")
    parser.add_argument("--profile", action="store_true", help="perf: run under cProfile")
    parser.add_argument("--out", type=Path, required=True)
    return parser


def run(args: argparse.Namespace) -> dict[str, object]:
    """Run `args.experiment` (an experiment or `perf`) and return its JSON summary."""
    if args.experiment == "perf":
        return perf(args)
    options: dict[str, Any] = {}  # the experiment's own keywords (`values`)
    if args.values:
        options["values"] = _values(args.values)
    began = time.perf_counter()
    path = run_experiment(
        args.experiment,
        preset=args.preset,
        days=args.days,
        machines=args.machines,
        seed=args.seed,
        out=args.out,
        **options,
    )
    print(path.read_text())
    return {
        "bench": f"sim.{args.experiment}",
        "csv": str(path),
        "png": str(path.with_suffix(".png")),
        "seed": args.seed,
        "wall_s": round(time.perf_counter() - began, 2),
    }


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    print(
        f"seed={args.seed} preset={args.preset} days={args.days:g} "
        f"machines={args.machines or 'preset'}",
        flush=True,
    )
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
