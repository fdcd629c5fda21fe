"""The cell state's own serialised form: compact, versioned, canonical.

A snapshot holds only what cannot be derived (machines, jobs with their tasks,
quotas, the window of remembered command ids); every machine's books and every
owner's quota taken are recounted on load by the ledger, then checked. Records
are written as positional rows in a fixed order, so that the same state always
gives the same bytes: `dump(load(b)) == b`, and two copies fed the same
commands can be compared byte for byte.

A task's `healthy` (the agent's health check verdict) is state like any
other column; rows without it (format 1, and format 2 before checks) load
with None.

Format 3 (rules 3) writes every spec version of a job with when it was
made, its rollouts, and each task's id and index (a job's tasks are no
longer one per index: a replacement runs beside the task it replaces), the
time a task became healthy and what it replaces; a machine's drain deadline.
Under rules 4 a machine row ends with one more column, `[version, actor]`
of its last change (`Machine.changed`), written only when known: rows
without it (older format-3 snapshots) load with None and dump as they were.
Under rules 5 a snapshot may end with `weights`, `[[owner, weight], ...]`
sorted by owner, written only when some owner's weight is not 1: older
snapshots lack it and dump as they were.
Under rules 6 a snapshot may end, after `weights`, with `tokens`, rows
`[name, role, digest, machines, created]` sorted by name (digests only, never a
secret), written only when the cell has a token: older snapshots lack it.
Under rules 13 a task row ends with one more column, the port its running incarnation
declared, written only when known: rows without it load with None and dump as they were.
Under rules 14 a machine row may end, after its last change, with the labels an operator
set or took away (`{key: value or null}`), written only when there are some.
Format 2 loads as jobs of one version with a task per index.

Format 2 writes the cell's rules (`model.RULES`) and resource vectors as
`{dimension: amount}` objects (cpu, memory, disk, devices). Format 1, written
before there were more than two dimensions (cpu and memory as two columns)
and always under rules 1, still loads: a data dir of the previous release
comes back with every acknowledged job, task and machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from cellstate.commands import ReportScheduler, Result
from cellstate.ledger import EMPTY, Account, Need, pack
from cellstate.model import (
    ACTIVE_STATES,
    FIRST_RULES,
    TERMINAL_STATES,
    CellConfig,
    Job,
    JobSpec,
    Machine,
    MachineState,
    Role,
    Rollout,
    RolloutState,
    Task,
    TaskState,
    TokenRecord,
    task_id,
)
from cellstate.wire import RESULT, internal

if TYPE_CHECKING:
    from cellstate.state import CellState

FORMAT = 3
READS = (1, 2, 3)

# Task columns, in row order. A task's demand is its job spec's resources and
# is not written; `usage` and `reserved` are vectors (reserved only while the
# task is placed and its reservation differs from its demand, else null).
_TASK_FIELDS = (
    "state",
    "machine",
    "incarnation",
    "spec_version",
    "priority",
    "submitted_at",
    "placed_at",
    "started_at",
    "finished_at",
    "exit_code",
    "reason",
    "restarts",
    "evictions",
    "usage",
    "reserved",
    "usage_at",
    "healthy",
)
_USAGE, _RESERVED = _TASK_FIELDS.index("usage"), _TASK_FIELDS.index("reserved")
# Format 1's columns: limits, usage and reservation as cpu and memory columns.
_TASK_FIELDS_1 = (
    *_TASK_FIELDS[:5],
    "cpu",
    "memory",
    *_TASK_FIELDS[5:13],
    "usage_cpu",
    "usage_memory",
    "reserved_cpu",
    "reserved_memory",
    "usage_at",
)


_TASK_STATES = {state.value: state for state in TaskState}


class SnapshotError(ValueError):
    """A snapshot that this version cannot read."""


def dump(cell: CellState) -> bytes:
    config = cell.config
    doc = {
        "format": FORMAT,
        "rules": cell.rules,
        "version": cell.version,
        "now": cell.now,
        "config": [config.reservation_margin, config.reservation_decay_s, config.dedup_window],
        "machines": [_machine_row(m) for m in cell.machine_list],
        "jobs": [
            [
                job.id,
                [internal.unstructure(spec, JobSpec) for spec in job.versions],
                job.version_times,
                job.killed,
                job.stable_version,
                job.serial,
                [_rollout_row(r) for r in job.rollouts],
                [_task_row(job, t) for t in cell.job_tasks(job)],
            ]
            for job in cell.jobs.values()
        ],
        "quotas": [[owner, band, limit] for (owner, band), limit in cell.ledger.limits.items()],
        "schedulers": [
            internal.unstructure(report, ReportScheduler) for report in cell.schedulers.values()
        ],
        "recent": [
            [cid, version, internal.unstructure(result, Result)]
            for cid, (version, result) in cell.recent.items()
        ],
    }
    # Last and only when set (rules 5), so a snapshot without weights dumps as it was.
    if cell.weights:
        doc["weights"] = sorted(cell.weights.items())
    if cell.tokens:
        doc["tokens"] = [
            [t.name, str(t.role), t.digest, list(t.machines), t.created]
            for _, t in sorted(cell.tokens.items())
        ]
    return orjson.dumps(doc)


def _machine_row(m: Machine) -> list[Any]:
    row = [
        m.id,
        m.account.capacity,
        m.labels,
        m.domain,
        m.state.value,
        m.seqnum,
        m.last_heartbeat,
        m.operator_state,
        m.drain_deadline,
    ]
    if m.changed is not None:
        row.append(list(m.changed))
        # After `changed`, which an operator's labelling always sets (rules 14).
        if m.label_overlay:
            row.append(m.label_overlay)
    return row


def _task_row(job: Job, task: Task) -> list[Any]:
    row = [getattr(task, f) for f in _TASK_FIELDS]
    row[_USAGE] = task.usage or None
    row[_RESERVED] = None if not task.reserved or task.reserved == task.demand else task.reserved
    # The id only where it is not the submitted task's `job.index`.
    tid = None if task.id == task_id(job.id, task.index) else task.id
    row = [tid, task.index, *row, task.healthy_at, task.replaces, task.replaced_by]
    if task.port is not None:
        row.append(task.port)
    return row


def _rollout_row(r: Rollout) -> list[Any]:
    return [
        r.version,
        r.previous,
        r.state.value,
        r.started_at,
        r.updated_at,
        r.reason,
        r.reverted_to,
    ]


def load_into(cell: CellState, data: bytes | str) -> None:
    """Fill the empty `cell` from snapshot `data` (either format)."""
    doc: dict[str, Any] = orjson.loads(data)
    form = doc.get("format")
    if form not in READS:
        raise SnapshotError(f"snapshot format {form!r}; this build reads {READS}")
    margin, decay, window = doc["config"]
    cell.config = CellConfig(margin, decay, window)
    cell.version = doc["version"]
    cell.now = doc["now"]
    cell.rules = doc.get("rules", FIRST_RULES) if form >= 2 else FIRST_RULES
    for row in doc["machines"]:
        drain_deadline = changed = None
        overlay: dict[str, str | None] = {}
        if form == 1:
            mid, cpu, memory, labels, domain, state, seqnum, heartbeat = row
            # Format 1 was written under rules 1, which kept no operator state; a replica
            # replaying the same log under rules 1 keeps none either, and `RaiseRules`
            # derives it for both alike.
            capacity, operator_state = {"cpu": cpu, "memory": memory}, None
        elif form == 2:
            mid, capacity, labels, domain, state, seqnum, heartbeat, operator_state = row
        else:
            mid, capacity, labels, domain, state, seqnum, heartbeat, operator_state = row[:8]
            drain_deadline = row[8]
            if len(row) > 9:
                changed = (row[9][0], row[9][1])
            if len(row) > 10:
                overlay = row[10]
        machine = Machine(
            id=mid,
            index=len(cell.machine_list),
            account=Account(capacity),
            labels=labels,
            domain=domain,
            state=MachineState(state),
            operator_state=None if operator_state is None else MachineState(operator_state),
            seqnum=seqnum,
            last_heartbeat=heartbeat,
            drain_deadline=drain_deadline,
            label_overlay=overlay,
            changed=changed,
        )
        cell.machines[mid] = machine
        cell.machine_list.append(machine)
    for row in doc["jobs"]:
        if form == 3:
            _load_job(cell, row)
        else:
            _load_job_2(cell, row, _task_values if form == 2 else _task_values_1)
    if cell.rules >= 3:
        cell.unsettled = {jid: None for jid, job in cell.jobs.items() if not cell.settled(job)}
    tasks = cell.tasks
    for job in cell.jobs.values():
        job.ended_at = max((tasks[t].finished_at or 0.0 for t in job.task_ids), default=0.0)
    for owner, band, *limit in doc["quotas"]:
        amounts = {"cpu": limit[0], "memory": limit[1]} if form == 1 else limit[0]
        cell.ledger.set_limit((owner, band), amounts)
    cell.device_kinds = cell.devices_in_use()
    for report in doc["schedulers"]:
        structured = internal.structure(report, ReportScheduler)
        cell.schedulers[structured.name] = structured
    for cid, version, result in doc["recent"]:
        cell.recent[cid] = (version, internal.structure(result, RESULT))
    cell.weights = {owner: weight for owner, weight in doc.get("weights", ())}
    for name, role, digest, machines, created in doc.get("tokens", ()):
        record = TokenRecord(name, Role(role), digest, tuple(machines), created)
        cell.tokens[name] = cell.token_digests[digest] = record


def _load_job(cell: CellState, row: list[Any]) -> None:
    jid, spec_docs, times, killed, stable, serial, rollouts, task_rows = row
    specs = [internal.structure(doc, JobSpec) for doc in spec_docs]
    job = Job(id=jid, spec=specs[-1], submitted_at=times[0], killed=killed)
    for spec, at in zip(specs, times, strict=True):
        job.add_version(spec, at)
    job.stable_version, job.serial = stable, serial
    for version, previous, state, started, updated, reason, reverted_to in rollouts:
        job.rollouts.append(
            Rollout(version, previous, RolloutState(state), started, updated, reason, reverted_to)
        )
    cell.jobs[jid] = job
    # Tasks of one version share its demand, packed need and whether it is checked. The row
    # is unpacked by position, not through a dict of fields: a million tasks load here.
    shared: dict[int, tuple[str, dict[str, int], Need, bool]] = {}
    tasks, task_ids = cell.tasks, job.task_ids
    states = _TASK_STATES
    for (
        tid,
        index,
        state_value,
        machine,
        incarnation,
        spec_version,
        priority,
        submitted_at,
        placed_at,
        started_at,
        finished_at,
        exit_code,
        reason,
        restarts,
        evictions,
        usage,
        reserved,
        usage_at,
        healthy,
        healthy_at,
        replaces,
        replaced_by,
        *declared,
    ) in task_rows:
        version = shared.get(spec_version)
        if version is None:
            spec = specs[spec_version - 1]
            demand = spec.resources.amounts
            version = shared[spec_version] = (
                spec.owner,
                demand,
                Need(demand),
                spec.check is not None,
            )
        owner, demand, need, checked = version
        state = states[state_value]
        task = Task(
            id=tid or task_id(jid, index),
            job=jid,
            owner=owner,
            index=index,
            priority=priority,
            best_effort=priority < 100,
            demand=demand,
            need=need,
            spec_version=spec_version,
            state=state,
            machine=machine,
            incarnation=incarnation,
            submitted_at=submitted_at,
            placed_at=placed_at,
            started_at=started_at,
            finished_at=finished_at,
            exit_code=exit_code,
            reason=reason,
            restarts=restarts,
            evictions=evictions,
            usage=usage or {},
            reserved=(reserved or demand) if state in ACTIVE_STATES else EMPTY,
            usage_at=usage_at,
            healthy=healthy,
            checked=checked,
            healthy_at=healthy_at,
            replaces=replaces,
            replaced_by=replaced_by,
            port=declared[0] if declared else None,
        )
        tasks[task.id] = task
        task_ids[task.id] = None
        _account(cell, job, task)


def _load_job_2(cell: CellState, row: list[Any], task_row: Any) -> None:
    """A job of format 1 or 2: one spec version, a task per index."""
    jid, spec_doc, submitted_at, _version_1, killed, rows = row
    spec = internal.structure(spec_doc, JobSpec)
    job = Job(id=jid, spec=spec, submitted_at=submitted_at, killed=killed)
    job.add_version(spec, submitted_at)
    cell.jobs[jid] = job
    demand = spec.resources.amounts
    need = Need(demand)
    checked = spec.check is not None
    for index, values in enumerate(rows):
        task = Task(
            id=task_id(jid, index),
            job=jid,
            owner=spec.owner,
            index=index,
            best_effort=spec.band == 0,
            demand=demand,
            need=need,
            checked=checked,
            **task_row(values, demand),
        )
        # Written before health mattered to budgets: running and healthy (or
        # unchecked) since it started.
        if task.state is TaskState.RUNNING and (task.healthy or not checked):
            task.healthy_at = task.started_at or 0.0
        cell.tasks[task.id] = task
        job.task_ids[task.id] = None
        _account(cell, job, task)


def _task_values(row: list[Any], demand: dict[str, int]) -> dict[str, Any]:
    # A format 2 row written before health checks lacks the last column.
    fields = _TASK_FIELDS if len(row) == len(_TASK_FIELDS) else _TASK_FIELDS[:-1]
    values = dict(zip(fields, row, strict=True))
    values["state"] = TaskState(values["state"])
    values["usage"] = values["usage"] or {}
    placed = values["state"] in ACTIVE_STATES
    values["reserved"] = (values["reserved"] or demand) if placed else EMPTY
    return values


def _task_values_1(row: list[Any], demand: dict[str, int]) -> dict[str, Any]:
    old = dict(zip(_TASK_FIELDS_1, row, strict=True))
    values = {k: v for k, v in old.items() if k in _TASK_FIELDS}
    values["state"] = TaskState(old["state"])
    values["usage"] = (
        {"cpu": old["usage_cpu"], "memory": old["usage_memory"]} if old["usage_at"] else {}
    )
    if values["state"] in ACTIVE_STATES:
        reserved = {**demand, "cpu": old["reserved_cpu"], "memory": old["reserved_memory"]}
        values["reserved"] = demand if reserved == demand else reserved
    else:
        values["reserved"] = EMPTY
    return values


def _account(cell: CellState, job: Job, task: Task) -> None:
    """Rebuild the running sums a live cell keeps for `task`."""
    state = task.state
    job.counts[state] = job.counts.get(state, 0) + 1
    if task.healthy_at is not None:
        job.available += 1
    if state is TaskState.PENDING:
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
        task.reserved = EMPTY
    else:
        task.reserved_packed = (
            task.need.whole if task.reserved is task.demand else pack(task.reserved)
        )
    cell.ledger.add(task, machine.account)
