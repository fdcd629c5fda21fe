"""Conflict avoidance (`schedulers.avoid`) against the real core and a real CellState.

The conflict it removes, reproduced in the first test: a machine a rival left
half full is every best-fit scheduler's first choice, so two schedulers
deciding on one copy both claim it and the second commit loses.
"""

from __future__ import annotations

import numpy as np
import pytest

from cellstate import CellState, Commit, ReportScheduler, SchedulerClass
from schedulers.avoid import Avoidance, owners, rivals
from schedulers.core import shard_of
from schedulers.sample import occupied_size, sample_rows, sample_size
from tests.cellfixtures import GI, cell_with, commit, submit
from tests.schedfixtures import core, placements, step

BATCH = SchedulerClass.BATCH
NAMES = ("batch-a", "batch-b")


def job_of_shard(shard: int, prefix: str) -> str:
    """A job id that `shard_of(_, 2)` puts in `shard`."""
    return next(f"{prefix}{i}" for i in range(100) if shard_of(f"{prefix}{i}", 2) == shard)


def reported(cell: CellState, *names: str, at: float = 2.0) -> None:
    for name in names:
        cell.apply(ReportScheduler(name, BATCH, {}, {}, at=at))


def rivals_on_one_copy(avoidance: Avoidance | None) -> tuple[CellState, list]:
    """Two sharded batch cores deciding on one copy of a 16-machine cell in which
    m5 is half full: each core's job wants exactly what m5 has left."""
    cell = cell_with(machines=16, cpu=4000)
    reported(cell, *NAMES)
    submit(cell, "filler", tasks=1, cpu=2000)
    commit(cell, ("filler.0", "m5"))
    jobs = [job_of_shard(i, "job-") for i in range(2)]
    for job in jobs:
        submit(cell, job, tasks=2, cpu=1000)
    cores = [
        core(BATCH, name, seed=i, shard=(i, 2), sampling=False, avoidance=avoidance)
        for i, name in enumerate(NAMES)
    ]
    return cell, [c.decide(cell, 5.0) for c in cores]


def test_without_avoidance_two_schedulers_on_one_copy_both_claim_the_half_full_machine():
    _, decisions = rivals_on_one_copy(None)
    chosen = [{c.machine for c in d.transaction.claims} for d in decisions]
    assert chosen == [{"m5"}, {"m5"}]


def test_two_schedulers_on_one_copy_pick_disjoint_machines_and_both_commit_whole():
    cell, decisions = rivals_on_one_copy(Avoidance())
    chosen = [{c.machine for c in d.transaction.claims} for d in decisions]
    assert not chosen[0] & chosen[1]
    # Each went to its own partition, and the half-full machine's owner packed it.
    owner = owners([m.id for m in cell.machine_list], rivals(cell, NAMES[0]))
    index = {m.id: m.index for m in cell.machine_list}
    for k, machines in enumerate(chosen):
        assert all(owner[index[m]] == k for m in machines)
    assert "m5" in chosen[int(owner[5])]
    for decision in decisions:
        result = cell.apply(_commit(decision)).result
        assert result.accepted == 2 and not result.rejected


def _commit(decision):
    return Commit(decision.transaction, at=5.0)


def test_rendezvous_partitions_are_disjoint_even_and_move_little_when_a_rival_joins():
    ids = [f"m{i}" for i in range(4000)]
    two = owners(ids, ("a", "b"))
    three = owners(ids, ("a", "b", "c"))
    assert 0.45 < float((two == 0).mean()) < 0.55
    assert all(0.3 < float((three == k).mean()) < 0.37 for k in range(3))
    # Only the newcomer's share moves; no machine passes between a and b.
    moved = two != three
    assert bool((three[moved] == 2).all())
    # A machine's owner depends on it and the names alone, not on its neighbours.
    assert owners(ids[:10], ("a", "b")).tolist() == two[:10].tolist()


def test_a_full_partition_spills_over_to_the_rivals_machines():
    cell = cell_with(machines=8, cpu=4000)
    reported(cell, *NAMES)
    owner = owners([m.id for m in cell.machine_list], rivals(cell, "batch-a"))
    mine = [f"m{i}" for i in range(8) if owner[i] == 0]
    assert 0 < len(mine) < 7
    # Exactly what batch-a's machines hold: all of it goes there, none elsewhere.
    submit(cell, "fits", tasks=4 * len(mine), cpu=1000)
    sched = core(BATCH, "batch-a", avoidance=Avoidance())
    _, result = step(sched, cell)
    assert result.accepted == 4 * len(mine)
    assert set(placements(cell, "fits")) == set(mine)
    assert (sched.figures.partition_machines, sched.figures.claims_spilled) == (len(mine), 0)
    # batch-a's machines are full: the next job spills over to batch-b's, and
    # best fit still fills one machine before it starts another.
    submit(cell, "more", tasks=6, cpu=1000)
    _, result = step(sched, cell)
    assert result.accepted == 6
    spilled = placements(cell, "more")
    assert not set(spilled) & set(mine)
    assert sorted(spilled.values()) == [2, 4]
    assert sched.figures.claims_spilled == 6


