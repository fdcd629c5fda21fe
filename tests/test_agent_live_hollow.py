"""One hollow agent process for 10,000 machines against a real 3-replica store:
registration, heartbeats past the timeout, and a 10,000-task batch job run to
completion (placed by a few big transactions, no scheduler)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cellstore.cellclient import CellError
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
        # One machine, read alone (`omega logs` reads its machine so, not all 10,000); a
        # hollow one serves no logs, and `omega logs` says why.
        one = client.machine(machines[7])
        assert (one["id"], one["labels"]) == (machines[7], {})
        with pytest.raises(CellError) as unknown:
            client.machine("nowhere")
        assert unknown.value.code == "machine_unknown"
        env = {
            **os.environ,
            "OMEGA_ADDR": ",".join(cell.cluster.api),
            "OMEGA_TOKEN": cell.cluster.token,
        }
        printed = subprocess.run(
            [sys.executable, "-m", "omega", "logs", f"{job}.0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert printed.returncode == 1, printed
        assert "has no omega.agent label" in printed.stderr, printed.stderr
        assert "a hollow agent's tasks are simulated" in printed.stderr, printed.stderr
        print(f"10,000 hollow tasks placed and done in {elapsed:.1f} s")


def test_machines_registered_first_heartbeat_while_the_rest_register(tmp_path: Path) -> None:
    """100,000 hollow machines take half a minute to register. Heartbeats used to start after
    the last batch, so every machine registered more than a heartbeat timeout earlier was
    marked down, and had to register again. Here 1,200 machines register one per request,
    which takes several times the 1 s timeout (~5 s on a quiet machine, 300 took only 1.3 s):
    none may ever be marked down."""
    n = 1200
    with LiveCell(tmp_path, heartbeat_timeout=1.0) as cell, cell.client() as client:
        name = cell.start_agent(
            "slow", "--hollow", str(n), "--register-batch", "1", "--cpu", "1", "--memory", "1Gi"
        )
        cell.wait(
            "agent ready",
            lambda: '"agent_ready"' in cell.agent_log(name),
            timeout=120,
            machine=name,
        )
        registered = next(
            json.loads(line)
            for line in cell.agent_log(name).splitlines()
            if '"agent_registered"' in line
        )
        assert registered["seconds"] > 2 * 1.0, registered
        time.sleep(2.0)
        assert client.summary()["machines"] == {"up": n}
        assert '"machines_stale"' not in cell.agent_log(name)
