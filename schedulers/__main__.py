"""`python -m schedulers --kind batch --addr A,B,C --token T`: run one scheduler process.

`--addr` and `--token` default to `OMEGA_ADDR` and `OMEGA_TOKEN` (as `omega up` sets them).
Logs are JSON lines on stderr; SIGTERM or SIGINT stops the process after a last report.
With `OMEGA_SCHEDULER_PROFILE=DIR` it runs under cProfile and writes DIR/<name>.prof on exit.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
from pathlib import Path

from cellstate import ConflictMode, SchedulerClass, TxnMode
from cellstore.client import add_store_arguments, store_from_arguments
from cellstore.heap import tune_for_large_heaps
from schedulers.process import SchedulerConfig
from schedulers.process import main as run


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shard {text!r}: expected I/N, e.g. 0/2") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard {text!r}: need 0 <= I < N")
    return i, n


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: a number of seconds, 0 or more")
    return value


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: a whole number of 1 or more")
    return value


def build_parser(prog: str = "python -m schedulers") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--kind", required=True, choices=[str(k) for k in SchedulerClass])
    add_store_arguments(p)
    p.add_argument("--name", default="", help="scheduler name (default: kind[-IofN])")
    p.add_argument("--shard", type=parse_shard, default=None, help="I/N: take only shard I")
    p.add_argument("--mode", default=str(TxnMode.INCREMENTAL), choices=[str(m) for m in TxnMode])
    p.add_argument(
        "--conflicts", default=str(ConflictMode.FINE), choices=[str(m) for m in ConflictMode]
    )
    p.add_argument(
        "--think-job",
        type=float,
        default=0.0,
        metavar="S",
        help="extra think time per job considered (seconds)",
    )
    p.add_argument(
        "--think-task",
        type=float,
        default=0.0,
        metavar="S",
        help="extra think time per task claimed (seconds)",
    )
    p.add_argument("--no-sampling", action="store_true", help="evaluate every machine")
    p.add_argument("--max-attempts", type=int, default=1000)
    p.add_argument(
        "--park-seconds",
        type=_not_negative,
        default=30.0,
        metavar="S",
        help="how long a job parked after --max-attempts waits before it is tried again",
    )
    p.add_argument("--max-claims", type=int, default=1000, help="claims per transaction")
    p.add_argument(
        "--max-jobs",
        type=_at_least_one,
        default=None,
        metavar="N",
        help="jobs per transaction (default: any)",
    )
    p.add_argument(
        "--model",
        default="real",
        choices=["real", "paper"],
        help="transaction model: paper is the Omega paper's (one job per transaction, random "
        "fit, think time per unscheduled task, re-queued after 1 s, abandoned after 1,000 "
        "attempts or 100 that placed nothing)",
    )
    p.add_argument("--report-period", type=float, default=2.0, metavar="S")
    p.add_argument(
        "--avoidance",
        default="on",
        choices=["on", "off"],
        help="conflict avoidance: place on this scheduler's partition of the machines "
        "(its used machines and a sample of its empty ones) before the others', "
        "and rest machines that just conflicted (default: on)",
    )
    p.add_argument("--seed", type=int, default=None, help="default: a hash of the name")
    p.add_argument(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="serve GET /v1/metrics (the figures and explanations) there",
    )
    return p


def config_from_args(argv: list[str] | None = None, prog: str | None = None) -> SchedulerConfig:
    """`prog` names the command in usage and errors (`omega scheduler`, through `omega`)."""
    parser = build_parser(prog) if prog else build_parser()
    args = parser.parse_args(argv)
    addresses, token, tls = store_from_arguments(parser, args, serving=args.metrics is not None)
    return SchedulerConfig(
        addresses=addresses,
        token=token,
        kind=args.kind,
        name=args.name,
        shard=args.shard,
        mode=args.mode,
        conflicts=args.conflicts,
        think_job_s=args.think_job,
        think_task_s=args.think_task,
        sampling=not args.no_sampling,
        max_attempts=args.max_attempts,
        park_s=args.park_seconds,
        metrics=args.metrics,
        max_claims=args.max_claims,
        max_jobs=args.max_jobs,
        model=args.model,
        report_period_s=args.report_period,
        seed=args.seed,
        tls=tls,
        avoidance=args.avoidance == "on",
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    config = config_from_args(argv, prog)
    tune_for_large_heaps()  # it holds a whole copy of the cell (`cellstore.heap`)
    # A scheduler runs as a child of a benchmark or harness, out of reach of a profiler's
    # command line: `OMEGA_SCHEDULER_PROFILE=DIR` makes each write DIR/<name>.prof on exit.
    profile_dir = os.environ.get("OMEGA_SCHEDULER_PROFILE")
    if not profile_dir:
        run(config)
        return
    profiler = cProfile.Profile()
    try:
        profiler.runcall(run, config)
    finally:
        profiler.dump_stats(Path(profile_dir) / f"{config.name}.prof")


if __name__ == "__main__":
    main()
