"""The `omega` command: run a cell's parts, and drive a running cell.

Client commands find the cell through `--addr`/`--token` or the `OMEGA_ADDR`
and `OMEGA_TOKEN` environment variables, and check its certificates against the
CA in `OMEGA_CA` (`omega up` writes all three to `DATA_DIR/env`). Read commands print tables for people and, with `--json`,
stable JSON for scripts. Errors name what is wrong and exit non-zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from cellsim import options as _cellsim_options
from cellstore.cellclient import CellError, SyncCellClient, each_status
from omega.units import count

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from cellstate import JobSpec
    from cellstore.cellclient import JobView, MachineView, Submitted, TaskView

# A read command (`omega jobs --json`) must start and answer in well under 150 ms, so this
# module imports only what every command needs: typer and the blocking cell client. Rich,
# trio, spec files and the parts' own modules are imported inside the commands that use them.

app = typer.Typer(
    help="omega-cell: an Omega-style shared-state cluster scheduler.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(
    help="Benchmarks: conflict experiments in virtual time, and cell compaction.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


def console() -> Console:
    """Standard output for people; made on first use (rich costs ~30 ms to import)."""
    global _console
    if _console is None:
        _console = _made(stderr=False)
    return _console


def errors() -> Console:
    global _errors
    if _errors is None:
        _errors = _made(stderr=True)
    return _errors


# Wider than any line the CLI prints; tables do not expand, so they keep their own width.
_OFF_TERMINAL_WIDTH = 10_000


def _made(stderr: bool) -> Console:
    """A console for a terminal at its own width; off one (a pipe, a file, a script), as
    wide as the output, so that no id is cut short with an ellipsis and no printed
    command is wrapped onto two lines (rich would otherwise assume 80 columns).
    `COLUMNS`, if set, still rules."""
    from rich.console import Console

    made = Console(stderr=stderr)
    if made.is_terminal or "COLUMNS" in os.environ:
        return made
    return Console(stderr=stderr, width=_OFF_TERMINAL_WIDTH)


_console: Console | None = None
_errors: Console | None = None

Addr = Annotated[
    str, typer.Option("--addr", envvar="OMEGA_ADDR", help="Replica URLs, comma-separated.")
]
Token = Annotated[str, typer.Option("--token", envvar="OMEGA_TOKEN", help="API bearer token.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
LabelSelector = Annotated[
    str,
    typer.Option(
        "--selector",
        "-l",
        help="Labels to match, kubectl style: 'team=ml,env!=prod', 'zone in (a,b)', '!spot'.",
    ),
]

JOB_FIELDS = ("id", "name", "scheduler", "priority", "state", "tasks")
# The states a job does not leave (`cellstate.JobState`'s ended ones).
JOB_ENDED = ("done", "failed", "killed")
TASK_FIELDS = ("id", "job", "state", "machine")
NODE_FIELDS = ("id", "state", "capacity", "used", "domain", "labels")
# `omega submit --wait` on a job no machine can take: told apart from a failed job (1).
EXIT_BLOCKED = 2


def literal(text: str) -> str:
    """`text` (a spec's command or env value, a reason, an explanation) to print as it is:
    rich reads `[red]` in a string as markup and would drop it."""
    from rich.markup import escape

    return escape(text)


def fail(message: str, code: int = 1) -> NoReturn:
    # One unwrapped line, so scripts and grep see the whole message.
    errors().print(f"[red]error:[/red] {literal(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


T = TypeVar("T")


def spec_or_exit(file: Path) -> JobSpec:
    """The job spec in `file`, or exit 2 naming what is wrong with it."""
    from omega.specfile import SpecFileError, load_spec

    try:
        return load_spec(file)
    except SpecFileError as exc:
        fail(str(exc), 2)


def cell_ca() -> str | None:
    """The CA file the cell's certificates are checked against (`OMEGA_CA`, which `omega up`
    writes to DATA_DIR/env); None: the system's trust store for https, or plain http."""
    import os

    path = os.environ.get("OMEGA_CA") or None
    if path is not None:
        # Checked here, once: a client handed a missing or foreign file would retry every
        # replica for 15 s and then blame them ("no replica answered: FileNotFoundError").
        import ssl

        try:
            ssl.create_default_context(cafile=path)
        except ssl.SSLError:  # (an OSError too: first)
            fail(f"OMEGA_CA {path}: not a PEM certificate (omega up writes DATA_DIR/tls/ca.pem)", 2)
        except OSError as exc:
            fail(f"OMEGA_CA {path}: cannot read it: {exc.strerror or exc}", 2)
    return path


def unavailable(message: str) -> str:
    """What a person reads when no replica answered (the client's message may say so)."""
    return message if "no replica answered" in message else f"no replica answered: {message}"


