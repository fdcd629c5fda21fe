"""`omega` commands that change running work: update, restart, history, revert, promote,
scale and drain.

Each is one command to the cell; the job's scheduler does the rest from its
copy of the cell (`schedulers.lifecycle`) and the store holds every step to
the job's disruption budget. `omega update --wait` follows the update until
it succeeds (exit 0) or fails, is reverted or superseded (exit 1).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from omega.cli import (
    Addr,
    AsJson,
    Token,
    app,
    call,
    clock,
    console,
    emit_json,
    fail,
    literal,
    spec_or_exit,
)
from omega.units import count

if TYPE_CHECKING:
    from cellstate import JobSpec
    from cellstore.cellclient import HistoryView, JobView, SyncCellClient

ENDED = ("succeeded", "failed", "reverted", "superseded")


@app.command()
def update(
    job: Annotated[str, typer.Argument(help="The job to update.")],
    file: Annotated[Path, typer.Argument(help="Its new spec: YAML, TOML or JSON.")],
    addr: Addr = "",
    token: Token = "",
    wait: Annotated[
        bool, typer.Option(help="Follow the update; exit non-zero if it fails or is reverted.")
    ] = False,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Show the spec diff and the placements the job's scheduler would make "
            "against the live cell; commit nothing.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 600.0,
    as_json: AsJson = False,
) -> None:
    """Roll a job over to a new spec version, a few tasks at a time."""
    spec = spec_or_exit(file)
    if plan:
        show_plan(addr, token, job, spec, as_json)
        return
    before = call(addr, token, lambda cell: cell.job(job))
    roll_out(addr, token, job, spec, before, wait, timeout, as_json)


# The env var whose new value makes `omega restart`'s version: what Kubernetes's
# `kubectl rollout restart` does with its `restartedAt` annotation on the pod template.
RESTARTED_AT = "OMEGA_RESTARTED_AT"


@app.command()
def restart(
    job: Annotated[str, typer.Argument(help="The job whose tasks to restart.")],
    addr: Addr = "",
    token: Token = "",
    wait: Annotated[
        bool, typer.Option(help="Follow the restart; exit non-zero if it fails or is reverted.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 600.0,
    as_json: AsJson = False,
) -> None:
    """Replace every running task of a job with a fresh one, a few at a time, as an update
    does (health checks, max_parallel and the budget hold): a new version whose only change
    is env OMEGA_RESTARTED_AT, as `kubectl rollout restart` annotates its pods."""
    from datetime import UTC, datetime

    from cellstate import JobSpec
    from cellstate.wire import SpecError, parse
    from omega.cli import JOB_ENDED

    before = call(addr, token, lambda cell: cell.job(job))
    state = before["state"]
    if state in (*JOB_ENDED, "idle"):
        why = "scaled to zero" if state == "idle" else "ended"
        fail(f"job {job} is {state} ({why}): no task runs to restart", 1)
    doc = history_of(addr, token, job)["versions"][-1]["spec"]
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    doc = {**doc, "env": {**doc.get("env", {}), RESTARTED_AT: now}}
    try:
        spec = parse(doc, JobSpec)
    except SpecError as exc:  # pragma: no cover - the cell's own spec, read back
        fail(f"job {job}'s spec did not read back: {exc}")
    roll_out(addr, token, job, spec, before, wait, timeout, as_json)


def roll_out(
    addr: str,
    token: str,
    job: str,
    spec: JobSpec,
    before: JobView,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Send `spec` as `job`'s next version (the job read as `before`); say what became of
    it, and with `wait` follow its update to the end."""
    call(addr, token, lambda cell: cell.update(job, spec))
    after = call(addr, token, lambda cell: cell.job(job))
    version = after["version"]
    rollout = after["rollout"]
    rolling = version != before["version"] and rollout is not None and rollout["version"] == version
    if as_json and not wait:
        emit_json({"job": job, "version": version, "rollout": rollout if rolling else None})
    elif not as_json:
        if version == before["version"]:
            console().print(f"job [bold]{job}[/bold]: the spec is unchanged (version {version})")
        elif not rolling:
            console().print(
                f"job [bold]{job}[/bold] is at version {version}: nothing placed to roll"
            )
        else:
            console().print(f"job [bold]{job}[/bold] updating to version {version}")
    if wait and rolling:
        follow(addr, token, job, version, timeout, as_json)


