"""The real cell store: three CellState replicas in three processes, driven over HTTP.

Checks what issue 3 promises of the store with the cell's own state machine:
nothing acknowledged is lost when the leader is SIGKILLed under load, a full
restart comes back byte-identical, a local copy built only from the watch feed
matches the leader byte for byte, tokens are required on every endpoint, and
bad bodies get a 4xx naming the field while changing nothing.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import httpx
import pytest
import trio

from cellstate import (
    CellState,
    JobSpec,
    MachineSpec,
    Resources,
    SchedulerClass,
    TaskState,
    parse_cpu,
    parse_memory,
)
from cellstore.cellclient import READ_ROUTES, WRITE_ROUTES, CellClient
from cellstore.client import COMMANDS, SNAPSHOT, StoreClient
from cellstore.client import ROUTES as STORE_ROUTES
from cellstore.copy import LocalCopy
from harness.cluster import LocalCluster, cell_options

pytestmark = pytest.mark.slow

# These tests register machines without agents; keep them up so the only
# commands in the log are the test's own.
CELL = cell_options(heartbeat_timeout_s=3600.0)


def cell_cluster(tmp_path: Path) -> LocalCluster:
    return LocalCluster(tmp_path, **CELL)


async def seed(client: StoreClient, machines: int = 20, tasks: int = 2000) -> None:
    cell = CellClient(client)
    capacity = Resources(parse_cpu(64), parse_memory("64Gi"))
    await cell.register_machines(
        [MachineSpec(f"m{i}", capacity, domain=f"d{i % 3}") for i in range(machines)]
    )
    small = Resources(parse_cpu("10m"), parse_memory("1Mi"))
    await cell.submit(JobSpec("load", "alice", SchedulerClass.BATCH, small, tasks=tasks), "load")


def commit(task: str, machine: str) -> dict:
    return {
        "type": "commit",
        "id": secrets.token_hex(8),
        "txn": {"scheduler": "test", "claims": [[task, machine, 0, []]]},
    }


def test_leader_kill_under_load_loses_no_acknowledged_commit(tmp_path):
    with cell_cluster(tmp_path) as cluster:
        acknowledged: list[str] = []

        async def main() -> None:
            async with StoreClient(cluster.api, cluster.token, retry_deadline_s=60) as client:
                await seed(client)

                async def writer(start: int) -> None:
                    for base in range(start, 2000, 400):
                        batch = [commit(f"load.{i}", f"m{i % 20}") for i in range(base, base + 50)]
                        results = await client.commands(batch)
                        for command, result in zip(batch, results, strict=True):
                            assert result["result"]["type"] == "commit"
                            if not result["result"]["rejected"]:
                                acknowledged.append(command["txn"]["claims"][0][0])

                async with trio.open_nursery() as nursery:
                    for w in range(8):
                        nursery.start_soon(writer, w * 50)
                    await trio.sleep(0.3)
                    leader = next(i for i in range(3) if (cluster.status(i) or {}).get("is_leader"))
                    cluster.kill(leader)

        trio.run(main)
        survivors = cluster.alive()
        assert len(survivors) == 2
        version = max(cluster.status(i)["version"] for i in survivors)
        for i in survivors:
            cluster.wait_for_version(version, [i])
        snapshots = {cluster.snapshot(i)[1] for i in survivors}
        assert len(snapshots) == 1
        cell = CellState.restore(snapshots.pop())
        cell.check_invariants()
        assert len(acknowledged) == len(set(acknowledged)) == 2000
        for task in acknowledged:
            assert cell.tasks[task].state is TaskState.ASSIGNED


def test_full_restart_and_watch_copy_are_byte_identical(tmp_path):
    with cell_cluster(tmp_path) as cluster:

        async def load_and_copy() -> bytes:
            async with StoreClient(cluster.api, cluster.token) as client:
                await seed(client, tasks=600)
                await client.commands([commit(f"load.{i}", f"m{i % 20}") for i in range(600)])
                await CellClient(client).kill("load")
                copy = LocalCopy()
                async with trio.open_nursery() as nursery:
                    await nursery.start(copy.follow, client)
                    status = await client.status()
                    await copy.wait_for(status["version"])
                    nursery.cancel_scope.cancel()
                return copy.cell.snapshot()

        copied = trio.run(load_and_copy)
        leader = cluster.wait_for_leader()
        version, leader_snapshot = cluster.snapshot(leader)
        assert copied == leader_snapshot
        before = [cluster.snapshot(i) for i in range(3)]
        assert {b for _, b in before} == {leader_snapshot}
        for i in range(3):
            cluster.kill(i)
        cluster.start()
        cluster.wait_for_version(version, [0, 1, 2])
        assert [cluster.snapshot(i) for i in range(3)] == before


def oversized_status(address: str, token: str) -> int:
    """Announce a 16 MiB body and read the answer: the replica refuses it from
    the headers, without reading (or waiting for) the body."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/commands HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer "
            + token.encode()
            + b"\r\nContent-Length: 16777216\r\n\r\n"
            + b'{"commands": ['
        )
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


# Every endpoint a replica of the cell serves: the store's own and the cell's typed ones.
ENDPOINTS = [
    *STORE_ROUTES,
    *(("POST", path) for path in WRITE_ROUTES.values()),
    *(("GET", path) for path in READ_ROUTES),
]


