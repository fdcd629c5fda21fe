"""Changing running jobs under faults and races, against a real 3-replica store,
real scheduler processes and a hollow agent process: the store's leader is
killed mid-rollout and the rollout completes; a drain runs while a service
scheduler preempts the drained job's tasks, and the budget holds at every
version of the cell (`harness.budget` replays the watch feed)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest

from cellstate import JobSpec, MachineState
from cellstate.wire import parse
from harness.budget import BudgetChecker
from harness.cluster import start_scheduler
from tests.test_agent_live_real import LiveCell

pytestmark = pytest.mark.slow


class Cell(LiveCell):
    """A LiveCell with scheduler processes, each stopped by pid."""

    def __init__(self, base: Path) -> None:
        super().__init__(base, heartbeat_timeout=10.0)
        self.schedulers: list[subprocess.Popen[bytes]] = []

    def __exit__(self, *exc: object) -> None:
        for proc in self.schedulers:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        super().__exit__(*exc)

    def scheduler(self, kind: str) -> None:
        log = self.base / f"{kind}.log"
        self.schedulers.append(start_scheduler(self.cluster, log, kind, kind))

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.base.glob("*.log"))
        )


def spec(**fields: Any) -> JobSpec:
    return parse({"owner": "alice", "resources": {"cpu": 1, "memory": "256Mi"}, **fields}, JobSpec)


def test_the_leader_dies_mid_rollout_and_the_rollout_completes(tmp_path: Path) -> None:
    with Cell(tmp_path) as cell, cell.client() as client:
        cell.start_agent("h", "--hollow", "8", "--cpu", "4", "--memory", "8Gi")
        cell.scheduler("service")
        update = {"max_parallel": 2, "min_healthy_time": 1, "healthy_deadline": 30}
        web = spec(
            name="web",
            scheduler="service",
            tasks=6,
            command=["serve", "v1"],
            check={"tcp": True},
            update=update,
        )
        client.submit(web, "web")
        cell.wait("six healthy tasks", lambda: client.job("web")["available"] == 6, timeout=60)
        with BudgetChecker(",".join(cell.cluster.api), cell.cluster.token, "web") as checker:
            checker.measure_from(client.summary()["version"])
            client.update("web", attrs.evolve(web, command=("serve", "v2")))
            cell.wait(
                "the rollout under way",
                lambda: (r := client.job("web")["rollout"]) is not None and r["current"] >= 1,
                timeout=60,
            )
            leader = cell.cluster.wait_for_leader()
            cell.cluster.kill(leader)
            cell.wait(
                "the rollout done",
                lambda: client.job("web")["rollout"]["state"] == "succeeded",
                timeout=90,
            )
            running = [t for t in client.tasks(job="web") if t["state"] == "running"]
            assert len(running) == 6 and {t["version"] for t in running} == {2}, running
            assert checker.failure is None, checker.failure
            assert checker.worst <= 2, checker.worst


def test_a_drain_racing_preemption_keeps_the_budget(tmp_path: Path) -> None:
    with Cell(tmp_path) as cell, cell.client() as client:
        cell.start_agent("h", "--hollow", "4", "--cpu", "4", "--memory", "8Gi")
        cell.scheduler("service")
        cell.scheduler("batch")
        # Sixteen one-cpu batch tasks fill the four machines; the job spares two. Each
        # replacement the drain starts waits out min_healthy_time before its task stops (the
        # default 10 s, twice over), which the race below does not need.
        low = spec(
            name="low",
            scheduler="batch",
            tasks=16,
            update={"max_parallel": 2, "min_healthy_time": 1},
        )
        client.submit(low, "low")
        cell.wait("sixteen running", lambda: client.job("low")["available"] == 16, timeout=60)
        with BudgetChecker(",".join(cell.cluster.api), cell.cluster.token, "low") as checker:
            checker.measure_from(client.summary()["version"])
            drained = next(m["id"] for m in client.machines() if m["tasks"])
            client.set_machine_state(drained, MachineState.DRAINING)
            # Production work that fits only by preempting batch tasks, two at a time.
            prod = spec(
                name="prod", scheduler="service", tasks=3, resources={"cpu": 2, "memory": "1Gi"}
            )
            client.submit(prod, "prod")
            # Room for the drained machine's tasks to move to.
            cell.start_agent("g", "--hollow", "3", "--cpu", "4", "--memory", "8Gi")
            cell.wait(
                "the drained machine empty",
                lambda: next(m for m in client.machines() if m["id"] == drained)["tasks"] == 0,
                timeout=90,
            )
            cell.wait(
                "production placed", lambda: client.job("prod")["tasks"].get("pending", 0) == 0
            )
            assert checker.failure is None, checker.failure
            moved = [t for t in client.tasks(job="low") if t["reason"] == "replaced"]
            assert moved, "the drain moved no task"
            # The budget was spent (preemption took two), never exceeded.
            assert checker.worst == 2, checker.worst
