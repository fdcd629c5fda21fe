"""The typed cell client, both faces, against a real 3-replica cell.

Every operation goes through `CellClient` (trio) or `SyncCellClient` (blocking) and comes back
as `cellstate` values or the documented read models; refusals come back as one `CellError`
naming code and field. The blocking face, which the `omega` command uses, must also follow the
leader through a failover and say `unavailable` when nothing answers.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import attrs
import pytest
import trio

from cellstate import (
    Claim,
    CommitResult,
    JobSpec,
    MachineSpec,
    MachineState,
    Ok,
    Resources,
    SchedulerClass,
    Stale,
    TaskReport,
    Transaction,
    parse_cpu,
    parse_memory,
)
from cellstate.commands import ReportedState
from cellstore.cellclient import CellClient, CellError, SyncCellClient
from harness.cluster import LocalCluster, cell_options

pytestmark = pytest.mark.slow


def cluster_in(tmp_path: Path) -> LocalCluster:
    # Machines here have no agent; keep them up so the log holds only the test's commands.
    return LocalCluster(tmp_path, **cell_options(heartbeat_timeout_s=3600))


def resources(cpu: str, memory: str) -> Resources:
    return Resources(parse_cpu(cpu), parse_memory(memory))


SPEC = JobSpec(
    name="web",
    owner="alice",
    scheduler=SchedulerClass.BATCH,
    resources=resources("500m", "64Mi"),
    tasks=2,
    command=("sleep", "60"),
)


async def exercise_async(cluster: LocalCluster) -> None:
    async with CellClient.connect(cluster.api, cluster.token) as cell:
        machines = [MachineSpec(f"m{i}", resources("2", "1Gi"), domain=f"d{i}") for i in range(2)]
        registered = await cell.register_machines(machines)
        assert isinstance(registered.result, Ok) and registered.version > 0

        submitted = await cell.submit(SPEC)
        assert submitted.job.startswith("web-") and submitted.version > registered.version
        again = await cell.submit(SPEC, submitted.job)  # a retried submit: the same job
        assert again.job == submitted.job
        with pytest.raises(CellError) as refused:
            await cell.submit(attrs.evolve(SPEC, tasks=3), submitted.job)
        assert (refused.value.code, refused.value.field) == ("job_exists", "job")
        assert refused.value.status == 409

        job = await cell.job(submitted.job)
        assert (job["id"], job["state"], job["tasks"]) == (submitted.job, "pending", {"pending": 2})
        assert [j["id"] for j in await cell.jobs()] == [submitted.job]
        assert await cell.jobs(state="running") == []
        tasks = await cell.tasks(job=submitted.job)
        assert [t["state"] for t in tasks] == ["pending", "pending"]

        first, second = (t["id"] for t in tasks)
        txn = Transaction("test", (Claim(first, "m0"), Claim(second, "nowhere")))
        committed = await cell.commit(txn)
        assert isinstance(committed.result, CommitResult)
        assert committed.result.accepted == 1
        assert [(r.task, r.machine) for r in committed.result.rejected] == [(second, "nowhere")]
        assert (await cell.task(first))["machine"] == "m0"

        running = TaskReport(first, "m0", 0, ReportedState.RUNNING)
        assert isinstance((await cell.report_tasks([running])).result, Ok)
        stale = await cell.report_tasks([TaskReport(first, "m1", 0, ReportedState.RUNNING)])
        assert isinstance(stale.result, Stale) and stale.result.tasks == (first,)
        beat = await cell.heartbeat(["m0", "ghost"])
        assert isinstance(beat.result, Stale) and beat.result.machines == ("ghost",)

        await cell.set_machine_state("m1", MachineState.DRAINING)
        assert {m["id"]: m["state"] for m in await cell.machines()} == {
            "m0": "up",
            "m1": "draining",
        }
        reported = await cell.report_scheduler(
            "batch", SchedulerClass.BATCH, {"transactions": 1.0}, {submitted.job: "no room"}
        )
        explained = await cell.explain(submitted.job)
        assert explained["schedulers"] == {"batch": "no room"} and explained["pending"] == 1
        summary = await cell.summary()
        assert summary["version"] >= reported.version and summary["jobs"] == 1

        with pytest.raises(CellError) as unknown:
            await cell.job("nope")
        assert (unknown.value.code, unknown.value.field) == ("job_unknown", "id")
        with pytest.raises(CellError) as bad:
            await cell.kill("no such job")
        assert (bad.value.code, bad.value.field, bad.value.status) == ("job_unknown", "job", 404)
        # A filter naming what does not exist is an error, not an empty list.
        for filters, answer in (
            ({"job": "nope"}, ("job_unknown", "job", 404)),
            ({"machine": "nowhere"}, ("machine_unknown", "machine", 404)),
            ({"state": "sideways"}, ("invalid", "state", 400)),
        ):
            with pytest.raises(CellError) as refused_filter:
                await cell.tasks(**filters)
            error = refused_filter.value
            assert (error.code, error.field, error.status) == answer, (filters, error)
        with pytest.raises(CellError) as bad_state:
            await cell.jobs(state="sideways")
        assert (bad_state.value.code, bad_state.value.field) == ("invalid", "state")
        assert "running" in str(bad_state.value)
        assert [t["machine"] for t in await cell.tasks(machine="m0")] == ["m0"]

        statuses = [await cell.status(a) for a in cluster.api]
        assert sum(bool(s["is_leader"]) for s in statuses) == 1


def test_async_face_speaks_cellstate_types(tmp_path):
    with cluster_in(tmp_path) as cluster:
        trio.run(exercise_async, cluster)


def test_sync_face_reads_what_async_wrote_and_follows_the_leader(tmp_path):
    with cluster_in(tmp_path) as cluster, SyncCellClient(cluster.api, cluster.token) as cell:
        cell.register_machines([MachineSpec("m0", resources("2", "1Gi"))])
        submitted = cell.submit(SPEC, "sync-job")
        assert submitted.job == "sync-job"
        assert [j["id"] for j in cell.jobs()] == ["sync-job"]
        assert cell.job("sync-job")["size"] == 2
        assert len(cell.tasks(job="sync-job", limit=1)) == 1
        assert cell.machines()[0]["capacity"]["cpu"] == "2"
        assert cell.summary()["tasks"] == {"pending": 2}
        with pytest.raises(CellError) as unknown:
            cell.explain("missing")
        assert unknown.value.code == "job_unknown" and unknown.value.field == "target"

        leader = cluster.wait_for_leader()
        assert cell.status(cluster.api[leader])["is_leader"]
        cluster.kill(leader)
        killed = cell.kill("sync-job")  # the write finds the new leader by itself
        assert isinstance(killed.result, Ok)
        assert cell.job("sync-job")["state"] == "killed"
        with pytest.raises(CellError) as gone:
            cell.status(cluster.api[leader])
        assert gone.value.code == "unavailable"


def test_sync_face_says_unavailable_when_no_replica_answers():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening: refused
    with (
        SyncCellClient([address], "token", retry_deadline_s=0.3) as cell,
        pytest.raises(CellError) as refused,
    ):
        cell.jobs()
    assert refused.value.code == "unavailable" and address in refused.value.message


def serve_once(answers: list[bytes]) -> tuple[str, threading.Thread]:
    """A socket that answers each request on one connection with the next raw bytes of
    `answers` (closing after the last): the HTTP forms the replicas do not send today."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        with listener, listener.accept()[0] as conn, conn.makefile("rb") as reader:
            for answer in answers:
                while reader.readline() not in (b"\r\n", b""):
                    pass  # the request: a GET, so headers only
                conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return f"127.0.0.1:{listener.getsockname()[1]}", thread


def test_blocking_transport_reads_chunked_and_close_delimited_answers():
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b'7\r\n{"jobs"\r\n5\r\n: []}\r\n0\r\n\r\n'
    )
    refused = b'HTTP/1.0 404 Not Found\r\n\r\n{"error": {"code": "job_unknown", "message": "no"}}'
    address, thread = serve_once([chunked, refused])
    with SyncCellClient([address], "token", retry_deadline_s=1.0) as cell:
        assert cell.jobs() == []  # the keep-alive connection then serves the next request
        with pytest.raises(CellError) as unknown:
            cell.job("x")
    thread.join(5)
    assert (unknown.value.code, unknown.value.status) == ("job_unknown", 404)
