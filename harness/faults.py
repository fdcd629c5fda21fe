"""Fault injection for a live cell: Raft partitions, a recorded workload and its checker.

Three pieces, used by `tests/test_faults_cell.py` and `bench/soak.py`:

* `ProxiedCluster` is a `LocalCluster` whose Raft traffic runs through `RaftProxies`, small
  trio TCP forwarders in a thread of the test process, so a test can cut one replica off from
  both others (both directions) while its HTTP API stays reachable, and heal it later.
* `Workload` drives the cell over HTTP: job submissions and kills with explicit ids, an
  in-process scheduler (the very `LiveScheduler` the scheduler process runs, given a
  `RecordingCommitter`) whose commits are recorded, agent-style task reports, plus real
  `python -m schedulers` processes competing with it. It records every acknowledged
  operation (`Ack`) and the whole applied-command feed (`FeedRecorder`), and `Faults` injects
  leader/follower kills, partitions, full restarts and scheduler kills from a seeded schedule.
* `check` replays the recorded feed from version 1 into a fresh `CellState`, recounting the
  machines each command changed after every command (every invariant every 100 commands and
  at the end), and holds every acknowledgement, every replica's snapshot and every job's fate
  against it.

How the proxies isolate a replica. pysyncobj names a peer by its address string and lets only
the side with the greater address connect (`_shouldConnect`); the acceptor learns who called
from the caller's own address, sent first. So each replica gets its own peer list: its own
identity is `127.0.0.2:<raft port>` (where it binds and where proxies reach it), a peer it accepts
from is listed under that peer's identity, and a peer it connects to is listed under
`127.0.0.1:<proxy port>`, a forwarder for that one ordered pair. Every Raft connection thus
crosses exactly one proxy that knows both ends, and `partition(k)` closes every link touching
k and refuses new ones until `heal()`. Leader lookups still work: each replica maps its own
peer list, index for index, onto the shared API addresses.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import itertools
import math
import os
import random
import secrets
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import trio

from cellstate import (
    CellState,
    JobSpec,
    MachineSpec,
    Ok,
    ReportedState,
    Resources,
    TaskReport,
    TaskState,
    Transaction,
)
from cellstate.commands import Command, TaskPlaced
from cellstate.invariants import check_machines
from cellstate.model import ACTIVE_STATES, FIRST_RULES, TERMINAL_STATES
from cellstate.wire import encode_result, internal, parse
from cellstore.cellclient import Applied, CellClient, CellError
from cellstore.client import COMMANDS, StoreClient
from cellstore.config import free_ports
from cellstore.copy import LocalCopy
from harness.cluster import LocalCluster, cell_options, start_scheduler
from schedulers.committer import CellCommitter, Committed, Committer
from schedulers.process import LiveScheduler, SchedulerConfig

# The workload registers machines that no agent heartbeats: they must stay up.
CELL = cell_options(heartbeat_timeout_s=3600.0, commit_timeout_s=3.0)
IDENTITY_HOST = "127.0.0.2"
PROXY_HOST = "127.0.0.1"


# -- the partition harness ------------------------------------------------------------------


class RaftProxies:
    """TCP forwarders, one per ordered pair `(caller, acceptor)`, run by trio in a thread.

    `routes[(a, b)] = (listen_port, target_port)`. `cut(k)` drops every open link with k at
    either end and refuses new ones; `heal()` lets them through again. Thread-safe."""

    def __init__(self, routes: dict[tuple[int, int], tuple[int, int]]) -> None:
        self.routes = routes
        self.blocked: set[int] = set()
        self.links = Counter[tuple[int, int]]()  # connections forwarded, per pair
        self._scopes: dict[tuple[int, int], set[trio.CancelScope]] = {p: set() for p in routes}
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="raft-proxies", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError("raft proxies failed to start") from self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for pair, (listen, target) in self.routes.items():
                listeners = await trio.open_tcp_listeners(listen, host=PROXY_HOST)
                nursery.start_soon(
                    trio.serve_listeners, partial(self._forward, pair, target), listeners
                )
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def _open(self, pair: tuple[int, int]) -> bool:
        return not (pair[0] in self.blocked or pair[1] in self.blocked)

    async def _forward(self, pair: tuple[int, int], target: int, stream: trio.SocketStream) -> None:
        async with stream:
            if not self._open(pair):
                return
            try:
                upstream = await trio.open_tcp_stream(IDENTITY_HOST, target)
            except OSError:
                return
            self.links[pair] += 1
            with trio.CancelScope() as scope:
                self._scopes[pair].add(scope)
                try:
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, stream, upstream, nursery.cancel_scope)
                        nursery.start_soon(_pump, upstream, stream, nursery.cancel_scope)
                finally:
                    self._scopes[pair].discard(scope)

    def _set_blocked(self, blocked: set[int]) -> None:
        self.blocked = blocked
        for pair, scopes in self._scopes.items():
            if not self._open(pair):
                for scope in list(scopes):
                    scope.cancel()

    def cut(self, k: int) -> None:
        """Isolate replica k: close its links now, refuse new ones until `heal()`."""
        trio.from_thread.run_sync(self._set_blocked, self.blocked | {k}, trio_token=self._token)

    def heal(self) -> None:
        trio.from_thread.run_sync(self._set_blocked, set(), trio_token=self._token)

    def close(self) -> None:
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        if self._thread is not None:
            self._thread.join(10)


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        async for chunk in src:
            await dst.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        done.cancel()


class ProxiedCluster(LocalCluster):
    """A `LocalCluster` of the cell whose Raft links run through `RaftProxies`
    (see the module docstring). `partition(k)` / `heal()` cut and restore replica k."""

    def __init__(self, base_dir: Path, n: int = 3, **kwargs: Any) -> None:
        kwargs.setdefault("machine", CELL["machine"])
        kwargs.setdefault("extra", CELL["extra"])
        # Over https, as a cell across hosts runs: the fault suite's bar holds with TLS on.
        kwargs.setdefault("tls", True)
        super().__init__(base_dir, n, **kwargs)
        ports = [int(a.rsplit(":", 1)[1]) for a in self.raft_addresses]
        self.identity = [f"{IDENTITY_HOST}:{p}" for p in ports]
        pairs = [
            (a, b)
            for a in range(n)
            for b in range(n)
            if a != b and self.identity[a] > self.identity[b]
        ]
        taken = {int(a.rsplit(":", 1)[1]) for a in [*self.api, *self.raft_addresses]}
        listen = free_ports(len(pairs))
        while taken & set(listen):  # free_ports released the cluster's ports: avoid them
            listen = free_ports(len(pairs))
        self.proxy_port = dict(zip(pairs, listen, strict=True))
        self.proxies = RaftProxies({p: (self.proxy_port[p], ports[p[1]]) for p in pairs})
        self.partitioned: set[int] = set()

    def raft_peers(self, i: int) -> list[str]:
        """Replica i's own identity, and each peer under the address i reaches it by: the
        peer's identity if i accepts from it, else the proxy for the pair (module docstring)."""
        return [
            f"{PROXY_HOST}:{self.proxy_port[(i, j)]}"
            if (i, j) in self.proxy_port
            else self.identity[j]
            for j in range(self.n)
        ]

    def start(self) -> None:
        if self.proxies._thread is None:
            self.proxies.start()
        super().start()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.proxies.close()

    def partition(self, k: int) -> None:
        self.partitioned.add(k)
        self.proxies.cut(k)

    def heal(self) -> None:
        self.partitioned.clear()
        self.proxies.heal()


