"""The replica's HTTP API: the `Replica` runtime handed to endpoints, and the generic endpoints.

Endpoints (all need `Authorization: Bearer <token>`; `Replica.authenticate` and
`Replica.authorize` say whose it is and what it may call):
* `POST /v1/commands` `{"commands": [<command>, ...]}`: each command is its own Raft entry, all
  in flight at once; 200 `{"results": [...]}` in order. If any command was not acknowledged:
  503 with `error.code = "not_committed"`, `results` holding null for each unacknowledged one,
  and `failed: [{"index", "reason"}]`; the client resubmits exactly those, unchanged. Accepted on
  any replica: a follower hands the entry to the leader over Raft (pysyncobj's own forwarding)
  and answers once it has applied it itself, so the client only sees latency.
* `GET /v1/status`: replica, addresses, leader, Raft term and indexes, version, watch figures,
  commands applied/s and mean apply time.
* `GET /v1/watch?from=V`: NDJSON. Lines `{"from": V, "commands": [[version, <command>], ...]}`
  with consecutive versions starting at V; if V is older than the buffer, first
  `{"snapshot": <base64>, "encoding": "base64", "version": N}` and commands from N+1 on;
  `{"heartbeat": true, "version": N}` after a second without commands.
* `GET /v1/snapshot`: the machine's snapshot bytes, its version in `x-omega-version`.
* `GET /metrics`: Prometheus text format (`cellstore.metrics`).

Typed endpoints are added by extensions (`ReplicaConfig.extensions`): functions
`extension(router, replica)` that call `router.add(method, path, handler)`; handlers validate
with their cattrs converter, then use `replica.commit([...])` and `replica.read(fn)`.
Every response to a command carries `x-omega-leader: <api address>` when a leader is known.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
import structlog
import trio

from cellstore.config import ReplicaConfig
from cellstore.errors import ApiError
from cellstore.feed import AppliedFeed
from cellstore.gateway import CommandGateway, CommitFailure
from cellstore.http import (
    Authenticate,
    Authorize,
    Request,
    Response,
    Router,
    StreamResponse,
    allow_all,
    bearer,
)
from cellstore.machine import Machine
from cellstore.metrics import ReplicaMetrics, metrics_endpoint
from cellstore.raft import ReplicatedMachine

log = structlog.get_logger("cellstore.api")

T = TypeVar("T")

WATCH_BATCH = 1024
WATCH_HEARTBEAT_S = 1.0


class Replica:
    """What endpoints work with: the Raft member, the watch feed and the command gateway."""

    def __init__(self, config: ReplicaConfig, raft: ReplicatedMachine, feed: AppliedFeed) -> None:
        self.config = config
        self.raft = raft
        self.feed = feed
        self.gateway = CommandGateway(raft, config.commit_timeout_s, config.max_in_flight)
        self.metrics = ReplicaMetrics()
        self.metrics.watch(self)
        self.applied_per_s = 0.0
        self.apply_us_mean = 0.0
        # Coroutines that extensions want run for the replica's lifetime.
        self.background: list[Callable[[], Any]] = []
        # Who a request is from and what it may call (`cellstore.http`): the config's token
        # as admin, until an extension that knows more replaces them.
        self.authenticate: Authenticate = bearer(config.token)
        self.authorize: Authorize = allow_all

    async def commit_raw(self, commands: list[bytes]) -> list[bytes | CommitFailure]:
        """Replicate wire-encoded commands; per command its result bytes or a failure."""
        started = time.perf_counter()
        results = await self.gateway.submit(commands)
        self.metrics.observe_commit(started)
        return results

    async def commit(self, commands: list[bytes]) -> list[bytes]:
        """Replicate wire-encoded commands; their result bytes in order. Raises `ApiError` 503
        `not_committed` (retryable, same commands) if any was not acknowledged."""
        results = await self.commit_raw(commands)
        failed = [(i, r.reason) for i, r in enumerate(results) if isinstance(r, CommitFailure)]
        if failed:
            raise not_committed(results, failed)
        return results  # type: ignore[return-value]

    async def read(self, fn: Callable[[Machine], T]) -> T:
        """Run `fn(machine)` under the state lock in a worker thread (keep it short)."""
        return await trio.to_thread.run_sync(self.raft.with_machine, fn)

    def leader_api(self) -> str | None:
        return self.config.api_address_of(self.raft.raft_status()["leader_raft"])

    def leader_headers(self) -> dict[str, str]:
        leader = self.leader_api()
        return {"x-omega-leader": leader} if leader else {}

    async def sample_stats(self, period_s: float = 1.0) -> None:
        """Update applied/s and mean apply time every `period_s` (runs until cancelled)."""
        stats = self.raft.stats
        last_n, last_s, last_t = stats.applied, stats.apply_seconds, time.monotonic()
        while True:
            await trio.sleep(period_s)
            self.raft.current_version()  # surfaces a dump installed since the last apply
            n, s, t = stats.applied, stats.apply_seconds, time.monotonic()
            self.applied_per_s = (n - last_n) / max(t - last_t, 1e-9)
            self.apply_us_mean = (s - last_s) / (n - last_n) * 1e6 if n > last_n else 0.0
            last_n, last_s, last_t = n, s, t


def not_committed(results: list[Any], failed: list[tuple[int, str]]) -> ApiError:
    first_index, first_reason = failed[0]
    return ApiError(
        503,
        "not_committed",
        f"{len(failed)} of {len(results)} commands were not acknowledged ({first_reason}); "
        "their outcome is unknown: resubmit them unchanged",
        f"commands[{first_index}]",
        extra={
            "results": [
                None if isinstance(r, CommitFailure) else orjson.Fragment(r) for r in results
            ],
            "failed": [{"index": i, "reason": reason} for i, reason in failed],
        },
    )


def parse_commands(request: Request, machine_class: Any = None) -> list[bytes]:
    """`{"commands": [...]}` -> each command as the bytes the log will hold: the machine
    class's `canonical(document, path, principal)` (its validating edge, which records who sent
    each command) where it has one, else compact
    JSON."""
    body = request.json()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "body must be a JSON object", "body")
    commands = body.get("commands")
    if not isinstance(commands, list):
        raise ApiError(400, "invalid_field", "commands must be a list", "commands")
    for i, command in enumerate(commands):
        if not isinstance(command, dict):
            raise ApiError(400, "invalid_field", "each command must be an object", f"commands[{i}]")
    canonical = getattr(machine_class, "canonical", None)
    if canonical is None:
        return [orjson.dumps(c) for c in commands]
    encoded = []
    for i, command in enumerate(commands):
        try:
            encoded.append(canonical(command, f"$.commands[{i}]", request.principal))
        except ValueError as exc:  # the machine's edge refused it
            raise ApiError(
                400,
                getattr(exc, "code", "invalid"),
                getattr(exc, "message", str(exc)),
                getattr(exc, "field", f"commands[{i}]"),
            ) from None
    return encoded


def build_router(replica: Replica) -> Router:
    """The route table with the generic endpoints; extensions add typed ones to it."""
    router = Router()

    async def post_commands(request: Request) -> Response:
        commands = parse_commands(request, replica.config.machine_class)
        results = await replica.commit_raw(commands)
        failed = [(i, r.reason) for i, r in enumerate(results) if isinstance(r, CommitFailure)]
        headers = replica.leader_headers()
        if failed:
            err = not_committed(results, failed)
            return Response.json(err.to_json(), err.status, headers)
        body = {"results": [orjson.Fragment(r) for r in results]}  # type: ignore[arg-type]
        return Response.json(body, 200, headers)

    async def get_status(request: Request) -> Response:
        return Response.json(status(replica))

    async def get_snapshot(request: Request) -> Response:
        version, data = await trio.to_thread.run_sync(replica.raft.read_snapshot)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"x-omega-version", str(version).encode()),
        ]
        return Response(200, data, headers)

    async def get_watch(request: Request) -> StreamResponse:
        from_version = request.query_int("from", 1)
        if from_version < 1:
            raise ApiError(400, "invalid_parameter", "from must be >= 1", "from")
        replica.raft.current_version()  # make a freshly loaded dump visible to the feed
        return StreamResponse(lambda: watch_lines(replica, from_version))

    router.add("POST", "/v1/commands", post_commands)
    router.add("GET", "/v1/status", get_status)
    router.add("GET", "/v1/snapshot", get_snapshot)
    router.add("GET", "/v1/watch", get_watch)
    metrics_endpoint(router, replica.metrics.registry)
    return router


def status(replica: Replica) -> dict[str, Any]:
    cfg = replica.config
    raft = replica.raft.raft_status()
    oldest, last = replica.feed.window
    return {
        "replica": cfg.id,
        "api": cfg.api_address,
        "raft": cfg.raft_address,
        "peers": [
            {"raft": r, "api": a} for r, a in zip(cfg.peers_raft, cfg.peers_api, strict=True)
        ],
        "leader": {"raft": raft["leader_raft"], "api": cfg.api_address_of(raft["leader_raft"])},
        "is_leader": raft["is_leader"],
        "ready": raft["ready"],
        "term": raft["term"],
        "commit_index": raft["commit_index"],
        "last_applied_index": raft["last_applied_index"],
        "log_entries": raft["log_entries"],
        "version": replica.raft.current_version(),
        "watch": {
            "subscribers": replica.feed.subscribers,
            "oldest_resumable": oldest,
            "last": last,
        },
        "commands_in_flight": replica.gateway.in_flight,
        "fsync": cfg.fsync,
        "journal_syncs": replica.raft.journal_syncs(),
        "disk_full": replica.raft.disk_full(),
        "applied_per_s": round(replica.applied_per_s, 1),
        "apply_us_mean": round(replica.apply_us_mean, 2),
    }


async def watch_lines(replica: Replica, from_version: int) -> AsyncIterator[bytes]:
    """The NDJSON watch stream from `from_version` on (see the module docstring)."""
    feed = replica.feed
    feed.subscribers += 1
    next_version = from_version
    try:
        while True:
            read = feed.read(next_version, WATCH_BATCH)
            if read.too_old:
                version, data = await trio.to_thread.run_sync(replica.raft.read_snapshot)
                line = {
                    "snapshot": base64.b64encode(data).decode(),
                    "encoding": "base64",
                    "version": version,
                }
                yield orjson.dumps(line) + b"\n"
                next_version = version + 1
                continue
            if read.entries:
                commands = [[v, orjson.Fragment(c)] for v, c in read.entries]
                yield orjson.dumps({"from": next_version, "commands": commands}) + b"\n"
                next_version = read.entries[-1][0] + 1
                continue
            assert read.changed is not None
            with trio.move_on_after(WATCH_HEARTBEAT_S) as timer:
                await read.changed.wait()
            if timer.cancelled_caught:
                yield orjson.dumps({"heartbeat": True, "version": read.last_version}) + b"\n"
    finally:
        feed.subscribers -= 1