def test_every_endpoint_refuses_missing_or_wrong_token_and_bad_bodies_name_the_field(tmp_path):
    with cell_cluster(tmp_path) as cluster:
        base = f"http://{cluster.api[0]}"
        with httpx.Client(timeout=10) as http:
            for method, path in ENDPOINTS:
                for headers in ({}, {"authorization": "Bearer wrong"}):
                    resp = http.request(method, base + path, headers=headers, content=b"{}")
                    assert resp.status_code == 401, (method, path, resp.text)
            auth = {"authorization": f"Bearer {cluster.token}"}
            before = http.get(base + SNAPSHOT, headers=auth).content
            cases = [
                (WRITE_ROUTES["SubmitJob"], b"{nope", None),
                (
                    WRITE_ROUTES["SubmitJob"],
                    b'{"spec": {"name": "x", "owner": "a", "scheduler": "batch",'
                    b' "tasks": -1, "resources": {"cpu": 1, "memory": 1}}}',
                    "$.spec.tasks",
                ),
                (
                    WRITE_ROUTES["SubmitJob"],
                    b'{"spec": {"name": "x", "owner": "a", "scheduler": "gpu",'
                    b' "resources": {"cpu": 1, "memory": 1}}}',
                    "$.spec.scheduler",
                ),
                (
                    WRITE_ROUTES["Commit"],
                    b'{"txn": {"scheduler": "s", "claims": [["t", "m", "x", []]]}}',
                    "$.txn.claims[0]",
                ),
                (
                    WRITE_ROUTES["RegisterMachines"],
                    b'{"machines": [{"id": "m", "capacity": {"cpu": "lots", "memory": 1}}]}',
                    "$.machines[0].capacity.cpu",
                ),
                (
                    WRITE_ROUTES["RegisterMachines"],
                    b'{"machines": [{"id": "m", "capacity": {"cpu": 1, "memory": 1, "gpu": -2}}]}',
                    "$.machines[0].capacity.gpu",
                ),
                (
                    WRITE_ROUTES["ReportUsage"],
                    b'{"usages": [{"task": "t.0", "incarnation": 0, "cpu": -5, "memory": 1}]}',
                    "$.usages[0].cpu",
                ),
                (
                    WRITE_ROUTES["ReportUsage"],
                    b'{"usages": [{"task": "t.0", "incarnation": 0, "cpu": 1, "memory": 1152921504606846976}]}',
                    "$.usages[0].memory",
                ),
                (COMMANDS, b'{"commands": [{"type": "drop_table"}]}', "$.commands[0].type"),
                (WRITE_ROUTES["KillJob"], b'{"job": 5}', "$.job"),
            ]
            for path, body, field in cases:
                resp = http.post(base + path, headers=auth, content=body)
                assert 400 <= resp.status_code < 500, (path, resp.text)
                error = resp.json()["error"]
                assert error["message"]
                if field is not None:
                    assert error["field"] == field, (path, error)
            # A key given twice in a body people write: orjson kept the last, and a spec
            # of `"cpu": 1, ..., "cpu": 64` asked for 64 cpus without a word.
            twice = (
                b'{"spec": {"name": "x", "owner": "a", "scheduler": "batch",'
                b' "resources": {"cpu": 1, "memory": 1, "cpu": 64}}}'
            )
            resp = http.post(base + WRITE_ROUTES["SubmitJob"], headers=auth, content=twice)
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["code"] == "duplicate_key", resp.text
            assert "'cpu' appears twice" in resp.json()["error"]["message"], resp.text
            quota = b'{"owner": "a", "band": "batch", "limit": {"cpu": 1}, "owner": "b"}'
            resp = http.post(base + "/v1/quotas", headers=auth, content=quota)
            assert resp.status_code == 400 and "'owner' appears twice" in resp.text, resp.text
            # Query parameters too: a negative limit sliced off the last tasks instead.
            for query, said in (("limit=-1", "limit -1 must be 1 or more"), ("limit=x", "integer")):
                resp = http.get(f"{base}/v1/tasks?{query}", headers=auth)
                assert resp.status_code == 400 and said in resp.json()["error"]["message"], query
                assert resp.json()["error"]["field"] == "limit"
            assert oversized_status(cluster.api[0], cluster.token) == 413
            after = http.get(base + SNAPSHOT, headers=auth).content
            strip = CellState.restore
            assert strip(after).jobs == {} and strip(before).jobs == {}
            assert strip(after).machines == {} and strip(after).tasks == {}


def test_events_of_a_job_whose_commands_the_feed_no_longer_holds_are_not_an_error(tmp_path):
    """`omega events --job X` reads the log; a replica keeps only its last `watch_buffer`
    commands, the rest as a snapshot. A job the cell holds whose commands are older than
    that has no events to print (exit 0); a name in neither is a mistake (exit 1)."""
    import subprocess
    import sys

    from cellstore.cellclient import SyncCellClient

    options = cell_options(heartbeat_timeout_s=3600.0, watch_buffer=20)
    with LocalCluster(tmp_path, **options) as cluster:
        with SyncCellClient(cluster.api, cluster.token) as cell:
            cell.register_machines(
                [MachineSpec("m0", Resources(parse_cpu(1), parse_memory("1Gi")))]
            )
            small = Resources(parse_cpu("10m"), parse_memory("1Mi"))
            cell.submit(JobSpec("old", "alice", SchedulerClass.BATCH, small), "old")
            for _ in range(40):  # push the submission out of the replicas' feeds
                cell.heartbeat(["m0"])
        env = {**os.environ, "OMEGA_ADDR": ",".join(cluster.api), "OMEGA_TOKEN": cluster.token}
        env.pop("OMEGA_CA", None)

        def events(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "omega", "events", *args]
            return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

        everything = events()
        assert everything.returncode == 0, everything.stderr
        assert "was compacted: no events before it" in everything.stdout.splitlines()[0]
        old = events("--job", "old")
        assert old.returncode == 0, old
        assert old.stdout.splitlines() == everything.stdout.splitlines()[:1], old
        nope = events("--job", "nope")
        assert nope.returncode == 1 and "no job 'nope' in the cell or its log" in nope.stderr
