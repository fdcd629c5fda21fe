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
many small jobs does not score every machine for each. Where many machines
are half full (tasks of many shapes), a random subset of them of
`occupied_size(wanted)` is scored, a new one each decision: Borg's relaxed
randomisation again, at a size that still finds the half-full machines and
leaves every task room (so `Stack` never has to score all the machines).
"""

from __future__ import annotations

from itertools import islice

import numpy as np

from schedulers.context import DecisionContext

SAMPLE_MIN = 32  # machines scored at least, however few tasks are wanted
SAMPLE_PER_TASK = 2  # ... and this many per task wanted
# With avoidance, occupied machines scored at most: this many, or this many per
# task wanted. Each feasible machine fits at least one task, so a sample of at
# least `wanted` never sends `Stack` back to score every machine.
OCCUPIED_MIN = 256
OCCUPIED_PER_TASK = 4
# Rounds of random draws that look for empty machines before listing them all.
DRAW_ROUNDS = 3


def sample_size(wanted: int) -> int:
    return max(SAMPLE_MIN, SAMPLE_PER_TASK * wanted)


def occupied_size(wanted: int) -> int:
    return max(OCCUPIED_MIN, OCCUPIED_PER_TASK * wanted)


def candidates(
    ctx: DecisionContext,
    ok: np.ndarray,
    wanted: int,
    best_effort: bool = False,
    spread: bool = False,
) -> np.ndarray:
    """The rows to score for `wanted` tasks, of the feasible machines (mask `ok`):
    all of them with sampling off or when there are few, else a random sample
    of `sample_size(wanted)` of them in random order (so equal scores break
    ties at random). With avoidance tiers, see the module docstring (the room
    of `best_effort`'s class tells which machines are empty); for a job that
    `spread`s, a sample of the other partitions' machines besides: its tasks go to
    other domains and machines before they double up, and a small cell's preferred
    partition may hold one machine of one domain. The tiers still order the
    machines within each domain, so while the partition has machines enough the
    others are not used.

    Masks over the whole cell, not index arrays: a decision calls this once
    per job, and gathering by index was most of a decision's time."""
    size = sample_size(wanted)
    if ctx.tiers is not None:
        pool = ok & ctx.preferred
        base: np.ndarray | None = ctx.preferred_rows
        whole = not pool.any()
        if whole:
            pool, base = ok, None
        empty = ctx.empty(best_effort)
        used = np.flatnonzero(pool & ~empty)
        limit = occupied_size(wanted)
        if used.size > limit:
            # Many half-full machines (tasks of many shapes): a random subset, new
            # each decision, in machine order as before.
            used = np.sort(used[ctx.np_rng.choice(used.size, size=limit, replace=False)])
        parts = [used, sample_rows(ctx.np_rng, pool & empty, base, size)]
        if spread and not whole:
            parts.append(sample_rows(ctx.np_rng, ok & ~ctx.preferred, None, size))
        return np.concatenate(parts)
    rows = np.flatnonzero(ok)
    if not ctx.sampling or rows.size <= size:
        return rows
    return rows[ctx.np_rng.choice(rows.size, size=size, replace=False)]


def sample_rows(
    rng: np.random.Generator, mask: np.ndarray, base: np.ndarray | None, size: int
) -> np.ndarray:
    """`size` of the rows set in `mask` (all of them if no more), at random and in
    random order; every set row is in `base` (None: any row). Listing them all
    reads every machine, for each job of a decision; while they are not scarce,
    random draws from `base` find enough with work in proportion to `size`."""
    count = int(np.count_nonzero(mask))
    if count <= size:
        return np.flatnonzero(mask)
    span = mask.size if base is None else base.size
    got: dict[int, None] = {}  # in order of drawing, repeats dropped
    for _ in range(DRAW_ROUNDS):
        # Twice the draws that find the rest at the set rows' density: mostly one round.
        draws = rng.integers(span, size=(size - len(got)) * span * 2 // count + 8)
        if base is not None:
            draws = base[draws]
        got.update(dict.fromkeys(draws[mask[draws]].tolist()))
        if len(got) >= size:
            return np.fromiter(islice(got, size), dtype=np.intp, count=size)
    rows = np.flatnonzero(mask)
    return rows[rng.choice(rows.size, size=size, replace=False)]
