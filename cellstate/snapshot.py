"""The cell state's own serialised form: compact, versioned, canonical.

A snapshot holds only what cannot be derived (machines, jobs with their tasks,
quotas, the window of remembered command ids); running sums such as a
machine's claimed resources are rebuilt on load, then checked. Records are
written as positional rows in a fixed order, so that the same state always
gives the same bytes: `dump(load(b)) == b`, and two copies fed the same
commands can be compared byte for byte.
"""

from __future__ import annotations

from typing import Any

import orjson

from cellstate.commands import ReportScheduler, Result
from cellstate.model import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Job,
    JobSpec,
    Machine,
    MachineState,
    Task,
    TaskState,
    task_id,
)
from cellstate.state import PENDING, CellConfig, CellState
from cellstate.wire import internal

FORMAT = 1

_TASK_FIELDS = (
    "state",
    "machine",
    "incarnation",
    "spec_version",
    "priority",
    "cpu",
    "memory",
    "submitted_at",
    "placed_at",
    "started_at",
    "finished_at",
    "exit_code",
    "reason",
    "restarts",
    "evictions",
    "usage_cpu",
    "usage_memory",
    "reserved_cpu",
    "reserved_memory",
    "usage_at",
)


class SnapshotError(ValueError):
    """A snapshot that this version cannot read."""


def dump(cell: CellState) -> bytes:
    config = cell.config
    doc = {
        "format": FORMAT,
        "version": cell.version,
        "now": cell.now,
        "config": [config.reservation_margin, config.reservation_decay_s, config.dedup_window],
        "machines": [
            [m.id, m.cpu, m.memory, m.labels, m.domain, m.state.value, m.seqnum, m.last_heartbeat]
            for m in cell.machine_list
        ],
        "jobs": [
            [
                job.id,
                internal.unstructure(job.spec, JobSpec),
                job.submitted_at,
                job.spec_version,
                job.killed,
                [[getattr(t, f) for f in _TASK_FIELDS] for t in cell.job_tasks(job)],
            ]
            for job in cell.jobs.values()
        ],
        "quotas": [[owner, band, cpu, mem] for (owner, band), (cpu, mem) in cell.quotas.items()],
        "schedulers": [
            internal.unstructure(report, ReportScheduler) for report in cell.schedulers.values()
        ],
        "recent": [
            [cid, version, internal.unstructure(result, Result)]
            for cid, (version, result) in cell.recent.items()
        ],
    }
    return orjson.dumps(doc)


def load(data: bytes | str) -> CellState:
    doc: dict[str, Any] = orjson.loads(data)
    if doc.get("format") != FORMAT:
        raise SnapshotError(f"snapshot format {doc.get('format')!r}; this build reads {FORMAT}")
    margin, decay, window = doc["config"]
    cell = CellState(CellConfig(margin, decay, window))
    cell.version = doc["version"]
    cell.now = doc["now"]
    for mid, cpu, memory, labels, domain, state, seqnum, heartbeat in doc["machines"]:
        machine = Machine(
            id=mid,
            index=len(cell.machine_list),
            cpu=cpu,
            memory=memory,
            labels=labels,
            domain=domain,
            state=MachineState(state),
            seqnum=seqnum,
            last_heartbeat=heartbeat,
        )
        cell.machines[mid] = machine
        cell.machine_list.append(machine)
    for jid, spec_doc, submitted_at, spec_version, killed, rows in doc["jobs"]:
        spec = internal.structure(spec_doc, JobSpec)
        job = Job(
            id=jid, spec=spec, submitted_at=submitted_at, spec_version=spec_version, killed=killed
        )
        cell.jobs[jid] = job
        for index, row in enumerate(rows):
            values = dict(zip(_TASK_FIELDS, row, strict=True))
            values["state"] = TaskState(values["state"])
            task = Task(
                id=task_id(jid, index),
                job=jid,
                owner=spec.owner,
                index=index,
                best_effort=spec.band == 0,
                **values,
            )
            cell.tasks[task.id] = task
            _account(cell, job, task)
    for owner, band, cpu, memory in doc["quotas"]:
        cell.quotas[(owner, band)] = (cpu, memory)
    for report in doc["schedulers"]:
        structured = internal.structure(report, ReportScheduler)
        cell.schedulers[structured.name] = structured
    for cid, version, result in doc["recent"]:
        cell.recent[cid] = (version, internal.structure(result, Result))
    return cell


def _account(cell: CellState, job: Job, task: Task) -> None:
    """Rebuild the running sums a live cell keeps for `task`."""
    state = task.state
    job.counts[state] = job.counts.get(state, 0) + 1
    if state is PENDING:
        cell.pending_jobs[job.id] = None
    elif state in TERMINAL_STATES and (
        state is TaskState.FAILED or (state is TaskState.EXITED and task.exit_code)
    ):
        job.failures += 1
    if state not in ACTIVE_STATES:
        return
    machine = cell.machines[task.machine]  # type: ignore[index]
    machine.tasks[task.id] = None
    if task.best_effort:
        machine.be_cpu += task.cpu
        machine.be_memory += task.memory
        return
    machine.used_cpu += task.cpu
    machine.used_memory += task.memory
    machine.reserved_cpu += task.reserved_cpu
    machine.reserved_memory += task.reserved_memory
    usage = cell.owner_usage.setdefault((task.owner, task.priority // 100), [0, 0])
    usage[0] += task.cpu
    usage[1] += task.memory
