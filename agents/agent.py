"""The agent loop: register, heartbeat, follow the cell, run what it places here.

One agent process speaks for one real machine, or for `hollow` simulated ones
(`<name>-0000`, ...), all behind one store client and one `LocalCopy`:

- Registration. All machines are registered (hollow: in batches of
  `register_batch`) before anything else; a real agent also serves its tasks'
  captured output and its metrics (`agents.logserver`, `agents.prometheus`) and
  publishes that address as the machine label `omega.agent`, where `omega logs`
  finds it.
- Heartbeats. Every `heartbeat_s`, one request names every machine. A `stale`
  answer lists machines the cell has marked down meanwhile: they are
  registered again, and once the copy has caught up with that registration the
  agent stops whatever runs there that the cell placed elsewhere (reconcile).
- Placements. The copy's events drive the executors: `TaskPlaced` on one of
  our machines starts the task, `TaskEvicted` (killed, preempted, lost) stops
  it. Events are only acted on once the copy has caught up at start-up; a
  start-up, a copy reset (snapshot) or a re-registration reconciles instead:
  start what the copy says is active here and does not run, stop what runs
  and the copy does not want. Incarnations that already ended here are
  remembered until the copy agrees, so a late report never restarts a task.
- Reports. Executors report into an outbox; one loop sends it in batches,
  each retried with the same command id until the store acknowledges it (the
  cell deduplicates by id). A `stale` answer for a task means the cell no
  longer wants that incarnation here: it is stopped. Usage goes the same way
  every `usage_s`.
- Ports. The port a running task declared in its port file is reported with its
  state (`TaskReport.port`, rules 13): read at each health probe, every `port_s` for
  a task that has declared none yet, and every `usage_s` for a change.
- Disk. Every `usage_s`, a task's output past `max_log_bytes` a stream is rotated
  (`agents.output`). Every `sweep_s`, the directories of ended runs of tasks the cell
  has forgotten (a purged job's, `PurgeJobs`) are removed with their output.
- Restarts. A real agent restarted on the same work dir first calls
  `recover`: live tasks are adopted (or stopped, if the cell moved them), dead
  ones are reported `lost` so the cell places them again.

Everything runs in one nursery; cancelling it (SIGTERM, SIGINT) stops the
tasks, unless `detach`, which leaves them for the next agent's `recover`. Tasks
stopped because the agent leaves are reported `lost`: the cell wanted them, so
they return to pending and run again where they are placed next.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import attrs
import psutil
import structlog
import trio

from agents.executor import RecoveredTask, open_executor, recover
from agents.hollow import HollowExecutor, TimerHeap
from agents.limits import LimitKind, cgroup_name, probe_limits, release_agent_cgroups
from agents.prometheus import AgentMetrics
from agents.task import ReportedState, TaskExecutor, TaskKey, TaskReport, TaskSpec
from cellstate import CellState, Event, Ok, Role, Stale
from cellstate.commands import MachineChanged, TaskEvicted, TaskPlaced
from cellstate.model import AGENT_LABEL, MachineSpec, MachineState
from cellstate.resources import Resources, parse_cpu, parse_memory
from cellstate.state import PORT_RULES
from cellstore.access import CellGuard
from cellstore.cellclient import Applied, CellClient, CellError
from cellstore.copy import LocalCopy
from cellstore.http import Principal
from cellstore.ids import new_command_id
from cellstore.tls import TlsFiles

log = structlog.get_logger("agents.agent")

FINAL_STATES = frozenset({ReportedState.EXITED, ReportedState.FAILED, ReportedState.LOST})
MAX_REASON = 512


def _host_cpu() -> int:
    return (psutil.cpu_count() or 1) * 1000


def _host_memory() -> int:
    return int(psutil.virtual_memory().total)


def _millicores(value: int | str) -> int:
    """Strings are parsed ("4", "500m"); integers are millicores already."""
    return parse_cpu(value) if isinstance(value, str) else int(value)


def _bytes(value: int | str) -> int:
    """Strings are parsed ("8Gi", "1073741824"); integers are bytes already."""
    return parse_memory(value) if isinstance(value, str) else int(value)


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    # A named converter, not `tuple`: a type checker reads its argument type as `__init__`'s.
    return tuple(values)


@attrs.frozen
class AgentConfig:
    """What one agent process needs. `cpu` is millicores and `memory` bytes
    (strings such as "4", "500m" or "8Gi" are parsed); both default to the
    host's. `resources` declares the machine's other dimensions, disk in bytes
    and countable devices (`{"gpu": 2}`); none by default. With `hollow=N` the agent stands in for N machines named
    `<name>-0000`..., each with this capacity, in domains `<domain>-<i//100>`."""

    addresses: tuple[str, ...] = attrs.field(converter=_strings)
    token: str
    name: str
    work_dir: Path = attrs.field(converter=Path)
    cpu: int = attrs.field(factory=_host_cpu, converter=_millicores)
    memory: int = attrs.field(factory=_host_memory, converter=_bytes)
    resources: Mapping[str, int] = attrs.field(factory=dict, converter=dict)
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    domain: str = "default"
    hollow: int = 0
    heartbeat_s: float = 2.0
    usage_s: float = 5.0
    # How often the port files of running tasks that have not declared one are read: a
    # service's endpoint is known about this long after it binds (every task's, for a
    # change, every `usage_s`).
    port_s: float = 1.0
    # How often ended runs of tasks the cell has forgotten (purged jobs) are removed.
    sweep_s: float = 60.0
    # A task's stdout or stderr past this is rotated (checked every `usage_s`), as the
    # kubelet's containerLogMaxSize (10 MiB).
    max_log_bytes: int = attrs.field(default=10 << 20, converter=_bytes)
    seed: int | None = None
    detach: bool = False
    limits: LimitKind | None = None  # force a limits mechanism (default: probe)
    task_user: str | None = None  # run tasks as this user (agent must be root)
    logs_host: str | None = (
        None  # address to serve logs on (default: the one that reaches the store)
    )
    hollow_start_delay: float = 0.0
    register_batch: int = attrs.field(default=2000, validator=attrs.validators.ge(1))
    report_batch: int = 20000
    batch_delay_s: float = 0.05
    # The CA to check the store against and the certificate the log listener serves
    # (`cellstore.tls`); None: plain http both ways (`--insecure`).
    tls: TlsFiles | None = None

    def machine_ids(self) -> list[str]:
        if not self.hollow:
            return [self.name]
        width = max(4, len(str(self.hollow - 1)))
        return [f"{self.name}-{i:0{width}d}" for i in range(self.hollow)]


def _bounded(report: TaskReport, rules: int) -> TaskReport:
    """The report as the cell accepts it: its reason cut to size, and without a port
    under rules before 13, whose releases would refuse the field at their edge."""
    if report.reason and len(report.reason) > MAX_REASON:
        report = attrs.evolve(report, reason=report.reason[:MAX_REASON])
    if report.port is not None and rules < PORT_RULES:
        report = attrs.evolve(report, port=None)
    return report


R = TypeVar("R")


def _stale_tasks(applied: Applied[Stale | Ok] | None) -> set[str]:
    """The tasks a report answer calls stale (no longer placed where reported)."""
    return set(applied.result.tasks) if applied and isinstance(applied.result, Stale) else set()


def _local_address_towards(address: str) -> str:
    """The local IP this host uses to reach `address` (host:port, or a URL)."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host.strip("[]") or "127.0.0.1", int(port or 80)))
        return s.getsockname()[0]
    return "127.0.0.1"


