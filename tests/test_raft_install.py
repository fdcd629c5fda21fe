"""A snapshot installed from the leader while the follower's own compaction is running leaves
the follower a log it can go on applying, and the dump it loaded on disk.

pysyncobj 0.3.17 writes an installed dump over `raft.dump` and loads it, replacing the log with
the dump's last two entries; the follower's own compaction child, forked earlier at its applied
index, then finished, put its dump over the installed one, and pysyncobj deleted the log up to
the child's index. When the install was a step back (the child's index later than the
dump's), the log began after the applied index and the follower never applied again: a netns
soak ended with a replica at applied 9,999, commit 10,508 and its log starting at 10,010
(`cellstore.raft`, "Installs"). Without the guard this test fails with the log emptied and the
child's dump on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cellstore.machine import MachineBox
from cellstore.raft import ReplicatedMachine
from harness.cluster import lone_replica_config
from tests.raftfixtures import committed_up_to, dump_index, finish_compaction, start_compaction


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[[str], ReplicatedMachine]]:
    """Makes replicas that never tick (driven by hand), each with its own data dir and ports."""
    made: list[ReplicatedMachine] = []

    def make(name: str) -> ReplicatedMachine:
        config = lone_replica_config(tmp_path / name, name)
        replica = ReplicatedMachine(config)
        made.append(replica)
        return replica

    try:
        yield make
    finally:
        for replica in made:
            replica.destroy()


def test_an_install_during_compaction_leaves_a_log_the_follower_can_apply(
    replicas: Callable[[str], ReplicatedMachine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = replicas("leader")
    committed_up_to(leader, 20)
    start_compaction(leader)
    finish_compaction(leader)
    leader_dump = (tmp_path / "leader" / "raft.dump").read_bytes()
    assert dump_index(tmp_path / "leader" / "raft.dump") == 20

    follower = replicas("follower")
    committed_up_to(follower, 30)
    # The follower's own compaction, at 30, takes a second in its child: the install comes
    # while it runs. (Forked after the patch, so only this child sleeps.)
    reduce = MachineBox.__reduce__

    def slow_reduce(box: MachineBox) -> Any:
        time.sleep(1.0)
        return reduce(box)

    monkeypatch.setattr(MachineBox, "__reduce__", slow_reduce)
    start_compaction(follower)

    node = next(iter(follower._SyncObj__otherNodes))
    receive = follower._SyncObj__transport._onMessageReceivedCallback
    receive(
        node,
        {
            "type": "append_entries",
            "term": follower.raftCurrentTerm,
            "commit_index": 20,
            "serialized": (leader_dump, True, True),
        },
    )
    time.sleep(1.5)  # past the moment the child would have written its dump
    finish_compaction(follower)

    raft_log = follower._SyncObj__raftLog
    applied = follower.raftLastApplied
    assert applied == 20
    assert len(raft_log) >= 1, "the log was deleted up to the child's index"
    # The log holds the applied entry (the next one to apply follows it), and the dump on
    # disk is the one loaded, so a restart finds the same state.
    assert raft_log[0][1] <= applied <= raft_log[-1][1], (raft_log[0][1], applied)
    assert dump_index(tmp_path / "follower" / "raft.dump") == 20