def call(addr: str, token: str, fn: Callable[[SyncCellClient], T]) -> T:
    """Run `fn(cell)` against the cell; turn its errors into messages and exits."""
    if not addr:
        fail("no cell address: pass --addr or set OMEGA_ADDR (source DATA_DIR/env)", 2)
    if not token:
        fail("no token: pass --token or set OMEGA_TOKEN (source DATA_DIR/env)", 2)
    try:
        with SyncCellClient(addr.split(","), token, retry_deadline_s=15.0, ca=cell_ca()) as cell:
            return fn(cell)
    except CellError as exc:
        if exc.code == "unavailable":
            fail(unavailable(exc.message))
        where = f" ({exc.field})" if exc.field else ""
        fail(f"{exc.code}: {exc.message}{where}")


def health_text(healthy: bool | None) -> str:
    """A task's health as the table shows it: `-` when it has no check or no verdict yet."""
    return "-" if healthy is None else "healthy" if healthy else "unhealthy"


def chosen_by_labels(
    selector: str,
    found: Iterable[Mapping[str, Any]],
    kind: str,
    kinds: str,
    verb: str,
    done: str,
    yes: bool,
) -> list[str]:
    """The ids of those of `found` (records with `id` and `labels`) that `-l selector`
    matches. None fails, naming the selector; several are for `verb` only once the user
    says so (or with `yes`), else nothing is `done`."""
    matches = selecting(selector)
    ids = [item["id"] for item in found if matches(item["labels"])]
    if not ids:
        fail(f"no {kind} matches -l {selector!r}")
    if len(ids) > 1 and not yes:
        console().print(f"{len(ids)} {kinds} match: {' '.join(ids)}")
        if not typer.confirm(f"{verb} all {len(ids)}?", default=False):
            fail(f"nothing {done}", 1)
    return ids


def selecting(text: str) -> Callable[[Mapping[str, str]], bool]:
    """The predicate of a `-l` selector; exits 2 naming what does not parse."""
    if not text.strip():
        return lambda labels: True
    from cellstate.selectors import SelectorError, parse

    try:
        return parse(text)
    except SelectorError as exc:
        fail(f"-l: {exc}", 2)


def pick(record: Mapping[str, object], fields: tuple[str, ...]) -> dict[str, object]:
    return {field: record.get(field) for field in fields} | {
        k: v for k, v in record.items() if k not in fields
    }


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def counts_text(counts: dict[str, int]) -> str:
    """`pending=8 running=3`: the states a job's (or the cell's) tasks are in; a state
    none is in is left out."""
    return " ".join(f"{state}={n}" for state, n in counts.items() if n) or "-"


def labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items() if not k.startswith("omega.")) or "-"