def follow(addr: str, token: str, job: str, version: int, timeout: float, as_json: bool) -> None:
    """Show an update's progress until it ends; exit 1 unless it succeeded."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        view = call(addr, token, lambda cell: cell.job(job))
        rollout = next(
            (r for r in history_of(addr, token, job)["rollouts"] if r["version"] == version),
            None,
        )
        if rollout is None:
            fail(f"job {job} has no update to version {version}")
        line = (
            f"{job} v{version} {rollout['state']}: {rollout['current']}/{rollout['size']} "
            f"tasks on it, {view['available']} available"
        )
        if line != last and not as_json:
            console().print(line, highlight=False)
            last = line
        if rollout["state"] in ENDED:
            break
        if time.monotonic() > deadline:
            fail(f"update of {job} to version {version} not done after {timeout:.0f} s: {line}")
        time.sleep(0.5)
    if as_json:
        emit_json({"job": job, "version": version, "rollout": rollout})
    if rollout["state"] != "succeeded":
        why = f": {rollout['reason']}" if rollout["reason"] else ""
        back = f"; reverted to version {rollout['reverted_to']}" if rollout["reverted_to"] else ""
        fail(f"update of {job} to version {version} {rollout['state']}{why}{back}")


def history_of(addr: str, token: str, job: str) -> HistoryView:
    return call(addr, token, lambda cell: cell.history(job))


@app.command()
def history(
    job: Annotated[str, typer.Argument(help="The job.")],
    addr: Addr = "",
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """A job's spec versions, what changed between them, and its updates."""
    found = history_of(addr, token, job)
    if as_json:
        emit_json(found)
        return
    from rich.table import Table

    table = Table("version", "made at", "changes", box=None)
    for version in found["versions"]:
        number = version["version"]
        marks = [
            m
            for m, v in (("current", found["version"]), ("stable", found["stable_version"]))
            if v == number
        ]
        label = f"{number}" + (f" ({', '.join(marks)})" if marks else "")
        changes = "\n".join(version["changes"]) or ("submitted" if number == 1 else "-")
        table.add_row(label, clock(version["made_at"]), literal(changes))
    console().print(table)
    for rollout in found["rollouts"]:
        why = f" ({literal(rollout['reason'])})" if rollout["reason"] else ""
        console().print(
            f"update to v{rollout['version']} from v{rollout['previous']}: {rollout['state']}{why}",
            highlight=False,
        )


