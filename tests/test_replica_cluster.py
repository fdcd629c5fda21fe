"""Three real replica processes of the toy machine: failover under load, full restarts after
log compaction, and watchers that resume across replica failures."""

from __future__ import annotations

import itertools
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest
import trio

from cellstore.client import StoreClient, StoreUnavailable
from harness.cluster import LocalCluster

pytestmark = pytest.mark.slow

FAST_RAFT = {"compaction_min_entries": 5000}


def add(cid: str, key: str = "n") -> dict:
    return {"id": cid, "op": "add", "key": key, "delta": 1}


def machine_log(snapshot: bytes) -> list[str]:
    return orjson.loads(snapshot)["log"]


async def write_load(
    client: StoreClient, prefix: str, acked: list[str], stop: trio.Event, batch: int = 50
) -> None:
    """Commit batches of fresh ids until `stop`; record every acknowledged id."""
    for n in itertools.count():
        if stop.is_set():
            return
        ids = [f"{prefix}-{n}-{i}" for i in range(batch)]
        try:
            results = await client.commands([add(cid) for cid in ids])
        except StoreUnavailable:
            continue
        assert all(r["ok"] for r in results), results
        acked.extend(ids)


def test_leader_sigkill_under_load_loses_no_acknowledged_command(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 3, raft=FAST_RAFT) as cluster:
        leader = cluster.wait_for_leader()
        acked: list[str] = []
        after_kill: list[str] = []

        async def main() -> None:
            async with StoreClient(cluster.api, cluster.token, retry_deadline_s=15) as client:
                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    for w in range(4):
                        nursery.start_soon(write_load, client, f"w{w}", acked, stop)
                    with trio.fail_after(20):
                        while len(acked) < 2000:
                            await trio.sleep(0.02)
                    cluster.kill(leader, signal.SIGKILL)
                    mark, killed_at = len(acked), trio.current_time()
                    with trio.fail_after(20):  # writes resume on the new leader
                        while len(acked) < mark + 1000:
                            await trio.sleep(0.02)
                    print(f"1000 more commits {trio.current_time() - killed_at:.2f}s after kill")
                    after_kill.extend(acked[mark:])
                    stop.set()

        trio.run(main)
        survivors = [i for i in range(3) if i != leader]
        new_leader = cluster.wait_for_leader()
        assert new_leader in survivors
        top = max(s["version"] for s in (cluster.status(i) for i in survivors) if s)
        cluster.wait_for_version(top, survivors)
        snaps = [cluster.snapshot(i) for i in survivors]
        assert snaps[0] == snaps[1], "survivors diverged"
        counts = Counter(machine_log(snaps[0][1]))
        assert all(counts[cid] == 1 for cid in acked), "an acknowledged command is missing"
        assert max(counts.values()) == 1
        assert after_kill, "writes did not resume after the leader was killed"


def test_full_restart_after_compaction_restores_byte_identical_state(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 3, raft={"compaction_min_entries": 150}) as cluster:

        async def load(prefix: str, batches: int) -> None:
            async with StoreClient(cluster.api, cluster.token) as client:
                for b in range(batches):
                    await client.commands([add(f"{prefix}{b}-{i}", f"k{i % 7}") for i in range(40)])

        trio.run(load, "a", 20)  # 800 commands: several compactions on every replica
        cluster.wait_for_version(800)
        before = [cluster.snapshot(i) for i in range(3)]
        assert before[0][0] == 800 and before[0] == before[1] == before[2]
        for i in range(3):
            assert (cluster.data_dir(i) / "raft.dump").exists()
            assert (cluster.data_dir(i) / "raft.journal").exists()

        for i in range(3):
            cluster.kill(i, signal.SIGKILL)
        for i in range(3):
            cluster.start_replica(i)
        cluster.wait_for_leader()
        cluster.wait_for_version(800)
        after = [cluster.snapshot(i) for i in range(3)]
        assert after == before

        trio.run(load, "b", 2)  # and the restarted cell takes writes
        cluster.wait_for_version(880)
        final = [cluster.snapshot(i) for i in range(3)]
        assert final[0] == final[1] == final[2] and final[0][0] == 880


def test_watch_resumes_across_a_killed_replica_without_gaps(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 3, raft=FAST_RAFT, extra={"watch_buffer": 300}) as cluster:
        seen: list[int] = []
        snapshots: list[int] = []
        killed: list[int] = []

        async def main() -> None:
            async with (
                StoreClient(cluster.api, cluster.token, retry_deadline_s=15) as writer,
                StoreClient(cluster.api, cluster.token, watch_idle_timeout_s=3) as watcher,
            ):
                await writer.commands([add(f"pre-{i}") for i in range(600)])  # > buffer
                stop = trio.Event()
                acked: list[str] = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(write_load, writer, "w", acked, stop, 20)
                    with trio.fail_after(30):
                        async for batch in watcher.watch(1):
                            if batch.snapshot is not None:
                                snapshots.append(batch.version)
                                seen.clear()
                            seen.extend(v for v, _ in batch.commands)
                            if not killed and batch.version > 1000:
                                # the watcher started on replica 0: kill it mid-stream
                                killed.append(batch.version)
                                cluster.kill(0, signal.SIGKILL)
                            if killed and batch.version > killed[0] + 500:
                                break
                    stop.set()

        trio.run(main)
        # Version 1 fell out of a 300-command buffer: the feed began with a snapshot, and the
        # reconnect after the kill resumed from the buffer of another replica, not a snapshot.
        assert len(snapshots) == 1 and snapshots[0] >= 600
        first = snapshots[0] + 1
        assert seen == list(range(first, first + len(seen))), "gap or duplicate in the feed"
        assert seen[-1] > killed[0] + 500


def test_lagging_follower_catches_up_from_an_installed_snapshot(tmp_path: Path) -> None:
    """A follower that misses more than the compacted log gets the leader's dump (the machine's
    own snapshot bytes), restores from it, and its watchers start from that snapshot."""
    with LocalCluster(tmp_path, 3, raft={"compaction_min_entries": 100}) as cluster:
        leader = cluster.wait_for_leader()
        lagging = next(i for i in range(3) if i != leader)
        cluster.stop(lagging)

        async def load(prefix: str, batches: int) -> None:
            async with StoreClient(cluster.api, cluster.token) as client:
                for b in range(batches):
                    await client.commands([add(f"{prefix}{b}-{i}") for i in range(50)])

        trio.run(load, "a", 12)  # 600 commands, the log is compacted past the lagging one
        cluster.start_replica(lagging)
        cluster.wait_for_version(600)
        assert cluster.snapshot(lagging) == cluster.snapshot(leader)

        async def first_batch() -> object:
            async with StoreClient([cluster.api[lagging]], cluster.token) as client:
                with trio.fail_after(10):
                    async for batch in client.watch(1):
                        return batch
            return None

        batch = trio.run(first_batch)
        assert batch is not None and batch.snapshot is not None and batch.version >= 500
        trio.run(load, "b", 1)
        cluster.wait_for_version(650)
        assert cluster.snapshot(lagging) == cluster.snapshot(leader)