# -- scheduler processes ----------------------------------------------------------------------


class ProcessGroup:
    """Named processes of one kind (schedulers, agents), each started by `start(name)` and
    killed by pid: `kill` sends a signal and waits, SIGKILL after 10 s; `close` tries SIGTERM
    first (an agent so stopped stops its tasks, as a machine retired)."""

    def __init__(self, cluster: LocalCluster, names: list[str]) -> None:
        self.cluster = cluster
        self.names = names
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        raise NotImplementedError

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)
        for name in list(self.procs):
            self.kill(name)


class SchedulerProcs(ProcessGroup):
    """Real `python -m schedulers` processes against a cluster, killed by pid on close.
    The token travels in the environment, never on the command line."""

    def start(self, name: str) -> None:
        log = self.cluster.base_dir / f"scheduler-{name}.log"
        self.procs[name] = start_scheduler(self.cluster, log, "batch", name, "--report-period", "1")


# -- the workload ---------------------------------------------------------------------------


@attrs.define
class Ack:
    """An operation the store acknowledged: command id, kind, what it was about, the result."""

    id: str
    kind: str
    key: Any
    result: Any
    at: float = 0.0  # time.monotonic() when the acknowledgement came back


@attrs.frozen
class Cut:
    """One partition of the leader: its `kind`; when it began, when its heal began and when the
    cell had settled after the heal (`time.monotonic()`, `HEAL_SETTLE_S` after it agreed on a
    leader); whether the cell was `whole` just before it (every replica answered and had
    applied within `WHOLE_LAG` entries of the leader's commit index); and whether the heal
    `moved` the leader (the majority's leader and term just before the heal against the cell's after). A cut of a whole cell is the case Raft's election, check-quorum
    and pre-vote are measured on; a cut while another replica is still restarting or catching
    up leaves the majority waiting for that replica, which no election can shorten."""

    kind: str
    at: float
    healed: float
    settled: float
    whole: bool
    moved: bool


# Entries a caught-up follower may trail the leader's commit index by: the steady writer's
# commits of a few heartbeats.
WHOLE_LAG = 50


@attrs.define
class Probe:
    """A write sent straight to a partitioned leader. It must not be acknowledged, and must not
    be committed while the partition holds (`cut_version`: the majority's version just before
    the heal). Landing after the heal is allowed: the client was told `not_committed`, which
    means the outcome is unknown (resubmit with the same id), not that it never happens."""

    id: str
    replica: int
    outcome: str
    cut_version: int = 0


