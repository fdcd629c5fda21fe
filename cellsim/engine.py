"""The discrete-event loop: virtual time driving the real cell state and schedulers.

One `CellState` is the store. Each scheduler is a real
`schedulers.core.SchedulerCore`; the simulator only supplies time, work and
the paper's decision-time model (Omega, EuroSys 2013, section 4):

1. an idle scheduler with work *syncs* and decides: `core.decide(cell, now)`
   reads the store as it is at that instant;
2. it is then busy for `t_decision = t_job * jobs + t_task * tasks` of virtual
   time, during which other schedulers commit and tasks end;
3. it commits: `cell.apply(Commit(txn, at=now + t_decision))`, hands the
   result to `core.on_result`, and goes again while it has work (the core
   retries conflicted tasks, and parks jobs after `max_attempts`).

Deciding at sync time and committing after the think time is the same as
deciding on a private copy that goes stale during the think time, without
copying the cell. Placed tasks are reported exited with code 0 after their job's
duration (one batched `ReportTasks` per job).

A decision that claims nothing (no room) submits no transaction; the
scheduler then waits `retry_delay` seconds (1 s, as in Google's simulator) or
for a new job of its own, whichever comes first, rather than spinning on an
unchanged cell. A *thread* runs one or more cores one decision at a time:
Omega gives each core its own thread; the monolithic baseline puts every
core on one thread, so decisions are serialised and never conflict.

With `SchedulerSetup(model="paper")` a core runs the Omega paper's transaction model
(`schedulers.core.PaperModel`: one job per transaction, random fit, re-queued after
1 s, abandoned after 1,000 attempts or 100 that placed nothing), its think time is
`t_job + t_task * unscheduled tasks` (placed or not, every attempt pays it), and under
coarse conflict detection the sequence numbers compared are the paper's, which only
claims move (`_ClaimSeqnums`): the cell's own move on every change to a machine, a
task's exit included, which the paper's simulator does not count as a conflict.

Determinism: events are ordered by (time, sequence number); ids come from
counters; randomness from generators seeded from the run's seed; no wall
clock reaches the results.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs
import numpy as np

from cellsim.metrics import Metrics
from cellsim.workload import GIB, Workload
from cellstate import (
    CellState,
    Claim,
    Commit,
    CommitResult,
    ConflictMode,
    JobSpec,
    MachineSpec,
    RegisterMachines,
    Rejection,
    ReportedState,
    ReportTasks,
    Resources,
    SchedulerClass,
    SubmitJob,
    TaskReport,
    Transaction,
    TxnMode,
    reasons,
)
from cellstate.commands import new_report
from schedulers.contract import Core, CoreDecision
from schedulers.core import PaperModel, SchedulerCore

DAY = 86_400.0
OWNER = "sim"

_ARRIVE, _DONE, _WAKE, _END = 0, 1, 2, 3


@attrs.frozen(slots=True)
class SchedulerSetup:
    """One scheduler of a run; `thread` groups cores that share one decision loop
    (None: a thread of its own)."""

    name: str
    kind: SchedulerClass
    t_job: float = 0.1
    t_task: float = 0.005
    mode: TxnMode = TxnMode.INCREMENTAL
    conflicts: ConflictMode = ConflictMode.FINE
    shard: tuple[int, int] | None = None
    sampling: bool = True
    thread: str | None = None
    # The paper's schedulers decide one job per transaction.
    max_jobs: int | None = 1
    model: str = "real"  # or "paper": the Omega paper's transaction model (module docstring)


# A core of any decision type: the engine hands each core back only the decisions it made,
# which Python's types cannot say of a mixed collection, hence `Any` for the decision type.
AnyCore = Core[Any]
CoreFactory = Callable[[SchedulerSetup, random.Random, int], AnyCore]


def real_core(setup: SchedulerSetup, rng: random.Random, max_attempts: int) -> SchedulerCore:
    """Build the real `schedulers.core.SchedulerCore` for `setup`."""
    return SchedulerCore(
        setup.name,
        setup.kind,
        rng=rng,
        mode=setup.mode,
        conflicts=setup.conflicts,
        shard=setup.shard,
        sampling=setup.sampling,
        max_attempts=max_attempts,
        max_jobs=setup.max_jobs,
        paper=PaperModel(max_attempts=max_attempts) if setup.model == "paper" else None,
    )


def omega_schedulers(
    workload: Workload, batch_shards: int = 1, **options: Any
) -> list[SchedulerSetup]:
    """The paper's Omega setup: one service scheduler and `batch_shards` batch ones,
    each with the workload's decision times; `options` go to every setup."""
    t_job, t_task = workload.think_time("service")
    setups = [SchedulerSetup("service", SchedulerClass.SERVICE, t_job, t_task, **options)]
    t_job, t_task = workload.think_time("batch")
    for i in range(batch_shards):
        name = "batch" if batch_shards == 1 else f"batch-{i}"
        shard = None if batch_shards == 1 else (i, batch_shards)
        setups.append(
            SchedulerSetup(name, SchedulerClass.BATCH, t_job, t_task, shard=shard, **options)
        )
    return setups


