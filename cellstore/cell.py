"""The cell behind a replica: `CellState` as the replicated machine, and its typed API.

`CellMachine` adapts `cellstate.CellState` to the store's byte-level machine
contract. `canonical` is the edge: every command a client sends, through any
endpoint, is structured by the strict converter, stamped with the replica's
clock and an id if it has none, and re-encoded canonically before it enters
the Raft log, so the log only ever holds well-typed commands.

Typed endpoints (added by `endpoints`, all under a bearer token whose role
`cellstore.access.ACCESS` admits; `commit_one` records the token's name and role in the
command, and refuses an agent's command about a machine its token is not bound to):
- `POST /v1/jobs` `{"job": ID?, "spec": {...}}` submit; `POST /v1/jobs/kill` `{"job": ID}`;
  `POST /v1/jobs/planned` `{"job", "spec", "claims"}` submit placed as planned, or nothing
- `GET /v1/jobs[?id=&state=]`, `GET /v1/tasks[?job=&state=&machine=&id=]`,
  `GET /v1/machines[?id=&state=]`, `POST /v1/machines/state`, `POST /v1/machines/remove`,
  `POST /v1/machines/labels` `{"machines", "labels", "remove"}` (an operator's labels),
  `GET /v1/quotas`, `GET /v1/weights` (fair-share weights and shares; `POST` sets them)
- `POST /v1/transactions` `{"txn": {...}}` commit one transaction
- `POST /v1/agents/register|heartbeat|report|usage` agent reports, batched per request
- `POST /v1/schedulers/report` a scheduler's figures and explanations
- `GET /v1/cell` summary; `GET /v1/explain?target=JOB|TASK`; `GET /v1/endpoints?job=JOB`
  where a job's running tasks serve (host:port, and whether each is ready)
- `GET /v1/tokens` names, roles, machines; `POST /v1/tokens` `{"name", "role", "digest",
  "machines"}` issue one; `POST /v1/tokens/revoke` `{"name"}`; `GET /v1/whoami` the caller's
  own token's name, role and machines (any role; what the console offers it to do)
The leader also issues `PurgeJobs` for jobs ended `job_retention_s` ago (4 h by default),
`RemoveMachines` for machines down for silence `machine_retention_s` (24 h by default), and
`ExpireHeartbeats` every second for machines silent longer than
`heartbeat_timeout_s`, an argument of `endpoints` set in the replica's config document
(`replica_fields`), so every replica of a cell is told the same timeout at start-up.

Silence is timed by the leader alone, on its own monotonic clock (`SilenceClock`), never by
comparing its wall clock with heartbeat stamps: a heartbeat's `at` comes from the clock of
whichever replica took the request, and a new leader whose clock runs 30 s ahead would
otherwise find every machine 30 s late (issue #19). A new leader starts every machine's timer
when it takes over (Nomad resets every node's heartbeat deadline the same way), so a failover
slower than the timeout costs no healthy machine either. The command names each machine with
the stamp the leader last saw on it, and the state machine spares one whose stamp moved since.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

import attrs
import orjson
import structlog
import trio

from cellstate import (
    Author,
    CellState,
    CreateToken,
    ExpireHeartbeats,
    Heartbeat,
    JobState,
    MachineState,
    RegisterMachines,
    ReportTasks,
    ReportUsage,
    Role,
    SilentMachine,
    SpecError,
    TaskState,
    TokenRecord,
)
from cellstate import views as cell_views
from cellstate.commands import Command, Error, PurgeJobs, RaiseRules, RemoveMachines
from cellstate.model import FIRST_RULES, RULES, Job
from cellstate.state import PURGE_RULES, REMOVE_RULES
from cellstate.wire import decode_command, encode_result, internal, parse
from cellstore.access import CellGuard, authorize, digest, machine_matcher
from cellstore.api import Replica
from cellstore.errors import ApiError
from cellstore.http import Principal, Request, Response, Router
from cellstore.ids import new_command_id, new_job_id
from cellstore.machine import Machine

log = structlog.get_logger("cellstore.cell")

DEFAULT_HEARTBEAT_TIMEOUT_S = 10.0
# How long an ended job is kept before the leader purges it (Nomad's job_gc_threshold is
# 4 h); 0 keeps ended jobs for good. What it did stays in the log until compaction.
DEFAULT_JOB_RETENTION_S = 4 * 3600.0
# How often the leader looks for ended jobs to purge, and how many tasks one `PurgeJobs`
# forgets at most (whole jobs; forgetting 100,000 tasks takes a replica about 75 ms).
PURGE_PERIOD_S = 60.0
PURGE_TASKS_PER_COMMAND = 100_000
# Tasks one `ExpireHeartbeats` evicts at most (a machine holding more is one command of its
# own). Each command is one Raft entry, applied whole in one tick: a rack that fell silent
# holding 70,000 tasks, marked down by one command, held every replica's tick for seconds
# under load, and each leader in turn was deposed while it applied it (`bench.store`).
EXPIRY_TASKS_PER_COMMAND = 2_000
# How long a machine marked down for silence is kept before the leader removes it (Nomad's
# node_gc_threshold is 24 h); 0 keeps machines for good. Its agent, if it comes back,
# registers it again as a new machine. One an operator took down stays until removed.
DEFAULT_MACHINE_RETENTION_S = 24 * 3600.0
# How often the leader looks for such machines, and how many one `RemoveMachines` names.
REMOVE_PERIOD_S = 60.0
MACHINES_PER_REMOVAL = 10_000
# The name under which the replicas' config token is kept in the cell.
BOOTSTRAP = "bootstrap"


@attrs.frozen(slots=True)
class CellSettings:
    """What every replica of a cell is told at start-up, the same on each (`endpoints`' keyword
    arguments, through the replica's config document): when the leader marks a silent machine
    down, how long it keeps an ended job, and a machine down for silence (0: for good)."""

    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    job_retention_s: float = DEFAULT_JOB_RETENTION_S
    machine_retention_s: float = DEFAULT_MACHINE_RETENTION_S


DEFAULT_SETTINGS = CellSettings()


def replica_fields(settings: CellSettings = DEFAULT_SETTINGS) -> dict[str, Any]:
    """The fields of a replica config document (`cellstore.config.replica_document`) that make
    a generic replica serve the cell: its machine, and its endpoints with their settings."""
    return {
        "machine": "cellstore.cell:CellMachine",
        "extensions": [{"use": "cellstore.cell:endpoints", **attrs.asdict(settings)}],
    }


class CellMachine:
    """`CellState` driven by wire-encoded commands (see `cellstore.machine.Machine`)."""

    def __init__(self, cell: CellState | None = None) -> None:
        # A log replayed from its start is judged by the rules it began under;
        # its own `RaiseRules` commands bring it up to date.
        self.cell = cell or CellState(rules=FIRST_RULES)
        # A replica answers results; its watchers replay commands, not events.
        self.cell.keep_events = False

    @property
    def version(self) -> int:
        return self.cell.version

    def apply_encoded(self, command: bytes) -> bytes:
        try:
            decoded = decode_command(command)
        except Exception as exc:  # only `canonical` writes the log; keep the version contract
            self.cell.version += 1
            return _result(self.cell.version, Error("undecodable", repr(exc)[:200]))
        outcome = self.cell.apply(decoded)
        return _result(outcome.version, outcome.result)

    def snapshot(self) -> bytes:
        return self.cell.snapshot()

    @classmethod
    def restore(cls, data: bytes) -> CellMachine:
        return cls(CellState.restore(data))

    @staticmethod
    def canonical(document: Any, path: str = "$", principal: Principal | None = None) -> bytes:
        """Validate a client's command document; its canonical log bytes. SpecError if bad."""
        return encode(stamped(document, path, principal))


def stamped(document: Any, path: str = "$", principal: Principal | None = None) -> Command:
    """A client's command document, validated (SpecError if bad) and stamped with this
    replica's clock, an id if it has none, and who sent it (`principal`; whatever the
    client wrote in `at` and `by` is dropped)."""
    if isinstance(document, dict) and ("at" in document or "by" in document):
        document = {k: v for k, v in document.items() if k not in ("at", "by")}
    command = parse(document, Command, path)
    by = Author(principal.name, Role(principal.role)) if principal is not None else None
    return attrs.evolve(command, at=time.time(), id=command.id or new_command_id(), by=by)


def encode(command: Command) -> bytes:
    """A command's log bytes."""
    return orjson.dumps(internal.unstructure(command, Command))


def _result(version: int, result: Any) -> bytes:
    return b'{"version":%d,"result":%s}' % (version, encode_result(result))


def spec_error(exc: SpecError) -> ApiError:
    return ApiError(400, exc.code, exc.message, exc.field)


async def commit_one(
    replica: Replica, document: dict[str, Any], principal: Principal | None
) -> Response:
    """Commit one client command, recording `principal` as its author. An agent's token may
    only speak for its own machines: one that names another, or a task on another, is refused
    403 before anything is committed."""
    try:
        command = stamped(document, "$", principal)
    except SpecError as exc:
        raise spec_error(exc) from None
    if principal is not None and principal.role == Role.AGENT:
        allowed = machine_matcher(principal.machines)
        refused = await replica.read(
            lambda machine: machine_refused(_cell_machine(machine).cell, command, allowed)
        )
        if refused is not None:
            field, name = refused
            raise ApiError(
                403,
                "machine_refused",
                f"token {principal.name!r} is bound to {list(principal.machines)}, "
                f"not to machine {name!r}",
                field,
            )
    (result,) = await replica.commit([encode(command)])
    answer = orjson.loads(result)
    status = 200
    if answer["result"].get("type") == "error":
        error = answer["result"]
        status = (
            409
            if error["code"] in ("job_exists", "plan_stale", "plan_refused")
            else (404 if error["code"].endswith("_unknown") else 400)
        )
        raise ApiError(status, error["code"], error["message"], error.get("field"))
    return Response.json(answer, status, replica.leader_headers())


def endpoints(
    router: Router,
    replica: Replica,
    *,
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
    job_retention_s: float = DEFAULT_JOB_RETENTION_S,
    machine_retention_s: float = DEFAULT_MACHINE_RETENTION_S,
) -> None:
    """Register the cell's typed endpoints and the leader's duties: the heartbeat-expiry
    timer, which marks down machines silent for `heartbeat_timeout_s`, the purge of
    jobs ended `job_retention_s` ago, and the removal of machines down for silence for
    `machine_retention_s` (each never if 0)."""

    def body(request: Request, unique_keys: bool = False) -> dict[str, Any]:
        data = request.json(unique_keys)
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_body", "body must be a JSON object", "$")
        return data

    def typed(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "type": kind}

    async def submit(request: Request) -> Response:
        data = body(request, unique_keys=True)
        if "spec" not in data:
            raise ApiError(400, "invalid", "required field 'spec' is missing", "$.spec")
        job = data.get("job") or _job_id(data["spec"])
        return await commit_one(
            replica, typed("submit_job", {**data, "job": job}), request.principal
        )

    async def kill(request: Request) -> Response:
        data = body(request, unique_keys=True)
        return await commit_one(replica, typed("kill_job", data), request.principal)

    async def transaction(request: Request) -> Response:
        return await commit_one(replica, typed("commit", body(request)), request.principal)

    def command_endpoint(kind: str, unique_keys: bool = False):
        async def handler(request: Request) -> Response:
            data = body(request, unique_keys)
            return await commit_one(replica, typed(kind, data), request.principal)

        return handler

    def by_people(kind: str):
        """A route people write to (specs, quotas, tokens): a key given twice is refused."""
        return command_endpoint(kind, unique_keys=True)

    async def read(fn) -> Response:
        data = await replica.read(lambda machine: fn(_cell_machine(machine).cell))
        return Response.json(data, 200, replica.leader_headers())

    async def jobs(request: Request) -> Response:
        job_id = request.query.get("id")
        if job_id:

            def one(cell: CellState) -> Any:
                job = cell.jobs.get(job_id[0])
                if job is None:
                    raise ApiError(404, "job_unknown", f"no job {job_id[0]!r}", "id")
                return cell_views.job_view(cell, job)

            return await read(one)
        state = _state(request, _JOB_STATES)
        return await read(lambda cell: {"jobs": cell_views.list_jobs(cell, state)})

    async def of_job(
        request: Request, param: str, view: Callable[[CellState, Job], Any]
    ) -> Response:
        """A read about the one job the query's `param` names: 400 without one, 404 for
        one the cell does not know."""
        job_id = _one(request, param)
        if not job_id:
            raise ApiError(400, "invalid", f"{param} (a job id) is required", param)

        def about(cell: CellState) -> Any:
            job = cell.jobs.get(job_id)
            if job is None:
                raise ApiError(404, "job_unknown", f"no job {job_id!r}", param)
            return view(cell, job)

        return await read(about)

    async def history(request: Request) -> Response:
        return await of_job(request, "id", cell_views.history)

    async def tasks(request: Request) -> Response:
        task_id = _one(request, "id")
        if task_id:

            def one(cell: CellState) -> Any:
                task = cell.tasks.get(task_id)
                if task is None:
                    raise ApiError(404, "task_unknown", f"no task {task_id!r}", "id")
                return cell_views.task_view(task)

            return await read(one)
        job, machine = _one(request, "job"), _one(request, "machine")
        state = _state(request, _TASK_STATES)
        # A negative limit sliced off the last tasks rather than keeping the first.
        limit = request.query_int("limit", 100_000, minimum=1)

        def listed(cell: CellState) -> Any:
            # A filter naming a job or machine the cell does not know is a mistake to
            # report, not a question with an empty answer.
            if job is not None and job not in cell.jobs:
                raise ApiError(404, "job_unknown", f"no job {job!r}", "job")
            if machine is not None and machine not in cell.machines:
                raise ApiError(404, "machine_unknown", f"no machine {machine!r}", "machine")
            return {"tasks": cell_views.list_tasks(cell, job, state, machine, limit)}

        return await read(listed)

    async def machines(request: Request) -> Response:
        machine_id = _one(request, "id")
        if machine_id is not None:
            # One machine (`omega logs` finds its agent so): not a 100,000-machine list.
            def one(cell: CellState) -> Any:
                machine = cell.machines.get(machine_id)
                if machine is None:
                    raise ApiError(404, "machine_unknown", f"no machine {machine_id!r}", "id")
                return cell_views.machine_view(machine)

            return await read(one)
        state = _state(request, _MACHINE_STATES)
        return await read(lambda cell: {"machines": cell_views.list_machines(cell, state)})

    async def quotas(request: Request) -> Response:
        return await read(lambda cell: {"quotas": cell_views.list_quotas(cell)})

    async def weights(request: Request) -> Response:
        return await read(lambda cell: {"weights": cell_views.list_weights(cell)})

    async def tokens(request: Request) -> Response:
        return await read(
            lambda cell: {
                "tokens": [
                    {
                        "name": t.name,
                        "role": str(t.role),
                        "machines": list(t.machines),
                        "created": t.created,
                    }
                    for _, t in sorted(cell.tokens.items())
                ]
            }
        )

    async def whoami(request: Request) -> Response:
        """The request's own token: its name and role (what the console offers it to do)."""
        principal = request.principal
        if principal is None:  # only a public route has none, and this one is not
            raise ApiError(401, "unauthorized", "no bearer token", "authorization")
        found = {"name": principal.name, "role": principal.role}
        return Response.json({**found, "machines": list(principal.machines)}, 200)

    async def summary(request: Request) -> Response:
        return await read(cell_views.cell_summary)

    async def explain(request: Request) -> Response:
        target = _one(request, "target")
        if not target:
            raise ApiError(400, "invalid", "target (a job or task id) is required", "target")

        def account(cell: CellState) -> Any:
            found = cell_views.explain(cell, target)
            if found is None:
                raise ApiError(404, "job_unknown", f"no job or task {target!r}", "target")
            return found

        return await read(account)

    async def endpoints(request: Request) -> Response:
        return await of_job(
            request,
            "job",
            lambda cell, job: {"job": job.id, "endpoints": cell_views.endpoints(cell, job)},
        )

    router.add("POST", "/v1/jobs", submit)
    router.add("GET", "/v1/jobs", jobs)
    router.add("POST", "/v1/jobs/kill", kill)
    router.add("POST", "/v1/jobs/planned", by_people("submit_plan"))
    router.add("POST", "/v1/jobs/update", by_people("update_job"))
    router.add("POST", "/v1/jobs/revert", by_people("revert_job"))
    router.add("POST", "/v1/jobs/scale", by_people("scale_job"))
    router.add("POST", "/v1/jobs/promote", by_people("promote_job"))
    router.add("GET", "/v1/jobs/history", history)
    router.add("GET", "/v1/tasks", tasks)
    router.add("GET", "/v1/machines", machines)
    router.add("POST", "/v1/transactions", transaction)
    router.add("POST", "/v1/agents/register", command_endpoint("register_machines"))
    router.add("POST", "/v1/agents/heartbeat", command_endpoint("heartbeat"))
    router.add("POST", "/v1/agents/report", command_endpoint("report_tasks"))
    router.add("POST", "/v1/agents/usage", command_endpoint("report_usage"))
    router.add("POST", "/v1/machines/state", by_people("set_machine_state"))
    router.add("POST", "/v1/machines/remove", by_people("remove_machines"))
    router.add("POST", "/v1/machines/labels", by_people("label_machines"))
    router.add("POST", "/v1/quotas", by_people("set_quota"))
    router.add("GET", "/v1/quotas", quotas)
    router.add("POST", "/v1/weights", by_people("set_weights"))
    router.add("GET", "/v1/weights", weights)
    router.add("POST", "/v1/schedulers/report", command_endpoint("report_scheduler"))
    router.add("GET", "/v1/cell", summary)
    router.add("GET", "/v1/whoami", whoami)
    router.add("GET", "/v1/explain", explain)
    router.add("GET", "/v1/endpoints", endpoints)
    router.add("GET", "/v1/tokens", tokens)
    router.add("POST", "/v1/tokens", by_people("create_token"))
    router.add("POST", "/v1/tokens/revoke", by_people("revoke_token"))
    replica.background.append(lambda: expire_heartbeats(replica, heartbeat_timeout_s))
    replica.background.append(lambda: raise_rules(replica))
    replica.background.append(lambda: enter_bootstrap_token(replica))
    if job_retention_s > 0:
        replica.background.append(lambda: purge_ended_jobs(replica, job_retention_s))
    if machine_retention_s > 0:
        replica.background.append(lambda: remove_silent_machines(replica, machine_retention_s))

    def known_token(key: str) -> TokenRecord | None:
        return replica.raft.peek(lambda machine: _cell_machine(machine).cell.token_digests.get(key))

    replica.authenticate = CellGuard(known_token, replica.config.token).authenticate
    replica.authorize = authorize


def machine_refused(
    cell: CellState, command: Command, allowed: Callable[[str], bool]
) -> tuple[str, str] | None:
    """The first (field, machine) of an agent's `command` that its token may not speak for:
    a machine it names, or the machine a task it reports on is placed on. None: all its own."""
    if isinstance(command, RegisterMachines):
        for i, spec in enumerate(command.machines):
            if not allowed(spec.id):
                return f"machines[{i}].id", spec.id
    elif isinstance(command, Heartbeat):
        for i, name in enumerate(command.machines):
            if not allowed(name):
                return f"machines[{i}]", name
    elif isinstance(command, ReportTasks):
        for i, report in enumerate(command.reports):
            if not allowed(report.machine):
                return f"reports[{i}].machine", report.machine
            task = cell.tasks.get(report.task)
            if task is not None and task.machine is not None and not allowed(task.machine):
                return f"reports[{i}].task", task.machine
    elif isinstance(command, ReportUsage):
        for i, usage in enumerate(command.usages):
            task = cell.tasks.get(usage.task)
            if task is not None and task.machine is not None and not allowed(task.machine):
                return f"usages[{i}].task", task.machine
    return None


def _cell_machine(machine: Machine) -> CellMachine:
    """A replica's machine as the cell's: these endpoints and duties are mounted only on
    replicas built from `cell_options`, whose machine is `CellMachine`."""
    return cast(CellMachine, machine)


def _due(
    due: Callable[[CellMachine, float], Command | None], machine: Machine, now: float
) -> Command | None:
    return due(_cell_machine(machine), now)


def _one(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


_TASK_STATES = tuple(state.value for state in TaskState)
_JOB_STATES = tuple(state.value for state in JobState)
_MACHINE_STATES = tuple(state.value for state in MachineState)


def _state(request: Request, allowed: tuple[str, ...]) -> str | None:
    """The `state` filter, one of `allowed` (a 400 naming them if not)."""
    state = _one(request, "state")
    if state is not None and state not in allowed:
        raise ApiError(400, "invalid", f"state {state!r}: use one of {', '.join(allowed)}", "state")
    return state


def _job_id(spec: Any) -> str:
    return new_job_id(spec.get("name") if isinstance(spec, dict) else None)


class SilenceClock:
    """How long each machine has been silent, as one leader measures it.

    Per machine, the heartbeat stamp last seen and when (this replica's monotonic clock) it
    was first seen: a stamp that moves, whatever clock wrote it, is a heartbeat. Timers start
    when this replica takes over in a term, so a machine is silent only after a whole timeout
    under one leader, measured by that leader's clock."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._term: int | None = None
        self._seen: dict[str, tuple[float, float]] = {}

    def silent(
        self, term: int | None, stamps: Sequence[tuple[str, float]], now: float
    ) -> tuple[SilentMachine, ...]:
        """The machines silent for the timeout at monotonic time `now`, with their stamps.

        `term` is the Raft term this replica leads in, None when it does not lead (it forgets
        everything: a later takeover starts afresh); `stamps` is `(machine, last heartbeat)`
        for every machine that is not down."""
        if term != self._term:
            self._term = term
            self._seen = {}
        if term is None:
            return ()
        # Updated in place, one lookup per machine: at 100,000 machines every second, a fresh
        # dict of fresh tuples was a tenth of the leader's CPU.
        seen, timeout = self._seen, self.timeout_s
        found = []
        count = 0
        for machine, stamp in stamps:
            count += 1
            prior = seen.get(machine)
            if prior is None or prior[0] != stamp:
                seen[machine] = prior = (stamp, now)
            if now - prior[1] >= timeout:
                found.append(SilentMachine(machine, stamp))
        if len(seen) > count:  # machines gone down or removed: forget them
            present = {machine for machine, _ in stamps}
            for machine in [m for m in seen if m not in present]:
                del seen[machine]
        return tuple(found)


def _expiry_view(machine: Machine, now: float) -> tuple[list[tuple[str, float]], bool]:
    """The heartbeat stamp of every machine not down, and whether a drain is due at `now`
    (one pass: it runs every second over every machine, under the state lock)."""
    stamps = []
    drain_due = False
    down = MachineState.DOWN
    for m in _cell_machine(machine).cell.machine_list:
        if m.state is not down:
            stamps.append((m.id, m.last_heartbeat))
        deadline = m.drain_deadline
        if deadline is not None and deadline <= now:
            drain_due = True
    return stamps, drain_due


async def leader_duty(
    replica: Replica,
    name: str,
    due: Callable[[CellMachine, float], Command | None],
    period_s: float = 1.0,
    *,
    until_done: bool = False,
) -> None:
    """On the leader, at once and then every `period_s`, commit the command `due(state, now)`
    reads off the cell, if any; with `until_done`, again at once after each commit while one
    is still due (a duty done in bounded commands, such as the purge).

    The decision is a command in the log, so every replica takes the same one;
    and only a decision that is due is logged, so an idle cell's log stays still."""
    while True:
        # Checked at once, then every period: a new leader raises old rules before
        # most clients have found it.
        now = time.time()
        command = (
            await replica.read(functools.partial(_due, due, now=now))
            if replica.raft.raft_status()["is_leader"]
            else None
        )
        if command is not None:
            encoded = orjson.dumps(internal.unstructure(command, Command))
            try:
                await replica.commit([encoded])
            except ApiError as exc:
                log.info("leader_duty_not_committed", duty=name, reason=exc.body.message)
            else:
                if until_done:
                    await trio.sleep(0)
                    continue
        await trio.sleep(period_s)


async def expire_heartbeats(replica: Replica, timeout: float, period_s: float = 1.0) -> None:
    """On the leader, every `period_s`, mark down machines silent for `timeout` seconds by
    this leader's own clock since it took over (`SilenceClock`); the same command ends the
    drains whose deadline has passed."""
    clock = SilenceClock(timeout)
    while True:
        status = replica.raft.raft_status()
        term = status["term"] if status["is_leader"] else None
        now = time.time()
        stamps, drains_due = (
            await replica.read(functools.partial(_expiry_view, now=now))
            if term is not None
            else ((), False)
        )
        silent = clock.silent(term, stamps, time.monotonic())
        if silent or drains_due:
            runs: list[tuple[SilentMachine, ...]] = [silent]
            if silent:
                log.info("machines_silent", term=term, machines=[s.machine for s in silent][:20])
                names = [s.machine for s in silent]
                held = await replica.read(functools.partial(_tasks_on, machines=names))
                runs = expiry_runs(silent, held)
            commands = [
                ExpireHeartbeats(timeout=timeout, at=now, id=new_command_id(), silent=run)
                for run in runs
            ]
            try:
                await replica.commit(
                    [orjson.dumps(internal.unstructure(c, Command)) for c in commands]
                )
            except ApiError as exc:
                log.info("expire_heartbeats_not_committed", reason=exc.body.message)
        await trio.sleep(period_s)


def expiry_runs(
    silent: Sequence[SilentMachine],
    held: dict[str, int],
    limit: int = EXPIRY_TASKS_PER_COMMAND,
) -> list[tuple[SilentMachine, ...]]:
    """`silent` cut, in order, into runs whose machines hold (`held`) at most `limit` tasks
    between them, each to be marked down by a command of its own; a machine holding more is
    a run alone."""
    runs: list[tuple[SilentMachine, ...]] = []
    run: list[SilentMachine] = []
    tasks = 0
    for machine in silent:
        count = held.get(machine.machine, 0)
        if run and tasks + count > limit:
            runs.append(tuple(run))
            run, tasks = [], 0
        run.append(machine)
        tasks += count
    if run:
        runs.append(tuple(run))
    return runs


def _tasks_on(machine: Machine, machines: list[str]) -> dict[str, int]:
    """How many tasks each of `machines` holds (those the cell knows)."""
    known = _cell_machine(machine).cell.machines
    return {name: len(known[name].tasks) for name in machines if name in known}


def _look_period(retention_s: float, most_s: float) -> float:
    """How often a retention duty looks: every `most_s`, or a tenth of a shorter retention
    (not under 0.5 s), so that what is due goes within about a tenth of its retention."""
    return min(most_s, max(0.5, retention_s / 10))


def purge_ended_jobs(
    replica: Replica, retention_s: float, period_s: float | None = None
) -> Coroutine[Any, Any, None]:
    """On the leader, forget the jobs that ended `retention_s` ago (`PurgeJobs`), once the
    cell's rules know how: looked for every `PURGE_PERIOD_S` (or a tenth of a shorter
    retention), then purged `PURGE_TASKS_PER_COMMAND` tasks a command, one command after
    another until none is left, so that no one apply holds the replicas' Raft threads."""
    period = period_s if period_s is not None else _look_period(retention_s, PURGE_PERIOD_S)
    return leader_duty(
        replica,
        "purge_jobs",
        lambda machine, now: (
            PurgeJobs(now - retention_s, PURGE_TASKS_PER_COMMAND, at=now, id=new_command_id())
            if machine.cell.rules >= PURGE_RULES and machine.cell.purgeable(now - retention_s, 1)
            else None
        ),
        period,
        until_done=True,
    )


def remove_silent_machines(
    replica: Replica, retention_s: float, period_s: float | None = None
) -> Coroutine[Any, Any, None]:
    """On the leader, remove the machines down for silence, silent `retention_s` by now
    (`RemoveMachines`, as Nomad collects down nodes; `CellState.removable`), once the cell's
    rules know how: looked for every `REMOVE_PERIOD_S` (or a tenth of a shorter retention),
    `MACHINES_PER_REMOVAL` a command. A machine whose agent spoke up since the look is
    refused with the rest of its command, which the next look leaves out."""
    period = period_s if period_s is not None else _look_period(retention_s, REMOVE_PERIOD_S)

    def due(machine: CellMachine, now: float) -> Command | None:
        cell = machine.cell
        if cell.rules < REMOVE_RULES:
            return None
        gone = cell.removable(now - retention_s, MACHINES_PER_REMOVAL)
        return RemoveMachines(tuple(gone), at=now, id=new_command_id()) if gone else None

    return leader_duty(replica, "remove_machines", due, period, until_done=True)


def enter_bootstrap_token(replica: Replica, period_s: float = 1.0) -> Coroutine[Any, Any, None]:
    """Keep the replicas' config token in the cell as the admin token `bootstrap`, so the
    schedulers and agents, which check tokens against their copy of the cell, know it too. A
    cell whose token file changed (rotation) has the entry replaced."""
    key = digest(replica.config.token)
    return leader_duty(
        replica,
        "bootstrap_token",
        lambda machine, now: (
            CreateToken(BOOTSTRAP, Role.ADMIN, key, replace=True, at=now, id=new_command_id())
            if machine.cell.rules >= RULES and key not in machine.cell.token_digests
            else None
        ),
        period_s,
    )


def raise_rules(replica: Replica, period_s: float = 1.0) -> Coroutine[Any, Any, None]:
    """Bring a cell whose log began under older rules (`model.RULES`) to this build's.
    Upgrades are whole-cell restarts: every replica runs this build when it does."""
    return leader_duty(
        replica,
        "raise_rules",
        lambda machine, now: (
            RaiseRules(RULES, at=now, id=new_command_id()) if machine.cell.rules < RULES else None
        ),
        period_s,
    )
