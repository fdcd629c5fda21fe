"""Cell compaction: the smallest cell a workload still fits in, per scheduling policy.

Borg compares placement policies this way (Verma et al., EuroSys 2015, section 5.1):
take a workload, remove machines at random until it no longer fits, repeat over
trials, and report the 90th percentile of the smallest fitting cell. A policy that
packs better needs fewer machines for the same work; the answer is a number of
machines, which people read more easily than a utilisation.

What this module owns:

- **The workload** (`CompactionWorkload`): machines (capacity in every dimension
  the ledger counts, labels, failure domain) and jobs (their specs, with the
  number of tasks alive). From a preset (`from_preset`): the preset's machines
  (`cellsim.engine.machine_specs`), its prefill of long-running service jobs, and
  the jobs alive at the end of one simulated day of arrivals drawn from its
  distributions (`cellsim.workload`), with a trace's prefill jobs still running
  then: the cell's jobs at one instant. From a
  snapshot of a live cell (`from_snapshot`, written by `omega snapshot save`):
  every registered machine, and every job that is not killed with its tasks
  that are not finished (pending ones included) as its task count.
- **Fitting** (`fits`): a fresh `CellState` of the chosen machines, every job
  submitted, and the real `schedulers.core.SchedulerCore` of each scheduler
  class in the workload deciding with the policy's stack, each transaction
  committed to the cell, highest band's scheduler first. The workload fits when
  no task is left pending. Nothing ends and nothing is preempted (a policy's
  stacks do not preempt: a preemption trades one task for another and cannot
  make a workload fit), so room only shrinks: the first job left short of room
  means the workload does not fit, and the attempt stops there.
- **Trials** (`compact`): per trial a random order of the machines fixed by the
  seed; a cell of size k is the first k machines of that order (removing
  machines at random, as the paper does, from the end of the order). A search
  over k finds the smallest fitting cell in about ten fits (`smallest`): up
  from a lower bound that is exact arithmetic (the shortest prefix of the
  order whose capacity covers the workload's demand in every dimension), then
  a bisection. Every policy sees the same orders; a fit's scheduler generators are
  seeded from (seed, trial, size, policy), so a result does not depend on the
  bisection's path or on which other policies run. The same seed gives the same
  figures.
- **Policies** (`POLICIES`): best fit, worst fit (spread) and the service
  scheduler's hybrid (spread over failure domains, then best fit), each with
  candidate sampling on (as the live schedulers run) and off (every feasible
  machine scored), and the Omega paper model's random fit (`stack_for(kind,
  "random-fit")`: each task on a machine drawn at random among those with room).

Assumed monotone, as the paper does: a heuristic may fit a workload in k
machines and not in some k' > k; the bisection reports the k it finds.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from cellsim.engine import DAY, machine_specs
from cellsim.workload import GIB, Workload
from cellstate import (
    TERMINAL_STATES,
    CellState,
    Commit,
    CommitResult,
    JobSpec,
    MachineSpec,
    RegisterMachines,
    Resources,
    SchedulerClass,
    SubmitJob,
)
from cellstate.model import MAX_TASKS_PER_JOB
from schedulers.core import SchedulerCore
from schedulers.stack import Rank, Stack, stack_for

OWNER = "sim"
# The claim budget of one decision: large, since one scheduler alone never conflicts.
MAX_CLAIMS = 5000


class CompactionError(ValueError):
    """Input compaction cannot use (a snapshot that does not load, a workload that does
    not fit even the whole cell); the message names it."""


@attrs.frozen(slots=True)
class Policy:
    """One placement policy: how its stacks rank machines, whether they spread over
    failure domains first, and whether they score a sample of the feasible machines
    (the live schedulers do) or all of them."""

    name: str
    rank: Rank
    spread: bool
    sampling: bool
    # The schedulers' policy the stacks start from: their own (`real`), or the Omega
    # paper simulator's `random-fit` (`schedulers.stack`), which neither scores nor samples.
    base: str = "real"

    def stack(self, kind: SchedulerClass) -> Stack:
        """The stack the `kind` scheduler decides with: the kind's own filters and
        resource class (best-effort room for best-effort jobs), this policy's scoring,
        no preemption."""
        return attrs.evolve(
            stack_for(kind, self.base), rank=self.rank, spread=self.spread, preempt=False
        )


# In the order the command lines list them, with the words of `cellsim.options.POLICIES`.
POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("best-fit", "best_fit", False, True),
        Policy("best-fit-all", "best_fit", False, False),
        Policy("worst-fit", "worst_fit", False, True),
        Policy("worst-fit-all", "worst_fit", False, False),
        Policy("hybrid", "best_fit", True, True),
        Policy("hybrid-all", "best_fit", True, False),
        Policy("random-fit", "best_fit", False, False, base="random-fit"),
    )
}


@attrs.frozen(slots=True)
class CompactionWorkload:
    """What must fit: machines to build cells from, and jobs as (id, spec) pairs
    whose `tasks` is the number of tasks to place."""

    name: str
    machines: tuple[MachineSpec, ...]
    jobs: tuple[tuple[str, JobSpec], ...]

    @property
    def tasks(self) -> int:
        return sum(spec.tasks for _, spec in self.jobs)

    def demand(self) -> dict[str, int]:
        """The whole workload's demand per dimension."""
        total: dict[str, int] = {}
        for _, spec in self.jobs:
            for dim, amount in spec.resources.items():
                total[dim] = total.get(dim, 0) + amount * spec.tasks
        return total


