"""Command line: `python -m cellsim <experiment> [options] --out DIR` (= `omega bench conflicts`;
`perf` needs no `--out`).

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
from typing import Any, NoReturn

from cellsim.engine import Simulation, omega_schedulers
from cellsim.experiments import run_experiment
from cellsim.options import add_to_argparse
from cellsim.workload import load


def perf(args: argparse.Namespace) -> dict[str, object]:
    """Time one run of the Omega setup; with --profile, show where time goes."""
    workload = load(args.preset)
    if args.machines and args.machines != workload.machines:
        workload = workload.with_machines(args.machines)
    setups = omega_schedulers(workload, model=args.model)
    sim = Simulation(workload, setups, days=args.days, seed=args.seed)
    began = time.perf_counter()
    # CPU seconds beside wall seconds: on a shared machine wall time is mostly waiting for
    # a core, and the CPU figure is the one that compares across runs.
    cpu_began = time.process_time()
    sim.build_cell()
    built = time.perf_counter() - began
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    result = sim.run()
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    for row in result.rows:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    print(
        f"cell build + prefill {built:.1f}s; {args.days:g} simulated days of "
        f"{workload.machines} machines ({workload.name}, model {args.model}) in {wall:.1f}s "
        f"wall, {cpu:.1f}s CPU; {result.stats}"
    )
    if profiler:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(args.out / "perf.prof")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
    return {
        "bench": "sim.perf",
        "preset": workload.name,
        "machines": workload.machines,
        "model": args.model,
        "days": args.days,
        "seed": args.seed,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        **result.stats,
    }


def parser(
    prog: str = "python -m cellsim", experiments: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """The command line's options (`cellsim.options.FLAGS`, which `omega bench conflicts`
    shares); `experiments` adds choices a caller runs itself (`python -m bench.sim` adds
    `live`, which needs a real cell)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_to_argparse(parser, experiments)
    return parser


def run(args: argparse.Namespace) -> dict[str, object]:
    """Run `args.experiment` (an experiment or `perf`) and return its JSON summary."""
    if args.experiment == "perf":
        if args.plot or args.values or args.batch_schedulers or args.jobs or args.cluster:
            _usage(
                "perf: one run, no sweep: --plot, --values, --batch-schedulers, --jobs and "
                "--cluster do not apply"
            )
        return perf(args)
    if args.out is None:
        _usage(f"{args.experiment}: --out DIR is required (where the CSV goes)")
    options: dict[str, Any] = {}  # the experiment's own keywords
    if args.values:
        options["values"] = args.values
    if args.batch_schedulers:
        if args.experiment != "tjob":
            _usage(f"--batch-schedulers: only tjob takes it, not {args.experiment}")
        options["batch_schedulers"] = args.batch_schedulers
    began = time.perf_counter()
    path = run_experiment(
        args.experiment,
        preset=args.preset,
        days=args.days,
        machines=args.machines,
        seed=args.seed,
        out=args.out,
        plot=args.plot,
        model=args.model,
        jobs=args.jobs,
        cluster=args.cluster,
        **options,
    )
    print(path.read_text())
    return {
        "bench": f"sim.{args.experiment}",
        "csv": str(path),
        "png": str(path.with_suffix(".png")),
        **({"plot": str(args.plot)} if args.plot else {}),
        "seed": args.seed,
        "wall_s": round(time.perf_counter() - began, 2),
    }


def _usage(message: str) -> NoReturn:
    """A combination of options that cannot run: a usage error, exit 2 (as a bad value)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    report(parser().parse_args(argv))


def report(args: argparse.Namespace) -> None:
    """Print the seed line, run, and print the JSON summary last (both command lines)."""
    print(
        f"seed={args.seed} preset={args.preset} model={args.model} days={args.days:g} "
        f"machines={args.machines or 'preset'}",
        flush=True,
    )
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
