"""A leader that check-quorum makes step down in its own term tells one follower to stand at
once (Raft's TimeoutNow); one deposed by a higher term tells no one. Either way its own election
timer starts afresh, so it cannot stand in the tick it steps down in, skipping pre-vote.

A leader whose inbound link drops packets keeps reaching its followers until it steps down, so
their election timers start only then: a writer waited up to 1.05 s on such a cut in a netns
soak. These drive one replica's step-down with an in-memory transport; on real replicas in
network namespaces, `tests/test_netns_partitions.py` checks that a cut leader names whom it
told, and `bench.partition` and `bench.soak --netns` measure what it saves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.syncobj import _RAFT_STATE

from cellstore.raft import ReplicatedMachine, raft_clock
from harness.cluster import lone_replica_config


class RecordingTransport:
    """Stands in for pysyncobj's TCP transport: keeps what the replica sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, dict[str, Any]]] = []

    def send(self, node: Any, message: dict[str, Any]) -> bool:
        self.sent.append((node, message))
        return True


@pytest.fixture
def leader(tmp_path: Path) -> Iterator[tuple[ReplicatedMachine, Any, Any, RecordingTransport]]:
    """A replica made leader of term 3 by hand; `ahead` has acknowledged more than `behind`."""
    replica = ReplicatedMachine(lone_replica_config(tmp_path, "r0"))
    real = replica._SyncObj__transport
    transport = RecordingTransport()
    try:
        behind, ahead = sorted(replica._SyncObj__otherNodes, key=str)
        replica._SyncObj__raftCurrentTerm = 3
        replica._SyncObj__raftState = _RAFT_STATE.LEADER
        replica._on_state_changed(_RAFT_STATE.CANDIDATE, _RAFT_STATE.LEADER)
        replica._SyncObj__connectedNodes = {behind, ahead}
        replica._SyncObj__raftMatchIndex = {behind: 10, ahead: 12}
        replica._SyncObj__transport = transport
        yield replica, behind, ahead, transport
    finally:
        replica._SyncObj__transport = real
        replica.destroy()


def test_check_quorum_hands_over_to_the_follower_furthest_along(leader) -> None:
    replica, _, ahead, transport = leader
    replica._on_state_changed(_RAFT_STATE.LEADER, _RAFT_STATE.FOLLOWER)
    assert transport.sent == [(ahead, {"type": "timeout_now", "term": 3})]


def test_a_leader_deposed_by_a_higher_term_hands_over_to_no_one(leader) -> None:
    replica, _, _, transport = leader
    replica._SyncObj__raftCurrentTerm = 4  # pysyncobj sets the term it saw, then steps down
    replica._on_state_changed(_RAFT_STATE.LEADER, _RAFT_STATE.FOLLOWER)
    assert transport.sent == []


def test_a_deposed_leader_does_not_stand_at_once(leader) -> None:
    """pysyncobj never moves a leader's election timer: stepping down, it found it long past
    and stood for the next term in the same tick, without pre-vote (a netns soak, seed 1205:
    cut outbound only, the deposed leader stood at once; its vote request, delivered at the
    heal, deposed the healthy leader)."""
    replica, _, _, _ = leader
    replica._SyncObj__raftElectionDeadline = 0.0
    replica._SyncObj__raftCurrentTerm = 4
    replica._on_state_changed(_RAFT_STATE.LEADER, _RAFT_STATE.FOLLOWER)
    assert replica._SyncObj__raftElectionDeadline > raft_clock()
