"""Lifecycle work a scheduler does for the jobs it owns: rolling updates,
canaries, scale-downs and drains, decided from its own copy of the cell.

The cell state lists every job with such work (`CellState.unsettled`); for
each one the owning scheduler plans, per decision, what Nomad's update block
describes:

1. **Retire**: a replaced task is stopped (`Stop(replaced)`) once its
   replacement has been healthy for `min_healthy_time` (canaries keep their
   old tasks until the update is promoted).
2. **Scale down**: placed tasks beyond the job's size are stopped
   (`Stop(scaled)`), highest index first.
3. **Replace**: with at most `max_parallel` replacements in flight (placed,
   not yet healthy for `min_healthy_time`), tasks that run an old version, or
   sit on a draining machine, get a replacement claim (`Claim(replace=True)`)
   placed by the job's own policy (`Stack.place`) beside them; where no
   machine has room, an update replaces a task in place, stopping it first.
4. **Verdicts**: the update fails when a new task is not healthy within
   `healthy_deadline` of its placement, or nothing became healthy for
   `progress_deadline`; canaries healthy for `min_healthy_time` are promoted
   under `auto_promote`; it succeeds once every task runs the new version,
   healthy for `min_healthy_time`, with no old task left.

Every stop is planned within the job's budget (`max_unavailable`) as this
copy sees it, but that is only to waste fewer claims: the store checks the
budget again at commit, against the latest state, for every scheduler and
every drain and preemption alike (`cellstate.commit`).

Times: `now` is the scheduler's clock, compared with times the store stamped
(`placed_at`, `healthy_at`): the schedulers and the store's leader are
expected to keep their clocks in step (NTP), as Nomad's and Borg's do.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from cellstate import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    CellState,
    Claim,
    Job,
    RolloutState,
    Stop,
    StopReason,
    Task,
    Verdict,
)
from cellstate.ledger import Ledger
from schedulers.context import DecisionContext
from schedulers.explain import JobMetric
from schedulers.stack import Stack


@attrs.frozen
class Plan:
    """One job's lifecycle work for one decision."""

    claims: tuple[Claim, ...] = ()
    stops: tuple[Stop, ...] = ()
    verdicts: tuple[Verdict, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.claims or self.stops or self.verdicts)


def plan(
    cell: CellState,
    ctx: DecisionContext,
    stack: Stack,
    job: Job,
    now: float,
    claimed: Ledger | None = None,
) -> Plan:
    """What to commit for `job`'s lifecycle now (see the module docstring); `claimed`: the
    quota the decision's other claims take (`Ledger.admits`)."""
    spec = job.spec
    policy = spec.policy
    rollout = job.rollout
    canary_phase = rollout is not None and rollout.state is RolloutState.CANARY
    tasks = [t for t in cell.job_tasks(job) if t.state not in TERMINAL_STATES]
    budget = spec.max_unavailable
    spare = math.inf if budget is None else job.available - (spec.tasks - budget)

    def done(task: Task) -> bool:
        return task.healthy_at is not None and now - task.healthy_at >= policy.min_healthy_time

    def spend(task: Task) -> bool:
        """Whether the budget lets `task` stop now (counting it if so)."""
        nonlocal spare
        if task.healthy_at is None:
            return True
        if spare < 1:
            return False
        spare -= 1
        return True

    stops: list[Stop] = []
    # 1. Retire replaced tasks whose replacement is done.
    for task in tasks:
        if task.replaced_by is None or task.state not in ACTIVE_STATES or canary_phase:
            continue
        successor = cell.tasks[task.replaced_by]
        if successor.state not in TERMINAL_STATES and done(successor) and spend(task):
            stops.append(Stop(task.id, StopReason.REPLACED))
    # 2. Scale down, highest index first.
    beyond = [t for t in tasks if t.index >= spec.tasks and t.state in ACTIVE_STATES]
    for task in sorted(beyond, key=lambda t: (-t.index, t.id)):
        if spend(task):
            stops.append(Stop(task.id, StopReason.SCALED))

    # 3. Replacements, at most max_parallel in flight.
    successors = [t for t in tasks if t.replaces is not None and job.current(t)]
    in_flight = sum(1 for t in successors if not done(t))
    slots = policy.max_parallel - in_flight
    if canary_phase:
        slots = min(slots, policy.canary - len(successors))
    claims: list[Claim] = []
    stopping = {stop.task for stop in stops}
    if slots > 0:
        # Unhealthy tasks first (replacing them costs no budget), then by index.
        wanted = sorted(
            (t for t in tasks if t.id not in stopping and cell.replaceable(t)),
            key=lambda t: (t.healthy_at is not None, t.index, t.id),
        )[:slots]
        if wanted:
            claims, drained = _replace(cell, ctx, stack, job, wanted, spend, claimed)
            stops.extend(drained)

    return Plan(tuple(claims), tuple(stops), _verdicts(cell, job, tasks, now, done))


