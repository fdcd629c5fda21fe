"""A cut-off leader's uncommitted log tail never reaches its state machine or its watch feed,
and is replaced by the leader's entries without waiting for a snapshot.

The scenario the 10-minute soak found: a leader is cut off and takes writes it cannot commit;
the majority elects another leader, commits past it and compacts its log; on the heal the new
leader must send the old one a snapshot, in chunks. pysyncobj 0.3.17 let a follower advance its
commit index, over its own unmatched tail, on every chunk but the last, so the old leader
applied writes nobody had committed (see `cellstore.raft.clamp_unverified_commit`). Here the
snapshot is several MB so it spans many ticks, and a watcher on the old leader sees every
command it applies: none may be one of its stale writes, and all replicas end byte-identical.

The second scenario: the same stale tail, but the majority writes more than one append batch
past it and never compacts. pysyncobj's step-back on a conflict was undone by its answers to
the batches behind it, so the old leader never caught up (`_drop_conflicting_tail`); here it
must, and with the other follower then stopped, the cell must still commit through it.
"""

from __future__ import annotations

import base64
import os
import time

import httpx
import orjson
import pytest
import trio

from cellstore.raft import clamp_unverified_commit
from harness.faults import ProxiedCluster

pytestmark = pytest.mark.slow

VALUE_BYTES = 120_000
BIG_KEYS = 40  # ~4.8 MB of incompressible values: a snapshot of ~75 chunks of 64 KiB


def test_clamp_keeps_unmatched_messages_from_advancing_the_commit_index():
    chunk = {
        "type": "append_entries",
        "term": 3,
        "commit_index": 90,
        "serialized": (b"x" * 10, True, False),
    }
    clamp_unverified_commit(chunk, 40)
    assert chunk["commit_index"] == 40
    busy = {"type": "append_entries", "term": 3, "commit_index": 90, "serialized": None}
    clamp_unverified_commit(busy, 40)
    assert busy["commit_index"] == 40
    last = {
        "type": "append_entries",
        "term": 3,
        "commit_index": 90,
        "serialized": (b"", False, True),
    }
    clamp_unverified_commit(last, 40)
    assert last["commit_index"] == 90  # installing the snapshot replaces the log
    matched = {
        "type": "append_entries",
        "term": 3,
        "commit_index": 90,
        "prevLogIdx": 70,
        "prevLogTerm": 3,
        "entries": [],
    }
    clamp_unverified_commit(matched, 40)
    assert matched["commit_index"] == 90


def _post(
    cluster: ProxiedCluster, i: int, commands: list[dict], timeout: float = 15.0
) -> httpx.Response:
    return httpx.post(
        f"{cluster.url(i)}/v1/commands",
        content=orjson.dumps({"commands": commands}),
        timeout=timeout,
        verify=cluster.verify,
        headers={"authorization": f"Bearer {cluster.token}"},
    )


def _put(key: str, value: str) -> dict:
    return {"id": f"put-{key}", "op": "put", "key": key, "value": value}


async def _watch(
    cluster: ProxiedCluster,
    i: int,
    from_version: int,
    seen: list[str],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every command replica i's feed shows from `from_version` on, as its key."""
    auth = {"authorization": f"Bearer {cluster.token}"}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(None, connect=2.0), verify=cluster.verify) as http,
        http.stream(
            "GET", f"{cluster.url(i)}/v1/watch", params={"from": from_version}, headers=auth
        ) as resp,
    ):
        assert resp.status_code == 200
        task_status.started()
        async for line in resp.aiter_lines():
            if line:
                for _, command in orjson.loads(line).get("commands", ()):
                    seen.append(
                        orjson.loads(command)["key"] if isinstance(command, str) else command["key"]
                    )


