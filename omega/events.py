"""`omega events`: the cell's change feed as readable, timestamped events.

There is no second history: this follows the store's watch feed from its
start, applies each command to a `CellState` of its own (the one the replicas
run) and renders the events that state yields, with what the command adds
(which scheduler placed a task, which claim preempted it). A feed that begins
with a snapshot (the log was compacted) has no events before it; the first
line says so. Without `--follow` the command stops once it has caught up with
the version the cell had when it started.

`describe` is the whole rendering, a pure function of the state after the
command, the command and one event; the console's event list uses the same words.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from omega.cli import Addr, AsJson, Token, app, call, cell_ca, fail, unavailable
from omega.units import count

if TYPE_CHECKING:
    from cellstate import CellState, Event, ReportTasks
    from cellstate.commands import Command


def describe(cell: CellState, command: Command, event: Event) -> dict[str, Any]:
    """One event as a record: `kind`, `job`, `task`, `machine` (each None when it does not
    apply) and `message`, the line a person reads."""
    from cellstate import (
        Commit,
        JobKilled,
        JobPurged,
        JobSubmitted,
        MachineChanged,
        MachineLabeled,
        MachineRemoved,
        PurgeJobs,
        ReportTasks,
        TaskEvicted,
        TaskHealthChanged,
        TaskPlaced,
        TaskStateChanged,
    )
    from cellstate.model import AGENT_LABEL_PREFIX

    job: str | None = None
    task: str | None = None
    machine: str | None = None
    if isinstance(event, MachineChanged):
        kind, machine = "machine", event.machine
        message = f"machine {machine} {event.state}"
    elif isinstance(event, MachineRemoved):
        kind, machine = "removed", event.machine
        message = f"machine {machine} removed"
    elif isinstance(event, MachineLabeled):
        kind, machine = "labeled", event.machine
        # The agent's own (its address) as the console hides them: the operator's are news.
        said = {k: v for k, v in event.labels.items() if not k.startswith(AGENT_LABEL_PREFIX)}
        shown = " ".join(f"{k}={v}" for k, v in said.items()) or "none"
        message = f"machine {machine} labels now {shown}"
    elif isinstance(event, JobSubmitted):
        kind, job = "submitted", event.job
        found = cell.jobs.get(job)
        size = f" ({count(found.spec.tasks, 'task')}, {found.spec.scheduler})" if found else ""
        message = f"job {job} submitted{size}"
    elif isinstance(event, JobKilled):
        kind, job = "killed", event.job
        message = f"job {job} killed"
    elif isinstance(event, JobPurged):
        # Forgotten by the cell (`--job-retention`); the log still holds what it did.
        kind, job = "purged", event.job
        ended = stamp(command.before) if isinstance(command, PurgeJobs) else "long ago"
        message = f"job {job} purged: it had ended before {ended}"
    elif isinstance(event, TaskPlaced):
        kind, task, machine = "placed", event.task, event.machine
        by = f" by {command.txn.scheduler}" if isinstance(command, Commit) else ""
        message = f"task {task} placed on {machine}{by}"
    elif isinstance(event, TaskStateChanged):
        kind, task, machine = str(event.state), event.task, event.machine
        message = f"task {task} {event.state}" + (f" on {machine}" if machine else "")
        found_task = cell.tasks.get(task)
        if str(event.state) == "starting" and isinstance(command, ReportTasks):
            # A restart in place says why: `(restart after exit:3)`.
            why = _restart_reasons(command).get(task)
            message += f" ({why})" if why else ""
        if found_task is not None and str(event.state) in ("exited", "failed"):
            if found_task.exit_code is not None:
                message += f" with code {found_task.exit_code}"
            if found_task.reason:
                message += f" ({found_task.reason})"
    elif isinstance(event, TaskEvicted):
        kind, task, machine = event.reason, event.task, event.machine
        message = f"task {task} {event.reason} on {machine}"
        if event.reason == "preempted" and isinstance(command, Commit):
            claim = next((c for c in command.txn.claims if event.task in c.victims), None)
            message += f" by {claim.task} of {command.txn.scheduler}" if claim else ""
    elif isinstance(event, TaskHealthChanged):
        kind, task, machine = "health", event.task, event.machine
        # None comes only with a (re)start: the verdict is the last run's no longer.
        verdict = {True: "healthy", False: "unhealthy", None: "health not judged yet (a new run)"}[
            event.healthy
        ]
        message = f"task {task} {verdict}"
    else:  # pragma: no cover - a new event kind renders plainly until it has words
        kind, message = type(event).__name__, repr(event)
    if task is not None and job is None:
        owner = cell.tasks.get(task)
        job = owner.job if owner is not None else task.rsplit(".", 1)[0]
    return {"kind": kind, "job": job, "task": task, "machine": machine, "message": message}


_reasons: tuple[object, dict[str, str]] = (None, {})


def _restart_reasons(command: ReportTasks) -> dict[str, str]:
    """The reasons `command`'s reports give, by task: read once per command, not once per
    event (a hollow agent's report holds a thousand tasks)."""
    global _reasons
    if _reasons[0] is not command:
        _reasons = (command, {r.task: r.reason for r in command.reports if r.reason})
    return _reasons[1]


def author(command: Command) -> str | None:
    """Who sent `command`, as `name (role)`; None for what a leader issued itself, and for
    commands from before rules 6."""
    by = command.by
    return f"{by.name} ({by.role})" if by is not None else None


def describe_setting(command: Command) -> dict[str, Any] | None:
    """A record for an accepted command that changes a setting and yields no event (a quota,
    weights, a token, the rules), so that the feed shows who changed it; None for any
    other."""
    from cellstate import CreateToken, RevokeToken, SetQuota, SetWeights
    from cellstate.commands import RaiseRules

    if isinstance(command, SetQuota):
        band = command.band.label
        limit = command.limit
        told = "cleared: unlimited" if limit is None else f"set: {limit.human() or 'unlimited'}"
        kind, message = "quota", f"quota of {command.owner} in {band} {told}"
    elif isinstance(command, SetWeights):
        told = " ".join(f"{owner}={weight:g}" for owner, weight in command.weights.items())
        kind, message = "weights", f"weights set: {told}"
    elif isinstance(command, CreateToken):
        kind, message = "token", f"token {command.name} ({command.role}) created"
    elif isinstance(command, RevokeToken):
        kind, message = "token", f"token {command.name} revoked"
    elif isinstance(command, RaiseRules):
        # An upgrade taking effect: from here on commands are judged by the new release.
        kind, message = "rules", f"cell rules raised to {command.rules}"
    else:
        return None
    return {"kind": kind, "job": None, "task": None, "machine": None, "message": message}


def stamp(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds")


async def follow_events(
    addresses: list[str],
    token: str,
    emit: Callable[[dict[str, Any]], None],
    *,
    follow: bool,
    keep: Callable[[dict[str, Any]], bool] = lambda record: True,
) -> None:
    """Feed every event of the cell, from its log's start, to `emit` as a record with
    `version` and `at` (ISO time); return once caught up unless `follow`."""
    from cellstate import CellState, Ok
    from cellstate.model import FIRST_RULES
    from cellstate.wire import COMMAND, internal
    from cellstore.cellclient import CellClient

    # Unanswered for as long as any other command waits (`omega.cli.call`), not 30 s.
    async with CellClient.connect(addresses, token, ca=cell_ca(), retry_deadline_s=15.0) as client:
        target = (await client.status()).get("version", 0)
        cell = CellState(rules=FIRST_RULES)
        if target == 0 and not follow:
            return
        async with contextlib.aclosing(client.watch(1)) as feed:
            async for batch in feed:
                if batch.snapshot is not None:
                    cell = CellState.restore(batch.snapshot)
                    emit(
                        {
                            "version": cell.version,
                            "at": stamp(cell.now),
                            "kind": "snapshot",
                            "job": None,
                            "task": None,
                            "machine": None,
                            "message": f"the log before version {cell.version} was compacted: "
                            "no events before it",
                            "by": None,
                        }
                    )
                for version, document in batch.commands:
                    command = internal.structure(document, COMMAND)
                    outcome = cell.apply(command)
                    by = author(command)
                    described = [describe(cell, command, event) for event in outcome.events]
                    if not described and isinstance(outcome.result, Ok):
                        described = [d for d in (describe_setting(command),) if d is not None]
                    for one in described:
                        record = {"version": version, "at": stamp(command.at), **one, "by": by}
                        if keep(record):
                            emit(record)
                if not follow and cell.version >= target:
                    return


@app.command()
def events(
    addr: Addr = "",
    token: Token = "",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    job: Annotated[str, typer.Option(help="Only this job's events.")] = "",
    machine: Annotated[str, typer.Option(help="Only this machine's events.")] = "",
    as_json: AsJson = False,
) -> None:
    """The change feed as events: jobs submitted, killed and purged, tasks placed, started,
    exited with their code, preempted (by whom), lost; machines up, draining, down, labelled,
    removed; quotas, weights and tokens set; each with who sent the command (its token's
    name and role)."""
    import logging
    import sys

    import trio

    from cellstore.cellclient import CellError

    if not addr or not token:
        fail("no cell address or token: pass --addr/--token or source DATA_DIR/env", 2)
    what, name = ("job", job) if job else ("machine", machine)

    def known(cell: Any) -> bool:
        """Whether the cell holds the job or machine the filter names."""
        try:
            cell.tasks(job=job or None, machine=machine or None, limit=1)
        except CellError as exc:
            if exc.code in ("job_unknown", "machine_unknown"):
                return False
            raise
        return True

    # A filter naming what the cell does not know is a mistake to report (as `omega tasks`
    # reports it), not a feed that stays silent: `--job web` for `web-1a2b3c`. Without
    # --follow the log is read first: a purged job's story is still there.
    if name and follow and not call(addr, token, known):
        fail(f"{what}_unknown: no {what} {name!r}", 1)
    emitted = 0

    def keep(record: dict[str, Any]) -> bool:
        return (not job or record["job"] == job) and (not machine or record["machine"] == machine)

    def emit(record: dict[str, Any]) -> None:
        nonlocal emitted
        emitted += record["kind"] != "snapshot"  # (said whatever the filter)
        if as_json:
            sys.stdout.write(_json_line(record))
        else:
            by = f"  [by {record['by']}]" if record["by"] else ""
            sys.stdout.write(f"{record['at']}  v{record['version']:<6} {record['message']}{by}\n")
        sys.stdout.flush()

    import structlog

    # The client's retries are its own business (a line each, on the events' stdout): what
    # a person needs is the error once it gives up.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        trio.run(lambda: follow_events(addr.split(","), token, emit, follow=follow, keep=keep))
    except CellError as exc:
        if exc.code == "unavailable":
            fail(unavailable(exc.message))
        fail(f"{exc.code}: {exc.message}")
    except KeyboardInterrupt:
        return
    if name and not emitted and not call(addr, token, known):
        # Nothing in the log (what is left of it after compaction) is fine for a job the
        # cell holds, a mistake for a name it does not.
        fail(f"{what}_unknown: no {what} {name!r} in the cell or its log", 1)


def _json_line(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, separators=(",", ":")) + "\n"
