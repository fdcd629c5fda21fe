"""Scheduler processes against a real 3-replica store: racing, preemption, gangs,
reclaimed resources and a SIGKILL restart.

Machines are registered through the API (no agents), so placed tasks stay
`assigned`. The replicas' heartbeat timeout is raised so those machines never
expire during a test. Every process (replicas and schedulers) is killed by pid
at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cellstate import CellState, JobSpec, MachineSpec
from cellstate.commands import TaskUsage
from cellstate.wire import parse
from cellstore.cellclient import CellSummary, SyncCellClient, TaskView
from harness.cluster import LocalCluster, cell_options, start_scheduler
from schedulers.avoid import owners
from schedulers.core import shard_of

pytestmark = pytest.mark.slow

GIB = 1 << 30


class LiveCell:
    """A LocalCluster of the cell plus the scheduler processes a test starts."""

    def __init__(self, base: Path) -> None:
        self.base = base
        # API-registered machines have no agent: keep them up.
        self.cluster = LocalCluster(base / "store", **cell_options(heartbeat_timeout_s=3600.0))
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> LiveCell:
        self.cluster.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.cluster.close()

    # -- API ---------------------------------------------------------------------

    def client(self) -> SyncCellClient:
        return SyncCellClient(self.cluster.api, self.cluster.token)

    def register(
        self, n: int, cpu: str = "4", memory: str = "8Gi", domains: int = 2, **devices: Any
    ) -> None:
        machines = [
            {
                "id": f"m{i}",
                "capacity": {"cpu": cpu, "memory": memory, **devices},
                "domain": f"d{i % domains}",
            }
            for i in range(n)
        ]
        with self.client() as cell:
            cell.register_machines([parse(m, MachineSpec) for m in machines])

    def submit(
        self,
        name: str,
        scheduler: str,
        tasks: int,
        cpu: str = "1",
        memory: str = "1Gi",
        devices: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        spec = {
            "name": name,
            "owner": "test",
            "scheduler": scheduler,
            "tasks": tasks,
            "resources": {"cpu": cpu, "memory": memory, **(devices or {})},
            **extra,
        }
        with self.client() as cell:
            return cell.submit(parse(spec, JobSpec), name).job

    def tasks(self, job: str) -> list[TaskView]:
        with self.client() as cell:
            return cell.tasks(job=job)

    def counts(self, job: str) -> dict[str, int]:
        with self.client() as cell:
            return cell.job(job)["tasks"]

    def summary(self) -> CellSummary:
        with self.client() as cell:
            return cell.summary()

    def cell(self) -> CellState:
        _, data = self.cluster.snapshot(self.cluster.wait_for_leader())
        cell = CellState.restore(data)
        cell.check_invariants()
        return cell

    # -- schedulers --------------------------------------------------------------

    def scheduler(self, kind: str, name: str, *args: str) -> subprocess.Popen[bytes]:
        proc = start_scheduler(
            self.cluster,
            self.base / f"sched-{name}.log",
            kind,
            name,
            "--report-period",
            "0.3",
            *args,
        )
        self.procs.append(proc)
        return proc

    def figures(self, name: str) -> dict[str, float]:
        for report in self.summary()["schedulers"]:
            if report["name"] == name:
                return report["figures"]
        return {}

    def wait_reporting(self, *names: str) -> None:
        wait(lambda: all(self.figures(n) for n in names), f"reports from {names}", self)

    def scheduler_logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.base.glob("sched-*.log"))
        )


# How long to wait for an event before calling it lost. A bound, not a speed: every wait
# returns as soon as its event happens, and a loaded 2-core CI machine starting several
# cells at once can take many seconds to start a scheduler process.
PATIENCE_S = 90.0


def wait(predicate, what: str, live: LiveCell | None = None) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    logs = live.scheduler_logs() if live is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


@pytest.fixture
def live(tmp_path: Path):
    with LiveCell(tmp_path) as cell:
        yield cell


def assigned(counts: dict[str, int]) -> int:
    return counts.get("assigned", 0)


def test_two_batch_schedulers_race_conflict_and_never_overcommit(live: LiveCell) -> None:
    live.register(8)  # 32 cpu: exactly the job below
    for name in ("batch-a", "batch-b"):
        # Without avoidance, so that they race for the same machines.
        live.scheduler(
            "batch", name, "--max-claims", "8", "--think-task", "0.01", "--avoidance", "off"
        )
    live.wait_reporting("batch-a", "batch-b")
    job = live.submit("race", "batch", 32)  # both wake on the same command
    wait(lambda: assigned(live.counts(job)) == 32, "32 tasks assigned", live)
    cell = live.cell()
    assert sum(len(m.tasks) for m in cell.machines.values()) == 32
    assert all(m.account.used["cpu"] == m.account.capacity["cpu"] for m in cell.machines.values())

    def reported() -> bool:
        a, b = live.figures("batch-a"), live.figures("batch-b")
        return a.get("claims_accepted", 0) + b.get("claims_accepted", 0) == 32

    wait(reported, "final figures", live)
    a, b = live.figures("batch-a"), live.figures("batch-b")
    assert a["conflicted_transactions"] + b["conflicted_transactions"] > 0
    assert a["claims_rejected"] + b["claims_rejected"] > 0
    assert a["busyness"] > 0 and b["busyness"] > 0
    # Its log says what it decided, not one line per request it sent (httpx's, at info).
    logs = live.scheduler_logs()
    assert "scheduler_started" in logs, logs
    assert "HTTP Request" not in logs, logs


def test_two_batch_schedulers_with_avoidance_keep_to_their_partitions(live: LiveCell) -> None:
    """Avoidance is on by default: once both report, each scheduler fills its own
    rendezvous partition of the machines, and neither loses a claim."""
    live.register(8)
    names = ("batch-a", "batch-b")
    for i, name in enumerate(names):
        live.scheduler("batch", name, "--shard", f"{i}/2")
    live.wait_reporting(*names)
    owner = owners([f"m{i}" for i in range(8)], names)
    jobs = {}
    for k in range(2):
        # A job of this scheduler's shard, exactly as large as its partition.
        job = next(f"part{k}-{i}" for i in range(100) if shard_of(f"part{k}-{i}", 2) == k)
        jobs[job] = {f"m{i}" for i in range(8) if owner[i] == k}
        live.submit(job, "batch", 4 * len(jobs[job]))
    for job, machines in jobs.items():
        want = 4 * len(machines)
        wait(lambda job=job, want=want: assigned(live.counts(job)) == want, job, live)
        assert {t["machine"] for t in live.tasks(job)} == machines

    def reported() -> bool:
        return sum(live.figures(n).get("claims_accepted", 0) for n in names) == 32

    wait(reported, "final figures", live)
    for k, name in enumerate(names):
        figures = live.figures(name)
        assert figures["claims_rejected"] == figures["claims_spilled"] == 0
        assert figures["partition_machines"] == int((owner == k).sum())


def test_service_preempts_batch_but_never_production(live: LiveCell) -> None:
    live.register(4)  # 16 cpu
    live.scheduler("service", "service")
    live.scheduler("batch", "batch", "--max-attempts", "3")
    prod = live.submit("prod", "service", 4)
    wait(lambda: assigned(live.counts(prod)) == 4, "prod placed", live)
    batch = live.submit("fill", "batch", 12)
    wait(lambda: assigned(live.counts(batch)) == 12, "batch fills the cell", live)
    before = {t["id"]: (t["machine"], t["incarnation"]) for t in live.tasks(prod)}
    late = live.submit("late", "service", 4)
    wait(lambda: assigned(live.counts(late)) == 4, "late service job placed", live)
    cell = live.cell()
    assert {t["id"]: (t["machine"], t["incarnation"]) for t in live.tasks(prod)} == before
    assert all(t["evictions"] == 0 for t in live.tasks(prod))
    batch_tasks = live.tasks(batch)
    assert sum(t["evictions"] for t in batch_tasks) == 4
    assert sum(t["state"] == "pending" for t in batch_tasks) == 4
    assert all(m.account.used["cpu"] == m.account.capacity["cpu"] for m in cell.machines.values())
    wait(lambda: live.figures("service").get("preemptions", 0) == 4, "preemptions reported", live)


def test_gang_is_placed_whole_or_not_at_all(live: LiveCell) -> None:
    live.register(4)  # 16 cpu
    live.scheduler("batch", "batch")
    live.wait_reporting("batch")
    too_big = live.submit("toobig", "batch", 20, gang=True)
    fits = live.submit("fits", "batch", 12, gang=True)
    wait(lambda: assigned(live.counts(fits)) == 12, "the gang that fits", live)

    def explained() -> str:
        with live.client() as cell:
            return cell.explain(too_big)["schedulers"].get("batch", "")

    wait(lambda: "placed 0/20" in explained(), "the big gang explained", live)
    assert live.counts(too_big) == {"pending": 20}
    assert live.cell().jobs[too_big].counts.get("assigned", 0) == 0


def test_best_effort_uses_reclaimed_resources_and_yields(live: LiveCell) -> None:
    live.register(2)  # 2 x 4 cpu
    live.scheduler("service", "service")
    live.scheduler("best-effort", "be")
    web = live.submit("web", "service", 2, cpu="4", memory="4Gi")
    wait(lambda: assigned(live.counts(web)) == 2, "service fills the cell", live)
    be = live.submit("scavenger", "best-effort", 1, cpu="2", memory="1Gi")
    time.sleep(1.0)
    assert live.counts(be) == {"pending": 1}  # nothing reclaimed yet
    web_tasks = live.tasks(web)

    def usage(cpu: int) -> None:
        with live.client() as cell:
            cell.report_usage([TaskUsage(t["id"], t["incarnation"], cpu, GIB) for t in web_tasks])

    # The first report on a task decays its reservation at once: 500m + 10% margin.
    usage(500)
    wait(lambda: assigned(live.counts(be)) == 1, "best-effort on reclaimed resources", live)
    live.cell()
    usage(4000)  # the owners want it all back
    (task,) = live.tasks(be)
    assert task["evictions"] == 1 and task["state"] == "pending"
    assert all(t["state"] == "assigned" and t["evictions"] == 0 for t in live.tasks(web))
    cell = live.cell()
    assert all(
        m.account.reserved["cpu"] == m.account.capacity["cpu"] for m in cell.machines.values()
    )


def test_scheduler_killed_and_restarted_resumes_without_double_placement(live: LiveCell) -> None:
    live.register(16)  # 64 cpu
    args = ("--max-claims", "5", "--think-task", "0.02")
    first = live.scheduler("batch", "batch", *args)
    job = live.submit("work", "batch", 60)
    wait(lambda: assigned(live.counts(job)) >= 10, "some tasks placed", live)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    mid = assigned(live.counts(job))
    assert 10 <= mid < 60
    live.scheduler("batch", "batch", *args)
    wait(lambda: assigned(live.counts(job)) == 60, "every task placed after restart", live)
    cell = live.cell()
    holders = [tid for m in cell.machines.values() for tid in m.tasks]
    assert len(holders) == len(set(holders)) == 60
    assert all(t["evictions"] == 0 and t["state"] == "assigned" for t in live.tasks(job))


def test_scheduler_serves_its_figures_and_explanations_on_its_metrics_endpoint(
    live: LiveCell,
) -> None:
    from cellstore.config import free_ports

    live.register(2, cpu="1")
    port = free_ports(1)[0]
    live.scheduler("batch", "metered", "--metrics", f"127.0.0.1:{port}")
    live.submit("fits", "batch", 2, cpu="500m")
    live.submit("huge", "batch", 1, cpu="3")
    url = f"http://127.0.0.1:{port}/v1/metrics"
    auth = {"authorization": f"Bearer {live.cluster.token}"}

    def answered() -> dict[str, Any] | None:
        try:
            body = httpx.get(url, headers=auth, timeout=2).json()
        except httpx.HTTPError:
            return None
        return body if body["figures"].get("claims_accepted", 0) >= 2 else None

    wait(lambda: answered() is not None, "metrics with accepted claims", live)
    body = answered()
    assert body["name"] == "metered" and body["kind"] == "batch"
    assert {"transactions", "conflict_fraction", "busyness"} <= set(body["figures"])
    assert "insufficient:cpu" in body["explanations"]["huge"]
    assert httpx.get(url, timeout=2).status_code == 401


def test_devices_bound_placements_and_a_missing_one_is_explained(live: LiveCell) -> None:
    """One gpu machine of two: a job of 3 x gpu:1 gets 2 tasks on it, the third
    stays pending as `insufficient:gpu`, and a job asking for an fpga, which no
    machine has, is explained as `no_capacity:fpga` on every machine."""
    live.register(1, gpu=2)
    plain = parse({"id": "plain", "capacity": {"cpu": "4", "memory": "8Gi"}}, MachineSpec)
    with live.client() as cell:
        cell.register_machines([plain])
    live.scheduler("batch", "batch")
    train = live.submit("train", "batch", 3, devices={"gpu": 1})
    odd = live.submit("odd", "batch", 1, devices={"fpga": "1"})
    wait(lambda: assigned(live.counts(train)) == 2, "two gpu tasks placed", live)

    def explained(job: str) -> str:
        with live.client() as cell:
            return cell.explain(job)["schedulers"].get("batch", "")

    wait(lambda: "no_capacity:fpga" in explained(odd), "the fpga job explained", live)
    assert "0/2 machines fit: 2 no_capacity:fpga" in explained(odd)
    wait(lambda: "insufficient:gpu" in explained(train), "the third gpu task explained", live)
    assert "1 no_capacity:gpu" in explained(train)
    assert {t["machine"] for t in live.tasks(train) if t["machine"]} == {"m0"}
    assert live.counts(train).get("pending") == 1 and live.counts(odd) == {"pending": 1}


def test_a_full_quota_holds_tasks_back_without_refused_claims_until_it_is_raised(
    live: LiveCell,
) -> None:
    """The scheduler reads the quota in its copy of the cell and claims only what it
    admits: no claim is refused for quota (each would be a commit in the log, every
    decision, for as long as the quota stays full), `explain` says what holds the rest
    back, and raising the quota places them with no machine changing."""
    from cellstate import Band, Limit

    live.register(2, gpu=2)
    with live.client() as cell:
        cell.set_quota("test", Band.BATCH, Limit.of({"gpu": 1, "cpu": 0}))
    live.scheduler("batch", "batch")
    nothing = live.submit("cpu-only", "batch", 1)  # asks for cpu, which the quota gives none of
    train = live.submit("train", "batch", 3, cpu="100m", devices={"gpu": 1})

    def explained(job: str) -> str:
        with live.client() as cell:
            return cell.explain(job)["schedulers"].get("batch", "")

    wait(lambda: "held back by quota" in explained(nothing), "cpu-only explained", live)
    assert "1 held back by quota (quota_exceeded:cpu); placed 0/1" in explained(nothing)
    assert live.counts(nothing) == {"pending": 1}
    # train's cpu is also over a quota of none: nothing of it either, until cpu is raised.
    with live.client() as cell:
        cell.set_quota("test", Band.BATCH, Limit.of({"gpu": 1}))
    wait(lambda: assigned(live.counts(train)) == 1, "one train task within the gpu quota", live)
    wait(lambda: "quota_exceeded:gpu" in explained(train), "train explained", live)
    assert "2 held back by quota (quota_exceeded:gpu)" in explained(train), explained(train)
    time.sleep(1.0)  # decisions on every change meanwhile: none may claim beyond the quota
    figures = live.figures("batch")
    assert figures["claims_attempted"] == figures["claims_accepted"], figures
    with live.client() as cell:
        cell.set_quota("test", Band.BATCH, Limit.of({"gpu": 3}))
    wait(lambda: assigned(live.counts(train)) == 3, "every train task, the quota raised", live)
    assert assigned(live.counts(nothing)) == 1
    # Reported every 0.3 s: 4 claims (train 1 + 2, cpu-only 1), all accepted, not one refused.
    wait(lambda: live.figures("batch")["claims_accepted"] == 4, "the figures reported", live)
    assert live.figures("batch")["claims_attempted"] == 4


def test_a_parked_job_is_tried_again_after_its_rest(live: LiveCell) -> None:
    """A job parked after --max-attempts (here one) does not wait for good: once room
    comes, it is placed after --park-seconds, as the scheduler's own clock says."""
    live.register(1)
    live.scheduler("batch", "batch", "--max-attempts", "1", "--park-seconds", "2")
    big = live.submit("big", "batch", 1, cpu="8")

    def explained() -> str:
        with live.client() as cell:
            return cell.explain(big)["schedulers"].get("batch", "")

    wait(lambda: "parked: insufficient:cpu" in explained(), "the big job parked", live)
    room = parse({"id": "big-machine", "capacity": {"cpu": "16", "memory": "8Gi"}}, MachineSpec)
    with live.client() as cell:
        cell.register_machines([room])
    wait(lambda: assigned(live.counts(big)) == 1, "the parked job placed after its rest", live)
    assert {t["machine"] for t in live.tasks(big)} == {"big-machine"}
