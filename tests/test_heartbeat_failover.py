"""Heartbeat expiry across leader changes and skewed clocks (issue #19, finding 3).

`SilenceClock` is tested on its own with a hand-fed clock; then a real cell whose replica r2
runs 30 s ahead (libfaketime) is made to fail over to r2 while a real agent, whose machine
runs two tasks, is silent for about 2 s (SIGSTOP; the timeout is 4 s). Before the fix r2
marked the machine down within a second of taking over (it compared its wall clock with stamps
written by r0's and r1's clocks) and the tasks were lost (`state` pending: the test failed on
it); now r2 starts every machine's timer when it takes over and times silence on its own
monotonic clock, so the tasks keep running, and a machine that does go silent is still marked
down about one timeout later. The same with r2 running 30 s behind failed before the fix too:
heartbeats stamped by r2's clock looked 30 s old to the next leader (the test moves leadership
across r2 on its way), which marked the machine down; and a leader behind would have left a
silent machine up for 30 s beyond the timeout (the test waits three timeouts).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from cellstate import SilentMachine
from cellstore.cell import SilenceClock
from harness.hosts import skew_unavailable, skewed_clock
from tests.test_agent_live_real import LiveCell

TIMEOUT = 4.0


def test_silence_clock_starts_every_timer_at_takeover_and_follows_stamps_not_clocks() -> None:
    clock = SilenceClock(TIMEOUT)
    # Stamps far in the past by this leader's wall clock mean nothing: timers start now.
    assert clock.silent(7, [("m0", 1.0), ("m1", 1.0)], now=100.0) == ()
    assert clock.silent(7, [("m0", 1.0), ("m1", 0.5)], now=103.9) == ()  # m1 moved (back!)
    assert clock.silent(7, [("m0", 1.0), ("m1", 0.5)], now=104.0) == (SilentMachine("m0", 1.0),)
    # Leadership lost then taken again, even in the next term: a full grace again.
    assert clock.silent(None, [], now=105.0) == ()
    assert clock.silent(8, [("m0", 1.0), ("m1", 0.5)], now=106.0) == ()
    assert clock.silent(8, [("m0", 1.0), ("m1", 0.5)], now=109.9) == ()
    assert clock.silent(9, [("m0", 1.0), ("m1", 0.5)], now=110.0) == ()  # a new term
    # A machine that was down (left out) and came back starts afresh.
    assert clock.silent(9, [("m1", 0.5)], now=113.0) == ()
    assert clock.silent(9, [("m0", 1.0), ("m1", 0.5)], now=114.0) == (SilentMachine("m1", 0.5),)


def _fail_over_to_while_silent(cell: LiveCell, wanted: int, agent: int, tries: int = 12) -> int:
    """Fail the cell over, with the agent stopped (SIGSTOP) across each failover, until
    replica `wanted` takes over; then keep the agent silent 1.5 s more (its silence stays
    well under the timeout) and let it go on. Returns how many failovers it took."""
    cluster = cell.cluster
    for n in range(1, tries + 1):
        leader = cluster.wait_for_leader()
        if leader == wanted:  # it must take over while the machine is silent: move it off
            cluster.kill(leader)
            cluster.wait_for_leader()
            cluster.start_replica(leader)
            time.sleep(1.0)
            continue
        os.kill(agent, signal.SIGSTOP)
        try:
            cluster.kill(leader)
            if cluster.wait_for_leader() == wanted:
                time.sleep(1.5)
                return n
        finally:
            os.kill(agent, signal.SIGCONT)
        cluster.start_replica(leader)
        cluster.wait_for_leader()
        time.sleep(1.0)  # the restarted replica catches up, the agent heartbeats again
    raise AssertionError(f"replica {wanted} never took over in {tries} failovers")


@pytest.mark.slow
@pytest.mark.skipif(skew_unavailable() is not None, reason=str(skew_unavailable()))
@pytest.mark.parametrize("skew", ["+30s", "-30s"])
def test_failover_to_a_skewed_replica_costs_no_healthy_machine_and_spares_no_silent_one(
    tmp_path: Path, skew: str
) -> None:
    cell = LiveCell(tmp_path, heartbeat_timeout=TIMEOUT)
    cell.cluster.wrappers[2] = skewed_clock(skew)
    with cell:
        machine = cell.start_agent("a")
        cell.wait_up(machine)
        job = cell.submit("svc", ["sleep", "600"], tasks=2, memory="16Mi")
        cell.place([(f"{job}.0", machine), (f"{job}.1", machine)])
        for i in range(2):
            cell.wait_task(f"{job}.{i}", lambda t: t["state"] == "running", machine=machine)
        before = {i: cell.task(f"{job}.{i}")["incarnation"] for i in range(2)}

        failovers = _fail_over_to_while_silent(cell, 2, cell.agents[machine].pid)
        took_over = time.monotonic()
        # Two whole timeouts under the skewed leader: long enough for any expiry to act.
        time.sleep(2 * TIMEOUT + 1.0)
        # (r2 may have lost the lead meanwhile on a starved CI machine: one more failover,
        # which must not cost the machine either.)
        assert cell.machines()[machine]["state"] == "up"
        for i in range(2):
            task = cell.task(f"{job}.{i}")
            assert task["state"] == "running", (failovers, task)
            assert task["incarnation"] == before[i]

        # Silence is still noticed, by the skewed leader's own clock, about a timeout later.
        cell.kill_agent(machine)
        silent_from = time.monotonic()
        cell.wait(
            "machine down",
            lambda: cell.machines()[machine]["state"] == "down",
            timeout=3 * TIMEOUT,
        )
        waited = time.monotonic() - silent_from
        assert waited >= TIMEOUT - 1.0, waited  # never before a whole timeout of silence
        print(
            f"failovers to reach r2: {failovers}; held {time.monotonic() - took_over:.1f} s; "
            f"silent machine down after {waited:.1f} s (timeout {TIMEOUT} s)"
        )
