"""The typed client of a cell: every operation of the cell's API as one method, and the only
place outside the server's route table that knows a route.

Writes take `cellstate` values and answer them: `commit(txn)` sends a `Transaction` and returns
`Applied[CommitResult]` (the result and the store version that holds it), `report_tasks`
returns `Applied[Stale | Ok]`, and so on; each builds the command and sends it to the route
that `WRITE_ROUTES` names for its type. Every write carries a command id (minted by
`cellstore.ids` unless the caller passes one to keep across its own retries), so a retried
request is applied once. Reads answer the cell's read models (`cellstate.views`), JSON
documents whose field names are a public contract (`omega ... --json` prints them); they are
typed here as `TypedDict`s. Every failure, whether the cell refused (`job_unknown`, `invalid`
with the offending field, ...) or no replica answered (`unavailable`), is raised as one
`CellError` carrying code, message and field.

There are two faces on one client, and they share everything but the transport: `_Calls`
builds each request (method, route, query, body) and decodes each answer; `CellClient` runs
them on trio through the generic `StoreClient` (leader following, retries, keep-alive, the
watch feed), for schedulers, agents and benchmarks; `SyncCellClient` runs them blocking over a
small keep-alive HTTP/1.1 exchange on a socket (`_BlockingTransport`, with the same leader
following and retries), for the `omega` command. The blocking face exists because a CLI read
pays for every import before it answers: trio and httpx alone cost more than the whole 150 ms
budget of `omega jobs`. So this module imports at the top only what a read needs (no trio,
httpx, attrs, orjson, http.client, nor `cellstate`'s converters); the rest comes in with the
first call that needs it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, NotRequired, TypedDict, TypeVar
from urllib.parse import urlencode

from cellstore import ids

if TYPE_CHECKING:
    from cellstate import (
        Band,
        Claim,
        CommitResult,
        JobSpec,
        Limit,
        MachineSpec,
        MachineState,
        Ok,
        Resources,
        SchedulerClass,
        Stale,
        TaskReport,
        TaskUsage,
        Transaction,
    )
    from cellstate.commands import Command
    from cellstore.client import StoreClient, WatchBatch

T = TypeVar("T")
R = TypeVar("R")

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})

# Each command's route: the cell's typed endpoints (`cellstore.cell.endpoints`) take the
# command's own fields as their body.
WRITE_ROUTES: dict[str, str] = {
    "SubmitJob": "/v1/jobs",
    "SubmitPlan": "/v1/jobs/planned",
    "KillJob": "/v1/jobs/kill",
    "UpdateJob": "/v1/jobs/update",
    "RevertJob": "/v1/jobs/revert",
    "ScaleJob": "/v1/jobs/scale",
    "PromoteJob": "/v1/jobs/promote",
    "Commit": "/v1/transactions",
    "RegisterMachines": "/v1/agents/register",
    "Heartbeat": "/v1/agents/heartbeat",
    "ReportTasks": "/v1/agents/report",
    "ReportUsage": "/v1/agents/usage",
    "SetMachineState": "/v1/machines/state",
    "RemoveMachines": "/v1/machines/remove",
    "LabelMachines": "/v1/machines/labels",
    "SetQuota": "/v1/quotas",
    "SetWeights": "/v1/weights",
    "ReportScheduler": "/v1/schedulers/report",
    "CreateToken": "/v1/tokens",
    "RevokeToken": "/v1/tokens/revoke",
}
JOBS = "/v1/jobs"
HISTORY = "/v1/jobs/history"
SNAPSHOT = "/v1/snapshot"  # the store's own (`cellstore.client.SNAPSHOT`)
TASKS = "/v1/tasks"
MACHINES = "/v1/machines"
CELL = "/v1/cell"
WHOAMI = "/v1/whoami"
EXPLAIN = "/v1/explain"
ENDPOINTS = "/v1/endpoints"
QUOTAS = "/v1/quotas"
WEIGHTS = "/v1/weights"
TOKENS = "/v1/tokens"
READ_ROUTES = (JOBS, TASKS, MACHINES, CELL, EXPLAIN, ENDPOINTS, QUOTAS, WEIGHTS, WHOAMI)
CONNECT_TIMEOUT_S = 1.0  # as `StoreClient`'s
STATUS = "/v1/status"  # the store's own (`cellstore.client.STATUS`): importing it brings httpx
AGENT_LOGS = "/v1/logs"  # served by each agent (`agents.logserver`), not by the replicas


class CellError(Exception):
    """What any call of the client raises. `code` is the cell's error code (`job_unknown`,
    `invalid`, `job_exists`, ...) or `unavailable` when no replica answered in time; `field` is
    the JSON path of the offending input when there is one; `status` the HTTP status, if any."""

    def __init__(
        self, code: str, message: str, field: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}" + (f" ({field})" if field else ""))
        self.code = code
        self.message = message
        self.field = field
        self.status = status


# The value records here are NamedTuples, not the attrs classes used elsewhere: immutable and
# typed all the same, and importing attrs would cost a read command ~20 ms of its 150.


class Applied(NamedTuple, Generic[R]):
    """A write the cell applied: its result, and the store version that holds it (wait for
    that version in a local copy to see the write)."""

    version: int
    result: R


class Submitted(NamedTuple):
    """A submitted job: the id it was given and the version of the submission."""

    job: str
    version: int


# -- read models (field names are `cellstate.views`'s public contract) --------------------


class ResourceView(TypedDict, total=False):
    """A resource vector as `cellstate.views.resources` shows it: cpu and memory always, disk
    where non-zero, and each device by its own name with its count (`"gpu": 2`)."""

    cpu: str
    memory: str
    cpu_milli: int
    memory_bytes: int
    disk: str
    disk_bytes: int


class JobView(TypedDict):
    id: str
    name: str
    scheduler: str
    priority: int
    state: str
    tasks: dict[str, int]  # count per task state
    owner: str
    band: str
    size: int
    submitted_at: float
    gang: bool
    resources: ResourceView
    command: list[str]
    version: int  # the spec version tasks are placed at
    stable_version: int  # the last version whose update completed
    available: int  # tasks running and healthy (or running, unchecked)
    max_unavailable: int | None  # the disruption budget; None: unlimited
    rollout: RolloutView | None  # the last update, finished or not
    labels: dict[str, str]


class RolloutView(TypedDict):
    version: int
    previous: int
    state: str  # canary, rolling, succeeded, failed, reverted, superseded
    started_at: float
    updated_at: float
    reason: str
    reverted_to: int | None
    current: int  # tasks within the size running the update's version
    size: int


class VersionView(TypedDict):
    version: int
    made_at: float
    spec: dict[str, Any]
    changes: list[str]  # what changed from the version before, one line each


class HistoryView(TypedDict):
    job: str
    version: int
    stable_version: int
    versions: list[VersionView]
    rollouts: list[RolloutView]


class TaskView(TypedDict):
    id: str
    job: str
    state: str
    machine: str | None
    incarnation: int
    priority: int
    exit_code: int | None
    reason: str | None
    restarts: int
    evictions: int
    submitted_at: float
    placed_at: float | None
    started_at: float | None
    finished_at: float | None
    usage: ResourceView | None
    version: int
    healthy: bool | None
    index: int
    replaces: str | None
    replaced_by: str | None
    # Absent from replicas before rules 13 were built.
    port: NotRequired[int | None]


class Endpoint(TypedDict):
    """Where one running task serves (`cellstate.views.endpoints`)."""

    task: str
    machine: str
    address: str  # host:port
    host: str
    port: int
    ready: bool
    version: int


class MachineView(TypedDict):
    id: str
    state: str
    capacity: ResourceView
    used: ResourceView
    domain: str
    labels: dict[str, str]
    tasks: int
    seqnum: int
    reserved: ResourceView
    last_heartbeat: float
    drain_deadline: float | None


class QuotaView(TypedDict):
    owner: str
    band: str
    limit: ResourceView | None  # None: unlimited
    taken: ResourceView


class WeightView(TypedDict):
    owner: str
    weight: float
    share: float  # dominant share: max over dimensions of held / cell capacity
    weighted_share: float  # share / weight: what schedulers order by


class TokenView(TypedDict):
    name: str
    role: str
    machines: list[str]  # an agent token's machines (names or fnmatch patterns)
    created: float


class SchedulerSummary(TypedDict):
    name: str
    kind: str
    figures: dict[str, float]
    reported_at: float
    blocked: int


class Identity(TypedDict):
    """`GET /v1/whoami`: the caller's own token (an agent's is bound to `machines`)."""

    name: str
    role: str
    machines: list[str]


class CellSummary(TypedDict):
    version: int
    rules: int
    now: float
    jobs: int
    tasks: dict[str, int]
    machines: dict[str, int]
    schedulers: list[SchedulerSummary]


class Explanation(TypedDict):
    job: JobView
    task: TaskView | None
    pending: int
    active: int
    schedulers: dict[str, str]
    # Per scheduler, its rejected claims by rival and its hottest machines
    # (`cellstate.views.conflicts_view`); absent from replicas before it.
    conflicts: NotRequired[dict[str, dict[str, dict[str, int]]]]
    waiting: bool


class ReplicaStatus(TypedDict, total=False):
    """One replica's own account (`cellstore.api.status`); `error` instead when unreachable."""

    replica: str
    api: str
    leader: dict[str, str | None]
    is_leader: bool
    ready: bool
    term: int
    version: int
    address: str
    error: str


