"""Candidate sampling: Borg's relaxed randomisation.

Scoring every feasible machine makes every scheduler that reads the same state
pick the same best machine, and in a shared-state design that is a conflict.
Borg scores only a random sample of the feasible machines, just large enough
to find good ones; competing schedulers then pick different machines. The
randomness comes from the decision's generator (seeded from the core's
injected `random.Random`), so a seed reproduces every choice.

With sampling off (`SchedulerCore(sampling=False)`) every feasible machine is
scored: plain best fit, for the experiments that compare the two.

With conflict avoidance (`schedulers.avoid`) there is no sample: every
feasible machine of the scheduler's preferred partition is scored (all of
`rows` if none of them is preferred). The partitions keep rivals apart, and a
sample of the whole cell would bring their half-filled machines back.
"""

from __future__ import annotations

import numpy as np

from schedulers.avoid import PREFERRED
from schedulers.context import DecisionContext

SAMPLE_MIN = 32  # machines scored at least, however few tasks are wanted
SAMPLE_PER_TASK = 2  # ... and this many per task wanted


def sample_size(wanted: int) -> int:
    return max(SAMPLE_MIN, SAMPLE_PER_TASK * wanted)


def candidates(ctx: DecisionContext, rows: np.ndarray, wanted: int) -> np.ndarray:
    """The rows to score for `wanted` tasks: all of `rows` with sampling off or
    when there are few, else a random sample of `sample_size(wanted)` of them
    in random order (so equal scores break ties at random). With avoidance
    tiers, the preferred ones among `rows` (all of `rows` if none is)."""
    if ctx.tiers is not None:
        preferred = rows[ctx.tiers[rows] == PREFERRED]
        return preferred if preferred.size else rows
    size = sample_size(wanted)
    if not ctx.sampling or rows.size <= size:
        return rows
    return rows[ctx.np_rng.choice(rows.size, size=size, replace=False)]
