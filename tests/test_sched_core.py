"""SchedulerCore: competing cores, conflicts, sampling, shards, determinism, parking."""

from __future__ import annotations

import random

import pytest

from cellstate import (
    Band,
    Commit,
    ConflictMode,
    Limit,
    MachineSpec,
    RegisterMachines,
    Resources,
    SchedulerClass,
    SetQuota,
    TxnMode,
)
from schedulers import SchedulerCore, shard_of
from schedulers.metrics import WINDOW, Samples, SchedulerFigures
from tests.cellfixtures import cell_with, submit
from tests.schedfixtures import core, step

BATCH, SERVICE = SchedulerClass.BATCH, SchedulerClass.SERVICE


def _race(conflicts: ConflictMode, sampling: bool, machines: int = 20):
    """Two cores decide against one state, then both commit."""
    cell = cell_with(machines=machines, cpu=8000)
    submit(cell, "a", tasks=20, cpu=1000)
    submit(cell, "d", tasks=20, cpu=1000)
    one = core(BATCH, name="one", seed=1, conflicts=conflicts, sampling=sampling, shard=(0, 2))
    two = core(BATCH, name="two", seed=2, conflicts=conflicts, sampling=sampling, shard=(1, 2))
    assert shard_of("a", 2) != shard_of("d", 2)
    d1, d2 = one.decide(cell, 5.0), two.decide(cell, 5.0)
    r1 = cell.apply(Commit(d1.transaction, at=5.0)).result
    r2 = cell.apply(Commit(d2.transaction, at=5.0)).result
    one.on_result(cell, d1, r1, 5.0)
    two.on_result(cell, d2, r2, 5.0)
    cell.check_invariants()
    return cell, (one, two), (r1, r2)


def test_competing_cores_conflict_in_coarse_mode_and_never_overcommit():
    cell, (_one, two), (r1, r2) = _race(ConflictMode.COARSE, sampling=False)
    # Plain best fit: both pick the same machines; the second loses them all.
    assert r1.accepted == 20 and not r1.rejected
    assert r2.accepted == 0 and {r.reason for r in r2.rejected} == {"machine_changed"}
    assert two.figures.conflicted_transactions == 1
    assert two.figures.conflicts_by_reason == {"machine_changed": 20}
    assert two.figures.claim_conflict_fraction == 1.0
    # The losing job is retried against the refreshed state and placed.
    _decision, result = step(two, cell, now=6.0)
    assert result.accepted == 20
    assert two.figures.conflict_fraction == 1.0  # 1 conflicted / 1 conflict-free


def test_fine_mode_accepts_what_still_fits():
    _, _, (r1, r2) = _race(ConflictMode.FINE, sampling=False)
    # Both packed 8 + 8 + 4 onto m0, m1, m2; m2 still has room for 4 more.
    assert r1.accepted == 20
    assert r2.accepted == 4 and {r.reason for r in r2.rejected} == {"insufficient:cpu"}


def test_sampling_spreads_competitors_and_cuts_conflicts():
    conflicts = {}
    for sampling in (False, True):
        _, _, (_, r2) = _race(ConflictMode.COARSE, sampling=sampling, machines=200)
        conflicts[sampling] = len(r2.rejected)
    assert conflicts[False] == 20
    assert conflicts[True] < conflicts[False]


def test_sharding_splits_jobs():
    cell = cell_with(machines=4)
    ids = [f"job{i}" for i in range(12)]
    for jid in ids:
        submit(cell, jid, tasks=1, cpu=100)
    shards = [core(BATCH, name=f"s{i}", shard=(i, 3)) for i in range(3)]
    taken = [set(step(s, cell)[0].jobs) for s in shards]
    assert set().union(*taken) == set(ids)
    assert sum(len(t) for t in taken) == len(ids)
    assert all(taken)


def test_cores_take_only_their_scheduler_class():
    cell = cell_with(machines=2)
    submit(cell, "svc", tasks=1, cpu=100, scheduler=SERVICE)
    batch = core(BATCH)
    assert not batch.has_work(cell) and batch.decide(cell, 5.0) is None
    assert core(SERVICE).has_work(cell)


def test_decisions_are_deterministic_for_a_seed():
    def run(seed):
        cell = cell_with(machines=50, cpu=8000, domains=5)
        for j in range(5):
            submit(cell, f"j{j}", tasks=30, cpu=700)
            submit(cell, f"s{j}", tasks=7, cpu=300, scheduler=SERVICE)
        claims = []
        for kind in (SERVICE, BATCH):
            sched = core(kind, seed=seed)
            while (decision := step(sched, cell)[0]) is not None:
                claims.append(decision.transaction.claims)
        return claims, cell.snapshot()

    assert run(3) == run(3)
    assert run(3)[0] != run(4)[0]


