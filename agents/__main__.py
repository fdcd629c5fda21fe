"""`python -m agents --name M --addr A,B,C --token T --work-dir DIR`: run one agent.

`--addr` and `--token` default to `OMEGA_ADDR` and `OMEGA_TOKEN` (as `omega up`
sets them); `--cpu`/`--memory` to the host's. `--hollow N` stands in for N
simulated machines `M-0000`... Logs are JSON lines on stderr; SIGTERM or
SIGINT stops the tasks, reports them lost (the cell places them again) and
exits (`--detach`: leaves them running for the next agent on the same work
dir).
"""

from __future__ import annotations

import argparse

from agents.agent import AgentConfig
from agents.agent import main as run
from agents.limits import LimitKind
from cellstate.resources import UnitError, parse_declaration
from cellstore.client import add_store_arguments, store_from_arguments
from cellstore.heap import tune_for_large_heaps


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r}: expected KEY=VALUE")
    return key, value


def _resource(text: str) -> tuple[str, int]:
    """`NAME=AMOUNT` for any dimension but cpu and memory: `disk=100Gi`, `gpu=2`."""
    try:
        name, amount = parse_declaration(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(f"resource {text!r}: {exc}") from None
    if name in ("cpu", "memory"):
        raise argparse.ArgumentTypeError(f"resource {text!r}: use --{name} for {name}")
    return name, amount


def build_parser(prog: str = "python -m agents") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", required=True, help="machine id (hollow: the prefix)")
    add_store_arguments(p)
    p.add_argument("--work-dir", required=True, help="task directories and state files")
    p.add_argument("--cpu", default=None, help="capacity, e.g. 4 or 3500m (default: host's)")
    p.add_argument("--memory", default=None, help="capacity, e.g. 8Gi (default: host's)")
    p.add_argument(
        "--resource",
        action="append",
        type=_resource,
        default=[],
        metavar="NAME=AMOUNT",
        help="declare disk or a countable device, e.g. gpu=2 or disk=100Gi (repeatable)",
    )
    p.add_argument("--label", action="append", type=_label, default=[], metavar="K=V")
    p.add_argument("--domain", default="default", help="failure domain (hollow: a prefix)")
    p.add_argument("--hollow", type=int, default=0, metavar="N", help="simulate N machines")
    p.add_argument("--heartbeat", type=float, default=2.0, metavar="S")
    p.add_argument(
        "--register-batch",
        type=int,
        default=2000,
        metavar="N",
        help="machines registered per request (hollow agents register many)",
    )
    p.add_argument("--usage", type=float, default=5.0, metavar="S")
    p.add_argument(
        "--max-log-bytes",
        default="10Mi",
        metavar="SIZE",
        help="rotate a task's stdout or stderr past this size (10Mi); twice it is kept",
    )
    p.add_argument(
        "--sweep",
        type=float,
        default=60.0,
        metavar="S",
        help="how often to remove the output of tasks the cell has forgotten (purged jobs)",
    )
    p.add_argument(
        "--limits",
        choices=[str(k) for k in LimitKind],
        default=None,
        help="force a limits mechanism (default: the best the host offers)",
    )
    p.add_argument(
        "--logs-host",
        default=None,
        help="address to serve task logs on (default: the one reaching the store)",
    )
    p.add_argument("--detach", action="store_true", help="leave tasks running on exit")
    p.add_argument(
        "--task-user",
        default=None,
        help="run tasks as this user, e.g. nobody (the agent must be root)",
    )
    p.add_argument("--seed", type=int, default=None)
    return p


def config_from_args(argv: list[str] | None = None, prog: str | None = None) -> AgentConfig:
    """`prog` names the command in usage and errors (`omega agent`, run through `omega`)."""
    parser = build_parser(prog) if prog else build_parser()
    args = parser.parse_args(argv)
    # A hollow agent serves no logs, so it needs no certificate of its own.
    addresses, token, tls = store_from_arguments(parser, args, serving=not args.hollow)
    extra = {}
    if args.cpu is not None:
        extra["cpu"] = args.cpu
    if args.memory is not None:
        extra["memory"] = args.memory
    try:
        return AgentConfig(
            addresses=addresses,
            token=token,
            name=args.name,
            work_dir=args.work_dir,
            labels=dict(args.label),
            resources=dict(args.resource),
            domain=args.domain,
            hollow=args.hollow,
            heartbeat_s=args.heartbeat,
            register_batch=args.register_batch,
            usage_s=args.usage,
            sweep_s=args.sweep,
            max_log_bytes=args.max_log_bytes,
            seed=args.seed,
            detach=args.detach,
            limits=LimitKind(args.limits) if args.limits else None,
            logs_host=args.logs_host,
            task_user=args.task_user,
            tls=tls,
            **extra,
        )
    except ValueError as exc:
        parser.error(str(exc))
        raise


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    config = config_from_args(argv, prog)
    tune_for_large_heaps()  # it holds a whole copy of the cell (`cellstore.heap`)
    run(config)


if __name__ == "__main__":
    main()
