"""`SchedulerCore`: one scheduler's decisions, free of processes, clocks and I/O.

The live scheduler process and the virtual-time simulator drive the same core
the same way:

    if core.has_work(cell):
        decision = core.decide(cell, now)           # None: nothing to commit
        ... commit decision.transaction, apply the Commit to `cell` ...
        core.on_result(cell, decision, result, now)
        core.figures.add_busy(seconds_spent_deciding)

The core never sleeps, reads a clock or does I/O: time arrives as `now`,
randomness from the injected `random.Random` (a seed reproduces every
decision), and the cell is read, never changed.

Which work a core takes: pending jobs of its scheduler class and its shard
(`zlib.crc32(job id) % n == i`), not killed, not parked, ordered by
(-priority, submission time, job id), highest band first; within a band the
claim budget (`max_claims`) is shared round-robin across jobs, or, when the
band holds jobs of several owners, by the owners' weighted dominant shares
(weighted DRF, `schedulers.fairshare`) and round-robin within an owner. A gang job goes
whole and alone, in an all-or-nothing transaction.

Attempts and parking: every decision that considers a job is one attempt,
unless every task it took for the job was claimed and accepted (progress
limited only by the claim budget resets the count). A job that found no room for some of its tasks is *stalled* until some machine
changes (so an idle cell does not spin). Once a job reaches `max_attempts`
attempts with tasks still unplaced, it is parked ("blocked") with the reason
of its last failure; with `park_s` (the live schedulers') it is tried again that
long after, else only `unpark` brings it back (the simulator's abandoned jobs).
Tasks whose claims conflicted stay pending in the cell and are simply taken again
by later decisions.

Quota: a decision claims no more of an owner's tasks than the owner's quota in their
band admits (`Ledger.admits`, counting the decision's own claims), so the store never
refuses a claim of it for quota; a job the quota keeps wholly out is not tried again
until that quota is set anew or its owner's tasks end (`Ledger.quota_state`).

Conflict avoidance (`avoidance`, `schedulers.avoid`; off unless given, as in
the simulator's paper models): the core tries the machines of its own
partition first and rests machines on which it just lost a conflict.

The Omega paper's model (`PaperModel`, `SchedulerCore(paper=PaperModel())`): the
simulator's and live mode's `--model paper`. One job per transaction, every pending
task of it, placed by random fit; every attempt is a transaction, with claims or
without (its think time is paid either way); a job left with unplaced tasks goes to
the back of the queue `requeue_s` after its transaction, never stalled on the table;
it is abandoned (parked) after `max_attempts` attempts in all, or `max_futile`
attempts that placed nothing. The queue is ordered by when a job (re-)entered it.
"""

from __future__ import annotations

import random
import zlib

import attrs
import numpy as np

from cellstate import (
    CellState,
    CommitResult,
    ConflictMode,
    Job,
    SchedulerClass,
    Stop,
    TaskState,
    Transaction,
    TxnMode,
    Verdict,
    reasons,
)
from cellstate.fairshare import owner_usage
from cellstate.ledger import Ledger
from schedulers import lifecycle
from schedulers.avoid import Avoidance, Avoider
from schedulers.context import DecisionContext
from schedulers.explain import Explanation, JobMetric
from schedulers.fairshare import Shares, fair_fill
from schedulers.metrics import SchedulerFigures
from schedulers.stack import Stack, stack_for
from schedulers.table import MachineTable, generation_for, table_for

PENDING = TaskState.PENDING


@attrs.frozen(slots=True)
class PaperModel:
    """The Omega paper's transaction model (EuroSys 2013, section 4; see the module
    docstring): the numbers of Google's cluster-scheduler-simulator."""

    requeue_s: float = 1.0
    max_attempts: int = 1000
    max_futile: int = 100
    policy: str = "random-fit"


@attrs.frozen
class Decision:
    """One decision: the transaction to commit and what went into it.

    `jobs`: jobs with claims in the transaction; `tasks`: number of claims;
    `explanations`: a `JobMetric` for every job considered, claims or not;
    `unclaimed`: per considered job, its pending tasks left without a claim.
    """

    transaction: Transaction
    jobs: tuple[str, ...]
    tasks: int
    explanations: dict[str, JobMetric]
    unclaimed: dict[str, int] = attrs.field(factory=dict)

    @property
    def considered(self) -> tuple[str, ...]:
        """Every job considered (`schedulers.contract.CoreDecision`)."""
        return tuple(self.explanations) or self.jobs

    @property
    def unscheduled(self) -> int:
        """Tasks the decision tried to place, claimed or not: the paper's think time
        is `t_job + t_task` times this."""
        return sum(metric.wanted for metric in self.explanations.values())


