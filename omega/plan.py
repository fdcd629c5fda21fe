"""`omega plan FILE`: what the scheduler would do with a job, on the live cell, before
it is submitted; and the token that `omega submit FILE --plan TOKEN` commits.

Borg's Fauxmaster answers capacity questions by running the real scheduler on a copy
of the cell. Here every scheduler already holds the whole cell, so a plan is the same
thing on the client: a snapshot through the API (`SyncCellClient.snapshot`) restored
into a `CellState`, the job submitted to that copy, and one decision of the real
`SchedulerCore` of the job's class, with every other pending job set aside (the plan
answers for this job alone). It shows how many tasks fit, on which machines, whom
they would preempt, and what filtered the rest (the core's `JobMetric`).

The token records the job id, a digest of the spec and every claim with the
sequence number of the machine it read. `omega submit --plan` sends them back as one
`SubmitPlan` command: the cell submits the job placed exactly so if none of those
machines changed since, and otherwise submits nothing and names the machines that
changed (see `cellstate.SubmitPlan` for why one command and not a submit followed by
a commit). Tasks the plan could not place stay pending for the job's scheduler.

Registered onto the `omega` app by `omega.cli`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from omega.cli import Addr, AsJson, Token, app, call, console, emit_json, fail, spec_or_exit
from omega.units import count

if TYPE_CHECKING:
    from cellstate import Claim, JobSpec

TOKEN_VERSION = 1


class TokenError(ValueError):
    """A plan token that cannot be used, and why."""


def spec_digest(spec: JobSpec) -> str:
    """A short digest of the spec's canonical form: a token is for one spec."""
    import orjson

    from cellstate import JobSpec
    from cellstate.wire import internal

    canonical = orjson.dumps(internal.unstructure(spec, JobSpec), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def encode_token(job: str, spec: JobSpec, claims: list[Claim]) -> str:
    import orjson

    doc = {
        "v": TOKEN_VERSION,
        "job": job,
        "spec": spec_digest(spec),
        "claims": [[c.task, c.machine, c.seqnum, list(c.victims)] for c in claims],
    }
    return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")


def decode_token(token: str, spec: JobSpec) -> tuple[str, list[Claim]]:
    """The job id and claims of `token`, which must have been planned for `spec`."""
    import orjson

    from cellstate import Claim

    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = orjson.loads(raw)
        if not isinstance(doc, dict) or doc.get("v") != TOKEN_VERSION:
            raise TokenError("not a token `omega plan` printed")
        job, digest = doc["job"], doc["spec"]
        claims = [
            Claim(str(task), str(machine), int(seqnum), tuple(str(v) for v in victims))
            for task, machine, seqnum, victims in doc["claims"]
        ]
        if not isinstance(job, str):
            raise TokenError("not a token `omega plan` printed")
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, TokenError):
            raise
        raise TokenError(f"not a token `omega plan` printed ({type(exc).__name__})") from None
    if digest != spec_digest(spec):
        raise TokenError("it was planned for another spec; run `omega plan` on this file again")
    return job, claims


def make_plan(snapshot: bytes, spec: JobSpec, job: str) -> dict[str, Any]:
    """Run the real scheduler core for `spec` as `job` on a restored `snapshot`."""
    import random

    from cellstate import CellState, Ok, SubmitJob
    from schedulers.core import SchedulerCore

    cell = CellState.restore(snapshot)
    applied = cell.apply(SubmitJob(job, spec, at=cell.now))
    if not isinstance(applied.result, Ok):
        result: Any = applied.result
        return {"error": f"{result.code}: {result.message} ({result.field})"}
    core = SchedulerCore(
        "plan", spec.scheduler, rng=random.Random(0), max_claims=max(1, spec.tasks)
    )
    # The plan answers for this job alone: work already waiting is set aside.
    core.parked = {jid: "planning another job" for jid in cell.pending_jobs if jid != job}
    decision = core.decide(cell, cell.now)
    claims = (
        []
        if decision is None
        else [
            c
            for c in decision.transaction.claims
            if not c.replace and c.task in cell.tasks and cell.tasks[c.task].job == job
        ]
    )
    metric = core.explain(cell, job).last
    return {
        "job": job,
        "tasks": spec.tasks,
        "fits": len(claims),
        "placements": [
            {"task": c.task, "machine": c.machine, "seqnum": c.seqnum, "victims": list(c.victims)}
            for c in claims
        ],
        "preempts": sorted({v for c in claims for v in c.victims}),
        "explanation": None if metric is None else metric.as_dict(),
        "token": encode_token(job, spec, claims),
    }


