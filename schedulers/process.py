"""The live scheduler process: a `SchedulerCore` driven against a `LocalCopy` of the store.

One trio nursery owns three things: the copy following the store's watch feed, the
report loop and the decision loop. The decision loop is the core's contract
(`schedulers.core`) with real time and real I/O:

    while True:
        if the core has work in the copy:
            decision = core.decide(copy.cell, now)        # timed: busy
            sleep(t_job * jobs + t_task * tasks)          # optional think time: busy
            committer.commit(transaction)                  # one Raft entry
            core.on_result(copy.cell, decision, result, now)
            await copy.wait_for(result version)            # see our own claims
        else:
            await copy.changed()

Waiting for the result's version before deciding again matters: the next
decision must see this one's accepted claims, or it would offer the same
tasks (rejected as `task_not_pending`) and the same capacity again.

With `model="paper"` the core runs the Omega paper's transaction model
(`schedulers.core.PaperModel`): the think time counts every unscheduled task of the
job, an attempt that found no room commits nothing but is an attempt all the same,
and the loop wakes when a re-queued job comes back. The store's coarse sequence
numbers stay the cell's (moved by any change), unlike the simulator's paper model.

On start and every `report_period_s` the process posts its figures (flattened to numbers)
and an explanation of every job it owns that is still pending or parked to
the cell (`report_scheduler`), so `omega status` / `omega explain` read them
from any replica.

Commit ids are fresh random tokens (not from the seeded generator): a
restarted scheduler with the same name and seed must not reuse the ids of its
previous life. A retried POST resends the same id, so the store applies it
once. Shutdown is cancellation: SIGTERM or SIGINT cancels the nursery after a
last, shielded report.
"""

from __future__ import annotations

import functools
import math
import random
import signal
import time
import zlib
from collections.abc import Iterable
from typing import Any

import attrs
import structlog
import trio

from cellstate import CommitResult, ConflictMode, Role, SchedulerClass, TxnMode
from cellstore.access import CellGuard, authorize
from cellstore.cellclient import CellClient, CellError
from cellstore.copy import LocalCopy
from cellstore.http import Principal, Request, Response, Router, serve_router
from cellstore.ids import new_command_id
from cellstore.metrics import metrics_endpoint
from cellstore.tls import TlsFiles
from schedulers.avoid import Avoidance
from schedulers.committer import CellCommitter, Committer
from schedulers.core import Decision, PaperModel, SchedulerCore
from schedulers.prometheus import registry_of

MAX_EXPLANATIONS = 1000  # jobs explained per report, to bound the command's size
# How often a scheduler with lifecycle work looks again when nothing changed.
LIFECYCLE_TICK_S = 0.25


def default_seed(name: str) -> int:
    """The seed a scheduler takes when none is given: a stable hash of its name."""
    return zlib.crc32(name.encode())