def shard_of(job_id: str, shards: int) -> int:
    """The shard a job belongs to: a stable hash, the same in every process."""
    return zlib.crc32(job_id.encode()) % shards


class SchedulerCore:
    """A scheduler's decision logic; see the module docstring. Satisfies
    `schedulers.contract.Core[Decision]`."""

    def __init__(
        self,
        name: str,
        kind: SchedulerClass,
        *,
        rng: random.Random,
        mode: TxnMode = TxnMode.INCREMENTAL,
        conflicts: ConflictMode = ConflictMode.FINE,
        shard: tuple[int, int] | None = None,
        sampling: bool = True,
        max_attempts: int = 1000,
        max_claims: int = 1000,
        max_jobs: int | None = None,
        avoidance: Avoidance | None = None,
        policy: str = "real",
        paper: PaperModel | None = None,
        stack: Stack | None = None,
        park_s: float | None = None,
    ) -> None:
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard {shard} must be (i, n) with 0 <= i < n")
        if max_claims < 1 or max_attempts < 1:
            raise ValueError("max_claims and max_attempts must be at least 1")
        self.name = name
        self.kind = SchedulerClass(kind)
        self.rng = rng
        # The decisions' numpy generator (`DecisionContext.np_rng`), seeded from `rng`.
        self.np_rng = np.random.default_rng(rng.getrandbits(64))
        self.mode = mode
        self.conflicts = conflicts
        self.shard = shard
        self.sampling = sampling
        self.max_attempts = max_attempts
        self.max_claims = max_claims
        # The Omega paper's model decides one job per transaction (max_jobs=1);
        # live schedulers batch many jobs into one commit for throughput.
        self.max_jobs = max_jobs
        self.avoider = None if avoidance is None else Avoider(name, avoidance)
        self.paper = paper
        if paper is not None:
            # Every pending task of one job per transaction; its own attempt limit.
            policy, self.max_jobs, self.max_claims = paper.policy, 1, 1 << 62
            self.max_attempts = paper.max_attempts
        # Another policy for this kind's jobs (cell compaction compares several);
        # the live schedulers decide with their kind's own.
        self.stack = stack if stack is not None else stack_for(self.kind, policy)
        self._queued: dict[str, float] = {}  # paper: job -> when it (re-)entered the queue
        self._futile: dict[str, int] = {}  # paper: job -> attempts that placed nothing
        self.figures = SchedulerFigures()
        self.attempts: dict[str, int] = {}
        self.parked: dict[str, str] = {}
        # How long a parked job rests before it is tried again with a fresh count (None:
        # for good, as the simulator's abandoned jobs are), and when each was parked.
        self.park_s = park_s
        self._parked_at: dict[str, float] = {}
        self._stalled: dict[str, int] = {}  # job -> table generation
        # Jobs the quota kept wholly out, and the quota's state then (`Ledger.quota_state`):
        # not tried again until the quota is raised or its owner's tasks end.
        self._held: dict[str, tuple[object, int]] = {}
        self._conflicts: dict[str, dict[str, int]] = {}
        self._rivals: dict[str, dict[str, int]] = {}  # job -> who its claims lost to
        self._last: dict[str, JobMetric] = {}
        self._seen: set[str] = set()
        self._placed: set[str] = set()
        # Where the tasks of the jobs it decides are (`feasible.job_rows`), as of a
        # count of `Job.moves`, and the copy of the cell that counted.
        self._known_rows: dict[str, tuple[Job, int, np.ndarray]] = {}
        self._rows_cell: CellState | None = None
        self._rows_layout = 0

    # -- what is ours ------------------------------------------------------------

    def owns(self, job: Job) -> bool:
        """Whether `job` is this core's: its class and shard (parking aside)."""
        if job.spec.scheduler is not self.kind:
            return False
        return self.shard is None or shard_of(job.id, self.shard[1]) == self.shard[0]

    def _eligible(self, cell: CellState, generation: int) -> list[Job]:
        jobs = cell.jobs
        stalled, parked, held = self._stalled, self.parked, self._held
        found = []
        for jid in cell.pending_jobs:
            job = jobs[jid]
            if job.killed or jid in parked or stalled.get(jid) == generation or not self.owns(job):
                continue
            if held and jid in held:
                spec = job.spec
                if cell.ledger.quota_state(spec.owner, spec.band) == held[jid]:
                    continue
                del held[jid]
            found.append(job)
        if self.paper is not None:
            queued = self._queued
            found.sort(key=lambda j: (queued.get(j.id, j.submitted_at), j.id))
        else:
            found.sort(key=lambda j: (-j.spec.priority, j.submitted_at, j.id))
        return found

    def wakes_at(self) -> float | None:
        """When the next job held back comes back: the paper model's re-queued jobs, and
        with `park_s` parked ones (None: none waits)."""
        back = min(self._queued.values(), default=None) if self._queued else None
        if self._parked_at and self.park_s is not None:
            rested = min(self._parked_at.values()) + self.park_s
            back = rested if back is None else min(back, rested)
        return back

    def unpark_due(self, now: float) -> None:
        """Bring back the jobs parked at least `park_s` ago, each with a fresh count: in a
        live cell room or quota comes back, and a parked job must not wait for good."""
        if self.park_s is None or not self._parked_at:
            return
        for jid, at in list(self._parked_at.items()):
            if at + self.park_s <= now:
                self.unpark(jid)

    def changing(self, cell: CellState) -> list[Job]:
        """This core's jobs with lifecycle work (`schedulers.lifecycle`)."""
        jobs = cell.jobs
        return [jobs[jid] for jid in cell.unsettled if self.owns(jobs[jid])]

    def has_work(self, cell: CellState) -> bool:
        """Whether `decide` could find something to try now."""
        return bool(self._eligible(cell, generation_for(cell)) or self.changing(cell))

    # -- deciding ------------------------------------------------------------------

    def _allot(
        self, jobs: list[Job], cell: CellState, table: MachineTable
    ) -> list[tuple[Job, int]]:
        """How many pending tasks of which jobs this decision takes: bands in
        order; within a band of several owners by weighted DRF
        (`schedulers.fairshare`), of one owner round-robin across its jobs."""
        first = jobs[0]
        if first.spec.gang:
            return [(first, first.counts.get(PENDING, 0))]
        if self.max_jobs is not None:
            jobs = [job for job in jobs if not job.spec.gang][: self.max_jobs]
        budget = self.max_claims
        allotted: list[tuple[Job, int]] = []
        band_jobs: list[Job] = []
        band = None
        shares: Shares | None = None
        for job in [*jobs, None]:
            job_band = None if job is None else job.spec.band
            if band_jobs and job_band != band:
                if len({j.spec.owner for j in band_jobs}) > 1:
                    shares = shares or self._shares(cell, table)
                    budget = fair_fill(band_jobs, budget, shares, allotted)
                else:
                    budget = _round_robin(band_jobs, budget, allotted)
                band_jobs = []
                if budget == 0:
                    break
            if job is not None and not job.spec.gang:
                band = job_band
                band_jobs.append(job)
        return allotted

    def _shares(self, cell: CellState, table: MachineTable) -> Shares:
        """Owners' shares as this copy sees them, with what is free in total on
        machines that are up as the bound (none for a preempting stack)."""
        up = table.up[: table.n]
        capacity = table.capacity[: table.n][up].sum(axis=0)
        free = None
        if not self.stack.preempt:
            rooms = table.be_free if self.stack.best_effort else table.free
            free = dict(
                zip(table.dims, (int(x) for x in rooms[: table.n][up].sum(axis=0)), strict=True)
            )
        return Shares(
            owner_usage(cell),
            dict(zip(table.dims, (int(x) for x in capacity), strict=True)),
            cell.weights,
            free,
        )

    def decide(self, cell: CellState, now: float) -> Decision | None:
        """Build one transaction against `cell`; None if there is nothing to claim.

        Reads `cell` (and syncs its machine table), never changes it. Counts an
        attempt for every job it considers.
        """
        self.unpark_due(now)
        table = table_for(cell)
        jobs = self._eligible(cell, table.generation)
        if self.paper is not None:
            queued = self._queued
            jobs = [job for job in jobs if queued.get(job.id, now) <= now]
        changing = self.changing(cell)
        if not jobs and not changing:
            return None
        self.figures.decisions += 1
        tiers = None if self.avoider is None else self.avoider.tiers(cell, table, now)
        if cell is not self._rows_cell or cell.layout != self._rows_layout:
            # A reloaded copy counts moves afresh; removed machines moved the rows.
            self._rows_cell, self._rows_layout, self._known_rows = cell, cell.layout, {}
        ctx = DecisionContext(
            cell, table, self.rng, self.sampling, tiers, self._known_rows, self.np_rng
        )
        claims = []
        claimed_jobs: list[str] = []
        metrics: dict[str, JobMetric] = {}
        unclaimed: dict[str, int] = {}
        gang = False
        # Quota this decision's claims take, so that it claims no task the store would
        # refuse for quota (one refused claim per task per decision, for as long as the
        # quota stays full, would fill the log).
        quota = cell.ledger
        claimed = Ledger() if quota.limits else None
        for job, count in self._allot(jobs, cell, table) if jobs else ():
            jid = job.id
            if jid not in self._seen:
                self._seen.add(jid)
                self.figures.wait_first_attempt.append(now - job.submitted_at)
            self.attempts[jid] = self.attempts.get(jid, 0) + 1
            tasks = cell.first_pending(job, count)
            metric = metrics[jid] = self._last[jid] = JobMetric(jid)
            over_quota = ""  # why the quota holds some back (`quota_exceeded:<dim>`)
            if claimed is not None and tasks:
                admitted, over_quota = quota.admits(tasks[0], len(tasks), claimed)
                if over_quota:
                    # A gang goes whole or not at all.
                    kept = tasks[: 0 if job.spec.gang else admitted]
                    metric.quota_held = len(tasks) - len(kept)
                    metric.wanted += metric.quota_held
                    tasks = kept
            placed = [] if over_quota and not tasks else self.stack.place(ctx, job, tasks, metric)
            if over_quota:
                metric.unplaced_reason = over_quota
                if not tasks and self.paper is None:
                    self._held[jid] = quota.quota_state(job.spec.owner, job.spec.band)
            if claimed is not None and placed:
                claimed.take(tasks[0], len(placed))
            self.figures.sampled += metric.sampled
            self.figures.sample_fallbacks += metric.rescored
            unclaimed[jid] = job.counts.get(PENDING, 0) - len(placed)
            # (A job the quota held back wholly waits for the quota, `_held`, not for a
            # machine to change: a raised quota changes no machine.)
            if len(placed) < len(tasks) and self.paper is None:
                self._stalled[jid] = table.generation
            if placed:
                claims.extend(placed)
                claimed_jobs.append(jid)
                gang = gang or job.spec.gang
            elif self.paper is None:
                self._maybe_park(jid, metric.unplaced_reason or reasons.NO_ROOM, now)
        stops: list[Stop] = []
        verdicts: list[Verdict] = []
        # A gang goes alone (all or nothing): lifecycle work waits a decision.
        for job in changing if not gang else ():
            plan = lifecycle.plan(cell, ctx, self.stack, job, now, claimed)
            claims.extend(plan.claims)
            stops.extend(plan.stops)
            verdicts.extend(plan.verdicts)
        if not claims and not stops and not verdicts and (self.paper is None or not metrics):
            # (The paper model pays for an attempt that found no room as for any other.)
            return None
        if self.avoider is not None:
            self.figures.partition_machines = self.avoider.share(table.n)
            self.figures.claims_spilled += self.avoider.outside(cell, [c.machine for c in claims])
        mode = TxnMode.ALL_OR_NOTHING if gang else self.mode
        txn = Transaction(
            self.name,
            tuple(claims),
            cell.version,
            mode,
            self.conflicts,
            stops=tuple(stops),
            verdicts=tuple(verdicts),
        )
        return Decision(txn, tuple(claimed_jobs), len(claims), metrics, unclaimed)

    # -- learning from the store ---------------------------------------------------

    def on_result(
        self, cell: CellState, decision: Decision, result: CommitResult, now: float
    ) -> None:
        """Count the verdicts of `decision`'s transaction and settle its jobs.

        Jobs with every task claimed and accepted are placed (their wait is
        recorded once); jobs still short after `max_attempts` are parked.
        """
        f = self.figures
        txn = decision.transaction
        if txn.claims or txn.stops or txn.verdicts:
            # (The paper model's attempt that found no room commits nothing.)
            f.transactions += 1
        f.claims_attempted += decision.tasks
        f.claims_accepted += result.accepted
        f.preemptions += len(result.preempted)
        if result.accepted:
            f.successful_transactions += 1
        if decision.tasks:  # only transactions with claims count, as in the simulator
            if result.rejected:
                f.conflicted_transactions += 1
            else:
                f.conflict_free_transactions += 1
        if self.avoider is not None:
            self.avoider.learn(result, now)
        self._learn_rows(cell, decision, result)
        if self.paper is not None:
            self._paper_result(cell, decision, result, now)
        lost: dict[str, dict[str, int]] = {}
        for rejection in result.rejected:
            reason = rejection.reason
            f.conflicts_by_reason[reason] = f.conflicts_by_reason.get(reason, 0) + 1
            if rejection.by is not None:
                rival = f.conflicts_by_rival
                rival[rejection.by] = rival.get(rejection.by, 0) + 1
            if rejection.machine:
                hot = f.conflicts_by_machine
                hot[rejection.machine] = hot.get(rejection.machine, 0) + 1
            task = cell.tasks.get(rejection.task)
            jid = task.job if task is not None else rejection.task
            by_job = lost.setdefault(jid, {})
            by_job[reason] = by_job.get(reason, 0) + 1
            total = self._conflicts.setdefault(jid, {})
            total[reason] = total.get(reason, 0) + 1
            if rejection.by is not None:
                rivals = self._rivals.setdefault(jid, {})
                rivals[rejection.by] = rivals.get(rejection.by, 0) + 1
        for jid in decision.explanations if self.paper is None else ():
            if jid in lost:
                self._stalled.pop(jid, None)  # conflicts are worth a fresh look
            elif jid in decision.jobs and decision.unclaimed.get(jid, 1) == 0:
                self._placed_fully(cell, jid, now)
                continue
            elif decision.explanations[jid].placed == decision.explanations[jid].wanted:
                # Every task it was given room for is placed; the rest waits for
                # budget, not for luck. Progress is not a failed attempt.
                self.attempts.pop(jid, None)
                continue
            conflicts = lost.get(jid)
            reason = (
                max(sorted(conflicts), key=lambda r: conflicts[r])
                if conflicts
                else decision.explanations[jid].unplaced_reason or reasons.NO_ROOM
            )
            self._maybe_park(jid, reason, now)

    def _learn_rows(self, cell: CellState, decision: Decision, result: CommitResult) -> None:
        """Add the accepted claims to the rows known for their jobs, expecting one
        move each: any other move of the job's tasks (a rival's, a loss, a stop)
        makes the count differ, and the next decision reads its tasks again."""
        known = self._known_rows
        for jid in [jid for jid in known if jid not in cell.pending_jobs]:
            del known[jid]
        if not known or not result.accepted:
            return
        rejected = {r.task for r in result.rejected}
        added: dict[str, list[int]] = {}
        tasks, machines = cell.tasks, cell.machines
        for claim in decision.transaction.claims:
            task, machine = tasks.get(claim.task), machines.get(claim.machine)
            if claim.task not in rejected and task is not None and machine is not None:
                added.setdefault(task.job, []).append(machine.index)
        for jid, rows in added.items():
            entry = known.get(jid)
            if entry is not None:
                more = np.asarray(rows, dtype=np.intp)
                known[jid] = (entry[0], entry[1] + len(rows), np.concatenate((entry[2], more)))

    def _paper_result(
        self, cell: CellState, decision: Decision, result: CommitResult, now: float
    ) -> None:
        """Settle the paper model's one job: placed whole, or re-queued at the back
        `requeue_s` from now, or abandoned (see the module docstring)."""
        paper = self.paper
        assert paper is not None
        for jid, metric in decision.explanations.items():
            job = cell.jobs.get(jid)
            if job is None or not job.counts.get(PENDING, 0):
                self._queued.pop(jid, None)
                self._futile.pop(jid, None)
                self._placed_fully(cell, jid, now)
                continue
            rejected = sum(
                1 for r in result.rejected if (t := cell.tasks.get(r.task)) and t.job == jid
            )
            if metric.placed - rejected <= 0:
                self._futile[jid] = self._futile.get(jid, 0) + 1
            reason = metric.unplaced_reason or (
                result.rejected[0].reason if result.rejected else reasons.NO_ROOM
            )
            if self._futile.get(jid, 0) >= paper.max_futile:
                self.attempts[jid] = max(self.attempts.get(jid, 0), self.max_attempts)
            self._maybe_park(jid, reason, now)
            if jid in self.parked:
                self._queued.pop(jid, None)
                self._futile.pop(jid, None)
            else:
                self._queued[jid] = now + paper.requeue_s

    def _placed_fully(self, cell: CellState, jid: str, now: float) -> None:
        self.attempts.pop(jid, None)
        self._stalled.pop(jid, None)
        if jid not in self._placed:
            self._placed.add(jid)
            job = cell.jobs.get(jid)
            if job is not None:
                self.figures.wait_placed.append(now - job.submitted_at)

    def _maybe_park(self, jid: str, reason: str, now: float) -> None:
        if self.attempts.get(jid, 0) >= self.max_attempts:
            self.parked[jid] = reason
            self._parked_at[jid] = now
            self.figures.blocked[jid] = reason
            self._stalled.pop(jid, None)

    def forget_gone(self, cell: CellState) -> int:
        """Drop what this core keeps per job for the jobs `cell` no longer holds (purged,
        `PurgeJobs`): attempts, explanations, conflicts, where their tasks were; and the
        conflict counts of machines it no longer holds (removed, `RemoveMachines`), which
        no operator can act on and which would otherwise grow with every machine the cell
        ever had. The number of jobs let go of. (Its other figures keep their numbers:
        waits are figures, not jobs.)"""
        hot, machines = self.figures.conflicts_by_machine, cell.machines
        for mid in [mid for mid in hot if mid not in machines]:
            del hot[mid]
        jobs = cell.jobs
        gone = {jid for jid in self._seen if jid not in jobs}
        if not gone:
            return 0
        self._seen -= gone
        self._placed -= gone
        for kept in (
            self._last,
            self.attempts,
            self.parked,
            self._parked_at,
            self._stalled,
            self._held,
            self._conflicts,
            self._rivals,
            self._known_rows,
            self._queued,
            self._futile,
            self.figures.blocked,
        ):
            for jid in gone:
                kept.pop(jid, None)
        return len(gone)

    def unpark(self, job_id: str) -> None:
        """Let a parked job be tried again, with a fresh attempt count."""
        self.parked.pop(job_id, None)
        self._parked_at.pop(job_id, None)
        self.figures.blocked.pop(job_id, None)
        self.attempts.pop(job_id, None)

    # -- explaining ----------------------------------------------------------------

    def explain(self, cell: CellState, job_id: str) -> Explanation:
        """What this core knows of `job_id`: its last decision's metric, attempts,
        conflicts lost by reason and to whom, and why it is parked."""
        job = cell.jobs.get(job_id)
        known = job is not None and self.owns(job)
        return Explanation(
            job=job_id,
            scheduler=self.name,
            known=known,
            pending_tasks=job.counts.get(PENDING, 0) if job is not None else 0,
            attempts=self.attempts.get(job_id, 0),
            parked=self.parked.get(job_id),
            conflicts=dict(sorted(self._conflicts.get(job_id, {}).items())),
            lost_to=dict(sorted(self._rivals.get(job_id, {}).items())),
            last=self._last.get(job_id),
        )


def _round_robin(jobs: list[Job], budget: int, out: list[tuple[Job, int]]) -> int:
    """Share `budget` tasks across `jobs` (in order) one round at a time;
    append (job, tasks) to `out`; return the budget left."""
    want = {job.id: job.counts.get(PENDING, 0) for job in jobs}
    given = dict.fromkeys(want, 0)
    active = [job for job in jobs if want[job.id]]
    while budget and active:
        share = max(1, budget // len(active))
        still = []
        for job in active:
            if not budget:
                break
            take = min(share, want[job.id] - given[job.id], budget)
            given[job.id] += take
            budget -= take
            if given[job.id] < want[job.id]:
                still.append(job)
        active = still
    out.extend((job, given[job.id]) for job in jobs if given[job.id])
    return budget
