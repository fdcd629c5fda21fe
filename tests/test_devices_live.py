"""Devices end to end: a machine that declares `gpu: 2`, a job of three tasks
asking `gpu: 1` each, through real replicas, a real batch scheduler and a real
agent running real processes (`omega up --agents 1 --resource gpu=2`).

Two tasks run; the third stays pending and `omega explain` names the device;
when a running task's process is killed, its gpu is given back and the third
task starts.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from harness.upcell import up_cell, wait_for

pytestmark = pytest.mark.slow


def by_state(cell, job: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for task in cell.json("tasks", "--job", job):
        out.setdefault(task["state"], []).append(task)
    return out


def task_process(task_id: str) -> psutil.Process | None:
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("OMEGA_TASK_ID") == task_id:
                return proc
        except psutil.Error:
            continue
    return None


def test_a_gpu_job_runs_as_many_tasks_as_there_are_gpus(tmp_path):
    args = ("--agents", "1", "--resource", "gpu=2", "--schedulers", "batch")
    with up_cell(tmp_path / "cell", *args) as cell:
        cell.start()
        (node,) = cell.json("nodes")
        assert node["capacity"]["gpu"] == 2

        job = cell.json("submit", "examples/gpu-train.yaml")["id"]
        tasks = wait_for(
            "two running and one pending",
            lambda: (
                found
                if len((found := by_state(cell, job)).get("running", ())) == 2
                and len(found.get("pending", ())) == 1
                else None
            ),
        )
        explained = wait_for(
            "an explanation naming the gpu",
            lambda: (
                text if "insufficient:gpu" in (text := cell.omega("explain", job).stdout) else None
            ),
        )
        assert "0/1" in explained, explained
        (node,) = cell.json("nodes")
        assert node["used"]["gpu"] == 2

        victim = tasks["running"][0]["id"]
        process = wait_for(f"the process of {victim}", lambda: task_process(victim))
        os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        after = wait_for(
            "the third task to start",
            lambda: (
                found
                if len((found := by_state(cell, job)).get("running", ())) == 2
                and not found.get("pending")
                else None
            ),
        )
        assert [t["id"] for t in after["failed"]] == [victim]
        (node,) = cell.json("nodes")
        assert node["used"]["gpu"] == 2