class FeedRecorder:
    """Follows `/v1/watch` from version 1 across failovers and keeps every command.

    Unlike `StoreClient.watch`, a replica that can only offer a snapshot for the next version
    (it was restarted from a dump) is skipped for another one; if none can serve it, the gap
    is recorded in `gaps` and the snapshot taken as the new base."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.commands: list[tuple[int, Any]] = []
        self.base: bytes | None = None  # a snapshot the history starts from, after a gap
        self.base_version = 0
        self.gaps: list[tuple[int, int]] = []

    @property
    def version(self) -> int:
        return self.commands[-1][0] if self.commands else self.base_version

    async def run(self) -> None:
        auth = {"authorization": f"Bearer {self.cluster.token}"}
        refused: Counter[int] = Counter()
        index = 0
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(3.0, connect=1.0), verify=self.cluster.verify
        ) as http:
            while True:
                n = self.cluster.n
                url = f"{self.cluster.url(index)}/v1/watch"
                try:
                    async with http.stream(
                        "GET", url, params={"from": self.version + 1}, headers=auth
                    ) as resp:
                        if resp.status_code == 200:
                            async for line in resp.aiter_lines():
                                if line and not self._take(orjson.loads(line), refused, index, n):
                                    break
                except (httpx.HTTPError, ValueError):
                    pass
                index = (index + 1) % n
                await trio.sleep(0.05)

    def _take(self, msg: dict[str, Any], refused: Counter[int], index: int, n: int) -> bool:
        if "snapshot" in msg:
            refused[index] += 1
            if sum(refused[i] for i in range(n)) < 3 * n:
                return False  # try another replica first
            self.gaps.append((self.version + 1, int(msg["version"])))
            self.base = base64.b64decode(msg["snapshot"])
            self.base_version = int(msg["version"])
            self.commands.clear()
            refused.clear()
            return True
        refused.clear()
        for version, command in msg.get("commands", ()):
            if version == self.version + 1:
                self.commands.append((version, command))
        return True

    async def wait_for(self, version: int, timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while self.version < version:
                await trio.sleep(0.05)


JOB_SPEC = {"owner": "alice", "scheduler": "batch", "resources": {"cpu": "500m", "memory": "512Mi"}}
HUGE_SPEC = {"owner": "alice", "scheduler": "batch", "resources": {"cpu": 64, "memory": "1Gi"}}


class Workload:
    """Submissions, kills, recorded scheduler commits and agent reports against a cluster.

    Run `run(nursery)` style: `await nursery.start(workload.run)`; call `stop_writes()` to end
    submissions and kills (agent and scheduler keep going so placed work finishes)."""

    def __init__(
        self,
        cluster: LocalCluster,
        seed: int,
        *,
        machines: int = 16,
        submit_interval_s: float = 0.06,
        spec_extra: dict[str, Any] | None = None,
        heartbeat_s: float | None = None,
    ) -> None:
        """`spec_extra` goes into every job spec (a command and duration, for cells with real
        agents); with `heartbeat_s` the workload's machines heartbeat, for cells whose
        heartbeat timeout is short enough to matter."""
        self.cluster = cluster
        self.spec_extra = spec_extra or {}
        self.heartbeat_s = heartbeat_s
        self.machine_ids = [f"m{i}" for i in range(machines)]
        self.rng = random.Random(seed)
        self.tag = f"s{seed}"
        self.machines = machines
        self.submit_interval_s = submit_interval_s
        self.acks: list[Ack] = []
        self.unacknowledged = Counter[str]()
        self.submitted: list[str] = []
        self.writes_open = True
        self._n = 0

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{self.tag}-{kind}-{self._n}-{secrets.token_hex(3)}"

    def client(self) -> StoreClient:
        return StoreClient(
            self.cluster.api,
            self.cluster.token,
            timeout_s=5.0,
            retry_deadline_s=60.0,
            ca=self.cluster.ca,
        )

    async def _send(self, kind: str, key: Any, cid: str, write: Awaitable[Any]) -> Any:
        """Await one write through the typed client; record it as acknowledged (with its
        result as the log encodes it) or count it unacknowledged by its error code."""
        try:
            done = await write
        except CellError as exc:
            self.unacknowledged[f"{kind}:{exc.code}"] += 1
            return None
        # A submission answers with its job and version; the log holds an `ok` for it.
        result = done.result if isinstance(done, Applied) else Ok()
        encoded = orjson.loads(encode_result(result))
        self.acks.append(Ack(cid, kind, key, encoded, time.monotonic()))
        return encoded

    async def setup(self, cell: CellClient) -> None:
        machines = [
            MachineSpec(m, Resources(8000, 16 << 30), domain=f"d{i % 4}")
            for i, m in enumerate(self.machine_ids)
        ]
        cid = self._id("register")
        await self._send("register", self.machines, cid, cell.register_machines(machines, id=cid))

    async def submitter(self, cell: CellClient) -> None:
        n = 0
        while self.writes_open:
            n += 1
            job = f"{self.tag}-j{n}"
            huge = self.rng.random() < 0.02
            spec = parse(
                {
                    **(HUGE_SPEC if huge else JOB_SPEC),
                    **self.spec_extra,
                    "name": "huge" if huge else "w",
                    "tasks": self.rng.randint(1, 4),
                },
                JobSpec,
            )
            self.submitted.append(job)
            cid = self._id("submit")
            await self._send("submit", job, cid, cell.submit(spec, job, id=cid))
            await trio.sleep(self.submit_interval_s)

    async def killer(self, cell: CellClient) -> None:
        while self.writes_open:
            await trio.sleep(self.rng.uniform(0.3, 1.0))
            done = [a.key for a in self.acks if a.kind == "submit"]
            if done:
                job = self.rng.choice(done[-50:])
                cid = self._id("kill")
                await self._send("kill", job, cid, cell.kill(job, id=cid))

    async def agent(self, cell: CellClient, copy: LocalCopy) -> None:
        """Report assigned tasks running, and running ones exited after a while, on the
        workload's own machines (other machines may have agents of their own)."""
        rng = random.Random(self.rng.random())
        running_since: dict[tuple[str, int], float] = {}
        own = set(self.machine_ids)
        while True:
            await trio.sleep(0.2)
            now = trio.current_time()
            reports = []
            for task in list(copy.cell.tasks.values()):
                if task.state not in ACTIVE_STATES or task.machine not in own:
                    continue
                key = (task.id, task.incarnation)
                if task.state is TaskState.ASSIGNED:
                    reports.append(
                        TaskReport(task.id, task.machine, task.incarnation, ReportedState.RUNNING)
                    )
                elif task.state is TaskState.RUNNING:
                    since = running_since.setdefault(key, now)
                    if now - since > rng.uniform(0.3, 2.0):
                        reports.append(
                            TaskReport(
                                task.id, task.machine, task.incarnation, ReportedState.EXITED, 0
                            )
                        )
            if reports:
                batch = reports[:200]
                cid = self._id("report")
                await self._send("report", len(batch), cid, cell.report_tasks(batch, id=cid))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with (
            self.client() as client,
            self.client() as sched_client,
            self.client() as agent_client,
            trio.open_nursery() as nursery,
        ):
            await self.setup(CellClient(client))
            scheduler = LiveScheduler(
                SchedulerConfig(
                    self.cluster.api,
                    self.cluster.token,
                    "batch",
                    name="recorded",
                    report_period_s=1.0,
                    seed=self.rng.random(),
                ),
                CellClient(sched_client),
                RecordingCommitter(CellCommitter(CellClient(sched_client)), self),
            )
            await nursery.start(scheduler.run)
            copy = LocalCopy()
            await nursery.start(copy.follow, agent_client)
            nursery.start_soon(self.agent, CellClient(agent_client), copy)
            if self.heartbeat_s is not None:
                nursery.start_soon(self.heartbeats, CellClient(agent_client), self.heartbeat_s)
            nursery.start_soon(self.submitter, CellClient(client))
            async with self.client() as kill_client:
                nursery.start_soon(self.killer, CellClient(kill_client))
                task_status.started()
                await trio.sleep_forever()

    async def heartbeats(self, cell: CellClient, period_s: float) -> None:
        while True:
            cid = self._id("heartbeat")
            await self._send(
                "heartbeat", len(self.machine_ids), cid, cell.heartbeat(self.machine_ids, id=cid)
            )
            await trio.sleep(period_s)

    def stop_writes(self) -> None:
        self.writes_open = False