def clock(at: float) -> str:
    """A time from the cell (seconds since the epoch) as people read it, in local time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def whole(table: Table, *headers: str) -> Table:
    """Keep the columns named `headers` (ids, states, task counts) whole on a narrow
    terminal: an id cut short with an ellipsis names nothing, so the other columns give
    way first. Call it once the rows are in."""
    from rich.cells import cell_len

    for column in table.columns:
        if column.header in headers:
            column.no_wrap = True
            column.min_width = max(map(cell_len, [*map(str, column.cells), str(column.header)]))
    return table


# Above this many rows, a table that fits its width is written line by line rather than
# laid out by rich, which measures and wraps every cell: `omega tasks` on a job of 5,000
# tasks took 3.4 s, `omega nodes` on 2,000 machines 2 s (10,000 machines: about 10 s).
FAST_ROWS = 200


def show(table: Table, *headers: str) -> None:
    """Print a list's `table`, the columns named `headers` kept whole (`whole`). A long
    table whose cells are plain text and fit the console's width is drawn directly, the
    same lines rich draws (the same box, padding and widths), at a small part of the cost;
    any other goes through rich, which wraps what does not fit."""
    out = console()
    lines = _drawn(table, out.width) if table.row_count > FAST_ROWS else None
    if lines is None:
        out.print(whole(table, *headers))
        return
    from rich.text import Text

    # The header as rich styles it (bold on a terminal); the rows as they are.
    head = Text(lines[1])
    out.print(lines[0], highlight=False, soft_wrap=True)
    out.print(head, style=table.header_style, highlight=False, soft_wrap=True)
    out.file.write("\n".join(lines[2:]) + "\n")
    out.file.flush()


def _drawn(table: Table, width: int) -> list[str] | None:
    """`table`'s lines as rich would draw them, if every cell is a plain string (no markup,
    so no escapes either) and the whole table fits `width` unwrapped; else None."""
    from rich.cells import cell_len

    box = table.box
    if box is None or table.show_edge is False or not table.show_header:
        return None
    columns: list[list[str]] = []
    for column in table.columns:
        cells = [column.header, *column.cells]
        if not all(isinstance(c, str) and "[" not in c and "\\" not in c for c in cells):
            return None
        columns.append(cells)  # type: ignore[arg-type]
    widths = [max(map(cell_len, cells)) for cells in columns]
    if sum(widths) + 3 * len(widths) + 1 > width:
        return None

    def row(cells: list[str], left: str, between: str, right: str) -> str:
        padded = (f" {c}{' ' * (w - cell_len(c))} " for c, w in zip(cells, widths, strict=True))
        return left + between.join(padded) + right

    spans = [w + 2 for w in widths]
    lines = [
        box.get_top(spans),
        row([c[0] for c in columns], box.head_left, box.head_vertical, box.head_right),
        box.get_row(spans, "head", edge=True),
    ]
    lines.extend(
        row(list(cells), box.mid_left, box.mid_vertical, box.mid_right)
        for cells in zip(*(c[1:] for c in columns), strict=True)
    )
    lines.append(box.get_bottom(spans))
    return lines


# -- running the parts ---------------------------------------------------------


# The same on `omega up` and `omega store` (`cellstore.cell.DEFAULT_JOB_RETENTION_S`).
JobRetention = Annotated[
    float,
    typer.Option(
        min=0.0,
        help="Seconds an ended job (killed, done, failed) is kept before the cell forgets it; "
        "0 keeps ended jobs for good.",
    ),
]


# The same on `omega up` and `omega store` (`cellstore.cell.DEFAULT_MACHINE_RETENTION_S`).
MachineRetention = Annotated[
    float,
    typer.Option(
        min=0.0,
        help="Seconds a machine marked down for silence is kept before the cell forgets it "
        "(its agent, back, registers it again); 0 keeps machines for good.",
    ),
]


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="Where the cell keeps its state.")] = Path(
        "omega-data"
    ),
    replicas: Annotated[int, typer.Option(min=1, max=7, help="Store replicas.")] = 3,
    agents: Annotated[int, typer.Option(min=0, max=64, help="Real agents.")] = 4,
    hollow: Annotated[int, typer.Option(min=0, max=100_000, help="Hollow machines.")] = 0,
    schedulers: Annotated[str, typer.Option(help="Scheduler kinds to run.")] = (
        "service,batch,best-effort"
    ),
    submit: Annotated[
        list[Path],
        typer.Option(
            help="Job spec to submit once ready (not again while a job of its name is live)."
        ),
    ] = [],  # noqa: B006
    resource: Annotated[
        list[str],
        typer.Option(help="Give every machine disk or a device, e.g. gpu=2 (repeatable)."),
    ] = [],  # noqa: B006
    heartbeat_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds without a heartbeat before a machine is down.")
    ] = 10.0,
    job_retention: JobRetention = 4 * 3600.0,
    machine_retention: MachineRetention = 24 * 3600.0,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Plain http everywhere instead of https with the data dir's own CA.",
        ),
    ] = False,
) -> None:
    """Start a whole local cell and supervise it until Ctrl-C: https with a throwaway CA in
    the data dir, and each scheduler and agent with a token of the narrowest role."""
    import trio

    from cellstate.resources import UnitError, parse_declaration
    from cellstore.cell import CellSettings
    from omega.specfile import SpecFileError, load_spec
    from omega.up import run_cell

    for text in resource:
        try:
            if parse_declaration(text)[0] in ("cpu", "memory"):
                fail(f"--resource {text!r}: cpu and memory are the host's, shared by agents", 2)
        except UnitError as exc:
            fail(f"--resource {text!r}: {exc}", 2)

    for path in submit:
        try:
            load_spec(path)
        except SpecFileError as exc:
            fail(str(exc), 2)
    kinds = [k.strip() for k in schedulers.split(",") if k.strip()]
    for kind in kinds:
        if kind not in ("service", "batch", "best-effort"):
            fail(f"--schedulers: {kind!r} is not a kind; use service, batch, best-effort", 2)
    trio.run(
        run_cell,
        data_dir.resolve(),
        replicas,
        agents,
        hollow,
        kinds,
        submit,
        CellSettings(heartbeat_timeout, job_retention, machine_retention),
        resource,
        insecure,
    )


@app.command()
def store(
    id: Annotated[int, typer.Option("--id", help="This replica's index in --peer.")],
    peer: Annotated[
        list[str],
        typer.Option(
            help="Every replica as API_HOST:PORT/RAFT_HOST:PORT, "
            "in the same order on every replica."
        ),
    ],
    data_dir: Annotated[Path, typer.Option(help="Journal and snapshots.")],
    token_file: Annotated[Path, typer.Option(help="File holding the API token.")],
    secret_file: Annotated[Path, typer.Option(help="File holding the Raft secret.")],
    heartbeat_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds without a heartbeat before a machine is down.")
    ] = 10.0,
    job_retention: JobRetention = 4 * 3600.0,
    machine_retention: MachineRetention = 24 * 3600.0,
    console: Annotated[
        bool, typer.Option(help="Serve the web console at /ui (signed in with the token).")
    ] = True,
    fsync: Annotated[
        bool,
        typer.Option(
            help="Sync the journal to disk before acknowledging a write: it then survives "
            "power loss on every host (README, 'What acknowledged promises')."
        ),
    ] = False,
    tls_cert: Annotated[
        Path | None, typer.Option(help="This replica's certificate (PEM; `omega tls cert`).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Serve plain http: tokens cross the network in clear text."
        ),
    ] = False,
) -> None:
    """Run one store replica (a multi-host cell runs one per host), over https unless
    --insecure."""
    from cellstore.cell import CellSettings, replica_fields
    from cellstore.config import ReplicaConfig, replica_document
    from cellstore.server import run_replica
    from omega.console import with_console

    pairs = []
    for item in peer:
        if "/" not in item:
            fail(f"--peer {item!r}: expected API_HOST:PORT/RAFT_HOST:PORT", 2)
        pairs.append(item.split("/", 1))
    if not 0 <= id < len(pairs):
        fail(f"--id {id}: must index one of the {len(pairs)} --peer values", 2)
    if not insecure and (tls_cert is None or tls_key is None):
        fail("--tls-cert and --tls-key are required (or --insecure for plain http)", 2)
    config = ReplicaConfig.from_json(
        replica_document(
            id,
            [api for api, _ in pairs],
            [raft for _, raft in pairs],
            data_dir=data_dir,
            token=_secret_of(token_file, "--token-file"),
            secret=_secret_of(secret_file, "--secret-file"),
            fsync=fsync,
            insecure=insecure,
            tls_cert=None if insecure else str(tls_cert),
            tls_key=None if insecure else str(tls_key),
            **(with_console if console else dict)(
                replica_fields(CellSettings(heartbeat_timeout, job_retention, machine_retention))
            ),
        )
    )
    run_replica(config)


def _secret_of(path: Path, flag: str) -> str:
    """The secret in `path`, which only its owner may read (as ssh holds a key file): the
    admin token and the Raft secret give the whole cell to whoever reads them."""
    import stat

    try:
        mode = path.stat().st_mode
        value = path.read_text().strip()
    except OSError as exc:
        fail(f"{flag} {path}: {exc.strerror or exc}", 2)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        fail(
            f"{flag} {path}: mode {stat.S_IMODE(mode):04o} lets other users read it: "
            f"chmod 600 {path}",
            2,
        )
    if not value:
        fail(f"{flag} {path}: the file is empty", 2)
    return value


# `--help` is passed through to the part's own parser, which knows its flags.
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def scheduler(ctx: typer.Context) -> None:
    """Run one scheduler process (`omega scheduler --help` lists its flags)."""
    from schedulers.__main__ import main

    main(ctx.args, prog=f"omega {ctx.info_name}")


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def agent(ctx: typer.Context) -> None:
    """Run one agent for a machine, or many hollow ones (`omega agent --help` lists its
    flags)."""
    from agents.__main__ import main

    main(ctx.args, prog=f"omega {ctx.info_name}")


# -- driving a cell ------------------------------------------------------------------


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="Job spec: YAML, TOML or JSON.")],
    addr: Addr = "",
    token: Token = "",
    job_id: Annotated[str, typer.Option("--id", help="Job id (default: name-<random>).")] = "",
    wait: Annotated[
        bool, typer.Option(help="Show progress until every task runs or ends.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 300.0,
    blocked_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="With --wait: fail once a scheduler has explained why tasks cannot be "
            "placed and they stayed pending this many seconds.",
        ),
    ] = 5.0,
    as_json: AsJson = False,
    plan_token: Annotated[
        str,
        typer.Option(
            "--plan",
            help="A token from `omega plan FILE`: place the job exactly as planned, or "
            "submit nothing if a planned machine changed since.",
        ),
    ] = "",
) -> None:
    """Submit a job from a spec file."""
    spec = spec_or_exit(file)
    if plan_token:
        from omega.plan import submit_planned

        planned = submit_planned(addr, token, spec, plan_token, job_id)
        if wait:
            from omega.waiting import wait_for_job

            wait_for_job(addr, token, planned, spec.tasks, timeout, blocked_timeout)
        return
    known: JobView | None = None

    def submit_new(cell: SyncCellClient) -> Submitted | None:
        nonlocal known
        if job_id:
            # The cell takes a submit naming a job it has, with the same spec, as a retry
            # (and answers Ok): asked first, a person is told nothing was submitted. One
            # client for both, so a failover is found once.
            known = _job_or_none(cell, job_id)
            if known is not None:
                return None
        # The client chooses the job id once, so that a retried request submits one job.
        return cell.submit(spec, job_id or None)

    submitted = call(addr, token, submit_new)
    if submitted is None:
        assert known is not None
        ended = known["state"] in JOB_ENDED
        fail(
            f"job {job_id} exists ({known['state']}): nothing submitted; choose another "
            "--id" + ("" if ended else f", or change it with omega update {job_id} {file}")
        )
    if as_json:
        emit_json({"id": submitted.job, "version": submitted.version})
    else:
        console().print(f"submitted job [bold]{submitted.job}[/bold] ({count(spec.tasks, 'task')})")
    if wait:
        from omega.waiting import wait_for_job

        wait_for_job(addr, token, submitted.job, spec.tasks, timeout, blocked_timeout)


@app.command()
def jobs(
    addr: Addr = "",
    token: Token = "",
    as_json: AsJson = False,
    state: Annotated[
        str,
        typer.Option(
            help="Only jobs in this state: pending, running, idle (scaled to zero), done, "
            "failed or killed."
        ),
    ] = "",
    selector: LabelSelector = "",
) -> None:
    """List jobs."""
    matches = selecting(selector)
    found = [
        j for j in call(addr, token, lambda cell: cell.jobs(state or None)) if matches(j["labels"])
    ]
    if as_json:
        emit_json([pick(j, JOB_FIELDS) for j in found])
        return
    from rich.table import Table

    table = Table("id", "name", "scheduler", "priority", "state", "tasks", "labels")
    for j in found:
        table.add_row(
            j["id"],
            j["name"],
            j["scheduler"],
            str(j["priority"]),
            j["state"],
            counts_text(j["tasks"]),
            literal(labels_text(j["labels"])),
        )
    show(table, "id", "state", "tasks")


@app.command()
def job(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    addr: Addr = "",
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Show one job."""
    found = call(addr, token, lambda cell: cell.job(job_id))
    if as_json:
        emit_json(pick(found, JOB_FIELDS))
        return
    facts = job_facts(found)
    width = max(len(key) for key, _ in facts)
    for key, shown in facts:
        # A value of several lines (a script given as the command) stays in its column; its
        # blank lines stay blank.
        first, *rest = shown.split("\n")
        pad = " " * (width + 1)
        shown = "\n".join([first, *(pad + line if line.strip() else "" for line in rest)])
        console().print(f"[bold]{key:>{width}}[/bold] {literal(shown)}", highlight=False)