# -- workloads ------------------------------------------------------------------------------


def from_preset(workload: Workload, seed: int, horizon: float = DAY) -> CompactionWorkload:
    """The preset's cell and the jobs it holds at one instant: its prefill of long-running
    service jobs, and every job that arrived in the `horizon` seconds before and is still
    running then (one seeded stream per job class, drawn in the simulator's order)."""
    sequence = np.random.SeedSequence(seed)
    *class_seeds, prefill_seed = sequence.spawn(len(workload.classes) + 1)
    machines = tuple(machine_specs(workload))
    jobs: list[tuple[str, JobSpec]] = []
    if workload.prefill > 0:
        jobs.extend(_prefill(workload, machines, np.random.default_rng(prefill_seed)))
    for number, trace_job in enumerate(workload.prefill_jobs):
        if trace_job.duration is not None and trace_job.duration <= horizon:
            continue  # a trace's prefill job that has ended by the instant
        name = f"q{number}"
        cpu = max(1, round(trace_job.cpu * 1000))
        memory = max(1, round(trace_job.memory * GIB))
        jobs.append((name, _spec(name, SchedulerClass.SERVICE, cpu, memory, trace_job.tasks)))
    for job_class, class_seed in zip(workload.classes, class_seeds, strict=True):
        rng = np.random.default_rng(class_seed)
        kind = SchedulerClass(job_class.name)
        at = 0.0
        number = 0
        while True:
            at += job_class.interarrival.sample(rng)
            if at >= horizon:
                break
            tasks = max(1, round(job_class.tasks.sample(rng)))
            duration = job_class.duration.sample(rng)
            cpu = max(1, round(job_class.cpu.sample(rng) * 1000))
            memory = max(1, round(job_class.memory.sample(rng) * GIB))
            number += 1
            if at + duration <= horizon:
                continue  # finished before the instant
            name = f"{job_class.name[0]}{number}"
            jobs.append((name, _spec(name, kind, cpu, memory, tasks)))
    return CompactionWorkload(workload.name, machines, tuple(jobs))


def _prefill(
    workload: Workload, machines: Sequence[MachineSpec], rng: np.random.Generator
) -> Iterable[tuple[str, JobSpec]]:
    """Service jobs of the preset's prefill size until their cpu reaches the prefill share
    of the cell's cpu (the simulator's starting state, without its placement)."""
    service = workload.job_class("service")
    target = workload.prefill * sum(m.capacity.cpu for m in machines)
    taken = 0
    number = 0
    while taken < target:
        cpu = round(service.cpu.sample(rng) * 1000) or 1
        memory = round(service.memory.sample(rng) * GIB) or 1
        name = f"p{number}"
        number += 1
        taken += cpu * workload.prefill_job_tasks
        yield name, _spec(name, SchedulerClass.SERVICE, cpu, memory, workload.prefill_job_tasks)


def _spec(name: str, kind: SchedulerClass, cpu: int, memory: int, tasks: int) -> JobSpec:
    return JobSpec(
        name=name, owner=OWNER, scheduler=kind, resources=Resources(cpu, memory), tasks=tasks
    )