@attrs.frozen
class RecordingCommitter:
    """A `Committer` for the ordinary `LiveScheduler`: commits through `inner` and records
    each acknowledged commit in `workload` as an `Ack` (the claims it sent, the result that
    came back, as the log encodes it), each unacknowledged one by its error."""

    inner: Committer
    workload: Workload

    async def commit(self, transaction: Transaction, command_id: str) -> Committed:
        try:
            committed = await self.inner.commit(transaction, command_id)
        except CellError as exc:
            self.workload.unacknowledged[f"commit:{exc.code}"] += 1
            raise
        claims = [(c.task, c.machine) for c in transaction.claims]
        result = orjson.loads(encode_result(committed.result))
        self.workload.acks.append(Ack(command_id, "commit", claims, result, time.monotonic()))
        return committed


# -- faults -----------------------------------------------------------------------------------

FAULT_KINDS = ("leader_kill", "follower_kill", "partition_leader", "full_restart", "scheduler_kill")
# How long after a heal the leadership is looked at again (see `_partition_leader`).
HEAL_SETTLE_S = 2.0


class Faults:
    """Injects faults into a `ProxiedCluster` (blocking calls run in worker threads) and
    records what it did: `counts` per kind, `probes` sent to partitioned leaders, `log`."""

    def __init__(
        self,
        cluster: ProxiedCluster,
        schedulers: SchedulerProcs | None,
        workload: Workload,
        rng: random.Random,
        say: Callable[[str], None] = print,
    ) -> None:
        self.cluster = cluster
        self.schedulers = schedulers
        self.workload = workload
        self.rng = rng
        self.say = say
        self.counts = Counter[str]()
        self.probes: list[Probe] = []
        self.majority_acks: list[int] = []  # acks gained while a leader was cut off
        self.timeline: list[tuple[float, str]] = []  # (time.monotonic() at start, kind)
        self.cuts: list[Cut] = []  # every partition of the leader, in order

    async def _sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args)

    async def inject(self, kind: str) -> None:
        self.timeline.append((time.monotonic(), kind))
        await getattr(self, kind)()
        self.counts[kind] += 1
        self.say(f"fault {kind} done")

    async def leader_kill(self) -> None:
        c = self.cluster
        leader = await self._sync(c.wait_leader)
        await self._sync(c.kill, leader)
        await self._sync(c.wait_leader)
        await trio.sleep(self.rng.uniform(0.2, 1.0))
        await self._sync(c.start_replica, leader)
        await self._sync(c.wait_leader, None, 45.0)

    async def follower_kill(self) -> None:
        c = self.cluster
        leader = await self._sync(c.wait_leader)
        follower = self.rng.choice([i for i in range(c.n) if i != leader])
        await self._sync(c.kill, follower)
        await trio.sleep(self.rng.uniform(0.5, 2.0))
        await self._sync(c.start_replica, follower)
        await self._sync(c.wait_leader, None, 45.0)

    async def full_restart(self) -> None:
        c = self.cluster
        for i in range(c.n):
            await self._sync(c.kill, i)
        await trio.sleep(self.rng.uniform(0.2, 1.0))
        for i in range(c.n):
            await self._sync(c.start_replica, i)
        await self._sync(c.wait_leader, None, 45.0)

    async def scheduler_kill(self) -> None:
        if self.schedulers is None:
            return
        name = self.rng.choice(self.schedulers.names)
        await self._sync(self.schedulers.kill, name)
        await trio.sleep(self.rng.uniform(0.5, 1.5))
        await self._sync(self.schedulers.start, name)

    async def partition_leader(self) -> None:
        await self._partition_leader(self.cluster.partition)

    async def _partition_leader(self, cut: Callable[[int], None]) -> None:
        """Cut the leader off with `cut`; show its write is not acknowledged while the other
        two elect a leader and keep acknowledging; heal; wait for one agreed leader again."""
        c = self.cluster
        kind = self.timeline[-1][1] if self.timeline else "partition_leader"
        old = await self._sync(c.wait_leader)
        whole = await self._sync(self._whole, old)
        acks_before = len(self.workload.acks)
        at = time.monotonic()
        await self._sync(cut, old)
        majority = [i for i in range(c.n) if i != old]
        probe = await self._probe(old)
        new = await self._sync(c.wait_leader, majority, 20.0)
        assert new != old
        with trio.move_on_after(15):
            while len(self.workload.acks) < acks_before + 5:
                await trio.sleep(0.05)
        gained = len(self.workload.acks) - acks_before
        self.majority_acks.append(gained)
        self.say(
            f"partition: old leader r{old} probe {probe.outcome}; new leader r{new}; "
            f"{gained} acks by the majority"
        )
        status = await self._sync(c.status, new, 5.0)
        if status is None:  # the majority's leader did not answer: the probe cannot be judged
            raise RuntimeError(f"new leader r{new} did not answer /v1/status before the heal")
        probe.cut_version = status["version"]
        # The majority's leader and term just before the heal: an election the majority held on
        # its own meanwhile (two replicas on a loaded machine) is not the heal's doing.
        before = await self._leadership(majority)
        healed = time.monotonic()
        await self._sync(c.heal)
        await self._sync(c.wait_leader, None, 45.0)
        # A rejoining replica that disrupts does so once it hears from the others again, or once
        # it has caught up: look again after a while.
        await trio.sleep(HEAL_SETTLE_S)
        after = await self._leadership(None)
        self.cuts.append(Cut(kind, at, healed, time.monotonic(), whole, after != before))
        if after != before:
            self.say(f"heal: leadership moved from {before} to {after}")

    def _whole(self, leader: int) -> bool:
        """Whether every replica answers and has applied nearly all `leader` has committed."""
        statuses = [self.cluster.status(i) for i in range(self.cluster.n)]
        if any(s is None for s in statuses):
            return False
        committed = max(int(s["commit_index"]) for s in statuses if s is not None)
        return all(
            int(s["last_applied_index"]) >= committed - WHOLE_LAG for s in statuses if s is not None
        )

    async def _leadership(self, among: list[int] | None) -> tuple[int, int]:
        """The agreed leader among `among` (default: all live) and its term."""
        c = self.cluster
        while True:
            leader = await self._sync(c.wait_leader, among, 45.0)
            status = await self._sync(c.status, leader, 5.0)
            if status is not None and status.get("is_leader"):
                return leader, int(status["term"])
            await trio.sleep(0.05)

    async def _probe(self, replica: int) -> Probe:
        """Submit a job straight to `replica`'s API (no client failover)."""
        pid = f"probe-{secrets.token_hex(6)}"
        body = {
            "commands": [
                {
                    "type": "submit_job",
                    "id": pid,
                    "job": pid,
                    "spec": {**JOB_SPEC, "name": "probe", "tasks": 1},
                }
            ]
        }
        url = f"{self.cluster.url(replica)}{COMMANDS}"
        auth = {"authorization": f"Bearer {self.cluster.token}"}
        try:
            async with httpx.AsyncClient(timeout=6.0, verify=self.cluster.verify) as http:
                resp = await http.post(url, content=orjson.dumps(body), headers=auth)
            outcome = f"{resp.status_code} {resp.json().get('error', {}).get('code', '')}"
        except httpx.HTTPError as exc:
            outcome = f"no answer ({type(exc).__name__})"
        probe = Probe(pid, replica, outcome.strip())
        self.probes.append(probe)
        return probe


