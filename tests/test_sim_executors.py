"""Sweeps that scale out: an experiment's points in local processes or on a Dask cluster
started here (a `dask scheduler` and a `dask worker` on 127.0.0.1, free ports, stopped by
pid), with the same CSV, byte for byte, as in this process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellsim.experiments import run_experiment

TINY = """
name = "tiny"
[cell]
machines = 20
cpu = 4.0
memory_gib = 16.0
domains = 4
prefill_utilisation = 0.3
[jobs.batch]
interarrival = { dist = "exponential", mean = 4.0 }
tasks = { dist = "lognormal", median = 3, sigma = 1.0, min = 1, max = 30 }
duration = { dist = "lognormal", median = 60, sigma = 1.0, min = 1 }
cpu = { dist = "lognormal", median = 0.3, sigma = 0.5, max = 2 }
memory_gib = 0.5
[jobs.service]
interarrival = { dist = "exponential", mean = 30.0 }
tasks = { dist = "lognormal", median = 2, sigma = 1.0, min = 1, max = 20 }
duration = { dist = "lognormal", median = 600, sigma = 1.0, min = 10 }
cpu = 0.5
memory_gib = 1.0
"""

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dask_cluster(tmp: Path) -> Iterator[str]:
    """A one-worker Dask cluster on 127.0.0.1; its scheduler's address."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    common = {"stdin": subprocess.DEVNULL, "start_new_session": True, "cwd": tmp}
    dask = str(BIN / "dask")
    scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    worker = [dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"]
    worker += ["--host", "127.0.0.1", "--local-directory", str(tmp)]
    try:
        with open(tmp / "scheduler.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    scheduler,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    **common,
                )
            )
        with open(tmp / "worker.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    worker,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    **common,
                )
            )
        from distributed import Client

        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _sweep(out: Path, preset: Path, **where) -> bytes:
    path = run_experiment(
        "tjob", preset=str(preset), days=0.01, seed=5, out=out, values=[0.1, 5.0], **where
    )
    return path.read_bytes()


@pytest.mark.slow
def test_the_same_csv_in_process_in_local_processes_and_on_a_dask_cluster(tmp_path: Path):
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY)
    serial = _sweep(tmp_path / "serial", preset, jobs=1)
    assert serial.count(b"\n") == 1 + 2 * 4  # header; 2 points x (2 schedulers + 2 classes)
    assert _sweep(tmp_path / "local", preset, jobs=2) == serial
    with dask_cluster(tmp_path) as address:
        assert _sweep(tmp_path / "dask", preset, cluster=address) == serial
        # The cluster really ran them: its scheduler knows the points' function.
        from distributed import Client

        def prefixes(dask_scheduler) -> dict[str, int]:
            """On the scheduler (pickled by value: it cannot import the tests): task
            state changes seen, per function name."""
            return {
                name: sum(prefix.state_counts.values())
                for name, prefix in dask_scheduler.task_prefixes.items()
            }

        with Client(address, timeout=30, set_as_default=False) as client:
            seen = client.run_on_scheduler(prefixes)
        assert seen.get("run_point", 0) > 0, seen
