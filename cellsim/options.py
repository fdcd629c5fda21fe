"""The simulator's command line options, defined once for both of its command lines.

`python -m cellsim` (argparse, which `python -m bench.sim` extends with `live`) and
`omega bench conflicts` (typer) are two shells over the one table `FLAGS`, as
`python -m cellsim.compaction` (and `python -m bench.compaction`) and `omega bench
compaction` are over `COMPACTION_FLAGS`: each flag's
name, default, help and parser live here, so the two cannot drift (a flag added here
appears in both, with the same check). A parser raises `BadValue` with a message that says
the value and what is allowed; each shell prefixes the option's name and exits 2, as a
usage error should:

    python -m cellsim: error: argument --preset: 'Z' is not a preset: one of A, B, C, ...
    Invalid value for '--preset': 'Z' is not a preset: one of A, B, C, ...

This module imports neither the engine nor matplotlib: `omega` builds its `--help` from it
at start-up, and a read command such as `omega jobs` must not pay for the simulator.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

if TYPE_CHECKING:
    import argparse

# The experiments of `cellsim.experiments` (kept equal to its `EXPERIMENTS` by a test: that
# module imports the engine, which `--help` must not wait for).
EXPERIMENTS: dict[str, str] = {
    "tjob": "service t_job 0.01-100 s (paper Figs 5/6); --batch-schedulers adds lines",
    "batch-load": "batch arrival rate x1, x2, x4 ... until the batch scheduler saturates",
    "shards": "1..32 sharded batch schedulers at 8x batch load",
    "modes": "fine/coarse conflicts x incremental/all-or-nothing, per t_job in --values",
    "monolithic": "one scheduler (single-/multi-path) against Omega, across t_job",
    "sampling": "candidate sampling vs best fit, with 1 and 4 batch schedulers",
}
# The transaction models (`cellsim.engine`, `schedulers.core.PaperModel`).
MODELS: dict[str, str] = {
    "real": "our schedulers' own policy (best fit, spreading, preemption)",
    "paper": "the Omega paper's: one job per transaction, random fit, t_job + t_task x "
    "unscheduled tasks, re-queued after 1 s, abandoned after 1,000 attempts or 100 "
    "that placed nothing, coarse seqnums moved by claims only",
}
# Cell compaction's policies (kept equal to `cellsim.compaction.POLICIES` by a test, for the
# same reason as `EXPERIMENTS`).
POLICIES: dict[str, str] = {
    "best-fit": "best fit with candidate sampling, as the batch scheduler runs",
    "best-fit-all": "best fit scoring every feasible machine (sampling off)",
    "worst-fit": "worst fit (spread): the emptiest machine first, sampling on",
    "worst-fit-all": "worst fit, sampling off",
    "hybrid": "the service scheduler: spread over failure domains, then best fit",
    "hybrid-all": "the hybrid, sampling off",
    "random-fit": "the Omega paper model's random fit: each task on a machine drawn at random",
}
PERF = "perf"  # one run timed (and with --profile, profiled); not an experiment: no sweep
PRESET_DIR = Path(__file__).resolve().parent / "presets"


class BadValue(ValueError):
    """A command line value that its option does not allow; the message says what does."""


def presets() -> list[str]:
    """The built-in presets' names (`cluster_b.toml` is `B`)."""
    return sorted(
        p.stem.removeprefix("cluster_").upper() for p in PRESET_DIR.glob("cluster_*.toml")
    )


# -- parsers: text (or a default) in, a typed value out, or BadValue -----------------------


def experiment_parser(extra: Sequence[str] = ()) -> Callable[[str], str]:
    allowed = [*EXPERIMENTS, PERF, *extra]

    def experiment(text: str) -> str:
        if text not in allowed:
            raise BadValue(f"{text!r} is not an experiment: one of {', '.join(allowed)}")
        return text

    return experiment


def preset(text: str) -> str:
    names = presets()
    if text.upper() in names or text.startswith("cluster_"):
        return text
    if text.endswith(".toml") and Path(text).is_file():
        return text
    raise BadValue(f"{text!r} is not a preset: one of {', '.join(names)}, or an existing TOML file")


def model(text: str) -> str:
    if text not in MODELS:
        raise BadValue(f"{text!r} is not a model: one of {', '.join(MODELS)}")
    return text