def test_highest_band_first_and_round_robin_within_budget():
    cell = cell_with(machines=10, cpu=16000)
    submit(cell, "low", tasks=10, cpu=100, priority=100, at=1.0)
    submit(cell, "high", tasks=3, cpu=100, priority=190, at=2.0)
    submit(cell, "old", tasks=10, cpu=100, priority=100, at=0.5)
    sched = core(BATCH, max_claims=9)
    decision, _ = step(sched, cell)
    per_job = {}
    for claim in decision.transaction.claims:
        per_job[claim.task.split(".")[0]] = per_job.get(claim.task.split(".")[0], 0) + 1
    assert per_job == {"high": 3, "old": 3, "low": 3}
    assert decision.jobs == ("high", "old", "low")


def test_unplaceable_job_stalls_then_parks_after_max_attempts():
    cell = cell_with(machines=1, cpu=1000)
    submit(cell, "huge", tasks=1, cpu=900)
    submit(cell, "big", tasks=1, cpu=2000)
    sched = core(BATCH, max_attempts=3)
    step(sched, cell)  # places "huge", finds no room for "big"
    assert sched.attempts["big"] == 1
    assert sched.has_work(cell)  # a machine changed: worth another look
    assert sched.decide(cell, 6.0) is None
    # Nothing changed in the cell since: no spinning.
    assert not sched.has_work(cell)
    cell.apply(RegisterMachines((MachineSpec("tiny", Resources(500, 1 << 30)),), at=6.0))
    assert sched.has_work(cell)
    assert sched.decide(cell, 7.0) is None
    assert sched.parked == {"big": "insufficient:cpu"}
    assert sched.figures.blocked == {"big": "insufficient:cpu"}
    explanation = sched.explain(cell, "big")
    assert explanation.parked == "insufficient:cpu"
    assert explanation.attempts == 3 and "parked" in explanation.summary()
    assert not sched.has_work(cell)
    sched.unpark("big")
    assert sched.has_work(cell)


def test_a_parked_job_rests_park_s_then_comes_back_with_a_fresh_count():
    cell = cell_with(machines=1, cpu=1000)
    submit(cell, "big", tasks=1, cpu=2000)
    sched = core(BATCH, max_attempts=1, park_s=30.0)
    assert sched.decide(cell, 10.0) is None
    assert sched.parked == {"big": "insufficient:cpu"}
    assert sched.wakes_at() == 40.0
    sched.unpark_due(39.0)
    assert sched.parked and not sched.has_work(cell)
    sched.unpark_due(40.0)
    assert not sched.parked and sched.wakes_at() is None and sched.has_work(cell)
    assert "big" not in sched.attempts and "big" not in sched.figures.blocked
    # Without park_s (the simulator's), parked is for good.
    for_good = core(BATCH, max_attempts=1)
    for_good.decide(cell, 10.0)
    for_good.unpark_due(1e9)
    assert for_good.parked and for_good.wakes_at() is None


def test_claims_stay_within_the_quota_across_the_jobs_of_a_decision():
    cell = cell_with(machines=4, extra={"gpu": 4})
    cell.apply(SetQuota("alice", Band.BATCH, Limit.of({"gpu": 3})))
    submit(cell, "a", tasks=2, cpu=100, extra={"gpu": 1})
    submit(cell, "b", tasks=4, cpu=100, extra={"gpu": 1})
    submit(cell, "gang", tasks=2, cpu=100, extra={"gpu": 1}, gang=True, at=3.0)
    submit(cell, "bob", tasks=2, cpu=100, extra={"gpu": 1}, owner="bob")
    sched = core(BATCH)
    decision, result = step(sched, cell)
    assert decision is not None and result is not None
    # alice's 3 gpus go to her first jobs, bob has no quota; nothing is refused.
    by_job = {
        j: sum(1 for c in decision.transaction.claims if c.task.startswith(j + ".")) for j in "ab"
    }
    assert by_job == {"a": 2, "b": 1} and not result.rejected
    assert cell.ledger.usage()[("alice", Band.BATCH)]["gpu"] == 3
    held = sched.explain(cell, "b")
    assert held.last is not None and held.last.quota_held == 3
    assert "3 held back by quota (quota_exceeded:gpu)" in held.summary()
    # b, now wholly held back, waits for alice's quota to change, and is not tried
    # again before: it no longer stands before the gang, whose turn comes next.
    assert step(sched, cell, now=6.0) == (None, None)
    assert "b" in sched._held and sched.attempts["b"] == 2
    # The gang goes whole or not at all, the quota full: nothing of it is claimed.
    decision, result = step(sched, cell, now=7.0)
    assert decision is None or not any(
        c.task.startswith("gang.") for c in decision.transaction.claims
    )
    assert "2 held back by quota" in sched.explain(cell, "gang").summary()
    assert cell.jobs["bob"].counts.get("assigned") == 2
    assert not sched.has_work(cell) and sched.attempts["b"] == 2
    # A raised quota brings them back, though no machine changed.
    cell.apply(SetQuota("alice", Band.BATCH, Limit.of({"gpu": 8})))
    assert sched.has_work(cell)
    step(sched, cell, now=8.0)
    step(sched, cell, now=9.0)
    assert cell.jobs["b"].counts.get("assigned") == 4
    assert cell.jobs["gang"].counts.get("assigned") == 2


