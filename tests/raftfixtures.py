"""Helpers for tests that drive a `ReplicatedMachine`'s log and compaction by hand, through
pysyncobj 0.3.17's private members (the replica never ticks unless the test starts it)."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

from pysyncobj import pickle as pysyncobj_pickle

from cellstore.raft import ReplicatedMachine


def committed_up_to(replica: ReplicatedMachine, index: int) -> None:
    """Entries up to `index` in the journal (`b"entry N"`, term 1), committed, counted as
    applied, and the commit index stored as each second's tick stores it. Their contents do
    not matter to compaction, which pickles the machine and the last two entries."""
    raft_log = replica._SyncObj__raftLog
    for idx in range(raft_log[-1][1] + 1, index + 1):
        raft_log.add(f"entry {idx}".encode(), idx, 1)
    replica._SyncObj__raftCommitIndex = index
    replica._SyncObj__raftLastApplied = index
    raft_log.setRaftCommitIndex(index)
    raft_log.onOneSecondTimer()


def start_compaction(replica: ReplicatedMachine) -> int:
    """Fork pysyncobj's compaction child now; its pid."""
    replica._SyncObj__forceLogCompaction = True
    replica._SyncObj__tryLogCompaction()
    pid = int(replica._SyncObj__serializer._Serializer__pid)
    assert pid > 0, "no compaction child was forked"
    return pid


def finish_compaction(replica: ReplicatedMachine, timeout: float = 30.0) -> None:
    """Tick pysyncobj's compaction check (as each tick does) until no child is running."""
    deadline = time.monotonic() + timeout
    while replica._SyncObj__serializer._Serializer__pid != 0:
        assert time.monotonic() < deadline, "the compaction child never finished"
        replica._SyncObj__tryLogCompaction()
        time.sleep(0.02)


def dump_index(path: Path) -> int:
    """The index of the last entry a dump file covers."""
    data = pysyncobj_pickle.loads(gzip.decompress(path.read_bytes()))
    return int(data[1][1])