def _replace(
    cell: CellState,
    ctx: DecisionContext,
    stack: Stack,
    job: Job,
    wanted: list[Task],
    spend: Callable[[Task], bool],
    claimed: Ledger | None = None,
) -> tuple[list[Claim], list[Stop]]:
    """Replacement claims for `wanted`: beside each old task where some machine has
    room and the owner's quota a task to spare; otherwise, for an update, in its place,
    where the old task's quota is its replacement's. A drained task the quota leaves no
    replacement beside is stopped `drained` instead (evicted, within the budget): pending
    again, its quota free, it is placed elsewhere like any pending task."""
    metric = JobMetric(job.id)  # lifecycle placements are not the job's attempts
    successor = cell.successor(wanted[0])
    beside, _ = cell.ledger.admits(successor, len(wanted), claimed)
    placed = stack.place(ctx, job, wanted[:beside], metric) if beside else []
    if claimed is not None and placed:
        claimed.take(successor, len(placed))
    claims = [attrs.evolve(claim, replace=True) for claim in placed]
    done = {claim.task for claim in claims}
    held = {t.id for t in wanted[beside:]}
    stops: list[Stop] = []
    for task in wanted:
        if task.id in done:
            continue
        if job.current(task):
            # A drain: stop-first only when the quota, not room, kept it from moving.
            if task.id in held and spend(task):
                stops.append(Stop(task.id, StopReason.DRAINED))
            continue
        if not spend(task):
            continue
        machine = cell.machines[task.machine]  # type: ignore[index]
        claims.append(Claim(task.id, machine.id, machine.seqnum, (task.id,), replace=True))
    return claims, stops


def _verdicts(
    cell: CellState, job: Job, tasks: list[Task], now: float, done: Callable[[Task], bool]
) -> tuple[Verdict, ...]:
    rollout = job.rollout
    if rollout is None:
        return ()
    policy = job.spec.policy
    version = rollout.version
    fresh = [
        t
        for t in tasks
        if job.current(t) and t.placed_at is not None and t.placed_at >= rollout.started_at
    ]
    for task in fresh:
        if (
            task.healthy_at is None
            and task.state in ACTIVE_STATES
            and now - (task.placed_at or now) > policy.healthy_deadline
        ):
            reason = f"task {task.id} not healthy within {policy.healthy_deadline:g}s"
            return (Verdict(job.id, version, RolloutState.FAILED, reason),)
    progress = max([rollout.updated_at, *(t.healthy_at for t in fresh if t.healthy_at is not None)])
    if now - progress > policy.progress_deadline:
        reason = f"no task became healthy for {policy.progress_deadline:g}s"
        return (Verdict(job.id, version, RolloutState.FAILED, reason),)
    if rollout.state is RolloutState.CANARY:
        canaries = [t for t in fresh if t.replaces is not None]
        if (
            policy.auto_promote
            and len(canaries) >= policy.canary
            and all(done(t) for t in canaries)
        ):
            return (Verdict(job.id, version, RolloutState.ROLLING, "canaries healthy"),)
        return ()
    size = job.spec.tasks
    serving = [t for t in tasks if t.index < size]
    if (
        all(
            job.current(t) and t.state in ACTIVE_STATES and cell.replacement(t) is None and done(t)
            for t in serving
        )
        and len({t.index for t in serving}) == size
    ):
        return (Verdict(job.id, version, RolloutState.SUCCEEDED),)
    return ()