def from_cell(cell: CellState, name: str) -> CompactionWorkload:
    """A live cell's workload: every registered machine (in any state: the hardware is
    there), and every job not killed with its unfinished tasks as its count."""
    machines = tuple(
        MachineSpec(m.id, Resources.of(m.account.capacity), labels=dict(m.labels), domain=m.domain)
        for m in cell.machine_list
    )
    jobs = []
    for job in sorted(cell.jobs.values(), key=lambda j: (j.submitted_at, j.id)):
        if job.killed:
            continue
        alive = sum(1 for t in cell.job_tasks(job) if t.state not in TERMINAL_STATES)
        # A rollout runs replacements beside the tasks they replace, so a job at the
        # size limit may have more alive than one spec holds: the rest go as a second job.
        part = 0
        while alive > 0:
            tasks = min(alive, MAX_TASKS_PER_JOB)
            jid = job.id if part == 0 else f"{job.id}-part{part}"
            jobs.append((jid, attrs.evolve(job.spec, tasks=tasks)))
            alive -= tasks
            part += 1
    return CompactionWorkload(name, machines, tuple(jobs))


def from_snapshot(path: Path) -> CompactionWorkload:
    """The workload of a cell snapshot file (`omega snapshot save FILE`). (`run` leaves out
    the jobs that no machine of the cell could ever take: `placeable`.)"""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CompactionError(f"--snapshot {path}: cannot read it: {exc.strerror}") from None
    try:
        cell = CellState.restore(data)
    except Exception as exc:  # any decoding failure: the file is not a snapshot
        raise CompactionError(
            f"--snapshot {path}: not a cell snapshot (`omega snapshot save FILE` writes one): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    found = from_cell(cell, path.name)
    if not found.machines or not found.jobs:
        raise CompactionError(
            f"--snapshot {path}: {len(found.machines)} machines and {len(found.jobs)} "
            "jobs with tasks alive; compaction needs at least one of each"
        )
    return found


def placeable(workload: CompactionWorkload) -> tuple[CompactionWorkload, list[dict[str, Any]]]:
    """The workload without the jobs one task of which fits no machine of the whole, empty
    cell (a constraint no machine meets, a task larger than every machine), and those
    jobs, each with why. A live cell may hold such a job, pending for good; kept, no cell
    would fit the workload and there would be nothing to compare. A job that fits alone
    but not beside the others stays: that is the answer compaction gives."""
    everywhere = range(len(workload.machines))
    # Per what decides where one task may go (a lone task is spread and apart whatever its
    # job asks): the job first checked, and why it fitted nowhere (None: it fitted).
    verdicts: dict[tuple[Any, ...], tuple[str, str | None]] = {}
    kept, left_out = [], []
    for job, spec in workload.jobs:
        need = tuple(spec.resources.items())
        key = (spec.scheduler, spec.band, need, tuple(spec.constraints.items()))
        if key not in verdicts:
            alone = attrs.evolve(workload, jobs=((job, attrs.evolve(spec, tasks=1)),))
            verdicts[key] = (job, unplaced(alone, everywhere, POLICIES["best-fit-all"], 0))
        checked, why = verdicts[key]
        if why is None:
            kept.append((job, spec))
        else:
            left_out.append({"job": job, "tasks": spec.tasks, "why": why.replace(checked, job)})
    return attrs.evolve(workload, jobs=tuple(kept)), left_out


# -- fitting --------------------------------------------------------------------------------

# Highest band first, as the schedulers' bands order the work in a live cell.
_KINDS = (SchedulerClass.SERVICE, SchedulerClass.BATCH, SchedulerClass.BEST_EFFORT)


def fits(
    workload: CompactionWorkload, machines: Sequence[int] | np.ndarray, policy: Policy, seed: int
) -> bool:
    """Whether the real scheduler cores, deciding with `policy`, place every task of
    `workload` on the machines at indexes `machines` (see the module docstring)."""
    return unplaced(workload, machines, policy, seed) is None


def unplaced(
    workload: CompactionWorkload, machines: Sequence[int] | np.ndarray, policy: Policy, seed: int
) -> str | None:
    """None if `fits`; otherwise the first job the cores could not place whole, with how
    much of it and why (`job web-1a2b3c: 0 of 1 tasks placed (constraint:accel)`)."""
    cell = CellState()
    chosen = tuple(workload.machines[i] for i in machines)
    cell.apply(RegisterMachines(chosen, at=0.0))
    for job, spec in workload.jobs:
        cell.apply(SubmitJob(job, spec, at=0.0))
    kinds = {spec.scheduler for _, spec in workload.jobs}
    rng = random.Random(seed)
    for kind in _KINDS:
        if kind not in kinds:
            continue
        core = SchedulerCore(
            kind.value,
            kind,
            rng=random.Random(rng.getrandbits(64)),
            sampling=policy.sampling,
            max_claims=MAX_CLAIMS,
            stack=policy.stack(kind),
        )
        while core.has_work(cell):
            decision = core.decide(cell, 0.0)
            if decision is None:
                # Nothing of any job fitted: say so of the first, as `omega explain` would.
                short = next(j for j in cell.pending_jobs if core.owns(cell.jobs[j]))
                return core.explain(cell, short).summary()
            for job, metric in decision.explanations.items():
                if metric.placed < metric.wanted:  # room only shrinks: it will never fit
                    why = metric.unplaced_reason or "no room"
                    return f"job {job}: {metric.placed} of {metric.wanted} tasks placed ({why})"
            result = cell.apply(Commit(decision.transaction, at=0.0)).result
            if not isinstance(result, CommitResult) or result.rejected:
                # One scheduler on its own cell cannot conflict: this is a bug.
                raise RuntimeError(f"compaction's own commit was refused: {result!r}")
            core.on_result(cell, decision, result, 0.0)
    return f"jobs left pending: {', '.join(cell.pending_jobs)}" if cell.pending_jobs else None


def lower_bound(workload: CompactionWorkload, order: np.ndarray) -> int | None:
    """The fewest first machines of `order` whose capacity covers the workload's demand
    in every dimension; None if the whole cell does not."""
    need = 1
    for dim, amount in workload.demand().items():
        capacity = np.asarray([workload.machines[i].capacity.get(dim) for i in order])
        covered = np.cumsum(capacity, dtype=np.int64)
        if covered[-1] < amount:
            return None
        need = max(need, int(np.searchsorted(covered, amount)) + 1)
    return need


def fit_seed(seed: int, trial: int, size: int, policy: Policy) -> int:
    """The seed of one fit's scheduler generators: the same fit, the same choices."""
    key = [seed, trial, size, zlib.crc32(policy.name.encode())]
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])