class Agent:
    """The state of one running agent; built and run by `run_agent`."""

    def __init__(self, config: AgentConfig, client: CellClient) -> None:
        self.config = config
        self.client = client
        self.machines = config.machine_ids()
        self._mine = frozenset(self.machines)
        # The machines the cell has acknowledged, in order: heartbeats name these only, and
        # start while the rest are still being registered.
        self._registered: dict[str, None] = {}
        self.labels = dict(config.labels)
        self.executors: dict[str, TaskExecutor] = {}
        self.copy = LocalCopy(on_events=self._on_events, on_reset=self._on_reset)
        self.ready = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._outbox: list[TaskReport] = []
        self._outbox_ready = trio.Event()
        self._sending = False
        self._finished: dict[str, set[TaskKey]] = {m: set() for m in self.machines}
        self._poke = trio.Event()
        self._stopping = trio.Event()
        self._random = random.Random(config.seed)
        self._log = log.bind(agent=config.name, machines=len(self.machines))
        self.sent = {"reports": 0, "report_requests": 0, "heartbeats": 0, "usage_requests": 0}
        self.metrics = AgentMetrics()
        self.metrics.watch(self)

    # -- machines ------------------------------------------------------------------------

    def machine_spec(self, machine: str, index: int) -> MachineSpec:
        domain = self.config.domain
        if self.config.hollow:
            domain = f"{domain}-{index // 100}"
        capacity = Resources.of(
            {"cpu": self.config.cpu, "memory": self.config.memory, **self.config.resources}
        )
        return MachineSpec(machine, capacity, labels=self.labels, domain=domain)

    async def register(self, machines: Sequence[str]) -> int:
        """Register `machines` (batched); the store version of the last batch."""
        index = {m: i for i, m in enumerate(self.machines)}
        began = trio.current_time()
        version = 0
        step = self.config.register_batch
        for start in range(0, len(machines), step):
            batch = [self.machine_spec(m, index[m]) for m in machines[start : start + step]]
            answer = await self._send_until_acked(
                "register", functools.partial(self.client.register_machines, batch)
            )
            if answer is not None:
                self._registered.update(dict.fromkeys(spec.id for spec in batch))
                version = max(version, answer.version)
                if not isinstance(answer.result, Ok):
                    self._log.error("register_refused", result=repr(answer.result))
        self._log.info(
            "agent_registered",
            count=len(machines),
            version=version,
            seconds=round(trio.current_time() - began, 3),
        )
        return version

    async def heartbeat_loop(self) -> None:
        """One heartbeat for all registered machines every `heartbeat_s`; re-register stale
        ones. It runs from the start: 100,000 machines take half a minute to register, and
        the first ones would be marked down for silence before the last were in."""
        period = self.config.heartbeat_s
        body_ids: list[str] = []
        while True:
            with trio.move_on_after(period):
                await self._poke.wait()
            self._poke = trio.Event()
            if len(body_ids) != len(self._registered):
                body_ids = list(self._registered)
            if not body_ids:
                continue
            try:
                answer = await self.client.heartbeat(body_ids)
            except CellError as exc:
                self._log.warning("heartbeat_failed", error=repr(exc)[:300])
                continue
            self.sent["heartbeats"] += 1
            stale = answer.result.machines if isinstance(answer.result, Stale) else ()
            if stale:
                await self.rejoin(stale)

    async def rejoin(self, machines: Sequence[str]) -> None:
        """The cell marked `machines` down: register them again, then stop what
        the cell placed elsewhere meanwhile."""
        machines = [m for m in machines if m in self._mine]
        self._log.warning("machines_stale", count=len(machines), first=machines[:3])
        version = await self.register(machines)
        await self.ready.wait()
        await self.copy.wait_for(version)
        self.reconcile(machines)

    # -- the copy's events -------------------------------------------------------------

    def _on_events(self, version: int, events: tuple[Event, ...]) -> None:
        if not self.ready.is_set():
            return  # the start-up reconcile covers everything up to now
        mine = self._mine
        for event in events:
            if isinstance(event, TaskPlaced):
                if event.machine in mine:
                    self._start(event.machine, event.task, event.incarnation)
            elif isinstance(event, TaskEvicted):
                if event.machine in mine:
                    self._stop_soon(event.machine, event.task, event.incarnation, event.reason)
            elif (
                isinstance(event, MachineChanged)
                and event.machine in mine
                and event.state is MachineState.DOWN
            ):
                self._poke.set()  # heartbeat now: learn we are stale, re-register

    def _on_reset(self, cell: CellState) -> None:
        if self.ready.is_set():
            self._log.info("copy_reset_reconcile", version=cell.version)
            self.reconcile(self.machines)

    def _start(self, machine: str, task: str, incarnation: int) -> None:
        if self._stopping.is_set():
            # Leaving: what it stops comes back pending, and may be placed here again
            # before the cell learns this agent is gone. Nothing new starts.
            return
        cell = self.copy.cell
        record = cell.tasks.get(task)
        if record is None:
            return
        spec = TaskSpec.from_job(cell.jobs[record.job].spec)
        self.executors[machine].start(task, incarnation, spec)

    def _stop_soon(self, machine: str, task: str, incarnation: int, reason: str) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self.executors[machine].stop, task, incarnation, reason)

    def reconcile(self, machines: Iterable[str]) -> tuple[int, int]:
        """Make the executors of `machines` run what the copy says is active on
        them: start the missing, stop the extra. Returns (started, stopped)."""
        cell = self.copy.cell
        started = stopped = 0
        if self._stopping.is_set():
            return started, stopped  # leaving: nothing new starts (`_start`)
        for machine in machines:
            record = cell.machines.get(machine)
            wanted: dict[TaskKey, str] = {}
            if record is not None and record.state is not MachineState.DOWN:
                for tid in record.tasks:
                    wanted[(tid, cell.tasks[tid].incarnation)] = tid
            executor = self.executors[machine]
            running = set(executor.running())
            finished = self._finished[machine]
            finished &= wanted.keys()
            for key in running - wanted.keys():
                self._stop_soon(machine, key[0], key[1], "not placed here")
                stopped += 1
            for key in wanted.keys() - running - finished:
                self._start(machine, key[0], key[1])
                started += 1
        if started or stopped:
            self._log.info("reconciled", version=cell.version, started=started, stopped=stopped)
        return started, stopped

    # -- reports and usage -------------------------------------------------------------

    def report(self, report: TaskReport) -> None:
        """The executors' `Reporter`: queue a report for the next batch."""
        if report.state in FINAL_STATES:
            self._finished[report.machine].add((report.task, report.incarnation))
        self.metrics.reported(report)
        self._outbox.append(report)
        self._outbox_ready.set()

    async def report_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            await trio.sleep(self.config.batch_delay_s)  # let a burst gather into one request
            self._outbox_ready = trio.Event()
            while self._outbox:
                step = self.config.report_batch
                batch, self._outbox = self._outbox[:step], self._outbox[step:]
                self._sending = True
                try:
                    rules = self.copy.cell.rules
                    reports = [_bounded(r, rules) for r in batch]
                    answer = await self._send_until_acked(
                        "report", functools.partial(self.client.report_tasks, reports)
                    )
                finally:
                    self._sending = False
                self.sent["reports"] += len(batch)
                self.sent["report_requests"] += 1
                stale = _stale_tasks(answer)
                if stale:
                    self._stop_stale(
                        [
                            (r.machine, r.task, r.incarnation)
                            for r in batch
                            if r.task in stale and r.state not in FINAL_STATES
                        ]
                    )

    async def port_loop(self) -> None:
        while True:
            await trio.sleep(self.config.port_s)
            for executor in self.executors.values():
                executor.declare_ports(undeclared=True)

    async def usage_loop(self) -> None:
        while True:
            await trio.sleep(self.config.usage_s)
            for executor in self.executors.values():
                executor.rotate_output(self.config.max_log_bytes)
                executor.declare_ports()
            samples = [
                (machine, usage)
                for machine, executor in self.executors.items()
                for usage in executor.usage()
            ]
            step = self.config.report_batch
            for start in range(0, len(samples), step):
                batch = samples[start : start + step]
                usages = [u for _, u in batch]
                answer = await self._send_until_acked(
                    "usage", functools.partial(self.client.report_usage, usages)
                )
                self.sent["usage_requests"] += 1
                stale = _stale_tasks(answer)
                if stale:
                    self._stop_stale(
                        [(m, u.task, u.incarnation) for m, u in batch if u.task in stale]
                    )

    async def sweep_loop(self) -> None:
        """Every `sweep_s`, remove what ended runs of tasks the cell no longer knows left on
        disk (`Executor.forget`): the copy is current (this runs once it is ready), and a run
        starts only for a task the copy knows, so a task it does not was purged."""
        while True:
            await trio.sleep(self.config.sweep_s)
            tasks = self.copy.cell.tasks
            for executor in self.executors.values():
                # In the loop's thread, not a worker: it reads the runs the loop changes.
                executor.forget(tasks.__contains__)

    def _stop_stale(self, keys: list[tuple[str, str, int]]) -> None:
        running = 0
        for machine, task, incarnation in keys:
            if (task, incarnation) in self.executors[machine].running():
                self._stop_soon(machine, task, incarnation, "stale")
                running += 1
        if running:
            self._log.info("stale_tasks_stopped", count=running)

    async def _send_until_acked(
        self, what: str, send: Callable[..., Awaitable[Applied[R]]]
    ) -> Applied[R] | None:
        """`send(id=...)` until the cell answers, with the same command id each time, so
        the cell applies it once. None if the cell refused it (a 4xx: retrying cannot help)."""
        command_id = new_command_id()
        delay = 0.2
        began = time.perf_counter()
        while True:
            try:
                answer = await send(id=command_id)
                self.metrics.request_seconds.labels(what).observe(time.perf_counter() - began)
                return answer
            except CellError as exc:
                if exc.status is not None and exc.status < 500:
                    self._log.error(
                        "request_refused", what=what, code=exc.code, message=exc.message
                    )
                    return None
                error = exc
            self._log.warning(
                "request_retry_later", what=what, error=repr(error)[:300], delay=delay
            )
            await trio.sleep(delay * self._random.uniform(0.5, 1.0))
            delay = min(delay * 2, 5.0)

    # -- start-up --------------------------------------------------------------------------

    def take_over(self, recovered: list[RecoveredTask]) -> None:
        """After a restart: adopt live tasks, report dead ones the cell still
        counts on as lost. Called once the copy has caught up, before reconcile
        (which stops adopted tasks the cell no longer wants here)."""
        machine = self.machines[0]
        cell = self.copy.cell
        executor = self.executors[machine]
        for rec in recovered:
            task = cell.tasks.get(rec.task)
            placed_here = (
                task is not None and task.machine == machine and task.incarnation == rec.incarnation
            )
            if rec.adopted:
                executor.adopt(rec)
            elif placed_here:
                self.report(
                    TaskReport(
                        rec.task,
                        machine,
                        rec.incarnation,
                        ReportedState.LOST,
                        None,
                        f"lost: {rec.note}",
                    )
                )
        if recovered:
            self._log.info(
                "recovered",
                adopted=sum(r.adopted for r in recovered),
                cleaned=sum(not r.adopted for r in recovered),
            )

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        async with contextlib.AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            self._nursery = nursery
            recovered: list[RecoveredTask] = []
            if config.hollow:
                timers = TimerHeap()
                await nursery.start(timers.run)
                for machine in self.machines:
                    self.executors[machine] = HollowExecutor(
                        machine=machine,
                        report=self.report,
                        timers=timers,
                        start_delay=config.hollow_start_delay,
                    )
            else:
                config.work_dir.mkdir(parents=True, exist_ok=True)
                mode = probe_limits(cgroup_name(config.name, config.work_dir), force=config.limits)
                stack.callback(release_agent_cgroups, mode)
                self._log.info("limits", kind=str(mode.kind), why=mode.describe())
                recovered = await trio.to_thread.run_sync(recover, config.work_dir)
                self.executors[config.name] = await stack.enter_async_context(
                    open_executor(
                        machine=config.name,
                        work_dir=config.work_dir,
                        limits=mode,
                        report=self.report,
                        detach_on_exit=config.detach,
                        task_user=config.task_user,
                        on_probe=self.metrics.probed,
                    )
                )
                from agents.logserver import serve_logs

                host = config.logs_host or _local_address_towards(config.addresses[0])
                guard = CellGuard(
                    lambda key: self.copy.cell.token_digests.get(key),
                    config.token,
                    Principal(f"{config.name} (own token)", Role.ADMIN),
                )
                address = await nursery.start(
                    functools.partial(
                        serve_logs,
                        config.work_dir,
                        guard.authenticate,
                        host,
                        0,
                        self.metrics.registry,
                        tls=config.tls,
                    )
                )
                self.labels[AGENT_LABEL] = address
            nursery.start_soon(self.report_loop)
            nursery.start_soon(self.heartbeat_loop)
            await self.register(self.machines)
            await nursery.start(self.copy.follow, self.client)
            # No await from here to `ready.set()`: the copy stays at this version.
            self.take_over(recovered)
            self.ready.set()
            self.reconcile(self.machines)
            nursery.start_soon(self.usage_loop)
            nursery.start_soon(self.port_loop)
            nursery.start_soon(self.sweep_loop)
            self._log.info(
                "agent_ready", version=self.copy.version, logs=self.labels.get(AGENT_LABEL)
            )
            task_status.started(self)
            await self._stopping.wait()
            if not config.detach:
                self._log.info("agent_stopping_tasks")
                async with trio.open_nursery() as stoppers:
                    for executor in self.executors.values():
                        stoppers.start_soon(executor.stop_all, "agent shutdown")
                with trio.move_on_after(2.0):  # try to tell the cell how they ended
                    while self._outbox or self._sending:
                        await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    def request_stop(self) -> None:
        """Make `run` return: stop every task (SIGTERM, grace, SIGKILL) unless
        `detach`, then leave. (Cancelling `run` instead detaches: the tasks'
        supervisors are cancelled and the processes left for `recover`.)"""
        self._stopping.set()