def test_a_partition_short_of_room_scores_every_machine_and_counts_the_fallback():
    cell = cell_with(machines=8, cpu=4000)
    reported(cell, *NAMES)
    owner = owners([m.id for m in cell.machine_list], rivals(cell, "batch-a"))
    mine = [f"m{i}" for i in range(8) if owner[i] == 0]
    submit(cell, "fits", tasks=4 * len(mine) - 2, cpu=1000)
    sched = core(BATCH, "batch-a", avoidance=Avoidance())
    step(sched, cell)
    assert (sched.figures.sampled, sched.figures.sample_fallbacks) == (1, 0)
    # Two tasks' room left in batch-a's share, six wanted: its machines are the
    # sample, too small, so every feasible machine is scored, and counted.
    submit(cell, "more", tasks=6, cpu=1000)
    decision, result = step(sched, cell)
    assert result.accepted == 6
    assert sum(n for m, n in placements(cell, "more").items() if m in mine) == 2
    assert (decision.explanations["more"].sampled, decision.explanations["more"].rescored) == (1, 1)
    assert (sched.figures.sampled, sched.figures.sample_fallbacks) == (2, 1)


def test_a_machine_that_lost_a_conflict_is_tried_last_then_returns():
    # m1 is the tightest fit; a rival takes part of it between our decision and
    # our commit, so our claim there loses `insufficient:cpu`.
    cell = cell_with(machines=3, cpu=8000)
    submit(cell, "filler", tasks=1, cpu=4000)
    commit(cell, ("filler.0", "m1"))
    sched = core(BATCH, "batch-a", sampling=False, avoidance=Avoidance(cool_s=1.0))
    submit(cell, "big", tasks=1, cpu=3000)
    decision = sched.decide(cell, 10.0)
    assert [c.machine for c in decision.transaction.claims] == ["m1"]
    submit(cell, "rival", tasks=1, cpu=2000)
    commit(cell, ("rival.0", "m1"), scheduler="batch-b")
    result = cell.apply(_commit(decision)).result
    assert [(r.machine, r.reason) for r in result.rejected] == [("m1", "insufficient:cpu")]
    sched.on_result(cell, decision, result, 10.0)
    assert sched.avoider is not None and sched.avoider.cooled == {"m1": 11.0}
    # m1 (2 cores free) is still the best fit for one core, but it rests...
    submit(cell, "small", tasks=1, cpu=1000)

    def small_on(now: float) -> str:
        decision = sched.decide(cell, now)
        return next(c.machine for c in decision.transaction.claims if c.task == "small.0")

    assert small_on(10.5) != "m1"
    # ... and once the window has passed it is an ordinary candidate again.
    assert small_on(11.5) == "m1"
    assert sched.avoider.cooled == {}


def test_a_rival_that_stopped_reporting_gives_its_machines_back():
    cell = cell_with(machines=8, cpu=4000)
    reported(cell, *NAMES, at=2.0)
    assert rivals(cell, "batch-a") == NAMES
    reported(cell, "batch-a", at=40.0)
    assert rivals(cell, "batch-a") == ("batch-a",)
    sched = core(BATCH, "batch-a", avoidance=Avoidance())
    submit(cell, "all", tasks=32, cpu=1000, at=40.0)
    _, result = step(sched, cell, now=40.0)
    assert result.accepted == 32


def test_same_seed_same_decisions_with_avoidance():
    def run() -> list[tuple[str, str]]:
        cell = cell_with(machines=40, cpu=4000, domains=4)
        reported(cell, *NAMES, "service")
        submit(cell, "web", tasks=30, cpu=500, scheduler=SchedulerClass.SERVICE)
        submit(cell, "crunch", tasks=50, cpu=1000)
        out = []
        for kind, name in ((SchedulerClass.SERVICE, "service"), (BATCH, "batch-a")):
            decision, _ = step(core(kind, name, seed=3, avoidance=Avoidance()), cell)
            assert decision is not None
            out += [(c.task, c.machine) for c in decision.transaction.claims]
        return out

    assert run() == run()


