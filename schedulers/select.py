"""Selectors: turn scored candidates into machines for the n tasks of one job.

- `pack`: best fit for n identical tasks. Placing a task on the tightest
  machine leaves it tighter still, so greedy best fit fills machines in score
  order; that is done at once with a partial sort and a cumulative sum, with
  no Python loop per task.
- `spread`: balance the job across spread domains (fewest of its tasks
  first; between equals, the domain whose emptiest machine holds fewest), then
  across machines within a domain (fewest of its tasks), then best fit. A
  heap of domains and one heap of machines per domain, so each task costs a
  few heap operations, not a pass over the machines.
- `random_fit`: each task to a machine drawn uniformly among those that still
  have room for it, as the Omega paper's simulator places (no scoring at
  all). Drawn in rounds, one draw per task still unplaced, so the Python work
  grows with the rounds, not with the tasks.
- `one_by_one`: each task on the candidate with the lowest score, whose score
  then moves by its step; for a score that rises as a machine fills (worst
  fit), tasks level the machines instead of filling them one after another.
"""

from __future__ import annotations

import heapq

import numpy as np


def pack(
    rows: np.ndarray, fit: np.ndarray, score: np.ndarray, wanted: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit `wanted` tasks over candidate `rows` (with `fit` tasks of room
    and `score` each); return (chosen rows, tasks per row), at most `wanted`
    tasks in all. Ties keep the candidates' order (see the cut below)."""
    usable = fit > 0
    rows, fit, score = rows[usable], fit[usable], score[usable]
    if rows.size == 0 or wanted <= 0:
        return rows[:0], fit[:0]
    if rows.size > wanted:
        # At most `wanted` machines are needed; find them without a full sort.
        part = np.argpartition(score, wanted - 1)[:wanted]
        order = part[np.lexsort((part, score[part]))]
    else:
        order = np.argsort(score, kind="stable")
    fit = fit[order]
    total = np.cumsum(fit)
    k = min(int(np.searchsorted(total, wanted)) + 1, total.size)
    counts = fit[:k].copy()
    if total[k - 1] > wanted:
        counts[-1] -= total[k - 1] - wanted
    return rows[order[:k]], counts


def spread(
    rows: np.ndarray,
    fit: np.ndarray,
    score: np.ndarray,
    step: np.ndarray,
    codes: np.ndarray,
    load: dict[int, int],
    on_machine: np.ndarray,
    domain_rank: dict[int, float],
    wanted: int,
) -> list[int]:
    """Choose a machine per task, balancing over domains then machines.

    `codes[i]` is the spread domain of candidate `rows[i]`, `load` the job's
    tasks per domain so far, `on_machine[i]` its tasks on the machine so far,
    `step[i]` how much one task lowers `score[i]`, `domain_rank` a random
    tie-break between equally loaded domains. Returns one row per placed task
    (fewer than `wanted` if room runs out).

    Each domain's machines are sorted once (vectorised); a domain's heap holds
    only machines already reached plus the next unread one of its sorted run,
    so the Python work grows with the tasks placed, not with the candidates.
    """
    usable = np.flatnonzero(fit > 0)
    if usable.size == 0 or wanted <= 0:
        return []
    rows, fit, score, step = rows[usable], fit[usable], score[usable], step[usable]
    codes, on_machine = codes[usable], on_machine[usable]
    order = np.lexsort((np.arange(usable.size), score, on_machine, codes))
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    ends = np.r_[starts[1:], order.size]
    # Plain lists: the loop below reads single items, which lists do fastest.
    order_l, on_l = order.tolist(), on_machine.tolist()
    score_l, step_l = score.tolist(), step.tolist()
    rows_l, room = rows.tolist(), fit.tolist()
    codes_l = sorted_codes.tolist()

    heaps: dict[int, list[tuple[int, float, int]]] = {}
    nxt: dict[int, int] = {}  # position of the next unread machine in the run
    end: dict[int, int] = {}
    frontier: dict[int, int] = {}  # the run's machine now in the heap
    domains = []
    for start, stop in zip(starts.tolist(), ends.tolist(), strict=True):
        code = codes_l[start]
        first = order_l[start]
        heaps[code] = [(on_l[first], score_l[first], first)]
        nxt[code], end[code], frontier[code] = start + 1, stop, first
        # Between domains holding as many of the job's tasks, the one whose emptiest
        # machine holds fewest of them: a third replica in two racks goes to a third
        # machine, not onto the one machine of the other rack.
        domains.append((load.get(code, 0), on_l[first], domain_rank.get(code, 0.0), code))
    heapq.heapify(domains)

    heappop, heappush = heapq.heappop, heapq.heappush
    chosen: list[int] = []
    while len(chosen) < wanted and domains:
        count, _, rank, code = heappop(domains)
        heap = heaps[code]
        on, sc, i = heappop(heap)
        if i == frontier[code] and nxt[code] < end[code]:
            j = frontier[code] = order_l[nxt[code]]
            nxt[code] += 1
            heappush(heap, (on_l[j], score_l[j], j))
        chosen.append(rows_l[i])
        room[i] -= 1
        if room[i] > 0:
            heappush(heap, (on + 1, sc - step_l[i], i))
        if heap:
            # The run is sorted by tasks on the machine, so the heap's top is the domain's
            # emptiest machine.
            heappush(domains, (count + 1, heap[0][0], rank, code))
    return chosen


def random_fit(
    rows: np.ndarray, fit: np.ndarray, wanted: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Place `wanted` tasks over candidate `rows` (with `fit` tasks of room each), each on
    a machine drawn uniformly from those with room left; return (chosen rows, tasks per
    row), at most `wanted` tasks in all, rows in ascending order.

    A round draws one machine per unplaced task; a machine drawn more often than it has
    room keeps what fits and the rest is drawn again among the machines still open, so
    every task lands on a machine chosen uniformly from those that had room for it."""
    room = fit.astype(np.int64, copy=True)
    taken = np.zeros(rows.size, dtype=np.int64)
    left = wanted
    while left > 0:
        open_ = np.flatnonzero(room > 0)
        if open_.size == 0:
            break
        drawn = np.bincount(rng.integers(0, open_.size, size=left), minlength=open_.size)
        got = np.minimum(drawn, room[open_])
        taken[open_] += got
        room[open_] -= got
        left -= int(got.sum())
    used = np.flatnonzero(taken)
    return rows[used], taken[used]


def one_by_one(
    rows: np.ndarray, fit: np.ndarray, score: np.ndarray, step: np.ndarray, wanted: int
) -> list[int]:
    """Choose a machine per task: the lowest score among candidates with room,
    after which that machine's score rises by `step[i]` and its room falls by
    one. Returns one row per placed task (fewer than `wanted` if room runs
    out). Ties keep the candidates' order, which sampling has shuffled."""
    usable = np.flatnonzero(fit > 0)
    if usable.size == 0 or wanted <= 0:
        return []
    rows_l, room = rows[usable].tolist(), fit[usable].tolist()
    step_l = step[usable].tolist()
    heap = list(zip(score[usable].tolist(), range(usable.size), strict=True))
    heapq.heapify(heap)
    heappop, heappush = heapq.heappop, heapq.heappush
    chosen: list[int] = []
    while len(chosen) < wanted and heap:
        sc, i = heappop(heap)
        chosen.append(rows_l[i])
        room[i] -= 1
        if room[i] > 0:
            heappush(heap, (sc + step_l[i], i))
    return chosen