def job_facts(found: Mapping[str, Any]) -> list[tuple[str, str]]:
    """`omega job`'s lines, for people: times as clock times, resources in human units, the
    command as a shell would read it, labels as `k=v`. `--json` has the exact figures."""
    import shlex

    from omega.units import dimensions, human

    facts = []
    for key, value in pick(found, JOB_FIELDS).items():
        if key == "tasks" and isinstance(value, dict):
            shown = counts_text(value)
        elif key == "rollout" and isinstance(value, dict):
            why = f" ({value['reason']})" if value["reason"] else ""
            shown = (
                f"v{value['version']} from v{value['previous']} {value['state']}: "
                f"{value['current']}/{value['size']} tasks on it{why}"
            )
        elif key == "resources" and isinstance(value, dict):
            shown = ", ".join(f"{dim} {human(value, dim)}" for dim in dimensions(value))
        elif key == "command" and isinstance(value, list):
            shown = shlex.join(value)
        elif key == "labels" and isinstance(value, dict):
            shown = labels_text(value)
        elif key.endswith("_at") and isinstance(value, int | float):
            shown = clock(value)
        else:
            shown = "-" if value is None else str(value)
        facts.append((key, shown))
    return facts


@app.command()
def tasks(
    addr: Addr = "",
    token: Token = "",
    as_json: AsJson = False,
    job: Annotated[str, typer.Option(help="Only this job's tasks.")] = "",
    state: Annotated[str, typer.Option(help="Only tasks in this state.")] = "",
    machine: Annotated[
        str, typer.Option(help="Only tasks placed on this machine (what a drain would move).")
    ] = "",
    selector: Annotated[
        str, typer.Option("--selector", "-l", help="Only tasks of jobs whose labels match.")
    ] = "",
) -> None:
    """List tasks."""

    def listed(cell: SyncCellClient) -> list[TaskView]:
        return cell.tasks(job=job or None, state=state or None, machine=machine or None)

    if selector:
        matches = selecting(selector)

        def chosen(cell: SyncCellClient) -> Any:
            jobs = {j["id"] for j in cell.jobs() if matches(j["labels"])}
            return [t for t in listed(cell) if t["job"] in jobs]

        found = call(addr, token, chosen)
    else:
        found = call(addr, token, listed)
    if as_json:
        emit_json([pick(t, TASK_FIELDS) for t in found])
        return
    from rich.table import Table

    # No job column: a task's id begins with its job's, and an 80-column terminal needs
    # the room once the ids are kept whole.
    # `restarts` and how the task (or, restarted in place, its last run) ended: what a crash
    # loop is read by, as kubectl's RESTARTS. `inc`: its incarnation, which a placement
    # anew (after an eviction) raises. An exit code shows as `exit N` where the agent gave
    # no reason (a reason names the code itself, `restart after exit:3`), so that the free
    # text keeps what room an 80-column terminal has.
    table = Table("id", "state", "health", "machine", "inc", "restarts", "reason")
    for t in found:
        ended = t["reason"] or ("" if t["exit_code"] is None else f"exit {t['exit_code']}")
        table.add_row(
            t["id"],
            t["state"],
            health_text(t.get("healthy")),
            t["machine"] or "-",
            str(t["incarnation"]),
            str(t.get("restarts", 0)),
            literal(ended),
        )
    table.columns[-1].overflow = "fold"  # wrapped whole, never cut short with an ellipsis
    show(table, "id", "state", "health", "machine", "inc", "restarts")