# -- the checker ------------------------------------------------------------------------------


@attrs.define
class Report:
    """What `check` found: `errors` must be empty; `figures` are for humans."""

    errors: list[str] = attrs.Factory(list)
    figures: dict[str, Any] = attrs.Factory(dict)

    failures: int = 0

    def fail(self, message: str) -> None:
        self.failures += 1
        if len(self.errors) < 50:
            self.errors.append(message)


FULL_CHECK_EVERY = 100


def replay(
    commands: list[tuple[int, Any]], base: bytes | None, report: Report
) -> tuple[CellState, dict[str, tuple[int, Any, tuple[Any, ...]]]]:
    """Apply the feed to a fresh cell (or `base`). After every command the machines it
    changed are recounted from their tasks (capacity, sums, single placement); every
    `FULL_CHECK_EVERY` commands and at the end, every invariant over the whole cell. Returns
    the cell and, per command id applied (not deduplicated), (version, result JSON, events)."""
    # A log replayed from its start is judged by the rules it began under, as replicas do.
    cell = CellState.restore(base) if base is not None else CellState(rules=FIRST_RULES)
    cell.changed_machines = changed = set()
    applied: dict[str, tuple[int, Any, tuple[Any, ...]]] = {}
    checks = full = 0
    for n, (version, document) in enumerate(commands, 1):
        command = internal.structure(document, Command)
        cid = command.id
        duplicate = bool(cid) and cid in cell.recent
        outcome = cell.apply(command)
        if outcome.version != version:
            report.fail(f"replay reached version {outcome.version}, feed said {version}")
            break
        try:
            check_machines(cell, changed)
            if n % FULL_CHECK_EVERY == 0 or n == len(commands):
                cell.check_invariants()
                full += 1
            checks += 1
        except AssertionError as exc:
            report.fail(f"invariant broken at version {version}: {exc}")
        changed.clear()
        if cid and not duplicate:
            if cid in applied:
                report.fail(f"command {cid} applied twice: versions {applied[cid][0]}, {version}")
            applied[cid] = (version, orjson.loads(encode_result(outcome.result)), outcome.events)
    report.figures["invariant_checks"] = checks
    report.figures["full_invariant_checks"] = full
    return cell, applied


def check(
    recorder: FeedRecorder,
    acks: list[Ack],
    snapshots: dict[int, tuple[int, bytes]],
    probes: list[Probe],
    submitted: list[str],
) -> Report:
    """Hold the run against its history (see the module docstring)."""
    report = Report()
    if recorder.gaps or recorder.base is not None:
        report.fail(f"feed could not be replayed from version 1: gaps {recorder.gaps}")
    commands = recorder.commands
    expected = recorder.base_version + 1
    for version, _ in commands:
        if version != expected:
            report.fail(f"feed not consecutive at {version} (expected {expected})")
            break
        expected += 1
    cell, applied = replay(commands, recorder.base, report)
    final = cell.snapshot()
    for i, (version, data) in sorted(snapshots.items()):
        if version != cell.version:
            report.fail(f"replica {i} at version {version}, replay at {cell.version}")
        elif data != final:
            report.fail(f"replica {i} snapshot differs from the replay at version {version}")
    _check_acks(cell, applied, acks, report)
    committed_after_heal = 0
    for probe in probes:
        if probe.outcome.startswith("200"):
            report.fail(f"partitioned replica {probe.replica} acknowledged {probe.id}")
        if probe.id in applied:
            version = applied[probe.id][0]
            if version <= probe.cut_version:
                report.fail(
                    f"probe {probe.id} sent to cut-off replica {probe.replica} was "
                    f"committed at version {version}, while the partition held "
                    f"(majority at {probe.cut_version} before the heal)"
                )
            else:
                committed_after_heal += 1
    report.figures["probes_committed_after_heal"] = committed_after_heal
    _check_jobs(cell, submitted, report)
    report.figures["commits_by_scheduler"] = dict(
        Counter(doc["txn"]["scheduler"] for _, doc in commands if doc.get("type") == "commit")
    )
    report.figures.update(
        commands=len(commands),
        version=cell.version,
        acknowledged=len(acks),
        acknowledged_by_kind=dict(Counter(a.kind for a in acks)),
        jobs_by_state=dict(Counter(str(j.state) for j in cell.jobs.values())),
        # Per machine (hollow ones together): tasks whose last placement ended there.
        ended_by_machine=dict(
            Counter(
                t.machine.split("-")[0] if t.machine.startswith("hollow-") else t.machine
                for t in cell.tasks.values()
                if t.machine is not None and t.state in TERMINAL_STATES
            )
        ),
    )
    return report


