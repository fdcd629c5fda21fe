"""A pre-vote is won only by yeses to the round under way.

A replica cut off by a link that drops packets starts a pre-vote round every election timeout,
each asking for the same term, since its term does not move while it cannot win. A peer's yes
sent while the link was down reaches it through TCP once the link heals, seconds late. Counted by
term alone, that yes won the round under way at the heal, and the election that followed
deposed a healthy leader (a netns soak, seed 1204: "heal: leadership moved from (0, 82) to
(2, 84)"). Rounds are numbered, and a yes counts only for the round it answers.

Drives one replica's pre-vote bookkeeping with an in-memory transport: no ticking, no peers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.syncobj import _RAFT_STATE

from cellstore.raft import ReplicatedMachine
from harness.cluster import lone_replica_config


class RecordingTransport:
    """Stands in for pysyncobj's TCP transport: keeps what the replica sends."""

    ready = True  # pysyncobj's tick runs only on a ready transport

    def __init__(self, real: Any) -> None:
        self.sent: list[tuple[Any, dict[str, Any]]] = []
        self.receive = real._onMessageReceivedCallback  # through the replica's guards

    def send(self, node: Any, message: dict[str, Any]) -> bool:
        self.sent.append((node, message))
        return True


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[tuple[ReplicatedMachine, RecordingTransport]]:
    replica = ReplicatedMachine(lone_replica_config(tmp_path, "r0"))
    real = replica._SyncObj__transport
    transport = RecordingTransport(real)
    replica._SyncObj__transport = transport
    try:
        yield replica, transport
    finally:
        replica._SyncObj__transport = real
        replica.destroy()


def _new_round(replica: ReplicatedMachine, transport: RecordingTransport) -> dict[str, Any]:
    """Let the election timer fire: the replica asks its peers instead of standing."""
    transport.sent.clear()
    replica._SyncObj__raftElectionDeadline = 0.0
    replica._hold_election_for_pre_vote()
    asks = [message for _, message in transport.sent if message["type"] == "pre_vote"]
    assert len(asks) == 2  # one per peer
    return asks[0]


def test_a_yes_to_an_earlier_round_of_the_same_term_does_not_win(follower) -> None:
    replica, transport = follower
    assert replica._SyncObj__raftState == _RAFT_STATE.FOLLOWER
    peer = sorted(replica._SyncObj__otherNodes, key=str)[0]
    first = _new_round(replica, transport)
    second = _new_round(replica, transport)
    assert first["term"] == second["term"]  # cut off: every round asks for the same term
    assert first["round"] != second["round"]

    late = {"type": "pre_vote_response", "term": first["term"], "round": first["round"]}
    transport.receive(peer, {**late, "granted": True})
    assert not replica._election_won_pre_vote  # stale: the peer said yes to the first round

    answer = {"type": "pre_vote_response", "term": second["term"], "round": second["round"]}
    transport.receive(peer, {**answer, "granted": True})
    assert replica._election_won_pre_vote
    assert replica._SyncObj__raftElectionDeadline == 0.0  # pysyncobj stands on its next tick


def test_a_peer_asked_echoes_the_round_and_a_peer_of_the_release_before_still_counts(
    follower,
) -> None:
    replica, transport = follower
    peer = sorted(replica._SyncObj__otherNodes, key=str)[0]
    # Asked by a candidate: the answer names the round it answers.
    ask = {"type": "pre_vote", "term": 5, "round": 7, "last_log_index": 10**6}
    transport.receive(peer, {**ask, "last_log_term": 4})
    (to, answer), *_ = transport.sent
    assert to == peer and answer["type"] == "pre_vote_response"
    assert (answer["term"], answer["round"], answer["granted"]) == (5, 7, True)

    # An answer without a round (an older replica's) is judged by term, as before.
    ours = _new_round(replica, transport)
    transport.receive(peer, {"type": "pre_vote_response", "term": ours["term"], "granted": True})
    assert replica._election_won_pre_vote


def test_pysyncobj_cannot_stand_on_its_own_timer_without_a_won_pre_vote(follower) -> None:
    """pysyncobj checks its election timer inside the tick, a moment after the pre-vote check
    before it: a timer falling due in between stood without pre-vote, and a cut-off replica's
    vote request, delivered at the heal, moved the leader (a netns soak, seed 1205). Here the
    timer is due and pysyncobj's own tick runs with no pre-vote check before it."""
    replica, transport = follower
    peer = sorted(replica._SyncObj__otherNodes, key=str)[0]
    replica._SyncObj__connectedNodes.add(peer)  # pysyncobj stands only when connected
    transport.sent.clear()
    replica._SyncObj__raftElectionDeadline = 0.0  # due
    replica._onTick(0.0)
    assert replica._SyncObj__raftState == _RAFT_STATE.FOLLOWER
    assert not [m for _, m in transport.sent if m["type"] == "request_vote"]

    ours = _new_round(replica, transport)
    answer = {"type": "pre_vote_response", "term": ours["term"], "round": ours["round"]}
    transport.receive(peer, {**answer, "granted": True})
    term = replica.raftCurrentTerm
    replica._SyncObj__connectedNodes.add(peer)  # the tick above forgot it (no real transport)
    replica._onTick(0.0)
    assert replica._SyncObj__raftState == _RAFT_STATE.CANDIDATE
    assert replica.raftCurrentTerm == term + 1
    assert [m for _, m in transport.sent if m["type"] == "request_vote"]
    assert not replica._election_won_pre_vote  # spent on this election


def test_a_yes_puts_off_the_granters_own_round(follower) -> None:
    """Both followers of a dead leader often time out within one tick of each other: the
    first one's ask wakes the other, which said yes and then asked for the same term itself,
    each won the other's yes, and both stood (a split vote: failovers of 0.6 s instead of
    0.25 s in `bench.store --failovers`). A yes now puts off the granter's own round by an
    election timeout and drops the one it had under way."""
    replica, transport = follower
    peer = sorted(replica._SyncObj__otherNodes, key=str)[0]
    ours = _new_round(replica, transport)
    replica._SyncObj__raftElectionDeadline = 0.0  # our timer is due again
    ask = {"type": "pre_vote", "term": ours["term"], "round": 3, "last_log_index": 10**6}
    transport.receive(peer, {**ask, "last_log_term": 4})
    assert [m["granted"] for _, m in transport.sent if m["type"] == "pre_vote_response"] == [True]

    transport.sent.clear()
    replica._hold_election_for_pre_vote()
    assert not transport.sent  # put off: no round of our own this tick
    # The yes the other candidate sends back to our dropped round counts for nothing.
    answer = {"type": "pre_vote_response", "term": ours["term"], "round": ours["round"]}
    transport.receive(peer, {**answer, "granted": True})
    assert not replica._election_won_pre_vote


def test_a_yes_gives_up_a_round_won_in_the_same_tick(follower) -> None:
    """Answers are read at the end of a tick and pysyncobj stands at the start of the next: a
    yes given in between must not leave the won round to be stood on a timeout later."""
    replica, transport = follower
    peers = sorted(replica._SyncObj__otherNodes, key=str)
    ours = _new_round(replica, transport)
    answer = {"type": "pre_vote_response", "term": ours["term"], "round": ours["round"]}
    transport.receive(peers[0], {**answer, "granted": True})
    assert replica._election_won_pre_vote
    ask = {"type": "pre_vote", "term": ours["term"], "round": 9, "last_log_index": 10**6}
    transport.receive(peers[1], {**ask, "last_log_term": 4})
    assert not replica._election_won_pre_vote
    assert replica._SyncObj__raftElectionDeadline == math.inf  # held until a new round is won
