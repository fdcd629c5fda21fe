"""Stacks: the policy of each scheduler kind, composed from small pieces.

A `Stack` is a chain of feasibility filters (`feasible`), a resource class
(regular or best-effort room), a scorer (`rank.best_fit`, or `rank.worst_fit`
for the policies cell compaction compares), a selector (`select.pack`,
`select.spread`, or `select.one_by_one` for worst fit), candidate sampling
(`sample`) and optionally preemption (`preempt`). `Stack.place` runs them for the pending
tasks of one job and returns its claims:

1. static filters (machine up, label constraints, anti-affinity), then the
   resource fit per dimension the job demands (cpu, memory, disk, devices),
   counted by reason into the job's metric;
2. a sample of the feasible machines is scored (all of them if the sample
   lacks room, or with sampling off), and the selector picks machines,
   at most one task per machine under anti-affinity; with conflict
   avoidance (`avoid`) the sample comes from the scheduler's preferred
   machines and each tier behind them scores `TIER_PENALTY` worse, so other
   schedulers' machines are used only when the preferred lack room, and
   cooled ones last;
3. placements are subtracted from the decision's local free columns, so the
   next job (or the rest of this one) sees them;
4. (service) tasks still unplaced may preempt lower-band tasks, a spreading
   job's where its domains need them most (`preempt.choose`);
5. a gang job that is not placed whole is rolled back and claims nothing.

The kinds (each with `rank="best_fit"`; `cellsim.compaction` builds others):
- service: spread over failure domains (or `spec.spread`), then machines,
  then best fit; may preempt batch tasks.
- batch: best-fit packing, vectorised.
- best-effort: best-fit packing on reclaimed resources only.

`stack_for(kind, "random-fit")` is the Omega paper simulator's policy instead: every
kind places each task on a machine drawn at random among those with room
(`select.random_fit`), with the same filters, no scoring, no spreading, no
preemption. It is there to compare against (the simulator's `--model paper`), not to
run a cell with.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import attrs
import numpy as np

from cellstate import ACTIVE_STATES, Claim, Job, SchedulerClass, Task, reasons
from cellstate.model import new_claim
from schedulers import preempt
from schedulers.context import DecisionContext
from schedulers.explain import JobMetric
from schedulers.feasible import (
    Filter,
    JobAntiAffinity,
    LabelConstraints,
    MachineUp,
    ResourceFit,
    feasible,
    job_rows,
    static_feasible,
)
from schedulers.rank import best_fit, domain_load, fits, spread_codes, task_share, worst_fit
from schedulers.sample import candidates
from schedulers.select import one_by_one, pack, random_fit, spread
from schedulers.table import Demand

# Added to a best-fit score per avoidance tier (`avoid`): more than any
# best-fit score (a sum of free shares, one per dimension), so machines are
# ordered by tier first and by fit within a tier.
TIER_PENALTY = 1000.0

# How a stack scores machines: `best_fit` packs (with `spread`: the service
# scheduler's hybrid, domains first), `worst_fit` levels load over machines.
Rank = Literal["best_fit", "worst_fit"]
RANKS: tuple[Rank, ...] = ("best_fit", "worst_fit")


@attrs.frozen
class Stack:
    """One scheduler kind's policy; see the module docstring."""

    # Static: they read the table and the job, never the decision's rooms
    # (`feasible.static_feasible` shares their result among a decision's jobs).
    filters: tuple[Filter, ...]
    best_effort: bool = False
    spread: bool = False
    preempt: bool = False
    random: bool = False  # random fit: no scoring, no sampling (see the module docstring)
    rank: Rank = attrs.field(default="best_fit")

    @rank.validator
    def _known_rank(self, _: object, value: str) -> None:
        if value not in RANKS:
            raise ValueError(f"rank {value!r}: one of {', '.join(RANKS)}")
        if self.spread and value != "best_fit":
            # The spread selector lowers a machine's score as it fills (best fit's way).
            raise ValueError(f"rank {value!r} cannot spread over domains; only best_fit")

    def place(
        self, ctx: DecisionContext, job: Job, tasks: list[Task], metric: JobMetric
    ) -> list[Claim]:
        """Claims for as many of `tasks` (pending tasks of `job`) as fit; for a
        gang job, claims for all of them or none."""
        spec = job.spec
        wanted = len(tasks)
        metric.wanted += wanted
        metric.machines_evaluated += ctx.n
        saved = ctx.save() if spec.gang else None

        static = static_feasible(self.filters, ctx, job, metric)
        ok = feasible((ResourceFit(self.best_effort),), ctx, job, metric, static)
        n_ok = int(np.count_nonzero(ok))
        metric.machines_feasible += n_ok

        chosen: list[int] = []
        # Feasible rows exist only if every demanded dimension has a column.
        demand = ctx.demand(spec.resources.amounts)
        leaving = _leaving(ctx, tasks) if self.spread else []
        if n_ok and demand is not None:
            chosen = self._select(ctx, job, ok, n_ok, demand, wanted, metric, leaving)
        victims: list[tuple[str, ...]] = [()] * len(chosen)

        if self.preempt and len(chosen) < wanted:
            open_rows = np.flatnonzero(static & ~ok)
            if spec.anti_affinity and chosen:
                open_rows = np.setdiff1d(open_rows, np.asarray(chosen), assume_unique=False)
            # A spreading job preempts where its domains and machines need it most, as
            # far as `preempt.choose` says that is worth a victim.
            spreading = _Spreading(ctx, job, leaving, chosen) if self.spread else None
            while len(chosen) < wanted and open_rows.size and demand is not None:
                found = preempt.choose(
                    ctx,
                    open_rows,
                    spec.band,
                    spec.resources.amounts,
                    None if spreading is None else spreading.counts,
                )
                if found is None:
                    break
                row, lost = found
                ctx.release(row, lost)
                ctx.take(np.asarray([row]), np.asarray([1]), demand, self.best_effort)
                chosen.append(row)
                if spreading is not None:
                    spreading.add(row)
                victims.append(tuple(t.id for t in lost))
                metric.preempting += 1
                if spec.anti_affinity:
                    open_rows = open_rows[open_rows != row]

        if len(chosen) < wanted:
            counted = {**metric.filtered, **metric.exhausted}
            metric.unplaced_reason = (
                max(sorted(counted), key=lambda r: counted[r]) if counted else reasons.NO_ROOM
            )
            if saved is not None:
                ctx.restore(saved)
                return []
        metric.placed += len(chosen)
        machines = ctx.machines
        return [
            new_claim(task.id, (machine := machines[row]).id, machine.seqnum, evicts, False)
            for task, row, evicts in zip(tasks, chosen, victims, strict=False)
        ]

    def _select(
        self,
        ctx: DecisionContext,
        job: Job,
        ok: np.ndarray,
        n_ok: int,
        demand: Demand,
        wanted: int,
        metric: JobMetric,
        leaving: list[int],
    ) -> list[int]:
        """Choose rows for `wanted` tasks among the `n_ok` feasible machines (mask `ok`);
        `leaving`: the rows of placed tasks these replace, which stop once they have."""
        spec = job.spec
        be, one = self.best_effort, spec.anti_affinity
        if self.random:
            rows = np.flatnonzero(ok)
            metric.machines_scored += int(rows.size)
            sel, counts = random_fit(rows, fits(ctx, rows, demand, be, one), wanted, ctx.np_rng)
            if sel.size:
                ctx.take(sel, counts, demand, be)
            return np.repeat(sel, counts).tolist()
        cand = candidates(ctx, ok, wanted, be, self.spread)
        fit = fits(ctx, cand, demand, be, one)
        if cand.size < n_ok:
            metric.sampled += 1
            if int(fit.sum()) < wanted:
                # Scoring every feasible machine is what sampling saves: count how
                # often it is paid after all (`SchedulerFigures.sample_fallbacks`).
                metric.rescored += 1
                cand = np.flatnonzero(ok)
                fit = fits(ctx, cand, demand, be, one)
        metric.machines_scored += int(cand.size)
        if self.rank == "worst_fit":
            step = task_share(ctx, cand, demand)
            score = worst_fit(ctx, cand, demand, be)
            if ctx.tiers is not None:
                score += TIER_PENALTY * ctx.tiers[cand]
            chosen = one_by_one(cand, fit, score, step, wanted)
            if chosen:
                ctx.take(*_tally(chosen), demand, be)
            return chosen
        score = best_fit(ctx, cand, demand, be)
        if ctx.tiers is not None:
            score += TIER_PENALTY * ctx.tiers[cand]
        if self.spread:
            codes = spread_codes(ctx, job)
            placed = _staying(ctx, job, leaving)
            # Domains in ascending code order, each drawing its rank in turn (a set of a
            # few hundred codes sorts for less than `np.unique` costs to call).
            domain_rank = {c: ctx.rng.random() for c in sorted(set(codes[cand].tolist()))}
            # The job's tasks per machine (bincount: what np.add.at counts, at a fraction
            # of its cost).
            on_machine = np.bincount(placed, minlength=ctx.n).astype(np.int64, copy=False)
            chosen = spread(
                cand,
                fit,
                score,
                task_share(ctx, cand, demand),
                codes[cand],
                domain_load(codes, placed),
                on_machine[cand],
                domain_rank,
                wanted,
            )
            if chosen:
                ctx.take(*_tally(chosen), demand, be)
            return chosen
        sel, counts = pack(cand, fit, score, wanted)
        if sel.size:
            ctx.take(sel, counts, demand, be)
        return np.repeat(sel, counts).tolist()