def _check_acks(
    cell: CellState,
    applied: dict[str, tuple[int, Any, tuple[Any, ...]]],
    acks: list[Ack],
    report: Report,
) -> None:
    seen = Counter(a.id for a in acks)
    for cid, n in seen.items():
        if n > 1:
            report.fail(f"command id {cid} acknowledged {n} times")
    lost = 0
    for ack in acks:
        failures = report.failures
        found = applied.get(ack.id)
        if found is None:
            report.fail(f"acknowledged {ack.kind} {ack.id} ({ack.key}) is not in the log")
            lost += 1
            continue
        _, result, events = found
        if result != ack.result:
            report.fail(f"{ack.kind} {ack.id}: acknowledged {ack.result}, log says {result}")
            lost += 1
            continue
        if ack.kind == "submit" and result.get("type") == "ok" and ack.key not in cell.jobs:
            report.fail(f"acknowledged job {ack.key} does not exist")
        if ack.kind == "kill" and result.get("type") == "ok" and not cell.jobs[ack.key].killed:
            report.fail(f"acknowledged kill of {ack.key} did not stick")
        if ack.kind == "commit":
            rejected = {r["task"] for r in result.get("rejected", ())}
            placed = {
                (e.task, e.machine): e.incarnation for e in events if isinstance(e, TaskPlaced)
            }
            for task_id, machine in ack.key:
                if task_id in rejected:
                    continue
                incarnation = placed.get((task_id, machine))
                if incarnation is None:
                    report.fail(f"accepted claim {task_id}->{machine} ({ack.id}) not placed")
                    continue
                task = cell.tasks[task_id]
                moved_on = task.incarnation > incarnation or task.state in TERMINAL_STATES
                if not moved_on and (task.machine != machine or task.state not in ACTIVE_STATES):
                    report.fail(
                        f"accepted claim {task_id}->{machine} lost: now {task.state} "
                        f"on {task.machine}"
                    )
        if report.failures > failures:
            lost += 1
    report.figures["lost"] = lost


def _check_jobs(cell: CellState, submitted: list[str], report: Report) -> None:
    """Every job is placed, finished, killed, or pending with a scheduler's explanation."""
    explained = {job for r in cell.schedulers.values() for job in r.explanations}
    unexplained = []
    for job in cell.jobs.values():
        pending = [t for t in cell.pending_tasks(job)]
        if pending and not job.killed and job.id not in explained:
            unexplained.append(job.id)
    if unexplained:
        report.fail(f"{len(unexplained)} jobs pending without explanation: {unexplained[:5]}")
    report.figures["pending_explained"] = sum(
        1 for j in cell.jobs.values() if j.id in explained and not j.killed
    )


# -- running it all -------------------------------------------------------------------------


def secret_leaks(paths: list[Path], secrets_: list[str]) -> list[str]:
    """`path: what` for every file that contains one of `secrets_`."""
    leaks = []
    for path in paths:
        data = path.read_bytes() if path.exists() else b""
        for s in secrets_:
            if s.encode() in data:
                leaks.append(f"{path.name}: {s[:4]}...")
    return leaks


async def settle(workload: Workload, timeout: float = 30.0) -> None:
    """After writes stop: wait (at most `timeout`) until no task is assigned or running and
    every job with pending tasks carries a scheduler's explanation (schedulers report every
    couple of seconds, so a job submitted last may not have one yet)."""
    with trio.move_on_after(timeout):
        async with workload.client() as store:
            cell = CellClient(store)
            while True:
                await trio.sleep(0.5)
                assigned = await cell.tasks(state="assigned", limit=1)
                running = await cell.tasks(state="running", limit=1)
                if assigned or running:
                    continue
                if not await _unexplained(cell):
                    return


async def _unexplained(cell: CellClient) -> list[str]:
    """Jobs not killed, with pending tasks and no scheduler's explanation."""
    waiting = [
        j["id"] for j in await cell.jobs() if j["tasks"].get("pending") and j["state"] != "killed"
    ]
    unexplained = []
    for job in waiting:
        found = await cell.explain(job)
        if not found.get("schedulers"):
            unexplained.append(job)
    return unexplained


