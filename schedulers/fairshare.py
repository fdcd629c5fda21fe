"""Weighted DRF within a band: which owner's pending tasks a decision takes first.

Mesos shares a cluster between frameworks by weighted Dominant Resource
Fairness; here there is no allocator to do it: every scheduler holds the whole
cell, so each one computes the owners' weighted dominant shares
(`cellstate.fairshare`) from its own copy and fills its claim budget by
*progressive filling*: one task at a time to the owner whose dominant share,
counting what this decision has already given it, divided by its weight, is
the lowest (ties to the owner named first), and within an owner round-robin
across its jobs in their usual order. Because all schedulers read the same
cell, they agree on who is behind without talking to each other.

The filling stops giving an owner tasks once none of its jobs' next task fits
in what the cell has free in total (summed over machines that are up), when
the caller passes that bound; otherwise the owner first in line would claim
more than the cell has and crowd the others out of this decision. A
preempting scheduler passes no bound: its room is what lower bands hold, not
what is free. Any job that got nothing still gets one task if budget is left,
so that it is tried, explained and stalled as before. Fair share only orders
and sizes claims; quota still caps them at commit.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping

from cellstate import Job, TaskState

PENDING = TaskState.PENDING


class Shares:
    """Owners' held vectors, the cell's capacity and (optionally) free vector,
    and weights, as one decision starts; updated as it gives tasks out."""

    def __init__(
        self,
        usage: Mapping[str, Mapping[str, int]],
        capacity: Mapping[str, int],
        weights: Mapping[str, float],
        free: Mapping[str, int] | None,
    ) -> None:
        self.usage = {owner: dict(vector) for owner, vector in usage.items()}
        self.capacity = dict(capacity)
        self.weights = weights
        self.free = None if free is None else dict(free)

    def weighted(self, owner: str) -> float:
        held, capacity = self.usage.get(owner, {}), self.capacity
        share = max(
            (amount / capacity[dim] for dim, amount in held.items() if capacity.get(dim, 0) > 0),
            default=0.0,
        )
        return share / self.weights.get(owner, 1.0)

    def fits(self, demand: Mapping[str, int]) -> bool:
        free = self.free
        return free is None or all(free.get(dim, 0) >= amount for dim, amount in demand.items())

    def give(self, owner: str, demand: Mapping[str, int]) -> None:
        held = self.usage.setdefault(owner, {})
        for dim, amount in demand.items():
            held[dim] = held.get(dim, 0) + amount
        if self.free is not None:
            for dim, amount in demand.items():
                self.free[dim] = self.free.get(dim, 0) - amount


def fair_fill(jobs: list[Job], budget: int, shares: Shares, out: list[tuple[Job, int]]) -> int:
    """Share `budget` tasks across `jobs` (one band, in their usual order) by
    weighted progressive filling; append (job, tasks) to `out`, owners lowest
    weighted share first; return the budget left."""
    want = {job.id: job.counts.get(PENDING, 0) for job in jobs}
    given = dict.fromkeys(want, 0)
    rings: dict[str, deque[Job]] = {}
    for job in jobs:
        if want[job.id]:
            rings.setdefault(job.spec.owner, deque()).append(job)
    start = {owner: shares.weighted(owner) for owner in rings}
    line = [(share, owner) for owner, share in start.items()]
    heapq.heapify(line)
    while budget and line:
        _, owner = heapq.heappop(line)
        ring = rings[owner]
        for _ in range(len(ring)):
            job = ring[0]
            ring.rotate(-1)
            if shares.fits(job.spec.resources.amounts):
                break
        else:
            continue  # nothing of this owner fits what is free: it is done
        given[job.id] += 1
        budget -= 1
        if given[job.id] == want[job.id]:
            ring.remove(job)
        shares.give(owner, job.spec.resources.amounts)
        if ring:
            heapq.heappush(line, (shares.weighted(owner), owner))
    for job in jobs:
        if not budget:
            break
        if want[job.id] and not given[job.id]:
            given[job.id] = 1
            budget -= 1
    order = sorted(
        range(len(jobs)), key=lambda i: (start.get(jobs[i].spec.owner, 0.0), jobs[i].spec.owner, i)
    )
    out.extend((jobs[i], given[jobs[i].id]) for i in order if given[jobs[i].id])
    return budget
