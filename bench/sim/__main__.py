"""Command line: `python -m bench.sim <experiment> [options] --out DIR`.

Every experiment of `python -m cellsim`, plus `live` (`bench/sim/live.py`): the same workload
against a real cell started from the harness, which the shipped simulator cannot import.
Prints the seed first and, last, one JSON line.
"""

from __future__ import annotations

import json

from cellsim.__main__ import parser
from cellsim.__main__ import run as run_simulated


def main(argv: list[str] | None = None) -> None:
    options = parser("python -m bench.sim", experiments=("live",))
    options.add_argument(
        "--seconds", type=float, default=60.0, help="live: wall-clock (and simulated) seconds"
    )
    options.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="live: arrival-rate multiplier on top of --machines scaling",
    )
    args = options.parse_args(argv)
    if args.experiment == "live" and args.machines is None:
        args.machines = 1000
    span = (
        f"seconds={args.seconds:g} rate={args.rate:g}"
        if args.experiment == "live"
        else f"days={args.days:g}"
    )
    print(
        f"seed={args.seed} preset={args.preset} {span} machines={args.machines or 'preset'}",
        flush=True,
    )
    if args.experiment == "live":
        from bench.sim.live import run as run_live

        summary = run_live(args)
    else:
        summary = run_simulated(args)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