def test_figures_and_wait_times():
    cell = cell_with(machines=2)
    submit(cell, "j", tasks=2, cpu=100, at=2.0)
    sched = core(BATCH)
    step(sched, cell, now=10.0)
    sched.figures.add_busy(0.25)
    data = sched.figures.as_dict()
    assert data["transactions"] == 1 and data["claims_accepted"] == 2
    assert data["wait_first_attempt_s"]["p50"] == 8.0
    assert data["wait_placed_s"]["p50"] == 8.0
    assert data["busy_seconds"] == 0.25 and data["decision_seconds"]["p99"] == 0.25


def test_a_long_lived_scheduler_s_samples_stay_bounded_and_its_histogram_never_goes_down():
    # A scheduler that runs for weeks decides millions of times and reports every few
    # seconds: its percentiles read the most recent samples, its counts the lifetime.
    samples = Samples(bounds=(0.01, 0.1), window=4)
    for value in (0.5, 0.05, 0.001, 0.2, 0.003, 0.004, 0.006):
        samples.append(value)
    assert samples.recent().tolist() == [0.2, 0.003, 0.004, 0.006]
    summary = samples.summary()
    assert summary["n"] == 7 and summary["max"] == 0.5  # lifetime, not the window's
    assert summary["mean"] == pytest.approx(0.764 / 7)
    assert summary["p50"] == pytest.approx(0.005)  # of the window only
    # Prometheus buckets (at most each bound, then all) count every sample ever taken.
    assert samples.cumulative() == [4, 5, 7]
    samples.append(0.01)  # a bound is inclusive (`le`)
    assert samples.cumulative() == [5, 6, 8]

    figures = SchedulerFigures()
    for i in range(3 * WINDOW):
        figures.add_busy(i / WINDOW)
    assert figures.decision_seconds.recent().size == WINDOW
    assert figures.as_dict()["decision_seconds"]["n"] == 3 * WINDOW
    assert figures.decision_seconds.cumulative()[-1] == 3 * WINDOW


def test_all_or_nothing_mode_applies_to_every_transaction():
    cell = cell_with(machines=2)
    submit(cell, "j", tasks=2, cpu=100)
    decision, result = step(core(BATCH, mode=TxnMode.ALL_OR_NOTHING), cell)
    assert decision.transaction.mode is TxnMode.ALL_OR_NOTHING and result.accepted == 2


def test_bad_shard_is_refused():
    with pytest.raises(ValueError):
        SchedulerCore("x", BATCH, rng=random.Random(0), shard=(2, 2))


def test_big_job_progressing_under_the_budget_is_never_parked():
    cell = cell_with(machines=10, cpu=16000)
    submit(cell, "big", tasks=40, cpu=100)
    sched = core(BATCH, max_claims=5, max_attempts=2)
    decisions = 0
    while step(sched, cell)[0] is not None:
        decisions += 1
    assert decisions == 8 and not sched.parked
    assert sched.figures.wait_placed.recent().tolist() == [3.0]


def test_a_core_lets_go_of_what_it_kept_for_jobs_the_cell_purged():
    """A scheduler that runs for months keeps attempts, explanations, conflicts and task
    rows per job it decided: once the cell purges a job (`PurgeJobs`), so does the core."""
    from cellstate import KillJob, PurgeJobs

    cell = cell_with(machines=2)
    submit(cell, "kept", tasks=2, cpu=500)
    submit(cell, "ended", tasks=2, cpu=500)
    sched = core()
    step(sched, cell)
    assert {"kept", "ended"} <= sched._seen & set(sched._last)
    cell.apply(KillJob("ended", at=6.0))
    assert sched.forget_gone(cell) == 0  # killed is not gone
    cell.apply(PurgeJobs(10.0, at=11.0))
    assert "ended" not in cell.jobs
    assert sched.forget_gone(cell) == 1
    for kept in (sched._seen, sched._placed, sched._last, sched._known_rows, sched.attempts):
        assert "ended" not in kept and ("kept" in sched._seen)
    assert sched.explain(cell, "ended").known is False
    assert sched.forget_gone(cell) == 0
