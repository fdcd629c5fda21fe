"""The store's `fsync` mode (`cellstore.durability`): pysyncobj's journal, term and vote, and
dump are synced before what depends on them is acknowledged.

A power cut cannot be staged here, so the tests pin what can be observed: the journal is
synced after writes and before an acknowledgement (a real journal file, `os.fdatasync`
recorded), the vote file is fsynced, and a real 3-replica cell in `fsync` mode syncs on every
replica about once per sequential commit, compacts into synced dumps, and comes back whole
from a SIGKILL of every replica.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import trio
from pysyncobj import SERIALIZER_STATE
from pysyncobj.journal import FileJournal

from cellstore.client import StoreClient
from cellstore.durability import DurableJournal
from harness.cluster import LocalCluster


def test_journal_writes_are_synced_on_demand_and_votes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append("data"), real_fdatasync(fd)))
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append("file"), real_fsync(fd)))
    journal = FileJournal(str(tmp_path / "raft.journal"))
    dumped: list[Any] = [(SERIALIZER_STATE.SUCCESS, 7)]
    serializer = SimpleNamespace(
        checkSerializing=lambda: dumped[0], setTransmissionData=lambda data: True
    )
    fake = SimpleNamespace(_SyncObj__raftLog=journal, _SyncObj__serializer=serializer)
    durable = DurableJournal(fake, tmp_path)

    durable.sync()
    assert synced == []  # nothing written, nothing to sync
    journal.add(b"one", 1, 1)
    journal.add(b"two", 2, 1)
    durable.sync()
    assert synced == ["data"]  # one sync for both: a group commit
    durable.sync()
    assert synced == ["data"]
    journal.deleteEntriesFrom(1)
    durable.sync()
    assert synced == ["data", "data"]

    synced.clear()
    journal.setCurrentTerm(3, "r1")  # a vote: on disk, with its directory, before it is sent
    assert synced == ["file", "file"]
    assert FileJournal(str(tmp_path / "raft.journal")).getCurrentTerm() == 3

    synced.clear()
    (tmp_path / "raft.dump").write_bytes(b"dump")
    assert serializer.checkSerializing() == (SERIALIZER_STATE.SUCCESS, 7)
    assert synced == ["file", "file"]  # the dump and its directory, before the journal is cut
    assert serializer.setTransmissionData(b"last chunk") is True
    assert synced == ["file", "file"] * 2


async def _write(cluster: LocalCluster, prefix: str, n: int) -> list[str]:
    acked = []
    async with StoreClient(cluster.api, cluster.token) as client:
        for i in range(n):
            cid = f"{prefix}-{i}"
            [result] = await client.commands([{"id": cid, "op": "add", "key": "n", "delta": 1}])
            assert result["ok"], result
            acked.append(cid)
    return acked


@pytest.mark.slow
def test_fsync_cell_syncs_per_commit_compacts_and_survives_killing_every_replica(
    tmp_path: Path,
) -> None:
    raft = {"compaction_min_entries": 100, "compaction_min_time_s": 1.0}
    with LocalCluster(tmp_path, 3, raft=raft, extra={"fsync": True}) as cluster:
        before = [cluster.status(i)["journal_syncs"] for i in range(3)]  # type: ignore[index]
        acked = trio.run(_write, cluster, "a", 300)
        statuses = [cluster.status(i) for i in range(3)]
        assert all(s is not None and s["fsync"] for s in statuses)
        syncs = [s["journal_syncs"] - b for s, b in zip(statuses, before, strict=True)]  # type: ignore[index]
        # Each sequential commit is an append every replica acknowledges: about one sync each.
        assert min(syncs) >= 150, syncs
        deadline = time.monotonic() + 20
        while not all((cluster.data_dir(i) / "raft.dump").exists() for i in range(3)):
            assert time.monotonic() < deadline, "no replica compacted its log into a dump"
            trio.run(_write, cluster, f"c{time.monotonic()}", 10)
        for i in range(3):
            cluster.kill(i, signal.SIGKILL)
        for i in range(3):
            cluster.start_replica(i)
        cluster.wait_for_leader()
        acked += trio.run(_write, cluster, "b", 20)
        version = max(s["version"] for s in (cluster.status(i) for i in range(3)) if s)
        cluster.wait_for_version(version)
        logs = {cluster.snapshot(i)[1] for i in range(3)}
        assert len(logs) == 1
        assert set(orjson.loads(logs.pop())["log"]) >= set(acked)


@pytest.mark.slow
def test_without_fsync_nothing_is_synced(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 3) as cluster:
        trio.run(_write, cluster, "a", 20)
        assert {cluster.status(i)["journal_syncs"] for i in range(3)} == {0}  # type: ignore[index]