@app.command()
def revert(
    job: Annotated[str, typer.Argument(help="The job.")],
    version: Annotated[int, typer.Argument(help="The earlier version whose spec to bring back.")],
    addr: Addr = "",
    token: Token = "",
    wait: Annotated[bool, typer.Option(help="Follow the update it starts.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 600.0,
) -> None:
    """Roll a job back to an earlier spec, as its next version (its size stays)."""
    call(addr, token, lambda cell: cell.revert(job, version))
    view = call(addr, token, lambda cell: cell.job(job))
    console().print(f"job [bold]{job}[/bold] is at version {view['version']} (spec of {version})")
    rollout = view["rollout"]
    if wait and rollout is not None and rollout["version"] == view["version"]:
        follow(addr, token, job, view["version"], timeout, False)


@app.command()
def promote(
    job: Annotated[str, typer.Argument(help="The job whose canaries to promote.")],
    addr: Addr = "",
    token: Token = "",
) -> None:
    """Let a canary update go on to replace the rest of the job's tasks."""
    call(addr, token, lambda cell: cell.promote(job))
    console().print(f"job [bold]{job}[/bold] promoted")


# A negative count is an argument to refuse by name, not an unknown option.
@app.command(context_settings={"ignore_unknown_options": True})
def scale(
    job: Annotated[str, typer.Argument(help="The job.")],
    tasks: Annotated[int, typer.Argument(help="How many tasks it should run.")],
    addr: Addr = "",
    token: Token = "",
) -> None:
    """Run N tasks of a job: up places new ones, down stops the highest-indexed first,
    within the job's budget. 0 keeps the job, idle, with its versions, until it is scaled
    up again."""
    if tasks < 0:
        fail(f"tasks: {tasks} is out of range: use 0 (idle) or more", 2)
    call(addr, token, lambda cell: cell.scale(job, tasks))
    console().print(f"job [bold]{job}[/bold] scaled to {count(tasks, 'task')}")


@app.command()
def drain(
    machine: Annotated[str, typer.Argument(help="The machine.")],
    addr: Addr = "",
    token: Token = "",
    deadline: Annotated[
        float | None,
        typer.Option(help="Seconds after which whatever is still on it is evicted."),
    ] = None,
    undo: Annotated[bool, typer.Option("--undo", help="Bring the machine back up.")] = False,
) -> None:
    """Move a machine's tasks elsewhere (replacement first, within each job's budget)
    and place nothing new on it; survives agent restarts and store failovers."""
    from cellstate import MachineState

    if undo and deadline is not None:
        fail("--deadline is for draining, not with --undo", 2)
    if deadline is not None and deadline < 0:
        fail(f"--deadline: {deadline} is out of range: give seconds >= 0", 2)
    state = MachineState.UP if undo else MachineState.DRAINING
    call(addr, token, lambda cell: cell.set_machine_state(machine, state, deadline=deadline))
    if undo:
        console().print(f"machine [bold]{machine}[/bold] is up")
    else:
        by = f"; what is left is evicted in {deadline:g} s" if deadline is not None else ""
        console().print(f"machine [bold]{machine}[/bold] draining{by}")


# -- update --plan ---------------------------------------------------------------


def show_plan(addr: str, token: str, job: str, spec: JobSpec, as_json: bool) -> None:
    """Run the job's scheduler core against a snapshot of the live cell with the
    update applied, and show what it would commit first; nothing is committed."""
    found = history_of(addr, token, job)
    from cellstate.views import spec_diff
    from cellstate.wire import to_json

    current = found["versions"][-1]["spec"]
    changes = spec_diff(current, to_json(spec, type(spec)))
    placements = plan_placements(addr, token, job, spec)
    if as_json:
        emit_json({"job": job, "changes": changes, **placements})
        return
    console().print(f"job [bold]{job}[/bold] version {found['version']} -> next:")
    for line in changes or ["no change"]:
        console().print(f"  {literal(line)}", highlight=False)
    if placements.get("error"):
        console().print(f"[red]{literal(placements['error'])}[/red]")
        return
    for claim in placements["claims"]:
        how = "in place of" if claim["stops_first"] else "beside"
        console().print(
            f"  replacement for {claim['task']} on {claim['machine']} ({how} it)", highlight=False
        )
    if not placements["claims"]:
        console().print("  no replacement would be placed now", highlight=False)


def plan_placements(addr: str, token: str, job: str, spec: JobSpec) -> dict[str, Any]:
    import random

    from cellstate import CellState, Ok, UpdateJob
    from schedulers.core import SchedulerCore

    def snapshot(cell: SyncCellClient) -> bytes:
        return cell.snapshot()

    cell = CellState.restore(call(addr, token, snapshot))
    applied = cell.apply(UpdateJob(job, spec, at=cell.now))
    if not isinstance(applied.result, Ok):
        result: Any = applied.result
        return {"error": f"{result.code}: {result.message} ({result.field})", "claims": []}
    core = SchedulerCore("plan", spec.scheduler, rng=random.Random(0))
    decision = core.decide(cell, cell.now)
    claims = [] if decision is None else list(decision.transaction.claims)
    return {
        "claims": [
            {
                "task": c.task,
                "machine": c.machine,
                "stops_first": c.task in c.victims,
                "victims": [v for v in c.victims if v != c.task],
            }
            for c in claims
            if c.replace
        ]
    }