def machine_specs(wl: Workload) -> list[MachineSpec]:
    """The workload's machines: each type's share of the cell, failure domains dealt
    round-robin, a `type` label when there are several types."""
    shares = np.array([t.share for t in wl.machine_types], dtype=float)
    counts = np.floor(shares / shares.sum() * wl.machines).astype(int)
    counts[0] += wl.machines - counts.sum()
    specs: list[MachineSpec] = []
    for type_index, (mtype, count) in enumerate(zip(wl.machine_types, counts, strict=True)):
        for _ in range(int(count)):
            i = len(specs)
            specs.append(
                MachineSpec(
                    f"m{i}",
                    Resources(round(mtype.cpu * 1000), round(mtype.memory * GIB)),
                    labels={"type": f"t{type_index}"} if len(wl.machine_types) > 1 else {},
                    domain=f"d{i % wl.domains}",
                )
            )
    return specs


@attrs.frozen(slots=True)
class _Pending:
    """A decision being thought about: whose, since when."""

    setup: SchedulerSetup
    core: AnyCore
    started: float
    decision: CoreDecision
    seen: dict[str, int] | None = None  # paper coarse: claim seqnums the decision read


class _ClaimSeqnums:
    """The paper's coarse sequence numbers: per machine, moved by accepted claims only,
    with the scheduler whose claim moved it last (what a refused claim lost to)."""

    def __init__(self) -> None:
        self.seqnum: dict[str, int] = {}
        self.by: dict[str, str] = {}

    def read(self, claims: Sequence[Claim]) -> dict[str, int]:
        get = self.seqnum.get
        return {c.machine: get(c.machine, 0) for c in claims}

    def judge(
        self, txn: Transaction, seen: dict[str, int]
    ) -> tuple[Transaction, tuple[Rejection, ...]]:
        """Refuse the claims whose machine a claim moved since `seen` (all of them, the
        rest `aborted`, for an all-or-nothing transaction); the rest go to the cell
        under the fine rule, which it checks anyway."""
        get = self.seqnum.get
        moved = [c for c in txn.claims if get(c.machine, 0) != seen[c.machine]]
        fine = attrs.evolve(txn, conflicts=ConflictMode.FINE)
        if not moved:
            return fine, ()
        refused = tuple(
            Rejection(c.task, c.machine, reasons.MACHINE_CHANGED, self.by.get(c.machine))
            for c in moved
        )
        if txn.mode is TxnMode.ALL_OR_NOTHING:
            gone = {c.task for c in moved}
            aborted = tuple(
                Rejection(c.task, c.machine, reasons.ABORTED)
                for c in txn.claims
                if c.task not in gone
            )
            return attrs.evolve(fine, claims=()), refused + aborted
        gone = {c.task for c in moved}
        return attrs.evolve(
            fine, claims=tuple(c for c in txn.claims if c.task not in gone)
        ), refused

    def claimed(self, scheduler: str, claims: Sequence[Claim], result: CommitResult) -> None:
        rejected = {r.task for r in result.rejected}
        for claim in claims:
            if claim.task not in rejected:
                self.seqnum[claim.machine] = self.seqnum.get(claim.machine, 0) + 1
                self.by[claim.machine] = scheduler