def trial_order(workload: CompactionWorkload, seed: int, trial: int) -> np.ndarray:
    """Trial `trial`'s random order of the machines; a cell of k is its first k."""
    return np.random.default_rng([seed, trial]).permutation(len(workload.machines))


def smallest(
    workload: CompactionWorkload, order: np.ndarray, policy: Policy, seed: int, trial: int
) -> tuple[int, int]:
    """The smallest number of first machines of `order` the workload fits in under
    `policy`, and how many fits that took. Raises `CompactionError` if the workload does
    not fit the whole cell.

    A good policy's answer lies a few percent above the lower bound, so the search
    gallops up from it (steps of 1 % of the cell, doubling) to the first size that
    fits, then bisects the last step: about ten fits for any cell size."""
    n = len(order)
    low = lower_bound(workload, order)
    tried = 0
    missed: str | None = None  # why the last fit failed

    def fit(size: int) -> bool:
        nonlocal tried, missed
        tried += 1
        missed = unplaced(workload, order[:size], policy, fit_seed(seed, trial, size, policy))
        return missed is None

    if low is not None:
        step = max(1, n // 100)
        high = low
        while high < n and not fit(high):
            low = high + 1
            high = min(n, high + step)
            step *= 2
    if low is None or (high == n and not fit(n)):
        why = "its demand exceeds the cell's capacity" if low is None else missed
        raise CompactionError(
            f"{workload.name}: the workload ({workload.tasks} tasks) does not fit even the "
            f"whole cell of {n} machines under {policy.name}: {why}"
        )
    while low < high:
        mid = (low + high) // 2
        if fit(mid):
            high = mid
        else:
            low = mid + 1
    return high, tried


@attrs.frozen(slots=True)
class PolicyResult:
    """One policy's smallest fitting cell per trial, and their summary."""

    policy: str
    sizes: tuple[int, ...]
    fits: int  # fits tried over all trials

    @property
    def p90(self) -> int:
        """The 90th percentile (nearest rank) of the smallest fitting cells: Borg's figure."""
        return int(np.percentile(self.sizes, 90, method="inverted_cdf"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "p90": self.p90,
            "min": min(self.sizes),
            "median": float(np.median(self.sizes)),
            "max": max(self.sizes),
            "sizes": list(self.sizes),
            "fits": self.fits,
        }


@attrs.frozen(slots=True)
class CompactionResult:
    """Every policy's figures, and what no policy can beat: `bounds`, per trial the lower
    bound from demand and capacity (machines differ, so it depends on the order they
    are removed in); `demand`, the workload's demand as a share of the whole cell's
    capacity per dimension."""

    workload: str
    machines: int
    jobs: int
    tasks: int
    trials: int
    seed: int
    bounds: tuple[int, ...]
    demand: dict[str, float]
    policies: tuple[PolicyResult, ...]

    @property
    def bound(self) -> int:
        """The lower bound's 90th percentile over trials, to set beside the policies'."""
        return int(np.percentile(self.bounds, 90, method="inverted_cdf"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "machines": self.machines,
            "jobs": self.jobs,
            "tasks": self.tasks,
            "trials": self.trials,
            "seed": self.seed,
            "lower_bound": {
                "p90": self.bound,
                "min": min(self.bounds),
                "max": max(self.bounds),
                "sizes": list(self.bounds),
            },
            "demand": self.demand,
            "policies": {r.policy: r.as_dict() for r in self.policies},
        }


def compact(
    workload: CompactionWorkload,
    policies: Sequence[Policy],
    trials: int,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> CompactionResult:
    """Every policy's smallest fitting cell over `trials` seeded trials."""
    if trials < 1:
        raise CompactionError(f"trials: {trials} is not allowed: 1 or more")
    orders = [trial_order(workload, seed, trial) for trial in range(trials)]
    results = []
    for policy in policies:
        sizes, tried = [], 0
        for trial, order in enumerate(orders):
            size, count = smallest(workload, order, policy, seed, trial)
            sizes.append(size)
            tried += count
            if progress is not None:
                progress(f"{policy.name} trial {trial}: {size} machines ({count} fits)")
        results.append(PolicyResult(policy.name, tuple(sizes), tried))
    bounds = [lower_bound(workload, order) or len(order) for order in orders]
    capacity: dict[str, int] = {}
    for machine in workload.machines:
        for dim, amount in machine.capacity.items():
            capacity[dim] = capacity.get(dim, 0) + amount
    return CompactionResult(
        workload.name,
        len(workload.machines),
        len(workload.jobs),
        workload.tasks,
        trials,
        seed,
        tuple(bounds),
        {
            dim: round(amount / capacity[dim], 4) if capacity.get(dim) else float("inf")
            for dim, amount in workload.demand().items()
        },
        tuple(results),
    )


# -- reporting ------------------------------------------------------------------------------


def table(result: CompactionResult) -> str:
    """The human table: per policy the p90 smallest cell, its spread over trials, its share
    of the whole cell and its ratio to best fit's."""
    base = next((r.p90 for r in result.policies if r.policy == "best-fit"), None)
    lines = [
        f"cell compaction: {result.workload}, {_count(result.machines, 'machine')}, "
        f"{_count(result.tasks, 'task')} in {_count(result.jobs, 'job')}; "
        f"{_count(result.trials, 'trial')}, seed {result.seed}",
        "demand: "
        + ", ".join(f"{dim} {share:.1%}" for dim, share in result.demand.items())
        + " of the cell; lower bound from demand and capacity: "
        + f"p90 {_count(result.bound, 'machine')} "
        + f"({min(result.bounds)}-{max(result.bounds)} over trials)",
        f"{'policy':<14} {'sampling':>8} {'p90':>7} {'min':>7} {'median':>8} {'max':>7} "
        f"{'of cell':>8} {'vs best-fit':>11}",
    ]
    for r in result.policies:
        policy = POLICIES[r.policy]
        ratio = f"{r.p90 / base:.3f}" if base else "-"
        lines.append(
            f"{r.policy:<14} {'on' if policy.sampling else 'off':>8} {r.p90:>7} "
            f"{min(r.sizes):>7} {float(np.median(r.sizes)):>8g} {max(r.sizes):>7} "
            f"{r.p90 / result.machines:>8.1%} {ratio:>11}"
        )
    return "\n".join(lines)


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


def plot(result: CompactionResult, path: Path) -> None:
    """Borg's figure shape: a bar per policy at the p90 smallest cell, error bars from the
    smallest to the largest trial, each trial a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.policy for r in result.policies]
    p90 = np.asarray([r.p90 for r in result.policies], dtype=float)
    low = p90 - np.asarray([min(r.sizes) for r in result.policies])
    high = np.asarray([max(r.sizes) for r in result.policies]) - p90
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 4.2))
    x = np.arange(len(names))
    ax.bar(x, p90, color="#9ab", yerr=[low, high], capsize=4, label="p90 of trials")
    for i, r in enumerate(result.policies):
        ax.plot([i] * len(r.sizes), r.sizes, ".", color="#234", alpha=0.6)
    ax.axhline(result.machines, color="#a33", linestyle="--", linewidth=1, label="whole cell")
    ax.axhline(result.bound, color="#3a3", linestyle=":", linewidth=1, label="lower bound, p90")
    # From a little under the bound: the policies differ by percents, not by halves.
    low_bound = min(result.bounds)
    ax.set_ylim(bottom=max(0.0, low_bound - 0.1 * (result.machines - low_bound) - 1))
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("machines in the smallest fitting cell")
    ax.set_title(
        f"Cell compaction: {result.workload} ({result.tasks} tasks), "
        f"{result.trials} trials, seed {result.seed}"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_workload(
    preset: str | None, snapshot: Path | None, machines: int | None, seed: int
) -> CompactionWorkload:
    """The workload the options name: exactly one of a preset and a snapshot."""
    from cellsim.workload import WorkloadError, load

    if (preset is None) == (snapshot is None):
        raise CompactionError("give exactly one of --preset P and --snapshot FILE")
    if snapshot is not None:
        if machines is not None:
            raise CompactionError("--machines: only with --preset; a snapshot has its own cell")
        return from_snapshot(snapshot)
    assert preset is not None
    try:
        workload = load(preset)
    except WorkloadError as exc:
        raise CompactionError(f"--preset {preset}: {exc}") from None
    if machines and machines != workload.machines:
        workload = workload.with_machines(machines)
    return from_preset(workload, seed)


def run(args: Any) -> dict[str, Any]:
    """Run the options in `args` (`cellsim.options.COMPACTION_FLAGS`); print the table
    (and write the plot); return the JSON summary. Raises `CompactionError`."""
    began = time.perf_counter()
    chosen = [POLICIES[name] for name in args.policies or POLICIES]
    workload = load_workload(args.preset, args.snapshot, args.machines, args.seed)
    left_out: list[dict[str, Any]] = []
    if args.snapshot is not None:
        workload, left_out = placeable(workload)
        for job in left_out:
            print(f"left out, fits no machine of the cell: {job['why']}", flush=True)
        if not workload.jobs:
            raise CompactionError(
                f"--snapshot {args.snapshot}: no job left that a machine of the cell could take"
            )
    print(
        f"seed={args.seed} trials={args.trials} workload={workload.name} "
        f"machines={len(workload.machines)} jobs={len(workload.jobs)} tasks={workload.tasks}",
        flush=True,
    )
    result = compact(
        workload,
        chosen,
        args.trials,
        args.seed,
        progress=(lambda line: print(line, flush=True)) if args.verbose else None,
    )
    print(table(result))
    if args.plot:
        plot(result, args.plot)
        print(f"plot: {args.plot}")
    return {
        "bench": "compaction",
        **result.as_dict(),
        **({"left_out": left_out} if args.snapshot is not None else {}),
        **({"plot": str(args.plot)} if args.plot else {}),
        "wall_s": round(time.perf_counter() - began, 2),
    }


def main(argv: list[str] | None = None, prog: str = "python -m cellsim.compaction") -> None:
    """`python -m cellsim.compaction` (= `omega bench compaction`, same flags)."""
    import argparse
    import json
    import sys

    from cellsim.options import COMPACTION_FLAGS, add_to_argparse

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_to_argparse(parser, flags=COMPACTION_FLAGS, experiment=False)
    args = parser.parse_args(argv)
    try:
        summary = run(args)
    except CompactionError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