# -- requests, built and decoded once for both faces ----------------------------------------


class Call(NamedTuple, Generic[T]):
    """One request and how to read its answer. `leader` marks a write: it goes to the replica
    believed to lead; reads go to whichever replica is preferred."""

    method: str
    path: str
    decode: Callable[[Any], T]
    body: Any = None
    leader: bool = False

    def with_query(self, **params: object) -> Call[T]:
        query = urlencode({k: v for k, v in params.items() if v is not None and v != ""})
        return self._replace(path=f"{self.path}?{query}") if query else self


def _key(name: str) -> Callable[[Any], Any]:
    return lambda answer: answer[name]


def _same(answer: Any) -> Any:
    return answer


class _Calls:
    """Every operation as a `Call`; the faces only run them."""

    @staticmethod
    def write(command: Command, decode: Callable[[Any], R] | None = None) -> Call[Applied[Any]]:
        from cellstate.wire import RESULT, internal

        route = WRITE_ROUTES.get(type(command).__name__)
        if route is None:
            raise TypeError(f"{type(command).__name__} is not a command a client may send")
        body = internal.unstructure(command, type(command))

        def applied(answer: Any) -> Applied[Any]:
            result = internal.structure(answer["result"], RESULT)
            return Applied(int(answer["version"]), decode(result) if decode else result)

        return Call("POST", route, applied, body, leader=True)

    @staticmethod
    def submit(spec: JobSpec, job: str | None, id: str | None) -> Call[Submitted]:
        from cellstate import SubmitJob

        chosen = job or ids.new_job_id(spec.name)
        write = _Calls.write(SubmitJob(chosen, spec, id=id or ids.new_command_id()))

        def submitted(answer: Any) -> Submitted:
            return Submitted(chosen, write.decode(answer).version)

        return Call(write.method, write.path, submitted, write.body, leader=True)

    @staticmethod
    def submit_plan(
        job: str, spec: JobSpec, claims: Sequence[Claim], id: str | None
    ) -> Call[Applied[CommitResult]]:
        from cellstate import CommitResult, SubmitPlan

        command = SubmitPlan(job, spec, tuple(claims), id=id or ids.new_command_id())
        return _Calls.write(command, _expect(CommitResult))

    @staticmethod
    def kill(job: str, id: str | None) -> Call[Applied[Ok]]:
        from cellstate import KillJob

        return _Calls.write(KillJob(job, id=id or ids.new_command_id()))

    @staticmethod
    def update(job: str, spec: JobSpec, id: str | None) -> Call[Applied[Ok]]:
        from cellstate import UpdateJob

        return _Calls.write(UpdateJob(job, spec, id=id or ids.new_command_id()))

    @staticmethod
    def revert(job: str, version: int, id: str | None) -> Call[Applied[Ok]]:
        from cellstate import RevertJob

        return _Calls.write(RevertJob(job, version, id=id or ids.new_command_id()))

    @staticmethod
    def scale(job: str, tasks: int, id: str | None) -> Call[Applied[Ok]]:
        from cellstate import ScaleJob

        return _Calls.write(ScaleJob(job, tasks, id=id or ids.new_command_id()))

    @staticmethod
    def promote(job: str, id: str | None) -> Call[Applied[Ok]]:
        from cellstate import PromoteJob

        return _Calls.write(PromoteJob(job, id=id or ids.new_command_id()))

    @staticmethod
    def commit(txn: Transaction, id: str | None) -> Call[Applied[CommitResult]]:
        from cellstate import Commit, CommitResult

        return _Calls.write(Commit(txn, id=id or ids.new_command_id()), _expect(CommitResult))

    @staticmethod
    def register_machines(machines: Sequence[MachineSpec], id: str | None) -> Call[Applied[Ok]]:
        from cellstate import RegisterMachines

        return _Calls.write(RegisterMachines(tuple(machines), id=id or ids.new_command_id()))

    @staticmethod
    def heartbeat(machines: Sequence[str], id: str | None) -> Call[Applied[Stale | Ok]]:
        from cellstate import Heartbeat

        return _Calls.write(Heartbeat(tuple(machines), id=id or ids.new_command_id()))

    @staticmethod
    def report_tasks(reports: Sequence[TaskReport], id: str | None) -> Call[Applied[Stale | Ok]]:
        from cellstate import ReportTasks

        return _Calls.write(ReportTasks(tuple(reports), id=id or ids.new_command_id()))

    @staticmethod
    def report_usage(usages: Sequence[TaskUsage], id: str | None) -> Call[Applied[Stale | Ok]]:
        from cellstate import ReportUsage

        return _Calls.write(ReportUsage(tuple(usages), id=id or ids.new_command_id()))

    @staticmethod
    def set_machine_state(
        machine: str, state: MachineState, deadline: float | None, id: str | None
    ) -> Call[Applied[Ok]]:
        from cellstate import SetMachineState

        return _Calls.write(
            SetMachineState(machine, state, id=id or ids.new_command_id(), deadline=deadline)
        )

    @staticmethod
    def label_machines(
        machines: Sequence[str],
        labels: Mapping[str, str],
        remove: Sequence[str],
        id: str | None,
    ) -> Call[Applied[Ok]]:
        from cellstate import LabelMachines

        command = LabelMachines(
            tuple(machines), dict(labels), tuple(remove), id=id or ids.new_command_id()
        )
        return _Calls.write(command)

    @staticmethod
    def remove_machines(machines: Sequence[str], id: str | None) -> Call[Applied[Ok]]:
        from cellstate import RemoveMachines

        return _Calls.write(RemoveMachines(tuple(machines), id=id or ids.new_command_id()))

    @staticmethod
    def set_quota(
        owner: str, band: Band, limit: Limit | Resources | None, id: str | None
    ) -> Call[Applied[Ok]]:
        from cellstate import SetQuota

        return _Calls.write(SetQuota(owner, band, limit, id=id or ids.new_command_id()))

    @staticmethod
    def set_weights(weights: Mapping[str, float], id: str | None) -> Call[Applied[Ok]]:
        from cellstate import SetWeights

        return _Calls.write(SetWeights(dict(weights), id=id or ids.new_command_id()))

    @staticmethod
    def report_scheduler(
        name: str,
        kind: SchedulerClass,
        figures: Mapping[str, float],
        explanations: Mapping[str, str],
        id: str | None,
    ) -> Call[Applied[Ok]]:
        from cellstate import ReportScheduler

        command = ReportScheduler(
            name, kind, dict(figures), dict(explanations), id=id or ids.new_command_id()
        )
        return _Calls.write(command)

    @staticmethod
    def create_token(
        name: str, role: str, digest: str, machines: Sequence[str], id: str | None
    ) -> Call[Applied[Ok]]:
        from cellstate import CreateToken, Role

        command = CreateToken(
            name, Role(role), digest, tuple(machines), id=id or ids.new_command_id()
        )
        return _Calls.write(command)

    @staticmethod
    def revoke_token(name: str, id: str | None) -> Call[Applied[Ok]]:
        from cellstate import RevokeToken

        return _Calls.write(RevokeToken(name, id=id or ids.new_command_id()))

    # reads: the cell's read models, decoded as they are

    @staticmethod
    def tokens() -> Call[list[TokenView]]:
        return Call("GET", TOKENS, _key("tokens"))

    @staticmethod
    def job(job: str) -> Call[JobView]:
        return Call("GET", JOBS, _same).with_query(id=job)

    @staticmethod
    def history(job: str) -> Call[HistoryView]:
        return Call("GET", HISTORY, _same).with_query(id=job)

    @staticmethod
    def jobs(state: str | None) -> Call[list[JobView]]:
        return Call("GET", JOBS, _key("jobs")).with_query(state=state)

    @staticmethod
    def task(task: str) -> Call[TaskView]:
        return Call("GET", TASKS, _same).with_query(id=task)

    @staticmethod
    def tasks(
        job: str | None, state: str | None, machine: str | None, limit: int | None
    ) -> Call[list[TaskView]]:
        return Call("GET", TASKS, _key("tasks")).with_query(
            job=job, state=state, machine=machine, limit=limit
        )

    @staticmethod
    def machines(state: str | None) -> Call[list[MachineView]]:
        return Call("GET", MACHINES, _key("machines")).with_query(state=state)

    @staticmethod
    def machine(machine: str) -> Call[MachineView]:
        return Call("GET", MACHINES, _same).with_query(id=machine)

    @staticmethod
    def summary() -> Call[CellSummary]:
        return Call("GET", CELL, _same)

    @staticmethod
    def whoami() -> Call[Identity]:
        return Call("GET", WHOAMI, _same)

    @staticmethod
    def quotas() -> Call[list[QuotaView]]:
        return Call("GET", QUOTAS, _key("quotas"))

    @staticmethod
    def weights() -> Call[list[WeightView]]:
        return Call("GET", WEIGHTS, _key("weights"))

    @staticmethod
    def explain(target: str) -> Call[Explanation]:
        return Call("GET", EXPLAIN, _same).with_query(target=target)

    @staticmethod
    def endpoints(job: str) -> Call[list[Endpoint]]:
        return Call("GET", ENDPOINTS, _key("endpoints")).with_query(job=job)

    @staticmethod
    def status() -> Call[ReplicaStatus]:
        return Call("GET", STATUS, _same)