@app.command()
def nodes(
    addr: Addr = "",
    token: Token = "",
    as_json: AsJson = False,
    state: Annotated[
        str, typer.Option(help="Only machines in this state: up, draining or down.")
    ] = "",
    selector: LabelSelector = "",
) -> None:
    """List machines: state, used/capacity of each resource, tasks, domain, labels."""
    matches = selecting(selector)
    found = [
        m
        for m in call(addr, token, lambda cell: cell.machines(state or None))
        if matches(m["labels"])
    ]
    if as_json:
        emit_json([pick(m, NODE_FIELDS) for m in found])
        return
    from rich.table import Table

    from omega.units import dimensions, used_of

    table = Table(
        "id", "state", "cpu used/cap", "memory used/cap", "other", "tasks", "domain", "labels"
    )
    for m in found:
        used, capacity = m["used"], m["capacity"]
        other = [
            f"{dim} {used_of(used, capacity, dim)}"
            for dim in dimensions(capacity)
            if dim not in ("cpu", "memory")
        ]
        table.add_row(
            m["id"],
            m["state"],
            used_of(used, capacity, "cpu"),
            used_of(used, capacity, "memory"),
            " ".join(other) or "-",
            str(m["tasks"]),
            m["domain"],
            literal(labels_text(m["labels"])),
        )
    show(table, "id")


