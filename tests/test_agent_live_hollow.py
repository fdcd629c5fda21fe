"""One hollow agent process for 10,000 machines against a real 3-replica store:
registration, heartbeats past the timeout, and a 10,000-task batch job run to
completion (placed by a few big transactions, no scheduler)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.test_agent_live_real import LiveCell

pytestmark = pytest.mark.slow

N = 10_000


def test_hollow_agent_runs_10000_machines_and_a_10000_task_job(tmp_path: Path) -> None:
    with LiveCell(tmp_path, heartbeat_timeout=6.0) as cell, cell.client() as client:
        summary = client.summary
        name = cell.start_agent(
            "h", "--hollow", str(N), "--cpu", "4", "--memory", "8Gi", heartbeat=1.0
        )
        up = cell.wait(
            f"{N} machines up",
            lambda: (s := summary())["machines"].get("up", 0) == N and s,
            timeout=120,
            machine=name,
        )
        assert up["machines"].get("up") == N
        machines = sorted(cell.machines())
        assert machines[0] == f"{name}-0000" and machines[-1] == f"{name}-9999"

        job = cell.submit("wide", ["true"], tasks=N, memory="64Mi", duration=1.0)
        began = time.monotonic()
        step = 2_500
        for start in range(0, N, step):
            cell.place([(f"{job}.{i}", machines[i]) for i in range(start, start + step)])
        done = cell.wait(
            "job done",
            lambda: (j := client.job(job))["state"] in ("done", "failed") and j,
            timeout=120,
            machine=name,
        )
        elapsed = time.monotonic() - began
        assert done["state"] == "done", done
        assert done["tasks"].get("exited") == N, done
        # Heartbeats kept every machine up well past the timeout.
        assert summary()["machines"].get("up") == N
        print(f"10,000 hollow tasks placed and done in {elapsed:.1f} s")