def _expect(cls: type[T]) -> Callable[[Any], T]:
    def check(result: Any) -> T:
        if not isinstance(result, cls):
            raise CellError("unexpected_result", f"expected {cls.__name__}, got {result!r}")
        return result

    return check


def _error_from(status: int, document: Any, text: str) -> CellError:
    err = document.get("error") if isinstance(document, dict) else None
    if not isinstance(err, dict):
        return CellError("http_error", f"HTTP {status}: {text[:200]}", None, status)
    return CellError(
        err.get("code", "http_error"), err.get("message", text[:200]), err.get("field"), status
    )


# -- the async face ------------------------------------------------------------------------


class CellClient:
    """The cell's operations on trio, over a `StoreClient` (which follows the leader and
    retries). Use `async with CellClient.connect(addresses, token) as cell:`, or wrap a store
    client you already hold with `CellClient(store)`."""

    def __init__(self, store: StoreClient) -> None:
        self.store = store

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, addresses: Sequence[str], token: str, **options: Any
    ) -> AsyncIterator[CellClient]:
        """A client over a new `StoreClient(addresses, token, **options)`, closed on exit."""
        from cellstore.client import StoreClient

        async with StoreClient(addresses, token, **options) as store:
            yield cls(store)

    async def _run(self, call: Call[T]) -> T:
        import httpx

        from cellstore.client import StoreUnavailable
        from cellstore.errors import ApiError

        try:
            answer = await self.store.request(call.method, call.path, call.body)
        except ApiError as exc:
            body = exc.body
            raise CellError(body.code, body.message, body.field, exc.status) from None
        except StoreUnavailable as exc:
            raise CellError("unavailable", str(exc)) from None  # it names the request
        except httpx.HTTPError as exc:
            raise CellError("unavailable", f"{call.method} {call.path}: {exc}") from None
        return call.decode(answer)

    # writes

    async def submit(
        self, spec: JobSpec, job: str | None = None, *, id: str | None = None
    ) -> Submitted:
        """Submit a job of `spec`, as `job` or as a fresh `NAME-xxxxxx` id."""
        return await self._run(_Calls.submit(spec, job, id))

    async def submit_plan(
        self, job: str, spec: JobSpec, claims: Sequence[Claim], *, id: str | None = None
    ) -> Applied[CommitResult]:
        """Submit `job` placed by `claims` if none of their machines changed since
        their seqnums, else nothing (`cellstate.SubmitPlan`)."""
        return await self._run(_Calls.submit_plan(job, spec, claims, id))

    async def update(self, job: str, spec: JobSpec, *, id: str | None = None) -> Applied[Ok]:
        """Make `spec` the job's next version (a rollout if what runs changed)."""
        return await self._run(_Calls.update(job, spec, id))

    async def revert(self, job: str, version: int, *, id: str | None = None) -> Applied[Ok]:
        return await self._run(_Calls.revert(job, version, id))

    async def scale(self, job: str, tasks: int, *, id: str | None = None) -> Applied[Ok]:
        return await self._run(_Calls.scale(job, tasks, id))

    async def promote(self, job: str, *, id: str | None = None) -> Applied[Ok]:
        return await self._run(_Calls.promote(job, id))

    async def history(self, job: str) -> HistoryView:
        return await self._run(_Calls.history(job))

    async def kill(self, job: str, *, id: str | None = None) -> Applied[Ok]:
        return await self._run(_Calls.kill(job, id))

    async def commit(self, txn: Transaction, *, id: str | None = None) -> Applied[CommitResult]:
        """Commit one transaction (one Raft entry): the claim-by-claim verdict."""
        return await self._run(_Calls.commit(txn, id))

    async def register_machines(
        self, machines: Sequence[MachineSpec], *, id: str | None = None
    ) -> Applied[Ok]:
        return await self._run(_Calls.register_machines(machines, id))

    async def heartbeat(
        self, machines: Sequence[str], *, id: str | None = None
    ) -> Applied[Stale | Ok]:
        """`Stale.machines` are unknown or down in the cell: register them again."""
        return await self._run(_Calls.heartbeat(machines, id))

    async def report_tasks(
        self, reports: Sequence[TaskReport], *, id: str | None = None
    ) -> Applied[Stale | Ok]:
        """`Stale.tasks` no longer run where they were reported: stop them."""
        return await self._run(_Calls.report_tasks(reports, id))

    async def report_usage(
        self, usages: Sequence[TaskUsage], *, id: str | None = None
    ) -> Applied[Stale | Ok]:
        return await self._run(_Calls.report_usage(usages, id))

    async def set_machine_state(
        self,
        machine: str,
        state: MachineState,
        *,
        deadline: float | None = None,
        id: str | None = None,
    ) -> Applied[Ok]:
        return await self._run(_Calls.set_machine_state(machine, state, deadline, id))

    async def label_machines(
        self,
        machines: Sequence[str],
        labels: Mapping[str, str],
        remove: Sequence[str] = (),
        *,
        id: str | None = None,
    ) -> Applied[Ok]:
        """Set `labels` and take away the keys in `remove` on every machine named, kept
        over what their agents register; all or none (rules 14)."""
        return await self._run(_Calls.label_machines(machines, labels, remove, id))

    async def remove_machines(
        self, machines: Sequence[str], *, id: str | None = None
    ) -> Applied[Ok]:
        """Forget machines that are down (all or none; `machine_not_down` otherwise)."""
        return await self._run(_Calls.remove_machines(machines, id))

    async def set_quota(
        self, owner: str, band: Band, limit: Limit | Resources | None, *, id: str | None = None
    ) -> Applied[Ok]:
        return await self._run(_Calls.set_quota(owner, band, limit, id))

    async def set_weights(
        self, weights: Mapping[str, float], *, id: str | None = None
    ) -> Applied[Ok]:
        """Set owners' fair-share weights (others keep theirs); all or none."""
        return await self._run(_Calls.set_weights(weights, id))

    async def report_scheduler(
        self,
        name: str,
        kind: SchedulerClass,
        figures: Mapping[str, float],
        explanations: Mapping[str, str],
        *,
        id: str | None = None,
    ) -> Applied[Ok]:
        return await self._run(_Calls.report_scheduler(name, kind, figures, explanations, id))

    # reads

    async def job(self, job: str) -> JobView:
        return await self._run(_Calls.job(job))

    async def jobs(self, state: str | None = None) -> list[JobView]:
        return await self._run(_Calls.jobs(state))

    async def task(self, task: str) -> TaskView:
        return await self._run(_Calls.task(task))

    async def tasks(
        self,
        job: str | None = None,
        state: str | None = None,
        machine: str | None = None,
        limit: int | None = None,
    ) -> list[TaskView]:
        return await self._run(_Calls.tasks(job, state, machine, limit))

    async def machines(self, state: str | None = None) -> list[MachineView]:
        return await self._run(_Calls.machines(state))

    async def machine(self, machine: str) -> MachineView:
        return await self._run(_Calls.machine(machine))

    async def create_token(
        self,
        name: str,
        role: str,
        digest: str,
        machines: Sequence[str] = (),
        *,
        id: str | None = None,
    ) -> Applied[Ok]:
        """Issue a token kept as `digest` (SHA-256 of its secret, `cellstore.access.digest`)."""
        return await self._run(_Calls.create_token(name, role, digest, machines, id))

    async def summary(self) -> CellSummary:
        return await self._run(_Calls.summary())

    async def whoami(self) -> Identity:
        return await self._run(_Calls.whoami())

    async def quotas(self) -> list[QuotaView]:
        return await self._run(_Calls.quotas())

    async def weights(self) -> list[WeightView]:
        """Owners' fair-share weights and dominant shares."""
        return await self._run(_Calls.weights())

    async def explain(self, target: str) -> Explanation:
        """Why a job or task is where it is (`target` is a job or task id)."""
        return await self._run(_Calls.explain(target))

    async def endpoints(self, job: str) -> list[Endpoint]:
        """Where `job`'s running tasks serve, with whether each is ready."""
        return await self._run(_Calls.endpoints(job))

    async def status(self, address: str | None = None) -> ReplicaStatus:
        """The status of the replica at `address`, or of whichever replica answers."""
        if address is None:
            return await self._run(_Calls.status())
        import httpx

        from cellstore.errors import ApiError

        try:
            return _Calls.status().decode(await self.store.status(address))
        except ApiError as exc:
            raise CellError(exc.body.code, exc.body.message, exc.body.field, exc.status) from None
        except httpx.HTTPError as exc:
            raise CellError("unavailable", f"{address}: {exc!r}") from None

    async def watch(self, from_version: int = 1) -> AsyncGenerator[WatchBatch, None]:
        """The cell's log from `from_version` on, forever, across failovers: batches of
        `(version, command)` in the log's own form, for a `LocalCopy` to apply."""
        # Closed here, not by the garbage collector: its https stream must end in this task.
        async with contextlib.aclosing(self.store.watch(from_version)) as feed:
            async for batch in feed:
                yield batch