def final_snapshots(
    cluster: LocalCluster, timeout: float = 60.0
) -> tuple[dict[int, tuple[int, bytes]], dict[int, Any]]:
    """Every replica's snapshot once all have reached one version (the log is still), and
    each replica's last `/v1/status` (so a replica that never caught up can be told apart:
    its Raft indexes against the leader's)."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = {i: cluster.status(i) for i in range(cluster.n)}
        versions = [(s or {}).get("version") for s in statuses.values()]
        if None not in versions and len(set(versions)) == 1:
            snaps = {i: cluster.snapshot(i) for i in range(cluster.n)}
            if len({v for v, _ in snaps.values()}) == 1:
                return snaps, statuses
        if time.monotonic() > deadline:
            snaps = {}
            for i in cluster.alive():
                with contextlib.suppress(httpx.HTTPError):
                    snaps[i] = cluster.snapshot(i)
            return snaps, statuses
        time.sleep(0.2)


FAULT_WEIGHTS = {
    "leader_kill": 3,
    "follower_kill": 2,
    "partition_leader": 2,
    "full_restart": 1,
    "scheduler_kill": 2,
}

CI_SCHEDULE = (
    "leader_kill",
    "partition_leader",
    "leader_kill",
    "scheduler_kill",
    "full_restart",
    "leader_kill",
)


@attrs.define
class Run:
    """The outcome of `run_scenario`."""

    seed: int
    report: Report
    faults: dict[str, int]
    probes: list[Probe]
    majority_acks: list[int]
    unacknowledged: dict[str, int]
    leaks: list[str]
    wall_s: float
    longest_stall_s: float = 0.0  # between acknowledged submissions, while writes were open
    stall_after: str = ""  # the fault injected last before that stall
    heal_changes: list[int] = attrs.Factory(list)  # per healed partition: leader moved (1)
    stalls_by_fault: dict[str, float] = attrs.Factory(dict)  # `stalls_by_fault`
    cuts: dict[str, dict[str, Any]] = attrs.Factory(dict)  # `cut_summary`
    slow_cuts: list[dict[str, Any]] = attrs.Factory(list)  # `slow_cuts`


def fault_plan(
    seed: int,
    duration_s: float,
    schedule: tuple[str, ...] | None,
    weights: dict[str, int] | None = None,
) -> list[tuple[float, str]]:
    """(start offset s, kind) for every fault, from the seed alone. With `schedule`, its
    faults in order, spread over the run; otherwise random kinds until `duration_s`."""
    rng = random.Random(seed)
    plan, t = [], 2.0
    if schedule is not None:
        gap = max(1.0, (duration_s - 4.0) / max(1, len(schedule)))
        for kind in schedule:
            plan.append((t, kind))
            t += gap * rng.uniform(0.6, 1.0)
        return plan
    weights = weights or FAULT_WEIGHTS
    while t < duration_s - 3.0:
        plan.append((t, rng.choices(list(weights), list(weights.values()))[0]))
        t += rng.uniform(3.0, 8.0)
    return plan


@attrs.define
class Bed:
    """What a scenario runs on: the cell, its scheduler processes, the workload, the faults
    (and the weights their kinds are drawn with), `quiesce` to stop every process that writes
    on its own (schedulers, agents) once the workload has settled, and `close` for the rest."""

    cluster: LocalCluster
    schedulers: SchedulerProcs
    workload: Workload
    faults: Faults
    weights: dict[str, int]
    quiesce: Callable[[], None]
    logs: Callable[[], list[Path]]


@contextlib.contextmanager
def proxied_bed(base_dir: Path, seed: int, say: Callable[[str], None]) -> Iterator[Bed]:
    """A cell on 127.0.0.1 whose Raft links run through `RaftProxies`, two scheduler
    processes, and the workload's own machines (no agents)."""
    with ProxiedCluster(base_dir) as cluster:
        scheds = SchedulerProcs(cluster, ["batch-a", "batch-b"])
        workload = Workload(cluster, seed)
        faults = Faults(cluster, scheds, workload, random.Random(seed + 1), say)
        try:
            scheds.start_all()
            yield Bed(
                cluster,
                scheds,
                workload,
                faults,
                FAULT_WEIGHTS,
                scheds.close,
                lambda: sorted(base_dir.glob("scheduler-*.log")),
            )
        finally:
            scheds.close()


def longest_stall(acks: list[Ack], since: float, until: float) -> float:
    """The longest time between consecutive acknowledged submissions (or the ends) in
    [since, until]: the writer submits steadily, so a gap is a stall it waited out."""
    times = sorted(a.at for a in acks if a.kind == "submit" and since < a.at < until)
    edges = [since, *times, until]
    return max(b - a for a, b in itertools.pairwise(edges))


def run_scenario(
    base_dir: Path,
    seed: int,
    duration_s: float,
    *,
    schedule: tuple[str, ...] | None = None,
    say: Callable[[str], None] = print,
    netns: bool = False,
) -> Run:
    """Start a cell (`proxied_bed`, or with `netns` `harness.netcell.netns_bed`), scheduler
    processes and the workload; inject the seeded faults for `duration_s`; settle; check.
    Every process is killed by pid on the way out."""
    started = time.monotonic()
    if netns:
        from harness.netcell import netns_bed as make_bed
    else:
        make_bed = proxied_bed
    with make_bed(base_dir, seed, say) as bed:
        cluster, workload, faults = bed.cluster, bed.workload, bed.faults
        plan = fault_plan(seed, duration_s, schedule, bed.weights)
        say(f"seed {seed}: faults {[k for _, k in plan]}")
        recorder = FeedRecorder(cluster)
        window: list[float] = []
        # A random plan is cut at the duration (faults take time, so it runs late); a fixed
        # schedule is played whole.
        last_fault_s = duration_s - 3.0 if schedule is None else math.inf
        trio.run(_drive, bed, recorder, plan, duration_s, say, window, last_fault_s)
        snapshots, statuses = final_snapshots(cluster)
        report = check(recorder, workload.acks, snapshots, faults.probes, workload.submitted)
        missing = sorted(set(range(cluster.n)) - set(snapshots))
        if missing:
            report.fail(f"replicas {missing} did not answer at the end")
        if missing or len({v for v, _ in snapshots.values()}) > 1:
            report.figures["replica_status"] = {
                i: {
                    k: (s or {}).get(k)
                    for k in (
                        "version",
                        "term",
                        "is_leader",
                        "commit_index",
                        "last_applied_index",
                        "log_entries",
                        "leader",
                    )
                }
                for i, s in statuses.items()
            }
        logs = sorted(base_dir.glob("replica-*/replica.log")) + bed.logs()
        leaks = secret_leaks(logs, [cluster.token, cluster.secret])
        stall = longest_stall(workload.acks, *window) if len(window) == 2 else 0.0
        by_fault = stalls_by_fault(faults.timeline, workload.acks, window)
        stall_after = max(by_fault, key=lambda k: by_fault[k]) if by_fault else ""
    return Run(
        seed,
        report,
        dict(faults.counts),
        faults.probes,
        faults.majority_acks,
        dict(workload.unacknowledged),
        leaks,
        time.monotonic() - started,
        round(stall, 2),
        stall_after,
        [int(cut.moved) for cut in faults.cuts],
        by_fault,
        cut_summary(
            faults.cuts,
            cut_stalls(faults.cuts, workload.acks),
            cut_stalls(faults.cuts, workload.acks, spanning=True),
        ),
        slow_cuts(faults.cuts, workload.acks),
    )