class _Thread:
    __slots__ = ("busy", "cores", "next_core", "pending", "waking")

    def __init__(self) -> None:
        self.cores: list[tuple[SchedulerSetup, AnyCore]] = []
        self.next_core = 0
        self.busy = False
        self.pending: _Pending | None = None
        self.waking: float | None = None


@attrs.define
class SimResult:
    rows: list[dict[str, object]]
    figures: dict[str, dict[str, Any]]
    stats: dict[str, float]


class Simulation:
    """One run: a workload, a set of schedulers, a seed; `run()` returns figures."""

    def __init__(
        self,
        workload: Workload,
        schedulers: Sequence[SchedulerSetup],
        *,
        days: float = 1.0,
        seed: int = 1,
        core_factory: CoreFactory | None = None,
        retry_delay: float = 1.0,
        max_attempts: int = 1000,
    ) -> None:
        self.workload = workload
        self.end = days * DAY
        self.seed = seed
        self.retry_delay = retry_delay
        self.cell = CellState()
        # Nobody reads a simulated cell's events (the cores read the cell itself).
        self.cell.keep_events = False
        self.metrics = Metrics()
        seeds = np.random.SeedSequence(seed)
        class_seeds, core_seed, cell_seed = seeds.spawn(3)
        self.class_rngs = [
            np.random.default_rng(s) for s in class_seeds.spawn(len(workload.classes))
        ]
        self.cell_rng = np.random.default_rng(cell_seed)
        core_rng = random.Random(int(core_seed.generate_state(1)[0]))
        factory = core_factory or real_core
        self.threads: list[_Thread] = []
        by_name: dict[str, _Thread] = {}
        self.kind_threads: dict[str, list[_Thread]] = {}
        self.cores: dict[str, AnyCore] = {}
        for setup in schedulers:
            core = factory(setup, random.Random(core_rng.getrandbits(64)), max_attempts)
            self.cores[setup.name] = core
            thread = by_name.get(setup.thread) if setup.thread else None
            if thread is None:
                thread = _Thread()
                self.threads.append(thread)
                if setup.thread:
                    by_name[setup.thread] = thread
            thread.cores.append((setup, core))
            listeners = self.kind_threads.setdefault(setup.kind.value, [])
            if thread not in listeners:
                listeners.append(thread)
            self.metrics.scheduler(setup.name, setup.kind.value)
        self.events: list[tuple] = []
        self._seq = itertools.count()
        self._ids = itertools.count()
        self._job_ids = {c.name: itertools.count() for c in workload.classes}
        self.now = 0.0
        self.claim_seqnums = _ClaimSeqnums()
        self.stats = {
            "decisions": 0,
            "commits": 0,
            "events": 0,
            "tasks_submitted": 0,
            "tasks_placed": 0,
            "tasks_ended": 0,
        }

    # -- setting up --------------------------------------------------------------

    def _push(self, at: float, kind: int, payload: Any) -> None:
        heapq.heappush(self.events, (at, next(self._seq), kind, payload))

    def _cid(self) -> str:
        return f"c{next(self._ids)}"

    def build_cell(self) -> None:
        """Register the machines and prefill them with long-running service tasks."""
        specs = machine_specs(self.workload)
        self.cell.apply(RegisterMachines(tuple(specs), at=0.0, id=self._cid()))
        if self.workload.prefill > 0:
            self._prefill()
        if self.workload.prefill_jobs:
            self._prefill_jobs()

    def _prefill_jobs(self) -> None:
        """Place the workload's prefill jobs directly, each task on a machine drawn at
        random among those with room (as Google's simulator places its prefill)."""
        cell = self.cell
        rng = self.cell_rng
        machines = cell.machine_list
        free = np.array(
            [[m.account.capacity["cpu"], m.account.capacity["memory"]] for m in machines]
        )
        for number, prefill in enumerate(self.workload.prefill_jobs):
            cpu = max(1, round(prefill.cpu * 1000))
            memory = max(1, round(prefill.memory * GIB))
            job = f"q{number}"
            claims = []
            for index in range(prefill.tasks):
                room = np.flatnonzero((free[:, 0] >= cpu) & (free[:, 1] >= memory))
                if room.size == 0:
                    break
                row = int(room[rng.integers(room.size)])
                free[row] -= (cpu, memory)
                claims.append(Claim(f"{job}.{index}", machines[row].id, machines[row].seqnum))
            if not claims:
                continue
            spec = JobSpec(
                name=job,
                owner=OWNER,
                scheduler=SchedulerClass.SERVICE,
                resources=Resources(cpu, memory),
                tasks=len(claims),
                duration=prefill.duration,
            )
            cell.apply(SubmitJob(job, spec, at=0.0, id=self._cid()))
            txn = Transaction("prefill", tuple(claims), cell.version)
            self._report_running(claims, self._commit_txn(txn, 0.0), 0.0)

    def _prefill(self) -> None:
        """Fill each machine's cpu to about `prefill` with service tasks that never
        end, sized from the service class; placed directly (not by a scheduler,
        not in the figures), as the paper's simulator starts from a cell state."""
        wl = self.workload
        cell = self.cell
        service = wl.job_class("service")
        rng = self.cell_rng
        order = rng.permutation(len(cell.machine_list))
        machines = [cell.machine_list[i] for i in order]
        capacity = [m.account.capacity for m in machines]
        used_cpu = [0] * len(machines)
        used_mem = [0] * len(machines)
        cursor = 0
        number = 0
        while cursor < len(machines):
            cpu = round(service.cpu.sample(rng) * 1000) or 1
            memory = round(service.memory.sample(rng) * GIB) or 1
            job = f"p{number}"
            number += 1
            claims = []
            for index in range(wl.prefill_job_tasks):
                # Next machine (in a seeded random order) with room under the target.
                while cursor < len(machines) and (
                    used_cpu[cursor] + cpu > capacity[cursor]["cpu"] * wl.prefill
                    or used_mem[cursor] + memory > capacity[cursor]["memory"]
                ):
                    cursor += 1
                if cursor >= len(machines):
                    break
                m = machines[cursor]
                used_cpu[cursor] += cpu
                used_mem[cursor] += memory
                claims.append(Claim(f"{job}.{index}", m.id, m.seqnum))
            if claims:
                # Submitted with exactly the tasks that found room: no leftovers
                # for the service scheduler.
                spec = JobSpec(
                    name=job,
                    owner=OWNER,
                    scheduler=SchedulerClass.SERVICE,
                    resources=Resources(cpu, memory),
                    tasks=len(claims),
                )
                cell.apply(SubmitJob(job, spec, at=0.0, id=self._cid()))
                txn = Transaction("prefill", tuple(claims), cell.version)
                self._report_running(claims, self._commit_txn(txn, 0.0), 0.0)

    # -- the loop ---------------------------------------------------------------

    def run(self) -> SimResult:
        with _collector_paused():
            return self._run()

    def _run(self) -> SimResult:
        if not self.cell.machine_list:
            self.build_cell()
        for index, job_class in enumerate(self.workload.classes):
            self._push(job_class.interarrival.sample(self.class_rngs[index]), _ARRIVE, index)
        end = self.end
        events = self.events
        pop = heapq.heappop
        handled = 0
        while events and events[0][0] < end:
            at, _, kind, payload = pop(events)
            self.now = at
            handled += 1
            if kind == _END:
                self._end_tasks(payload, at)
            elif kind == _DONE:
                self._commit(payload, at)
            elif kind == _ARRIVE:
                self._arrive(payload, at)
            else:
                payload.waking = None
                if not payload.busy:
                    self._start(payload, at)
        self.stats["events"] = handled
        # Decisions still thinking at the end: count their busy time up to the end.
        for thread in self.threads:
            if thread.pending is not None:
                self.metrics.busy(thread.pending.setup.name, thread.pending.started, end)
        for core in self.cores.values():
            # Parked after `max_attempts` attempts: the paper's abandoned jobs.
            for job in core.figures.blocked:
                self.metrics.abandon(job)
        return SimResult(
            rows=self.metrics.rows(end),
            figures={name: core.figures.as_dict() for name, core in self.cores.items()},
            stats=dict(self.stats),
        )

    def _arrive(self, index: int, at: float) -> None:
        job_class = self.workload.classes[index]
        rng = self.class_rngs[index]
        self._push(at + job_class.interarrival.sample(rng), _ARRIVE, index)
        tasks = max(1, round(job_class.tasks.sample(rng)))
        duration = job_class.duration.sample(rng)
        cpu = max(1, round(job_class.cpu.sample(rng) * 1000))
        memory = max(1, round(job_class.memory.sample(rng) * GIB))
        kind = SchedulerClass(job_class.name)
        job = f"{job_class.name[0]}{next(self._job_ids[job_class.name])}"
        spec = JobSpec(
            name=job,
            owner=OWNER,
            scheduler=kind,
            resources=Resources(cpu, memory),
            tasks=tasks,
            duration=duration,
        )
        self.cell.apply(SubmitJob(job, spec, at=at, id=self._cid()))
        self.metrics.submitted(job, job_class.name, at, tasks)
        self.stats["tasks_submitted"] += tasks
        for thread in self.kind_threads.get(job_class.name, ()):
            if not thread.busy:
                self._start(thread, at)

    def _start(self, thread: _Thread, at: float) -> None:
        """Let an idle thread take its next decision, round-robin over its cores."""
        cell = self.cell
        cores = thread.cores
        wanted = False
        for step in range(len(cores)):
            setup, core = cores[(thread.next_core + step) % len(cores)]
            if not core.has_work(cell):
                continue
            wanted = True
            decision = core.decide(cell, at)
            if decision is None:
                # Considered jobs, found no room: attempts without a transaction.
                self._first_attempts(setup.name, core.attempts, at)
                continue
            thread.next_core = (thread.next_core + step + 1) % len(cores)
            self.stats["decisions"] += 1
            considered = decision.considered
            self._first_attempts(setup.name, considered, at)
            self.metrics.attempt(setup.name, considered, at, len(decision.transaction.claims))
            # The paper's t_job + t_task * tasks, once per job the decision considered;
            # in its own model, tasks are every unscheduled one the job had, placed or not.
            tasks = decision.unscheduled if setup.model == "paper" else decision.tasks
            think = setup.t_job * len(considered) + setup.t_task * tasks
            seen = None
            if setup.model == "paper" and decision.transaction.conflicts is ConflictMode.COARSE:
                seen = self.claim_seqnums.read(decision.transaction.claims)
            thread.busy = True
            thread.pending = _Pending(setup, core, at, decision, seen)
            self._push(at + think, _DONE, thread)
            return
        if wanted:
            self._wake_later(thread, at, thread)

    def _first_attempts(self, scheduler: str, jobs: Iterable[str], at: float) -> None:
        first = self.metrics.first_attempt
        for job in jobs:
            first(scheduler, job, at)

    def _wake_later(self, thread: _Thread, at: float, idle: _Thread | None = None) -> None:
        """Wake `thread` `retry_delay` from now; or, when it is `idle` (it has work but
        none it may take now), when its first re-queued job comes back, if sooner."""
        if thread.waking is not None:
            return
        when = at + self.retry_delay
        if idle is not None:
            backs = [t for _, core in thread.cores if (t := core.wakes_at()) is not None]
            if backs:
                when = min(when, max(at, min(backs)))
        thread.waking = when
        self._push(when, _WAKE, thread)

    def _commit(self, thread: _Thread, at: float) -> None:
        pending = thread.pending
        assert pending is not None, "a _DONE event is pushed only with its pending decision"
        setup, core, started, decision = (
            pending.setup,
            pending.core,
            pending.started,
            pending.decision,
        )
        thread.pending = None
        thread.busy = False
        think = at - started
        self.metrics.busy(setup.name, started, at)
        core.figures.add_busy(think)
        claims = decision.transaction.claims
        if claims and pending.seen is not None:
            result = self._commit_paper_coarse(setup.name, decision.transaction, pending.seen, at)
            self.stats["commits"] += 1
        elif claims:
            result = self._commit_txn(decision.transaction, at)
            self.stats["commits"] += 1
        else:
            result = CommitResult()
        if claims and setup.model == "paper":
            self.claim_seqnums.claimed(setup.name, claims, result)
        core.on_result(self.cell, decision, result, at)
        self.metrics.transaction(setup.name, len(claims), len(result.rejected))
        if claims:
            self._report_running(claims, result, at)
            if result.preempted:
                # Evicted tasks are pending again: their schedulers look soon.
                for other in self.threads:
                    if not other.busy and other is not thread:
                        self._wake_later(other, at)
            jobs = self.cell.jobs
            for job in decision.jobs:
                if not jobs[job].counts.get("pending", 0):
                    self.metrics.placed(job, at)
            self._start(thread, at)
        else:
            # Nothing fitted: wait for room (or a new job) instead of spinning.
            self._wake_later(thread, at)

    def _commit_paper_coarse(
        self, scheduler: str, txn: Transaction, seen: dict[str, int], at: float
    ) -> CommitResult:
        """Commit under the paper's coarse rule: refused here what a rival's claim moved,
        the rest judged by the cell (fine: it still checks fit)."""
        rest, refused = self.claim_seqnums.judge(txn, seen)
        result = self._commit_txn(rest, at) if rest.claims else CommitResult()
        if not refused:
            return result
        return CommitResult(result.accepted, refused + result.rejected, result.preempted)

    def _commit_txn(self, txn: Transaction, at: float) -> CommitResult:
        result = self.cell.apply(Commit(txn, at=at, id=self._cid())).result
        if not isinstance(result, CommitResult):
            # A well-formed transaction always gets a verdict per claim; anything else is a
            # bug in the simulator's setup, not a conflict to count.
            raise RuntimeError(f"the cell refused a simulated commit: {result!r}")
        return result

    def _report_running(self, claims: Sequence[Claim], result: CommitResult, at: float) -> None:
        """Schedule the exit of the accepted tasks, per job.

        A placed task stays `assigned` until it exits (a legal move): a report that it
        runs would change no figure here (no job has a disruption budget or a health
        check) and cost as much as the exit itself."""
        rejected = {r.task for r in result.rejected} if result.rejected else ()
        tasks = self.cell.tasks
        jobs = self.cell.jobs
        placed = 0
        ends: dict[str, tuple[float, list[TaskReport]]] = {}
        exited = ReportedState.EXITED
        # A job's claims come together: look its duration up once per run of them.
        job: str | None = None
        reports: list[TaskReport] | None = None
        for claim in claims:
            tid = claim.task
            if tid in rejected:
                continue
            placed += 1
            task = tasks[tid]
            if task.job != job:
                job = task.job
                duration = jobs[job].spec.duration
                reports = None if duration is None else ends.setdefault(job, (duration, []))[1]
            if reports is not None:
                reports.append(
                    new_report(tid, claim.machine, task.incarnation, exited, 0, None, None, None)
                )
        self.stats["tasks_placed"] += placed
        for duration, reports in ends.values():
            self._push(at + duration, _END, tuple(reports))

    def _end_tasks(self, reports: tuple[TaskReport, ...], at: float) -> None:
        self.stats["tasks_ended"] += len(reports)
        self.cell.apply(ReportTasks(reports, at=at, id=self._cid()))
        # Room was freed: idle schedulers with stalled jobs look again, at most
        # once per `retry_delay` (the paper re-queues an unplaced job after 1 s).
        for thread in self.threads:
            if not thread.busy:
                self._wake_later(thread, at)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a run.

    A day of a large cell keeps a million tasks alive in the cell, and every collection
    walks all of them again: a fifth of the run's time went there. The run makes almost no
    cyclic garbage (a few hundred objects, whatever its length), which reference counting
    cannot free but a later collection does.

    Everything the run allocated sits in the youngest generation meanwhile, so the first
    collection after it would walk the whole cell at once (a third of a second at a day of
    10,000 machines). Freezing and unfreezing moves those objects to the oldest generation
    instead, which only a full collection walks, as it would have walked them anyway had the
    collector run throughout; the cyclic garbage among them is freed by that collection."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


def simulate(
    workload: Workload, schedulers: Sequence[SchedulerSetup] | None = None, **options: Any
) -> SimResult:
    """Run one simulation; `schedulers` defaults to the paper's Omega setup."""
    if schedulers is None:
        schedulers = omega_schedulers(workload)
    return Simulation(workload, schedulers, **options).run()


def fmt(value: object) -> str:
    """A CSV cell: floats in a fixed, platform-independent form."""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.6g}"
    return str(value)