# -- the blocking face ----------------------------------------------------------------------


class _Connection:
    """One HTTP/1.1 connection, kept alive between requests. The standard library's
    `http.client` would do, but importing it (with `email` and `ssl`) costs a read command
    ~20 ms; the replicas' answers are simple (a status, headers, a sized body), and so is this."""

    def __init__(self, scheme: str, host: str, timeout_s: float, ca: str | None = None) -> None:
        import socket

        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise CellError("invalid", f"address {host!r} is not HOST:PORT", "address")
        self.host = host
        # A host behind a link that drops packets never refuses: waiting the whole request
        # timeout for a SYN that gets no answer is what made a write take 17 s (issue #19).
        self.sock = socket.create_connection(
            (name.strip("[]"), int(port)), timeout=min(timeout_s, CONNECT_TIMEOUT_S)
        )
        self.sock.settimeout(timeout_s)
        if scheme == "https":
            import ssl

            # The cell's own CA only, when given (`cellstore.tls`); the name is checked.
            context = ssl.create_default_context(cafile=ca)
            try:
                self.sock = context.wrap_socket(self.sock, server_hostname=name.strip("[]"))
            except OSError:
                self.sock.close()
                raise
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def exchange(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        abandon: Callable[[], str | None] | None = None,
    ) -> tuple[int, dict[str, str], bytes, bool]:
        """Send one request; (status, lower-cased headers, body, whether to keep the
        connection). Raises OSError if the connection fails or the answer is malformed, or
        when `abandon()`, asked every half second from the first second of waiting on,
        returns a reason to stop waiting."""
        lines = [f"{method} {target} HTTP/1.1", f"host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None:
            lines.append(f"content-length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        if abandon is not None:
            self._wait_for_answer(abandon)
        status_line = self.reader.readline(65537)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ConnectionError(f"{self.host}: not an HTTP answer: {status_line[:80]!r}")
        answer: dict[str, str] = {}
        while (line := self.reader.readline(65537)) not in (b"\r\n", b"\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            answer[key.strip().lower()] = value.strip()
        keep = parts[0] == b"HTTP/1.1" and answer.get("connection", "").lower() != "close"
        if "content-length" in answer:
            size = int(answer["content-length"])
            content = self.reader.read(size)
            if len(content) != size:
                raise ConnectionError(f"{self.host}: answer cut at {len(content)} of {size} bytes")
        elif answer.get("transfer-encoding", "").lower() == "chunked":
            content = self._chunked()
        else:
            content, keep = self.reader.read(), False
        return int(parts[1]), answer, content, keep

    def _wait_for_answer(self, abandon: Callable[[], str | None]) -> None:
        """Block until the answer starts (the previous one was read whole, so the reader holds
        nothing), asking `abandon` while it does not; TimeoutError past the socket timeout."""
        import select

        from cellstore.leader import PROBE_AFTER_S, PROBE_PERIOD_S

        timeout = self.sock.gettimeout() or 15.0
        waited, step = 0.0, PROBE_AFTER_S
        while not select.select([self.sock], [], [], min(step, timeout - waited))[0]:
            waited += min(step, timeout - waited)
            if waited >= timeout:
                raise TimeoutError(f"{self.host}: no answer in {timeout:.0f} s")
            reason = abandon()
            if reason is not None:
                raise ConnectionError(f"{self.host}: {reason}")
            step = PROBE_PERIOD_S

    def _chunked(self) -> bytes:
        chunks = []
        while size := int(self.reader.readline(65537).split(b";")[0].strip() or b"0", 16):
            chunks.append(self.reader.read(size))
            self.reader.readline(65537)
        while self.reader.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)


class _BlockingTransport:
    """HTTP/1.1 with keep-alive to each replica, JSON by the standard library (orjson's import
    costs a read command more than it saves on one answer). A write goes to the replica that
    `x-omega-leader` last named; a connection error, a timeout or a 5xx moves on to the next
    replica and retries (the same bytes) with capped back-off until the deadline."""

    def __init__(
        self,
        addresses: Sequence[str],
        token: str,
        timeout_s: float,
        retry_deadline_s: float,
        ca: str | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("at least one replica address is needed")
        self.ca = ca
        scheme = "https" if ca is not None else "http"
        urls = [a if "://" in a else f"{scheme}://{a}" for a in addresses]
        self._targets = [
            (scheme, host.rstrip("/")) for scheme, host in (u.split("://", 1) for u in urls)
        ]
        self._addresses = [host for _, host in self._targets]
        self._headers = {"authorization": f"Bearer {token}"}
        self._timeout_s = timeout_s
        self._retry_deadline_s = retry_deadline_s
        self._connections: dict[int, _Connection] = {}
        self._preferred = 0

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def _exchange(
        self, index: int, method: str, path: str, body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = self._connections.get(index)
        if connection is None:
            scheme, host = self._targets[index]
            connection = self._connections[index] = _Connection(
                scheme, host, self._timeout_s, self.ca
            )
        headers = dict(self._headers)
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            status, answer, content, keep = connection.exchange(
                method, path, headers, body, lambda: self._leader_elsewhere(index)
            )
        except (OSError, ValueError):
            self._drop(index)
            raise
        if not keep:
            self._drop(index)
        return status, answer, content

    def _leader_elsewhere(self, index: int) -> str | None:
        """While replica `index` keeps us waiting: if it cannot be connected to and another
        names a leader (`cellstore.leader`), prefer that leader and say why we stop waiting."""
        import json
        import socket

        from cellstore.leader import PROBE_TIMEOUT_S, leader_elsewhere

        target = self._addresses[index]
        name, _, port = target.rpartition(":")
        try:
            socket.create_connection((name.strip("[]"), int(port)), PROBE_TIMEOUT_S).close()
            return None  # it can be reached: the request is slow, not lost
        except (OSError, ValueError):
            pass
        answers: dict[str, dict[str, Any] | None] = {}
        for scheme, host in self._targets:
            if host == target:
                continue
            answers[host] = None
            try:
                probe = _Connection(scheme, host, PROBE_TIMEOUT_S, self.ca)
                try:
                    status, _, content, _ = probe.exchange("GET", STATUS, self._headers, None)
                finally:
                    probe.close()
                if status == 200:
                    answers[host] = json.loads(content)
            except (OSError, ValueError, CellError):
                pass
        leader = leader_elsewhere(target, answers)
        if leader is None or leader not in self._addresses:
            return None
        self._preferred = self._addresses.index(leader)
        return f"unreachable, and {leader} leads"

    def _drop(self, index: int) -> None:
        connection = self._connections.pop(index, None)
        if connection is not None:
            connection.close()

    def request(self, method: str, path: str, body: Any, *, leader: bool) -> Any:
        import json

        raw = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        deadline = time.monotonic() + self._retry_deadline_s
        delay = 0.02
        last: str = ""
        while True:
            index = self._preferred
            try:
                status, answer, content = self._exchange(index, method, path, raw)
                reported_leader = answer.get("x-omega-leader")
                if leader and reported_leader in self._addresses:
                    self._preferred = self._addresses.index(reported_leader)
                if status not in RETRYABLE_STATUS:
                    return _decoded(status, content)
                last = f"HTTP {status} from {self._addresses[index]}"
            except (OSError, ValueError) as exc:
                last = f"{self._addresses[index]}: {exc!r}"
            if self._preferred == index:  # else a probe found the leader
                self._preferred = (index + 1) % len(self._targets)
            if time.monotonic() > deadline:
                raise CellError("unavailable", f"{method} {path}: no replica answered: {last}")
            import random  # only on a retry: its import is 5 ms of a read command's start

            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 0.5)

    def get_from(self, index: int, path: str) -> Any:
        """One GET from one replica, no retry: a replica's own account of itself."""
        try:
            status, _, content = self._exchange(index, "GET", path, None)
        except (OSError, ValueError) as exc:
            raise CellError("unavailable", f"{self._addresses[index]}: {exc!r}") from None
        return _decoded(status, content)

    def index_of(self, address: str) -> int:
        host = address.split("://", 1)[-1].rstrip("/")
        if host not in self._addresses:
            raise CellError("invalid", f"{address!r} is not one of {self._addresses}", "address")
        return self._addresses.index(host)


def _loads_or_none(content: bytes) -> Any:
    import json

    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


def _decoded(status: int, content: bytes) -> Any:
    document = _loads_or_none(content)
    if status >= 400:
        raise _error_from(status, document, content.decode(errors="replace"))
    return document


class SyncCellClient:
    """The same operations, blocking, for the `omega` command (see the module's docstring).
    Use `with SyncCellClient(addresses, token) as cell:`."""

    def __init__(
        self,
        addresses: Sequence[str],
        token: str,
        *,
        timeout_s: float = 15.0,
        retry_deadline_s: float = 15.0,
        ca: str | None = None,
    ) -> None:
        """`ca`: the CA file that signed the replicas' (and agents') certificates; with it,
        addresses without a scheme are https, without it plain http."""
        self._token = token
        self._timeout_s = timeout_s
        self._ca = ca
        self._transport = _BlockingTransport(addresses, token, timeout_s, retry_deadline_s, ca)

    def __enter__(self) -> SyncCellClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def _run(self, call: Call[T]) -> T:
        answer = self._transport.request(call.method, call.path, call.body, leader=call.leader)
        return call.decode(answer)

    def snapshot(self) -> bytes:
        """The cell state's snapshot from the preferred replica, for `CellState.restore`
        (what-if plans run the real scheduler core on it)."""
        import json

        document = self._transport.request("GET", SNAPSHOT, None, leader=False)
        return json.dumps(document, separators=(",", ":")).encode()

    # writes

    def submit(self, spec: JobSpec, job: str | None = None, *, id: str | None = None) -> Submitted:
        return self._run(_Calls.submit(spec, job, id))

    def update(self, job: str, spec: JobSpec, *, id: str | None = None) -> Applied[Ok]:
        return self._run(_Calls.update(job, spec, id))

    def revert(self, job: str, version: int, *, id: str | None = None) -> Applied[Ok]:
        return self._run(_Calls.revert(job, version, id))

    def scale(self, job: str, tasks: int, *, id: str | None = None) -> Applied[Ok]:
        return self._run(_Calls.scale(job, tasks, id))

    def promote(self, job: str, *, id: str | None = None) -> Applied[Ok]:
        return self._run(_Calls.promote(job, id))

    def history(self, job: str) -> HistoryView:
        return self._run(_Calls.history(job))

    def kill(self, job: str, *, id: str | None = None) -> Applied[Ok]:
        return self._run(_Calls.kill(job, id))

    def commit(self, txn: Transaction, *, id: str | None = None) -> Applied[CommitResult]:
        return self._run(_Calls.commit(txn, id))

    def submit_plan(
        self, job: str, spec: JobSpec, claims: Sequence[Claim], *, id: str | None = None
    ) -> Applied[CommitResult]:
        """Submit `job` placed by `claims` if none of their machines changed since
        their seqnums, else nothing (`cellstate.SubmitPlan`)."""
        return self._run(_Calls.submit_plan(job, spec, claims, id))

    def register_machines(
        self, machines: Sequence[MachineSpec], *, id: str | None = None
    ) -> Applied[Ok]:
        return self._run(_Calls.register_machines(machines, id))

    def heartbeat(self, machines: Sequence[str], *, id: str | None = None) -> Applied[Stale | Ok]:
        return self._run(_Calls.heartbeat(machines, id))

    def report_tasks(
        self, reports: Sequence[TaskReport], *, id: str | None = None
    ) -> Applied[Stale | Ok]:
        return self._run(_Calls.report_tasks(reports, id))

    def report_usage(
        self, usages: Sequence[TaskUsage], *, id: str | None = None
    ) -> Applied[Stale | Ok]:
        return self._run(_Calls.report_usage(usages, id))

    def set_machine_state(
        self,
        machine: str,
        state: MachineState,
        *,
        deadline: float | None = None,
        id: str | None = None,
    ) -> Applied[Ok]:
        return self._run(_Calls.set_machine_state(machine, state, deadline, id))

    def label_machines(
        self,
        machines: Sequence[str],
        labels: Mapping[str, str],
        remove: Sequence[str] = (),
        *,
        id: str | None = None,
    ) -> Applied[Ok]:
        return self._run(_Calls.label_machines(machines, labels, remove, id))

    def remove_machines(self, machines: Sequence[str], *, id: str | None = None) -> Applied[Ok]:
        """Forget machines that are down (all or none; `machine_not_down` otherwise)."""
        return self._run(_Calls.remove_machines(machines, id))

    def set_quota(
        self, owner: str, band: Band, limit: Limit | Resources | None, *, id: str | None = None
    ) -> Applied[Ok]:
        return self._run(_Calls.set_quota(owner, band, limit, id))

    def set_weights(self, weights: Mapping[str, float], *, id: str | None = None) -> Applied[Ok]:
        """Set owners' fair-share weights (others keep theirs); all or none."""
        return self._run(_Calls.set_weights(weights, id))

    # reads

    def job(self, job: str) -> JobView:
        return self._run(_Calls.job(job))

    def jobs(self, state: str | None = None) -> list[JobView]:
        return self._run(_Calls.jobs(state))

    def task(self, task: str) -> TaskView:
        return self._run(_Calls.task(task))

    def tasks(
        self,
        job: str | None = None,
        state: str | None = None,
        machine: str | None = None,
        limit: int | None = None,
    ) -> list[TaskView]:
        return self._run(_Calls.tasks(job, state, machine, limit))

    def machines(self, state: str | None = None) -> list[MachineView]:
        return self._run(_Calls.machines(state))

    def machine(self, machine: str) -> MachineView:
        return self._run(_Calls.machine(machine))

    def summary(self) -> CellSummary:
        return self._run(_Calls.summary())

    def whoami(self) -> Identity:
        return self._run(_Calls.whoami())

    def create_token(
        self,
        name: str,
        role: str,
        digest: str,
        machines: Sequence[str] = (),
        *,
        id: str | None = None,
    ) -> Applied[Ok]:
        """Issue a token kept as `digest` (SHA-256 of its secret, `cellstore.access.digest`)."""
        return self._run(_Calls.create_token(name, role, digest, machines, id))

    def revoke_token(self, name: str, *, id: str | None = None) -> Applied[Ok]:
        return self._run(_Calls.revoke_token(name, id))

    def tokens(self) -> list[TokenView]:
        """Every token's name, role and machines (never a secret nor a digest)."""
        return self._run(_Calls.tokens())

    def quotas(self) -> list[QuotaView]:
        return self._run(_Calls.quotas())

    def weights(self) -> list[WeightView]:
        """Owners' fair-share weights and dominant shares."""
        return self._run(_Calls.weights())

    def explain(self, target: str) -> Explanation:
        return self._run(_Calls.explain(target))

    def endpoints(self, job: str) -> list[Endpoint]:
        return self._run(_Calls.endpoints(job))

    def status(self, address: str | None = None) -> ReplicaStatus:
        if address is None:
            return self._run(_Calls.status())
        return self._transport.get_from(self._transport.index_of(address), STATUS)

    def agent_logs(
        self, agent: str, task: str, incarnation: int, stream: str, offset: int
    ) -> tuple[int, bytes]:
        """A chunk of a task's captured `stream` from `offset`, read from the agent at
        `agent` (HOST:PORT, its machine's `omega.agent` label) with this client's token, and
        the offset it starts at: later than `offset` if the agent rotated those bytes away."""
        query = urlencode(
            {"task": task, "incarnation": incarnation, "stream": stream, "offset": offset}
        )
        headers = {"authorization": f"Bearer {self._token}"}
        try:
            scheme = "https" if self._ca is not None else "http"
            connection = _Connection(scheme, agent, self._timeout_s, self._ca)
            try:
                status, answer, content, _ = connection.exchange(
                    "GET", f"{AGENT_LOGS}?{query}", headers, None
                )
            finally:
                connection.close()
        except (OSError, ValueError) as exc:
            raise CellError("unavailable", f"agent {agent} did not answer: {exc!r}") from None
        if status != 200:
            raise _error_from(status, _loads_or_none(content), content.decode("replace"))
        # (An agent before rotation sends no start: its chunk starts where it was asked.)
        return int(answer.get("x-omega-log-start", offset)), content


def each_status(cell: SyncCellClient, addresses: Sequence[str]) -> Iterator[ReplicaStatus]:
    """Every replica's own status, or `{"address", "error"}` for one that does not answer."""
    for address in addresses:
        try:
            yield cell.status(address)
        except CellError as exc:
            yield {"address": address, "error": str(exc)}
