"""Candidate sampling: Borg's relaxed randomisation.

Scoring every feasible machine makes every scheduler that reads the same state
pick the same best machine, and in a shared-state design that is a conflict.
Borg scores only a random sample of the feasible machines, just large enough
to find good ones; competing schedulers then pick different machines. The
randomness comes from the decision's generator (seeded from the core's
injected `random.Random`), so a seed reproduces every choice.

With sampling off (`SchedulerCore(sampling=False)`) every feasible machine is
scored: plain best fit, for the experiments that compare the two.

With conflict avoidance (`schedulers.avoid`) candidates come from the
scheduler's preferred partition (all of `rows` if none of them is preferred):
every machine there that already holds something, and a random sample of the
empty ones. The partitions keep rivals apart, so randomness is no longer what
sampling is for; what best fit needs is the machines this scheduler half
filled, which a small sample of the whole cell hides (a 50-task spread job
sampled 100 of 10,000 machines and opened a new one for nearly every task:
the service alone held 20,000 tasks on 7,000 machines). Empty machines are
all as good as each other, so a sample of them is enough, and a decision over
many small jobs does not score every machine for each.
"""

from __future__ import annotations

import numpy as np

from schedulers.context import DecisionContext

SAMPLE_MIN = 32  # machines scored at least, however few tasks are wanted
SAMPLE_PER_TASK = 2  # ... and this many per task wanted


def sample_size(wanted: int) -> int:
    return max(SAMPLE_MIN, SAMPLE_PER_TASK * wanted)


def candidates(
    ctx: DecisionContext, ok: np.ndarray, wanted: int, best_effort: bool = False
) -> np.ndarray:
    """The rows to score for `wanted` tasks, of the feasible machines (mask `ok`):
    all of them with sampling off or when there are few, else a random sample
    of `sample_size(wanted)` of them in random order (so equal scores break
    ties at random). With avoidance tiers, see the module docstring (the room
    of `best_effort`'s class tells which machines are empty).

    Masks over the whole cell, not index arrays: a decision calls this once
    per job, and gathering by index was most of a decision's time."""
    size = sample_size(wanted)
    if ctx.tiers is not None:
        pool = ok & ctx.preferred
        if not pool.any():
            pool = ok
        empty = ctx.empty(best_effort)
        idle = np.flatnonzero(pool & empty)
        if idle.size > size:
            idle = idle[ctx.np_rng.choice(idle.size, size=size, replace=False)]
        return np.concatenate((np.flatnonzero(pool & ~empty), idle))
    rows = np.flatnonzero(ok)
    if not ctx.sampling or rows.size <= size:
        return rows
    return rows[ctx.np_rng.choice(rows.size, size=size, replace=False)]