@app.command()
def plan(
    file: Annotated[Path, typer.Argument(help="Job spec: YAML, TOML or JSON.")],
    addr: Addr = "",
    token: Token = "",
    job_id: Annotated[str, typer.Option("--id", help="Job id (default: name-<random>).")] = "",
    as_json: AsJson = False,
) -> None:
    """What the job's scheduler would do with FILE on the live cell now: how many tasks fit,
    where, whom they would preempt, what filtered the rest; and a token for
    `omega submit FILE --plan TOKEN`, which commits exactly that placement or nothing."""
    from cellstore.ids import new_job_id

    spec = spec_or_exit(file)
    job = job_id or new_job_id(spec.name)
    found = make_plan(call(addr, token, lambda cell: cell.snapshot()), spec, job)
    if "error" in found:
        fail(found["error"], 2)
    if as_json:
        emit_json(found)
        return
    out = console()
    out.print(f"job [bold]{job}[/bold]: {found['fits']} of {count(found['tasks'], 'task')} fit")
    per_machine: dict[str, int] = {}
    for p in found["placements"]:
        per_machine[p["machine"]] = per_machine.get(p["machine"], 0) + 1
    for machine, n in sorted(per_machine.items()):
        out.print(f"  {machine}: {n}")
    if found["preempts"]:
        out.print(f"would preempt: {' '.join(found['preempts'])}")
    metric = found["explanation"]
    if metric and found["fits"] < found["tasks"]:
        why = {**metric["filtered"], **metric["exhausted"]}
        told = ", ".join(f"{n} {reason}" for reason, n in sorted(why.items()))
        if metric.get("quota_held"):
            held = f"{metric['quota_held']} held back by {spec.owner}'s quota in {spec.band.label}"
            told = f"{held}; machines: {told}" if told else held
        else:
            told = f"machines: {told or '-'}"
        out.print(f"the rest: {metric['unplaced_reason'] or 'no room'} ({told})")
    if not found["fits"]:
        # A plan of no placements would submit the job to wait, as a plain submit does.
        out.print(
            f"nothing to commit: no task fits now (omega submit {file} submits it to wait "
            "until one does)",
            soft_wrap=True,
        )
        return
    # Soft-wrapped: the terminal may fold the lines, but no newline is printed inside the
    # token, so the command copies whole.
    out.print(f"plan token: {found['token']}", soft_wrap=True)
    out.print(f"commit it: omega submit {file} --plan {found['token']}", soft_wrap=True)


def submit_planned(addr: str, token: str, spec: JobSpec, plan_token: str, job_id: str) -> str:
    """Send `plan_token`'s claims for `spec` as one `SubmitPlan`; the job id. Exits 2 on a
    bad token, 1 (naming the machines that changed) when the plan is stale."""
    try:
        job, claims = decode_token(plan_token, spec)
    except TokenError as exc:
        fail(f"plan token: {exc}", 2)
    if job_id and job_id != job:
        fail(f"--id {job_id!r}: the plan placed job {job!r}; drop --id or plan again", 2)
    applied = call(addr, token, lambda cell: cell.submit_plan(job, spec, claims))
    console().print(
        f"submitted job [bold]{job}[/bold] placed as planned: "
        f"{applied.result.accepted} of {count(spec.tasks, 'task')}"
    )
    return job