def _leaving(ctx: DecisionContext, tasks: list[Task]) -> list[int]:
    """The rows of those of `tasks` that are placed: tasks a lifecycle plan replaces
    (pending tasks, which a decision places, have none)."""
    machines = ctx.cell.machines
    return [
        machines[t.machine].index
        for t in tasks
        if t.machine is not None and t.state in ACTIVE_STATES
    ]


def _staying(ctx: DecisionContext, job: Job, leaving: list[int]) -> np.ndarray:
    """The rows of the job's placed tasks, less one for each of `leaving`: a task being
    replaced is spread's to move, not to balance around (counted where it runs, a
    drained task's replacement would leave its domain)."""
    placed = job_rows(ctx, job)
    if not leaving:
        return placed
    rest = placed.tolist()
    for row in leaving:
        rest.remove(row)
    return np.asarray(rest, dtype=np.intp)


class _Spreading:
    """A spreading job's tasks per spread domain and per machine, kept as a decision
    adds placements: what a preemption weighs beside its victims (`preempt.choose`)."""

    def __init__(self, ctx: DecisionContext, job: Job, leaving: list[int], chosen: list[int]):
        # The table's column, read row by row: not copied whole, the cell may be large.
        self.codes = spread_codes(ctx, job)
        rows = [*_staying(ctx, job, leaving).tolist(), *chosen]
        self.domains = Counter(self.codes[rows].tolist())
        self.machines = Counter(rows)

    def add(self, row: int) -> None:
        self.domains[int(self.codes[row])] += 1
        self.machines[row] += 1

    def counts(self, row: int) -> tuple[int, int]:
        """The job's tasks in the machine's domain and on the machine."""
        return self.domains[int(self.codes[row])], self.machines[row]