def stalls_by_fault(
    timeline: list[tuple[float, str]], acks: list[Ack], window: list[float]
) -> dict[str, float]:
    """Per fault kind, the longest stall (as `longest_stall`) that began while a fault of that
    kind was the last one injected."""
    if len(window) != 2:
        return {}
    times = sorted(a.at for a in acks if a.kind == "submit" and window[0] < a.at < window[1])
    edges = [window[0], *times, window[1]]
    worst: dict[str, float] = {}
    for a, b in itertools.pairwise(edges):
        before = [kind for t, kind in timeline if t <= a + 0.5]
        kind = before[-1] if before else "none"
        worst[kind] = round(max(worst.get(kind, 0.0), b - a), 2)
    return worst


def cut_stalls(cuts: list[Cut], acks: list[Ack], *, spanning: bool = False) -> list[float]:
    """Per cut, the longest time between two acknowledged submissions (as `longest_stall`)
    from the cut until the cell settled on heal: what the cut cost the writer, as
    `bench.partition` measures it. With `spanning`, from the last acknowledgement before the
    cut instead, so a wait already under way when the cut came (an earlier fault's) counts
    too. The window ends at the settled heal, not at the next acknowledgement: the next fault
    may begin at once and is not this cut's."""
    times = sorted(a.at for a in acks if a.kind == "submit")
    gaps = (_longest_gap(cut, times, spanning) for cut in cuts)
    return [round(end - start, 2) for start, end in gaps]


def slow_cuts(cuts: list[Cut], acks: list[Ack], over_s: float = 1.0) -> list[dict[str, Any]]:
    """The cuts whose spanning stall (`cut_stalls`) is `over_s` or more, each with where its
    longest gap lay, in seconds from the cut (negative: the writer was already waiting when
    the cut came) and when the heal began: whether the writer waited on an earlier fault, the
    election or the heal is what says which to shorten."""
    times = sorted(a.at for a in acks if a.kind == "submit")
    slow = []
    for cut in cuts:
        start, end = _longest_gap(cut, times, True)
        if round(end - start, 2) >= over_s:
            slow.append(
                {
                    "kind": cut.kind,
                    "whole": cut.whole,
                    "stall_s": round(end - start, 2),
                    "gap_s": [round(start - cut.at, 2), round(end - cut.at, 2)],
                    "healed_s": round(cut.healed - cut.at, 2),
                }
            )
    return slow


def _longest_gap(cut: Cut, times: list[float], spanning: bool) -> tuple[float, float]:
    first = bisect.bisect_right(times, cut.at)  # the first acknowledgement after the cut
    last = bisect.bisect_left(times, cut.settled)
    before = times[first - 1] if first and spanning else cut.at
    edges = [before, *times[first:last], cut.settled]
    return max(itertools.pairwise(edges), key=lambda gap: gap[1] - gap[0])


def cut_summary(
    cuts: list[Cut], stalls: list[float], spanning: list[float]
) -> dict[str, dict[str, Any]]:
    """Per kind of cut and per whether the cell was whole before it: how many, the longest
    and median stall from the cut, the longest spanning one (`cut_stalls`), and how many
    heals moved the leader."""
    groups: dict[str, list[tuple[Cut, float, float]]] = {}
    for cut, stall, span in zip(cuts, stalls, spanning, strict=True):
        key = f"{cut.kind}:{'whole' if cut.whole else 'not_whole'}"
        groups.setdefault(key, []).append((cut, stall, span))
    return {
        key: {
            "cuts": len(group),
            "stall_max_s": max(s for _, s, _ in group),
            "stall_p50_s": round(statistics.median(s for _, s, _ in group), 2),
            "spanning_max_s": max(s for _, _, s in group),
            "heal_changes": sum(c.moved for c, _, _ in group),
        }
        for key, group in sorted(groups.items())
    }


async def _monitor(cluster: LocalCluster, path: Path, period_s: float = 2.0) -> None:
    """Append every replica's Raft figures to `path` (NDJSON) every `period_s`: how a replica
    fell behind or a commit stalled can be read afterwards."""
    keys = ("version", "term", "is_leader", "commit_index", "last_applied_index", "log_entries")
    with path.open("ab") as out:
        while True:
            line = {"t": round(time.time(), 2)}
            for i in range(cluster.n):
                status = await trio.to_thread.run_sync(cluster.status, i)
                line[f"r{i}"] = {k: status[k] for k in keys} if status else None
            out.write(orjson.dumps(line) + b"\n")
            out.flush()
            await trio.sleep(period_s)


async def _drive(
    bed: Bed,
    recorder: FeedRecorder,
    plan: list[tuple[float, str]],
    duration_s: float,
    say: Callable[[str], None],
    window: list[float],
    last_fault_s: float,
) -> None:
    """Run the workload and the faults of `plan`; `window` gets the monotonic times writes
    began and stopped."""
    cluster, workload, faults = bed.cluster, bed.workload, bed.faults
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run)
        nursery.start_soon(_monitor, cluster, cluster.base_dir / "monitor.ndjson")
        await nursery.start(workload.run)
        window.append(time.monotonic())
        t0 = trio.current_time()
        for offset, kind in plan:
            await trio.sleep_until(t0 + offset)
            if trio.current_time() - t0 > last_fault_s:
                say(f"t={trio.current_time() - t0:5.1f}s faults end (the rest would run late)")
                break
            say(
                f"t={trio.current_time() - t0:5.1f}s fault {kind} "
                f"(acks so far {len(workload.acks)})"
            )
            await faults.inject(kind)
        await trio.sleep_until(t0 + duration_s)
        workload.stop_writes()
        window.append(time.monotonic())
        say(f"t={trio.current_time() - t0:5.1f}s writes stopped, settling")
        await settle(workload)
        await trio.to_thread.run_sync(bed.quiesce)
        nursery.cancel_scope.cancel()
    leader = await trio.to_thread.run_sync(cluster.wait_leader)
    status = await trio.to_thread.run_sync(cluster.status, leader)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run)
        await recorder.wait_for(status["version"])
        nursery.cancel_scope.cancel()