def address(text: str) -> str:
    """A Dask scheduler's address: `tcp://HOST:PORT` (or `HOST:PORT`)."""
    host, _, port = text.removeprefix("tcp://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadValue(f"{text!r} is not allowed: a Dask scheduler's address, tcp://HOST:PORT")
    return text if text.startswith("tcp://") else f"tcp://{text}"


def positive_float(text: str | float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise BadValue(f"{text!r} is not allowed: a number above 0")
    return value


def positive_int(text: str | int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise BadValue(f"{text!r} is not allowed: a whole number of 1 or more")
    return value


def integer(text: str | int) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadValue(f"{text!r} is not allowed: a whole number") from None


def number_list(text: str | list[float]) -> list[float]:
    """`0.01,1,100`: the sweep's points (ints stay ints, so a CSV's x reads `4`, not `4.0`)."""
    if isinstance(text, list):
        return text
    try:
        values: list[float] = [
            float(v) if "." in v or "e" in v.lower() else int(v) for v in text.split(",")
        ]
    except ValueError:
        raise BadValue(f"{text!r} is not allowed: numbers separated by commas") from None
    return values


def count_list(text: str | list[int]) -> list[int]:
    if isinstance(text, list):
        return text
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise BadValue(f"{text!r} is not allowed: whole numbers of 1 or more, comma-separated")
    return counts


def directory(text: str | Path) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise BadValue(f"{str(text)!r} is not allowed: a directory (it is a file)")
    return path


def readable_file(text: str | Path) -> Path:
    path = Path(text)
    if not path.is_file():
        why = "it is a directory" if path.is_dir() else "no such file"
        raise BadValue(f"{str(text)!r} is not allowed: a readable file ({why})")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise BadValue(f"{str(text)!r} is not allowed: a readable file ({exc.strerror})") from None
    return path


def policy_list(text: str | list[str]) -> list[str]:
    if isinstance(text, list):
        return text
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [name for name in names if name not in POLICIES]
    if unknown or not names:
        raise BadValue(
            f"{text!r} is not allowed: policies separated by commas, from {', '.join(POLICIES)}"
        )
    return list(dict.fromkeys(names))


def png(text: str | Path) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise BadValue(f"{str(text)!r} is not allowed: a file name ending in .png")
    return path


# -- the table ------------------------------------------------------------------------------


class Flag(NamedTuple):
    """One `--option`. `parse` is None for an on/off switch; `default` None means not set.

    A named tuple, not our usual frozen attrs class: `omega` imports this module at every
    start, and attrs (which the read commands do not otherwise load) costs ~10 ms there."""

    name: str  # the attribute on the parsed arguments: `machines` for `--machines`
    help: str
    metavar: str = ""
    parse: Callable[[Any], Any] | None = None
    default: Any = None
    required: bool = False

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


FLAGS: tuple[Flag, ...] = (
    Flag(
        "preset",
        "workload: a built-in preset (cellsim/presets/) or a TOML file",
        "|".join(presets()) + "|FILE.toml",
        preset,
        "B",
    ),
    Flag("days", "simulated days per run", "DAYS", positive_float, 1.0),
    Flag(
        "model",
        "transaction model: " + "; ".join(f"{k}: {v}" for k, v in MODELS.items()),
        "|".join(MODELS),
        model,
        "real",
    ),
    Flag(
        "machines",
        "cell size (arrival rates scale with it) [default: the preset's]",
        "N",
        positive_int,
    ),
    Flag("seed", "random seed: the same seed gives the same CSV byte for byte", "N", integer, 1),
    Flag(
        "values",
        "the sweep's points, comma-separated (tjob: t_job seconds; shards: counts)",
        "X,X,...",
        number_list,
    ),
    Flag(
        "batch_schedulers",
        "tjob: one line per number of batch schedulers (e.g. 1,2,4)",
        "N,N,...",
        count_list,
    ),
    Flag(
        "out",
        "directory for the CSV (and the experiment's own PNG); every experiment needs it, "
        "perf only to keep its --profile",
        "DIR",
        directory,
    ),
    Flag(
        "plot",
        "also draw the paper's figure shape (conflict fraction and busyness against "
        "the sweep, a line per mode / number of batch schedulers) from the CSV's rows",
        "FILE.png",
        png,
    ),
    Flag(
        "jobs",
        "local processes to run the sweep's points in [default: one per core; 1: this "
        "process]; the CSV is the same whichever runs them",
        "N",
        positive_int,
    ),
    Flag(
        "cluster",
        "run the sweep's points on an existing Dask distributed cluster (its scheduler's "
        "address; workers need this package installed)",
        "tcp://HOST:PORT",
        address,
    ),
    Flag("profile", "perf: run under cProfile and print where the time goes"),
)


COMPACTION_FLAGS: tuple[Flag, ...] = (
    Flag(
        "preset",
        "workload: a built-in preset (cellsim/presets/) or a TOML file; its cell and the jobs "
        "alive at one instant",
        "|".join(presets()) + "|FILE.toml",
        preset,
    ),
    Flag(
        "snapshot",
        "workload: a live cell's snapshot (`omega snapshot save FILE`): its machines, jobs "
        "and unfinished tasks",
        "FILE",
        readable_file,
    ),
    Flag(
        "machines",
        "--preset: cell size (arrival rates and prefill scale with it) [default: the preset's]",
        "N",
        positive_int,
    ),
    Flag("trials", "trials, each removing machines in its own random order", "N", positive_int, 11),
    Flag("seed", "random seed: the same seed gives the same figures", "N", integer, 1),
    Flag(
        "policies",
        "policies to compare, comma-separated: " + ", ".join(POLICIES) + " (default: all)",
        "P,P,...",
        policy_list,
    ),
    Flag(
        "plot",
        "also draw a bar per policy (p90 smallest cell, min-max error bars, trials as dots)",
        "FILE.png",
        png,
    ),
    Flag("verbose", "print each trial's smallest cell as it is found"),
)


def add_to_argparse(
    parser: argparse.ArgumentParser,
    extra_experiments: Sequence[str] = (),
    flags: Sequence[Flag] = FLAGS,
    experiment: bool = True,
) -> None:
    """Add the experiment argument (unless `experiment` is false) and every flag of `flags`
    to an argparse parser."""
    if experiment:
        parse_experiment = experiment_parser(extra_experiments)
        parser.add_argument(
            "experiment",
            type=_argparse_type(parse_experiment, "experiment"),
            metavar="{" + ",".join([*EXPERIMENTS, PERF, *extra_experiments]) + "}",
            help="; ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items())
            + f"; {PERF}: one timed run",
        )
    for flag in flags:
        if flag.parse is None:
            parser.add_argument(flag.option, dest=flag.name, action="store_true", help=flag.help)
            continue
        parser.add_argument(
            flag.option,
            dest=flag.name,
            type=_argparse_type(flag.parse, flag.name),
            default=flag.default,
            required=flag.required,
            metavar=flag.metavar,
            help=flag.help,
        )


def _argparse_type(parse: Callable[[Any], Any], name: str) -> Callable[[str], Any]:
    import argparse

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except BadValue as e:
            # argparse shows an ArgumentTypeError's own message after "argument --flag:".
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name  # argparse names the type in its fallback message
    return convert


def experiments_help() -> str:
    """The experiments, one paragraph each, for a command's help text."""
    lines = [f"{name}: {text}." for name, text in EXPERIMENTS.items()]
    return "\n\n".join(["EXPERIMENT is one of:", *lines, f"{PERF}: one run, timed."])


def typer_command(
    run: Callable[[argparse.Namespace], None],
    flags: Sequence[Flag] = FLAGS,
    experiment: bool = True,
) -> Callable[..., None]:
    """A function whose signature typer reads as the experiment argument (unless
    `experiment` is false) and `flags`'s options; called, it hands `run` the same
    namespace that argparse would have built.

    The signature is built from the table rather than written out so that the typer shell
    cannot gain or lose a flag that `python -m cellsim` has."""
    import typer

    def command(**arguments: Any) -> None:
        import argparse  # here: the read commands never need it

        run(argparse.Namespace(**arguments))

    parameters = [
        inspect.Parameter(
            "experiment",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[
                str,
                # The choices are listed in the command's help (`experiments_help`): typer
                # does not print an argument's own help.
                typer.Argument(parser=experiment_parser(), metavar="EXPERIMENT"),
            ],
        )
    ][: 1 if experiment else 0]
    for flag in flags:
        if flag.parse is None:
            info = typer.Option(flag.option, help=flag.help)
            annotation: Any = Annotated[bool, info]
            default: Any = False
        else:
            info = typer.Option(
                flag.option,
                parser=flag.parse,
                metavar=flag.metavar,
                help=flag.help,
                show_default=flag.default is not None,
            )
            annotation = Annotated[Any, info]
            default = inspect.Parameter.empty if flag.required else flag.default
        parameters.append(
            inspect.Parameter(
                flag.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
            )
        )
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return command
