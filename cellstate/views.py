"""Read models of a cell: the JSON shapes the API serves and the CLI prints.

Field names here are a public contract (`omega ... --json` prints them):
jobs `id,name,scheduler,priority,state,tasks`, `labels`; tasks `id,job,state,machine`,
`version`, `healthy`; machines `id,state,capacity,used,domain,labels`. Extra
fields may follow.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from cellstate.model import (
    ACTIVE_STATES,
    AGENT_LABEL,
    Band,
    Job,
    JobSpec,
    Machine,
    Rollout,
    Task,
    TaskState,
)
from cellstate.resources import DIMENSIONS, REQUIRED, format_amount
from cellstate.state import CellState
from cellstate.wire import to_json


def resources(amounts: Mapping[str, int], named: bool = False) -> dict[str, Any]:
    """A vector as people read it (`"cpu": "500m"`) and as scripts do
    (`"cpu_milli": 500`, `"memory_bytes"`, `"disk_bytes"`; devices as counts).
    cpu and memory are always present, other dimensions only where non-zero; with
    `named` (a quota's limit, where a dimension not named is unlimited), exactly the
    dimensions `amounts` names, zeros included."""
    out: dict[str, Any] = {}
    dims = amounts if named else (*REQUIRED, *(d for d in amounts if d not in REQUIRED))
    for dim in dims:
        amount = amounts.get(dim, 0)
        if not named and dim not in REQUIRED and not amount:
            continue
        known = DIMENSIONS.get(dim)
        if known is None:
            out[dim] = amount
        else:
            out[dim] = format_amount(dim, amount)
            out[f"{dim}_{known.unit}"] = amount
    return out


def job_view(cell: CellState, job: Job) -> dict[str, Any]:
    spec = job.spec
    counts = {str(state): n for state, n in sorted(job.counts.items()) if n}
    return {
        "id": job.id,
        "name": spec.name,
        "scheduler": str(spec.scheduler),
        "priority": spec.priority,
        "state": str(job.state),
        "tasks": counts,
        "owner": spec.owner,
        "band": spec.band.label,
        "size": spec.tasks,
        "submitted_at": job.submitted_at,
        "gang": spec.gang,
        "resources": resources(spec.resources.amounts),
        "command": list(spec.command),
        "version": job.spec_version,
        "stable_version": job.stable_version,
        "available": job.available,
        "max_unavailable": spec.max_unavailable,
        "rollout": rollout_view(cell, job, job.rollouts[-1]) if job.rollouts else None,
        "labels": dict(spec.labels),
    }


def rollout_view(cell: CellState, job: Job, rollout: Rollout) -> dict[str, Any]:
    size = job.spec.tasks
    current = sum(
        1
        for t in cell.job_tasks(job)
        if t.index < size
        and t.state in ACTIVE_STATES
        and cell.replacement(t) is None
        and job.shapes[t.spec_version - 1] == job.shapes[rollout.version - 1]
    )
    return {
        "version": rollout.version,
        "previous": rollout.previous,
        "state": str(rollout.state),
        "started_at": rollout.started_at,
        "updated_at": rollout.updated_at,
        "reason": rollout.reason,
        "reverted_to": rollout.reverted_to,
        "current": current,
        "size": size,
    }


def history(cell: CellState, job: Job) -> dict[str, Any]:
    """Every version of a job with what changed from the one before, and its updates."""
    versions = []
    previous: dict[str, Any] = {}
    for number, (spec, made_at) in enumerate(zip(job.versions, job.version_times, strict=True), 1):
        doc = to_json(spec, JobSpec)
        versions.append(
            {
                "version": number,
                "made_at": made_at,
                "spec": doc,
                "changes": spec_diff(previous, doc) if number > 1 else [],
            }
        )
        previous = doc
    return {
        "job": job.id,
        "version": job.spec_version,
        "stable_version": job.stable_version,
        "versions": versions,
        "rollouts": [rollout_view(cell, job, r) for r in job.rollouts],
    }


def spec_diff(old: Mapping[str, Any], new: Mapping[str, Any], path: str = "") -> list[str]:
    """What changed between two specs as written, one readable line per field:
    `command: ['serve'] -> ['serve', '--v2']`, `update.max_parallel: 1 -> 2`."""
    lines = []
    for key in sorted({*old, *new}):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        name = f"{path}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines.extend(spec_diff(a, b, f"{name}."))
        elif key not in old:
            lines.append(f"{name}: added {b!r}")
        elif key not in new:
            lines.append(f"{name}: removed (was {a!r})")
        else:
            lines.append(f"{name}: {a!r} -> {b!r}")
    return lines


def task_view(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "job": task.job,
        "state": str(task.state),
        "machine": task.machine,
        "incarnation": task.incarnation,
        "priority": task.priority,
        "exit_code": task.exit_code,
        "reason": task.reason,
        "restarts": task.restarts,
        "evictions": task.evictions,
        "submitted_at": task.submitted_at,
        "placed_at": task.placed_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "usage": resources(task.usage) if task.usage_at else None,
        # The job spec version this task runs, and its health check verdict: true,
        # false, or null when its job has no check, it is not judged yet or it has
        # ended (the state keeps the last verdict, but a killed task is not healthy).
        "version": task.spec_version,
        "healthy": task.healthy if task.state in ACTIVE_STATES else None,
        "index": task.index,
        "replaces": task.replaces,
        "replaced_by": task.replaced_by,
        # The port its running incarnation declared (`$OMEGA_PORT_FILE`), while it runs.
        "port": task.port if task.state is TaskState.RUNNING else None,
    }


def _sum(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {dim: a.get(dim, 0) + b.get(dim, 0) for dim in (*a, *(d for d in b if d not in a))}


def machine_view(machine: Machine) -> dict[str, Any]:
    account = machine.account
    return {
        "id": machine.id,
        "state": str(machine.state),
        "capacity": resources(account.capacity),
        "used": resources(_sum(account.used, account.best_effort)),
        "domain": machine.domain,
        "labels": dict(machine.labels),
        "tasks": len(machine.tasks),
        "seqnum": machine.seqnum,
        "reserved": resources(account.reserved),
        "last_heartbeat": machine.last_heartbeat,
        "drain_deadline": machine.drain_deadline,
    }


def list_jobs(cell: CellState, state: str | None = None) -> list[dict[str, Any]]:
    return [
        job_view(cell, job)
        for job in cell.jobs.values()
        if state is None or str(job.state) == state
    ]


def list_tasks(
    cell: CellState,
    job: str | None = None,
    state: str | None = None,
    machine: str | None = None,
    limit: int = 100_000,
) -> list[dict[str, Any]]:
    if job is not None:
        found = cell.jobs.get(job)
        source = cell.job_tasks(found) if found else iter(())
    elif machine is not None:
        holder = cell.machines.get(machine)
        source = (cell.tasks[t] for t in sorted(holder.tasks)) if holder else iter(())
    else:
        source = iter(cell.tasks.values())
    out = []
    for task in source:
        if state is not None and str(task.state) != state:
            continue
        if machine is not None and task.machine != machine:
            continue
        out.append(task_view(task))
        if len(out) >= limit:
            break
    return out


def endpoints(cell: CellState, job: Job) -> list[dict[str, Any]]:
    """Where `job`'s running tasks serve: each one that declared a port, at the host of its
    machine's agent (`AGENT_LABEL`), in task order; `ready` when it is running and healthy,
    or running with no check to judge it (what a load balancer should send traffic to, as
    a Kubernetes Service's ready endpoints or Nomad's passing service checks)."""
    out = []
    for task in cell.job_tasks(job):
        if task.state is not TaskState.RUNNING or task.port is None or task.machine is None:
            continue
        agent = cell.machines[task.machine].labels.get(AGENT_LABEL)
        if not agent:
            continue  # a hollow machine: its tasks declare nothing anyone could reach
        host = agent.split("://", 1)[-1].rsplit(":", 1)[0]
        out.append(
            {
                "task": task.id,
                "machine": task.machine,
                "address": f"{host}:{task.port}",
                "host": host.strip("[]"),
                "port": task.port,
                "ready": task.healthy is True or not task.checked,
                "version": task.spec_version,
            }
        )
    return out


def list_machines(cell: CellState, state: str | None = None) -> list[dict[str, Any]]:
    """Machines (those in `state`, if given) by id, numbers read as numbers (agent-2 before
    agent-10): not in the order their agents happened to register, which differs from one
    start to the next."""
    chosen = [m for m in cell.machine_list if state is None or m.state == state]
    return [machine_view(m) for m in sorted(chosen, key=_by_id)]


_NUMBERS = re.compile(r"(\d+)")


def _by_id(machine: Machine) -> tuple[str | int, ...]:
    # Split, the parts alternate text and digits, so like compares with like.
    parts = _NUMBERS.split(machine.id)
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


def list_quotas(cell: CellState) -> list[dict[str, Any]]:
    """Every owner and band with a quota set or quota taken: the limit (null: unlimited;
    it names only the dimensions it limits) and what its regular tasks take."""
    limits, taken = cell.ledger.limits, cell.ledger.usage()
    return [
        {
            "owner": owner,
            "band": Band(band).label,
            "limit": resources(limits[key], named=True) if key in limits else None,
            "taken": resources(taken.get(key, {})),
        }
        for key in sorted({*limits, *taken})
        for owner, band in (key,)
    ]


def list_weights(cell: CellState) -> list[dict[str, Any]]:
    """Every owner with a weight set or regular tasks placed: its weight, dominant
    share and weighted share (`cellstate.fairshare`)."""
    from cellstate.fairshare import shares

    return [
        {"owner": owner, "weight": weight, "share": share, "weighted_share": share / weight}
        for owner, (weight, share) in shares(cell).items()
    ]


def cell_summary(cell: CellState) -> dict[str, Any]:
    tasks: dict[str, int] = {}
    for job in cell.jobs.values():
        for state, n in job.counts.items():
            tasks[str(state)] = tasks.get(str(state), 0) + n
    # Counted by state first and named after: at 100,000 machines, naming each machine's
    # state made one summary cost 0.1 s of the replica's time, and clients poll it.
    by_state = Counter(machine.state for machine in cell.machine_list)
    machines = {str(state): n for state, n in by_state.items()}
    return {
        "version": cell.version,
        "rules": cell.rules,
        "now": cell.now,
        "jobs": len(cell.jobs),
        "tasks": tasks,
        "machines": machines,
        "schedulers": [
            {
                "name": r.name,
                "kind": str(r.kind),
                "figures": r.figures,
                "reported_at": r.at,
                "blocked": len(r.explanations),
            }
            for r in cell.schedulers.values()
        ],
    }


def explain(cell: CellState, target: str) -> dict[str, Any] | None:
    """Why a job or task is where it is: its state, and each scheduler's account."""
    task = cell.tasks.get(target)
    job_id = target if target in cell.jobs or task is None else task.job
    job = cell.jobs.get(job_id)
    if job is None:
        return None
    accounts = {
        r.name: r.explanations[job_id] for r in cell.schedulers.values() if job_id in r.explanations
    }
    conflicts = {r.name: conflicts_view(r.figures) for r in cell.schedulers.values()}
    pending = [t.id for t in cell.pending_tasks(job)]
    active = sum(1 for t in cell.job_tasks(job) if t.state in ACTIVE_STATES)
    return {
        "job": job_view(cell, job),
        "task": task_view(task) if task else None,
        "pending": len(pending),
        "active": active,
        "schedulers": accounts,
        "conflicts": {name: c for name, c in conflicts.items() if c["by_rival"]},
        "waiting": bool(pending) and (task is None or task.state is TaskState.PENDING),
    }


# Where a scheduler's flat figures keep its conflicts (`schedulers.metrics`).
_CONFLICT_KEYS = (("by_rival", "conflicts_by_rival."), ("hot_machines", "hot_machines."))


def conflicts_view(figures: dict[str, float]) -> dict[str, dict[str, int]]:
    """A scheduler's rejected claims by who they lost to and on its hottest
    machines, read back from the flat figures it reports, largest first."""
    out: dict[str, dict[str, int]] = {}
    for name, prefix in _CONFLICT_KEYS:
        found = {k[len(prefix) :]: int(v) for k, v in figures.items() if k.startswith(prefix)}
        out[name] = dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))
    return out