def _addresses(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class SchedulerConfig:
    """Everything one scheduler process needs; see `python -m schedulers -h`."""

    # A named converter, not `tuple`: a type checker reads its argument type as `__init__`'s.
    addresses: tuple[str, ...] = attrs.field(converter=_addresses)
    token: str
    kind: SchedulerClass = attrs.field(converter=SchedulerClass)
    name: str = ""
    shard: tuple[int, int] | None = None
    mode: TxnMode = attrs.field(default=TxnMode.INCREMENTAL, converter=TxnMode)
    conflicts: ConflictMode = attrs.field(default=ConflictMode.FINE, converter=ConflictMode)
    think_job_s: float = 0.0
    think_task_s: float = 0.0
    sampling: bool = True
    max_attempts: int = 1000
    # How long a job parked after `max_attempts` rests before it is tried again: room and
    # quota come back in a live cell (the paper model abandons it for good instead).
    park_s: float = 30.0
    max_claims: int = 1000
    report_period_s: float = 2.0
    seed: int | None = None
    # Conflict avoidance (`schedulers.avoid`): partitions and cooling, or neither.
    avoidance: bool = True
    metrics: str | None = None  # HOST:PORT to serve GET /v1/metrics on
    # The transaction model: "real", or "paper" (`schedulers.core.PaperModel`, whose think
    # time counts every unscheduled task); `max_jobs` caps jobs per transaction (None: any).
    model: str = attrs.field(default="real")
    max_jobs: int | None = None

    @model.validator
    def _known(self, attribute: attrs.Attribute, value: str) -> None:
        if value not in ("real", "paper"):
            raise ValueError(f"model {value!r}: one of real, paper")

    # The CA to check the store against and the certificate the metrics listener serves
    # (`cellstore.tls`); None: plain http both ways (`--insecure`).
    tls: TlsFiles | None = None

    def __attrs_post_init__(self) -> None:
        if not self.name:
            shard = f"-{self.shard[0]}of{self.shard[1]}" if self.shard else ""
            object.__setattr__(self, "name", f"{self.kind}{shard}")
        if self.seed is None:
            object.__setattr__(self, "seed", default_seed(self.name))

    def core(self) -> SchedulerCore:
        return SchedulerCore(
            self.name,
            self.kind,
            rng=random.Random(self.seed),
            mode=self.mode,
            conflicts=self.conflicts,
            shard=self.shard,
            sampling=self.sampling,
            max_attempts=self.max_attempts,
            max_claims=self.max_claims,
            max_jobs=self.max_jobs,
            paper=PaperModel(max_attempts=self.max_attempts) if self.model == "paper" else None,
            park_s=None if self.model == "paper" else self.park_s,
            # The paper's model places by random fit alone, as the simulator's does.
            avoidance=Avoidance() if self.avoidance and self.model != "paper" else None,
        )


class LiveScheduler:
    """One running scheduler: its core, its copy, its client and its committer.

    `committer` defaults to committing through `client`; a harness passes one that records
    (see `schedulers.committer`)."""

    def __init__(
        self, config: SchedulerConfig, client: CellClient, committer: Committer | None = None
    ) -> None:
        self.config = config
        self.client = client
        self.committer = committer if committer is not None else CellCommitter(client)
        self.core = config.core()
        self.copy = LocalCopy()
        self.started = time.monotonic()
        self.commit_s = 0.0  # waiting for the committer's answers
        self.catchup_s = 0.0  # waiting for the copy to reach a result's version
        self.log = structlog.get_logger("schedulers.process").bind(
            scheduler=config.name, kind=str(config.kind)
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the store, decide and report until cancelled; `started()` once the
        copy has caught up. On cancellation, sends a last report (shielded, 2 s)."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.copy.follow, self.client)
                self.log.info(
                    "scheduler_started",
                    version=self.copy.version,
                    seed=self.config.seed,
                    shard=self.config.shard,
                )
                nursery.start_soon(self.report_loop)
                if self.config.metrics:
                    host, port = self.config.metrics.rsplit(":", 1)
                    guard = CellGuard(
                        lambda key: self.copy.cell.token_digests.get(key),
                        self.config.token,
                        Principal(f"{self.config.name} (own token)", Role.ADMIN),
                    )
                    await nursery.start(
                        functools.partial(
                            serve_router,
                            self.metrics_router(),
                            guard.authenticate,
                            host,
                            int(port),
                            tls=self.config.tls,
                            authorize=authorize,
                            name="metrics",
                        )
                    )
                task_status.started()
                await self.decide_loop()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                await self.report()
            self.log.info("scheduler_stopped", **self.summary())

    # -- deciding ------------------------------------------------------------------

    async def decide_loop(self) -> None:
        core, copy = self.core, self.copy
        while True:
            core.unpark_due(time.time())
            if not core.has_work(copy.cell):
                # A parked job comes back on time, whether or not the cell changes.
                back = core.wakes_at()
                with trio.move_on_after(math.inf if back is None else max(0.0, back - time.time())):
                    await copy.changed()
                continue
            decision = await self.decide()
            if decision is None:
                # Lifecycle work waits on time too (a replacement healthy for
                # long enough, a deadline), not only on the cell changing; so does a
                # job the paper model re-queued.
                wait = LIFECYCLE_TICK_S if core.changing(copy.cell) else math.inf
                back = core.wakes_at()
                if back is not None:
                    wait = min(wait, max(0.0, back - time.time()))
                with trio.move_on_after(wait):
                    await copy.changed()
                continue
            txn = decision.transaction
            if not txn.claims and not txn.stops and not txn.verdicts:
                # The paper model's attempt that found no room: nothing to commit.
                core.on_result(copy.cell, decision, CommitResult(), time.time())
                continue
            version = await self.commit(decision)
            if version is not None:
                start = time.perf_counter()
                await copy.wait_for(version)
                self.catchup_s += time.perf_counter() - start

    async def decide(self) -> Decision | None:
        """One timed decision, think time included (both count as busy)."""
        core, config = self.core, self.config
        start = time.perf_counter()
        decision = core.decide(self.copy.cell, time.time())
        elapsed = time.perf_counter() - start
        if decision is not None:
            tasks = decision.unscheduled if config.model == "paper" else decision.tasks
            think = config.think_job_s * len(decision.explanations) + config.think_task_s * tasks
            if think > 0:
                await trio.sleep(think)
                elapsed += think
        core.figures.add_busy(elapsed)
        return decision

    async def commit(self, decision: Decision) -> int | None:
        """Commit `decision`'s transaction through the committer and hand the result to the
        core; the version to wait for, or None if the store refused or was unreachable."""
        start = time.perf_counter()
        try:
            committed = await self.committer.commit(decision.transaction, new_command_id())
            self.commit_s += time.perf_counter() - start
        except CellError as exc:
            self.log.warning("commit_failed", error=str(exc), claims=decision.tasks)
            await trio.sleep(0.2)
            return None
        result = committed.result
        self.core.on_result(self.copy.cell, decision, result, time.time())
        if not decision.jobs and result.rejected:
            # Only lifecycle work, refused (a budget, a conflict): it is tried
            # again from the next state, not in a tight loop.
            await trio.sleep(LIFECYCLE_TICK_S)
        if result.rejected or result.preempted:
            self.log.debug(
                "committed",
                version=committed.version,
                claims=decision.tasks,
                accepted=result.accepted,
                rejected=len(result.rejected),
                preempted=len(result.preempted),
            )
        return committed.version

    # -- reporting -----------------------------------------------------------------

    async def report_loop(self) -> None:
        reports = 0
        while True:
            # Report first, then every period: until its first report the cell lists no such
            # scheduler (`omega status`), and `omega up` waited a whole period to say ready.
            await self.report()
            reports += 1
            if reports % 30 == 0:  # about once a minute: the cell purges jobs hours late
                self.core.forget_gone(self.copy.cell)
            await trio.sleep(self.config.report_period_s)

    async def report(self) -> None:
        try:
            await self.client.report_scheduler(
                self.config.name, self.config.kind, self.figures(), self.explanations()
            )
        except CellError as exc:
            self.log.warning("report_failed", error=str(exc))

    def figures(self) -> dict[str, float]:
        """The core's figures as one flat `{name: number}` map, plus busyness."""
        flat = flatten(self.core.figures.as_dict())
        elapsed = time.monotonic() - self.started
        flat["busyness"] = self.core.figures.busy_seconds / elapsed if elapsed > 0 else 0.0
        flat["uptime_s"] = elapsed
        flat["commit_seconds"] = self.commit_s
        flat["catchup_seconds"] = self.catchup_s
        flat["version"] = float(self.copy.version)
        return flat

    def explanations(self) -> dict[str, str]:
        cell, core = self.copy.cell, self.core
        out: dict[str, str] = {}
        for jid in cell.pending_jobs:
            job = cell.jobs[jid]
            if job.killed or not core.owns(job):
                continue
            out[jid] = core.explain(cell, jid).summary()
            if len(out) >= MAX_EXPLANATIONS:
                break
        return out

    def metrics_router(self) -> Router:
        """`GET /v1/metrics`: this scheduler's figures and explanations, the same
        report it posts to the store, read straight from the process; `GET /metrics`:
        the same figures for Prometheus (`schedulers.prometheus`)."""
        router = Router()

        async def metrics(request: Request) -> Response:
            return Response.json(
                {
                    "name": self.config.name,
                    "kind": str(self.config.kind),
                    "figures": self.figures(),
                    "explanations": self.explanations(),
                }
            )

        router.add("GET", "/v1/metrics", metrics)
        metrics_endpoint(router, registry_of(self))
        return router

    def summary(self) -> dict[str, Any]:
        f = self.core.figures
        return {
            "transactions": f.transactions,
            "claims_accepted": f.claims_accepted,
            "conflict_fraction": round(f.conflict_fraction, 4),
            "busy_s": round(f.busy_seconds, 3),
            "version": self.copy.version,
        }


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested figures as `{"a.b": number}`; strings and non-finite numbers are dropped."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, bool | int | float) and math.isfinite(value):
            out[name] = float(value)
    return out


async def run_scheduler(
    config: SchedulerConfig, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run one scheduler until cancelled, or until SIGTERM/SIGINT (then return)."""
    async with (
        CellClient.connect(
            config.addresses, config.token, ca=config.tls.ca if config.tls else None
        ) as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        await nursery.start(LiveScheduler(config, client).run)
        task_status.started()


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            structlog.get_logger("schedulers.process").info(
                "scheduler_signal", signal=signal.Signals(signum).name
            )
            scope.cancel()
            return


def main(config: SchedulerConfig) -> None:
    """Run `config`'s scheduler in this process (JSON logs on stderr)."""
    from cellstore.logs import configure_json_logging

    configure_json_logging()
    trio.run(run_scheduler, config)
