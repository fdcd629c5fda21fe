"""The simulator's metrics on hand-made traces, with answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from cellsim.metrics import DAY, Metrics, busyness, percentile


def trace() -> Metrics:
    m = Metrics()
    m.scheduler("batch", "batch")
    m.scheduler("service", "service")
    # Three batch jobs, one service job.
    m.submitted("b0", "batch", 0.0, tasks=2)
    m.submitted("b1", "batch", 10.0, tasks=1)
    m.submitted("b2", "batch", 20.0, tasks=5)
    m.submitted("s0", "service", 5.0, tasks=3)
    # batch decides b0 at 1 s (busy 1..2), commits: 2 claims, 0 rejected, fully placed.
    m.attempt("batch", ["b0"], 1.0, claims=2)
    m.busy("batch", 1.0, 2.0)
    m.transaction("batch", claims=2, rejected=0)
    m.placed("b0", 2.0)
    # service decides s0 at 6 s (busy 6..16): 3 claims, 1 rejected (conflict).
    m.attempt("service", ["s0"], 6.0, claims=3)
    m.busy("service", 6.0, 16.0)
    m.transaction("service", claims=3, rejected=1)
    # service retries s0 at 16 s (busy 16..20): 1 claim accepted; fully placed.
    m.attempt("service", ["s0"], 16.0, claims=1)
    m.busy("service", 16.0, 20.0)
    m.transaction("service", claims=1, rejected=0)
    m.placed("s0", 20.0)
    # batch decides b1 and b2 together at 30 s (busy 30..34): b2 finds no room.
    m.attempt("batch", ["b1", "b2"], 30.0, claims=1)
    m.busy("batch", 30.0, 34.0)
    m.transaction("batch", claims=1, rejected=0)
    m.placed("b1", 34.0)
    # A no-room attempt submits no transaction and is not a transaction.
    m.transaction("batch", claims=0, rejected=0)
    m.abandon("b2")
    return m


def test_figures_on_a_hand_made_trace():
    rows = {r["scheduler"]: r for r in trace().rows(run_time=100.0)}
    batch, service = rows["batch"], rows["service"]
    # wait to first attempt: b0 1-0, b1 30-10, b2 30-20 -> mean 31/3
    assert batch["wait_first_mean"] == pytest.approx(31 / 3)
    assert batch["jobs_attempted"] == 3
    # wait to fully placed: b0 2, b1 24 (b2 never) -> mean 13
    assert batch["wait_full_mean"] == pytest.approx(13.0)
    assert batch["jobs_fully_placed"] == 2
    assert batch["jobs_abandoned"] == 1
    # busy 1 + 4 of 100 s
    assert batch["busyness_mean"] == pytest.approx(0.05)
    assert batch["busyness_median_daily"] == pytest.approx(0.05)
    assert batch["transactions"] == 2 and batch["conflicted"] == 0
    assert batch["conflict_fraction"] == 0.0
    # service: one conflicted transaction per one successful one
    assert service["transactions"] == 2 and service["conflicted"] == 1
    assert service["conflict_fraction"] == pytest.approx(1.0)
    assert service["claims"] == 4 and service["claims_rejected"] == 1
    assert service["wait_first_mean"] == pytest.approx(1.0)
    assert service["wait_full_mean"] == pytest.approx(15.0)
    assert service["busyness_mean"] == pytest.approx(0.14)
    # class rows aggregate the same jobs here
    assert rows["class:batch"]["jobs"] == 3
    assert rows["class:service"]["conflict_fraction"] == pytest.approx(1.0)


def test_busyness_is_the_median_of_daily_values():
    m = Metrics()
    tally = m.scheduler("s", "batch")
    # day 0: 0.1 of the day; day 1: 0.5; day 2: 0.2; an interval across midnight
    tally.add_busy(0.0, 0.1 * DAY)
    tally.add_busy(1.5 * DAY, 2.0 * DAY)  # all of it in day 1
    tally.add_busy(2.9 * DAY, 3.1 * DAY)  # 0.1 in day 2, 0.1 in day 3 (out of run)
    tally.add_busy(2.0 * DAY, 2.1 * DAY)
    days = busyness(tally.busy_days, 3 * DAY)
    assert days == pytest.approx([0.1, 0.5, 0.2])
    row = m.rows(3 * DAY)[0]
    assert row["busyness_median_daily"] == pytest.approx(0.2)


def test_conflict_fraction_undefined_without_success():
    m = Metrics()
    m.scheduler("s", "batch")
    m.transaction("s", claims=2, rejected=2)
    assert math.isnan(m.rows(10.0)[0]["conflict_fraction"])


def test_percentile_matches_linear_interpolation():
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.9) == pytest.approx(3.7)
    assert math.isnan(percentile([], 0.5))