@app.command()
def kill(
    job_id: Annotated[str, typer.Argument(help="Job id (or -l to choose jobs by label).")] = "",
    addr: Addr = "",
    token: Token = "",
    selector: Annotated[
        str, typer.Option("--selector", "-l", help="Kill every live job whose labels match.")
    ] = "",
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Kill more than one job without asking.")
    ] = False,
) -> None:
    """Kill a job: its tasks are stopped (SIGTERM, then SIGKILL after the grace period)."""
    if bool(job_id) == bool(selector):
        fail("name one job id, or choose jobs with -l SELECTOR", 2)
    if job_id:
        targets = [job_id]
    else:
        jobs = call(addr, token, lambda cell: cell.jobs())
        live = [j for j in jobs if j["state"] not in JOB_ENDED]
        targets = chosen_by_labels(selector, live, "live job", "jobs", "kill", "killed", yes)

    def kill_all(cell: SyncCellClient) -> None:
        for target in targets:
            try:
                cell.kill(target)
            except CellError as exc:
                task = _task_or_none(cell, target) if exc.code == "job_unknown" else None
                if task is None:
                    raise
                fail(
                    f"{target} is a task of job {task['job']}: omega kill stops whole jobs "
                    f"(omega scale {task['job']} N runs fewer tasks)",
                    2,
                )
            console().print(f"killed job [bold]{target}[/bold]")

    call(addr, token, kill_all)


def _job_or_none(cell: SyncCellClient, job: str) -> JobView | None:
    try:
        return cell.job(job)
    except CellError as exc:
        if exc.code == "job_unknown":
            return None
        raise


def _task_or_none(cell: SyncCellClient, task: str) -> TaskView | None:
    try:
        return cell.task(task)
    except CellError as exc:
        # As `_job_or_none`: a replica that does not answer is not a task that is not there.
        if exc.code == "task_unknown":
            return None
        raise