def _tally(chosen: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of `chosen` (ascending) and how often each occurs: what
    `np.unique(..., return_counts=True)` gives, for a few dozen rows at a fraction of
    its fixed cost."""
    tally = Counter(chosen)
    rows = sorted(tally)
    return np.asarray(rows, dtype=np.intp), np.asarray([tally[r] for r in rows], dtype=np.int64)


_STATIC: tuple[Filter, ...] = (MachineUp(), LabelConstraints(), JobAntiAffinity())

STACKS: dict[SchedulerClass, Stack] = {
    SchedulerClass.SERVICE: Stack(_STATIC, spread=True, preempt=True),
    SchedulerClass.BATCH: Stack(_STATIC),
    SchedulerClass.BEST_EFFORT: Stack(_STATIC, best_effort=True),
}


RANDOM_FIT: dict[SchedulerClass, Stack] = {
    SchedulerClass.SERVICE: Stack(_STATIC, random=True),
    SchedulerClass.BATCH: Stack(_STATIC, random=True),
    SchedulerClass.BEST_EFFORT: Stack(_STATIC, best_effort=True, random=True),
}
POLICIES = {"real": STACKS, "random-fit": RANDOM_FIT}


def stack_for(kind: SchedulerClass, policy: str = "real") -> Stack:
    """The policy a scheduler of `kind` decides with: its own (`real`), or `random-fit`."""
    stacks = POLICIES.get(policy)
    if stacks is None:
        raise ValueError(f"policy {policy!r}: one of {', '.join(POLICIES)}")
    return stacks[kind]