def test_cooling_window_must_be_a_number_of_seconds():
    with pytest.raises(ValueError, match=r"cool_s -1\.0: must be a number of seconds >= 0"):
        Avoidance(cool_s=-1.0)


def test_a_spreading_service_reuses_the_machines_it_half_filled():
    # With a random sample a small spread job saw a few of 400 machines and
    # opened new ones; scoring its whole partition, best fit finds its own.
    cell = cell_with(machines=400, cpu=32000, memory=128 * GI, domains=4)
    sched = core(SchedulerClass.SERVICE, "service", avoidance=Avoidance())
    for job in ("web", "api"):
        submit(cell, job, tasks=20, cpu=1000, scheduler=SchedulerClass.SERVICE)
        _, result = step(sched, cell)
        assert result.accepted == 20
    assert set(placements(cell, "api")) == set(placements(cell, "web"))
    assert len(placements(cell, "web")) == 20


def test_many_half_full_machines_are_scored_through_a_bounded_sample_that_still_packs():
    # Scoring every occupied machine of the partition for each job of a decision
    # was most of a decision at 100,000 machines; a sample bounded by
    # `occupied_size` must still find half-full machines and never need the
    # fallback that scores every feasible machine.
    cell = cell_with(machines=1600, cpu=4000)
    reported(cell, *NAMES)
    submit(cell, "filler", tasks=1200, cpu=2000)
    commit(cell, *((f"filler.{i}", f"m{i}") for i in range(1200)))
    mine = owners([m.id for m in cell.machine_list], rivals(cell, NAMES[0])) == 0
    half_full = {f"m{i}" for i in range(1200) if mine[i]}
    assert len(half_full) > occupied_size(2) + sample_size(2)
    job = job_of_shard(0, "job-")
    submit(cell, job, tasks=2, cpu=1000)
    sched = core(BATCH, NAMES[0], shard=(0, 2), avoidance=Avoidance())
    decision, result = step(sched, cell)
    assert decision is not None and result is not None and result.accepted == 2
    metric = decision.explanations[job]
    assert metric.machines_scored == occupied_size(2) + sample_size(2)
    assert (metric.sampled, metric.rescored) == (1, 0)
    assert (sched.figures.sampled, sched.figures.sample_fallbacks) == (1, 0)
    assert set(placements(cell, job)) <= half_full


def test_the_empty_sample_is_distinct_rows_of_the_mask_or_all_of_them():
    rng = np.random.default_rng(1)
    mask = np.zeros(10_000, dtype=bool)
    mask[rng.choice(10_000, size=3_000, replace=False)] = True
    base = np.flatnonzero((rng.random(10_000) < 0.5) | mask)
    for where in (base, None):
        got = sample_rows(np.random.default_rng(2), mask, where, 40)
        assert got.size == 40 == np.unique(got).size and mask[got].all()
    few = np.zeros(10_000, dtype=bool)
    few[[3, 70, 900]] = True
    assert sample_rows(np.random.default_rng(2), few, None, 40).tolist() == [3, 70, 900]
    # So scarce that random draws miss: listed, then sampled.
    scarce = np.zeros(10_000, dtype=bool)
    scarce[::200] = True
    got = sample_rows(np.random.default_rng(2), scarce, None, 40)
    assert got.size == 40 == np.unique(got).size and scarce[got].all()


@pytest.mark.parametrize("spread", [None, "domain"])
def test_a_service_spreads_over_domains_and_machines_beyond_its_partition(spread):
    # `omega up`'s demo: 4 machines in 2 racks, three schedulers reporting. The
    # service scheduler's partition held one machine with room for the whole job,
    # and all three replicas of a `spread: domain` web service landed on it.
    # Partitions order machines within a domain; they must not undo the spread.
    cell = cell_with(machines=4, cpu=2000, domains=2)
    names = ("batch", "best-effort", "service")
    for name in names:
        cell.apply(ReportScheduler(name, BATCH, {}, {}, at=2.0))
    mine = owners([m.id for m in cell.machine_list], rivals(cell, "service"))
    assert np.count_nonzero(mine == names.index("service")) < 3  # the case that went wrong
    submit(cell, "web", tasks=3, cpu=100, scheduler=SchedulerClass.SERVICE, spread=spread)
    sched = core(SchedulerClass.SERVICE, "service", avoidance=Avoidance())
    _, result = step(sched, cell)
    assert result is not None and result.accepted == 3
    on = placements(cell, "web")
    assert len(on) == 3, on
    assert {cell.machines[m].domain for m in on} == {"d0", "d1"}