def test_cut_off_leader_never_applies_its_uncommitted_tail(tmp_path):
    raft = {"compaction_min_entries": 20, "compaction_min_time_s": 3600.0}
    with ProxiedCluster(
        tmp_path, machine="harness.cluster:KVMachine", extra={"commit_timeout_s": 2.0}, raft=raft
    ) as cluster:
        big = [
            _put(f"big-{k}", base64.b64encode(os.urandom(VALUE_BYTES)).decode())
            for k in range(BIG_KEYS)
        ]
        for start in range(0, BIG_KEYS, 10):
            assert _post(cluster, cluster.wait_leader(), big[start : start + 10]).status_code == 200
        old = cluster.wait_leader()
        cluster.partition(old)
        stale = [_put(f"stale-{k}", "never committed") for k in range(50)]
        answer = _post(cluster, old, stale)
        assert answer.status_code == 503, answer.text  # not acknowledged: no majority
        majority = [i for i in range(cluster.n) if i != old]
        new = cluster.wait_leader(majority, 20.0)
        for k in range(60):  # well past compaction_min_entries: the new leader compacts
            assert _post(cluster, new, [_put(f"after-{k}", str(k))]).status_code == 200
        before_heal = cluster.status(old)["version"]
        seen: list[str] = []

        async def heal_and_watch() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(_watch, cluster, old, before_heal + 1, seen)
                await trio.to_thread.run_sync(cluster.heal)
                target = cluster.status(new)["version"]
                with trio.fail_after(60):
                    while (cluster.status(old) or {}).get("version", 0) < target:
                        await trio.sleep(0.1)
                nursery.cancel_scope.cancel()

        trio.run(heal_and_watch)
        assert not [key for key in seen if key.startswith("stale-")], seen
        deadline = time.monotonic() + 30
        while True:
            snaps = {i: cluster.snapshot(i) for i in range(cluster.n)}
            if len(set(snaps.values())) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(set(snaps.values())) == 1, {i: v for i, (v, _) in snaps.items()}
        data = orjson.loads(snaps[new][1])["data"]
        assert not [k for k in data if k.startswith("stale-")]
        assert all(f"after-{k}" in data for k in range(60))


def test_old_leader_replaces_a_stale_tail_longer_than_a_batch(tmp_path):
    raft = {"compaction_min_entries": 1_000_000, "compaction_min_time_s": 3600.0}
    with ProxiedCluster(
        tmp_path, machine="harness.cluster:KVMachine", extra={"commit_timeout_s": 2.0}, raft=raft
    ) as cluster:
        old = cluster.wait_leader()
        cluster.partition(old)
        stale = [_put(f"stale-{k}", "x" * 3000) for k in range(40)]  # ~2 append batches
        assert _post(cluster, old, stale).status_code == 503
        majority = [i for i in range(cluster.n) if i != old]
        new = cluster.wait_leader(majority, 20.0)
        padding = "y" * 3000
        for start in range(0, 200, 20):  # ~600 KB past the stale tail: many batches a round
            batch = [_put(f"after-{k}", padding) for k in range(start, start + 20)]
            assert _post(cluster, new, batch).status_code == 200
        # A leader elected now starts past the old leader's log: it must walk back over the
        # stale tail (the leader that was elected during the cut started before it).
        cluster.kill(new)
        cluster.start_replica(new)
        new = cluster.wait_leader(majority, 30.0)
        cluster.heal()
        target = cluster.status(new)["version"]
        deadline = time.monotonic() + 30
        while (cluster.status(old) or {}).get("version", 0) < target:
            assert time.monotonic() < deadline, (cluster.status(old), target)
            time.sleep(0.1)
        # The old leader is now a working follower: the cell commits with the other one down.
        third = next(i for i in majority if i != new)
        cluster.kill(third)
        leader = cluster.wait_leader([old, new], 20.0)
        assert _post(cluster, leader, [_put("with-two", "ok")]).status_code == 200
        data = orjson.loads(cluster.snapshot(old)[1])["data"]
        assert "with-two" in data and not [k for k in data if k.startswith("stale-")]