@app.command()
def explain(
    target: Annotated[str, typer.Argument(help="Job or task id.")],
    addr: Addr = "",
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Why a job or task is pending: machines considered, filtered, exhausted, conflicts."""
    found = call(addr, token, lambda cell: cell.explain(target))
    if as_json:
        emit_json(found)
        return
    job_view = found["job"]
    console().print(
        f"job [bold]{job_view['id']}[/bold] {job_view['state']}: {counts_text(job_view['tasks'])}"
    )
    if found["task"]:
        task = found["task"]
        console().print(
            f"task {task['id']} {task['state']} on {task['machine'] or '-'}"
            + (f" ({literal(task['reason'])})" if task["reason"] else "")
        )
    if not found["pending"]:
        console().print("nothing pending")
    elif not found["schedulers"]:
        console().print(
            f"{count(found['pending'], 'task')} pending; no scheduler has reported on them "
            f"yet (is a {job_view['scheduler']} scheduler running?)"
        )
    for name, account in found["schedulers"].items():
        console().print(f"[bold]{name}[/bold]: {literal(account)}")
    for name, lost in found.get("conflicts", {}).items():
        console().print(
            f"[bold]{name}[/bold] conflicts lost to: {_top(lost['by_rival'], 5)}; "
            f"hottest machines: {_top(lost['hot_machines'], 5)}"
        )


@app.command()
def endpoints(
    job: Annotated[str, typer.Argument(help="Job id.")],
    addr: Addr = "",
    token: Token = "",
    as_json: AsJson = False,
    ready: Annotated[
        bool, typer.Option("--ready", help="Only tasks running and healthy (or with no check).")
    ] = False,
) -> None:
    """Where a job's running tasks serve: host:port of each task that declared its port
    (the file `$OMEGA_PORT_FILE` names), and whether it is ready, as `kubectl get
    endpoints` or Nomad's service catalogue list them."""
    found = call(addr, token, lambda cell: cell.endpoints(job))
    if ready:
        found = [e for e in found if e["ready"]]
    if as_json:
        emit_json(found)
        return
    if not found:
        what = "ready " if ready else ""
        console().print(
            f"job {job} has no {what}endpoint: no running task of it has declared a port "
            "(a task writes its port to the file $OMEGA_PORT_FILE names)"
        )
        return
    from rich.table import Table

    table = Table("task", "address", "ready", "machine", "version")
    for e in found:
        table.add_row(
            e["task"], e["address"], "yes" if e["ready"] else "no", e["machine"], str(e["version"])
        )
    show(table, "task", "address", "ready")


@app.command()
def logs(
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    addr: Addr = "",
    token: Token = "",
    stream: Annotated[str, typer.Option(help="stdout or stderr.")] = "stdout",
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing until the run ends (as kubectl logs -f)."
        ),
    ] = False,
) -> None:
    """Print a task's captured output, fetched from the agent that runs it."""
    if stream not in ("stdout", "stderr"):
        fail(f"--stream {stream!r}: use stdout or stderr", 2)

    def locate(cell: SyncCellClient) -> tuple[TaskView, MachineView | None]:
        task = cell.task(task_id)
        on = task["machine"]
        if on is None:
            return task, None
        try:
            return task, cell.machine(on)
        except CellError as exc:
            if exc.code != "machine_unknown":
                raise
            fail(f"task {task_id} ran on machine {on}, which was removed from the cell")

    task, machine = call(addr, token, locate)
    if machine is None:
        fail(f"task {task_id} is {task['state']} and has not run on any machine yet")
    agent_addr = machine["labels"].get("omega.agent")
    if not agent_addr:
        # A real agent labels its machine with the address its log server listens on.
        fail(
            f"machine {machine['id']} serves no logs: it has no omega.agent label, which a "
            "real agent sets (a hollow agent's tasks are simulated and print nothing)"
        )
    offset, ended = 0, False
    with SyncCellClient(addr.split(","), token, ca=cell_ca()) as cell:
        while True:
            try:
                start, chunk = cell.agent_logs(
                    agent_addr, task_id, task["incarnation"], stream, offset
                )
            except CellError as exc:
                fail(exc.message if exc.code == "unavailable" else f"agent {agent_addr}: {exc}")
            if start > offset:
                # The agent keeps a task's output to a size (`omega agent --max-log-bytes`).
                errors().print(f"[{start - offset} bytes of earlier {stream} were rotated away]")
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            offset = start + len(chunk)
            if not follow or (ended and not chunk):
                return
            if not chunk:
                # Caught up: once the run has ended (or the task runs anew), its output is
                # whole after one more read. `-f` on a finished batch task returns.
                try:
                    now = cell.task(task_id)
                except CellError as exc:
                    fail(f"{exc.code}: {exc.message}")
                ended = now["state"] in ("exited", "failed", "killed") or (
                    now["incarnation"] != task["incarnation"]
                )
                if ended:
                    continue
            time.sleep(1.0)


def _status(client_addr: str, token: str) -> dict[str, Any]:
    addresses = client_addr.split(",")

    def gather(cell: SyncCellClient) -> Any:
        return list(each_status(cell, addresses)), cell.summary()

    replicas, summary = call(client_addr, token, gather)
    leader = next(
        (r["leader"]["api"] for r in replicas if (r.get("leader") or {}).get("api")), None
    )
    return {
        "replicas": replicas,
        "leader": leader,
        "schedulers": summary["schedulers"],
        "agents": summary["machines"],
        "version": summary["version"],
        "tasks": summary["tasks"],
        "jobs": summary["jobs"],
    }


@app.command()
def status(addr: Addr = "", token: Token = "", as_json: AsJson = False) -> None:
    """Replicas and who leads, schedulers with their conflict fraction, agents."""
    found = _status(addr, token)
    if as_json:
        emit_json(found)
        return
    console().print(status_tables(found))