async def run_agent(
    config: AgentConfig, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the agent; `task_status.started(agent)` once it is registered,
    caught up with the cell and reconciled. It returns after
    `agent.request_stop()` (tasks stopped unless `config.detach`); if
    cancelled instead, its tasks keep running for the next agent's `recover`."""
    ca = config.tls.ca if config.tls is not None else None
    async with CellClient.connect(config.addresses, config.token, ca=ca) as client:
        await Agent(config, client).run(task_status=task_status)


async def _until_signal(config: AgentConfig) -> None:
    """Run the agent; the first SIGTERM or SIGINT stops it (see `request_stop`)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            agents: list[Agent] = []

            async def start() -> None:
                agents.append(await nursery.start(run_agent, config))

            nursery.start_soon(start)
            async for signum in signals:
                log.info("agent_signal", signal=signal.Signals(signum).name, pid=os.getpid())
                if agents:
                    agents[0].request_stop()
                else:  # still starting: nothing of ours runs yet but adopted tasks
                    nursery.cancel_scope.cancel()
                break


def main(config: AgentConfig) -> None:
    """Run one agent process until SIGTERM or SIGINT (JSON logs on stderr)."""
    from cellstore.logs import configure_json_logging

    configure_json_logging()
    trio.run(_until_signal, config)


__all__ = ["AGENT_LABEL", "Agent", "AgentConfig", "main", "run_agent"]