def status_tables(found: dict[str, Any]) -> Table:
    from rich.table import Table

    outer = Table.grid(padding=1)
    replicas = Table("replica", "address", "role", "term", "version", title="store")
    for r in found["replicas"]:
        if "error" in r:
            replicas.add_row("?", r["address"], "[red]unreachable[/red]", "", "")
            continue
        role = "leader" if r.get("is_leader") else "follower"
        replicas.add_row(
            str(r.get("replica")),
            str(r.get("api")),
            role,
            str(r.get("term")),
            str(r.get("version")),
        )
    from cellstate.views import conflicts_view

    # Conflict fraction: conflicted per conflict-free transaction (the Omega
    # paper's, `schedulers.metrics`); "-" while none was conflict-free.
    scheds = Table(
        "scheduler",
        "kind",
        "txns",
        "conflict fraction",
        "busyness",
        "blocked",
        "lost to",
        "hot machines",
        title="schedulers",
    )
    for s in found["schedulers"]:
        f = s["figures"]
        fraction = f.get("conflict_fraction")
        conflicts = conflicts_view(f)
        scheds.add_row(
            s["name"],
            s["kind"],
            f"{f.get('transactions', 0):.0f}",
            "-" if fraction is None else f"{fraction:.3f}",
            f"{f.get('busyness', 0):.3f}",
            str(s["blocked"]),
            _top(conflicts["by_rival"]),
            _top(conflicts["hot_machines"]),
        )
    outer.add_row(whole(replicas, "address"))
    outer.add_row(whole(scheds, "scheduler"))
    outer.add_row(
        # A new cell has none of either: "0", beside "jobs: 0", not a dash.
        f"machines: {counts_text(found['agents']) if any(found['agents'].values()) else 0}   "
        f"jobs: {found['jobs']}   "
        f"tasks: {counts_text(found['tasks']) if any(found['tasks'].values()) else 0}   "
        f"version: {found['version']}"
    )
    return outer


def _top(counts: dict[str, int], n: int = 3) -> str:
    """`batch-2 12, agent 3`: the first `n` of counts already ranked."""
    return ", ".join(f"{k} {v}" for k, v in list(counts.items())[:n]) or "-"


@app.command()
def top(
    addr: Addr = "",
    token: Token = "",
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    iterations: Annotated[int, typer.Option(help="Stop after N refreshes (0: never).")] = 0,
) -> None:
    """A live view of the cell that refreshes until Ctrl-C."""
    from rich.live import Live

    out = console()
    # Piped or redirected, a live display leaves only its last frame: there every
    # refresh is written out in full instead, as `top -b` does.
    live = Live(console=out, refresh_per_second=4) if out.is_terminal else None
    count = 0
    with live if live is not None else contextlib.nullcontext():
        while True:
            tables = status_tables(_status(addr, token))
            if live is None:
                out.print(tables)
            else:
                live.update(tables)
            count += 1
            if iterations and count >= iterations:
                return
            time.sleep(interval)


def _bench_conflicts(args: Any) -> None:
    # The engine and matplotlib load here, when the command runs, not when `omega` starts.
    from cellsim.__main__ import report

    report(args)


# Typed options from `cellsim.options`, the table `python -m cellsim` parses with too, so the
# two command lines take the same flags and reject the same values (exit 2, naming them).
# That module is light: building this command costs `omega jobs` no simulator import.
bench_app.command(
    "conflicts",
    help="Omega's conflict experiments in virtual time (the paper's section 4): one CSV per "
    "experiment, its PNG, and with --plot the paper's figure shape. "
    "Example: omega bench conflicts tjob --preset B --days 1 --out out/sim --plot tjob.png"
    "\n\n" + _cellsim_options.experiments_help(),
)(_cellsim_options.typer_command(_bench_conflicts))


def _bench_compaction(args: Any) -> None:
    from cellsim.compaction import CompactionError, run

    try:
        summary = run(args)
    except CompactionError as exc:
        fail(str(exc), 2)
    print(json.dumps(summary))


bench_app.command(
    "compaction",
    help="Borg's cell compaction (EuroSys 2015, section 5.1): the smallest cell a workload "
    "fits in under each placement policy, the real scheduler core deciding, machines removed "
    "in a seeded random order per trial; prints per policy the 90th percentile over trials, "
    "then one JSON line. Give --preset or --snapshot. "
    "Example: omega bench compaction --preset A --trials 11 --plot compaction.png",
)(_cellsim_options.typer_command(_bench_compaction, _cellsim_options.COMPACTION_FLAGS, False))


# Commands kept in their own modules, registered on `app` when they are imported (last, so
# that they find this module's helpers defined): changing running work, and the cell's settings.
from omega import admin as _admin  # noqa: E402, F401
from omega import events as _events  # noqa: E402, F401
from omega import fairshare as _fairshare  # noqa: E402, F401
from omega import lifecycle as _lifecycle  # noqa: E402, F401
from omega import plan as _plan  # noqa: E402, F401
from omega import security as _security  # noqa: E402, F401
from omega import snapshot as _snapshot  # noqa: E402, F401


def _summaries(group: typer.Typer) -> None:
    """Give every command a one-line summary for the list that `--help` shows: in rich
    markup mode typer keeps the line breaks of a docstring's first paragraph there, so a
    summary wrapped in the source came out ragged."""
    for info in group.registered_commands:
        if info.short_help is None:
            text = info.help or (info.callback.__doc__ if info.callback else None) or ""
            info.short_help = " ".join(text.split("\n\n")[0].split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _summaries(sub.typer_instance)


_summaries(app)
