"""`omega up` takes every process it started down with it, however it ends.

Before: after a SIGKILL of `omega up`, or after its output pipe closed
(`./setup.sh demo | tee log`, then Ctrl-C, which kills `tee` too, so printing
"stopping cell" raised BrokenPipeError before the parts were told to stop), every
replica, scheduler and agent kept running. Each test here fails that way
without `omega.children`: the pids it collects are still alive at the end.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from harness.upcell import up_cell, wait_for

pytestmark = pytest.mark.slow

SMALL = ("--replicas", "1", "--agents", "1", "--schedulers", "service")
SLEEPER = """\
name: sleeper
scheduler: service
tasks: 1
resources: {cpu: 100m, memory: 16Mi}
command: ["sleep", "600"]
grace_period: 1
"""


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def descendants(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def test_sigkilled_omega_up_leaves_nothing_running(tmp_path):
    spec = tmp_path / "sleeper.yaml"
    spec.write_text(SLEEPER)
    with up_cell(tmp_path / "cell", *SMALL) as cell:
        cell.start()
        job = cell.json("submit", str(spec))["id"]
        try:
            wait_for(
                "the task to run", lambda: cell.json("tasks", "--job", job, "--state", "running")
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: {cell.json('tasks', '--job', job)}\n{cell.logs()}"
            ) from None
        assert cell.proc is not None
        started = descendants(cell.proc.pid)
        # replica, scheduler, agent, and the agent's task
        assert len(started) >= 4, started
        os.kill(cell.proc.pid, signal.SIGKILL)
        cell.proc.wait()
        deadline = time.monotonic() + 5.0
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(started), [psutil.Process(p).cmdline() for p in alive(started)]


@pytest.mark.parametrize("then_interrupt", [False, True], ids=["pipe-closed", "pipe-closed+sigint"])
def test_omega_up_stops_its_parts_when_its_output_pipe_closes(tmp_path, then_interrupt):
    with up_cell(tmp_path / "cell", *SMALL) as cell:
        cell.start()
        assert cell.proc is not None and cell.proc.stdout is not None
        started = descendants(cell.proc.pid)
        assert len(started) >= 3, started
        cell.proc.stdout.close()  # what `tee` dying does to omega up's stdout
        if then_interrupt:
            os.kill(cell.proc.pid, signal.SIGINT)
        assert cell.proc.wait(timeout=30) == 0
        assert not alive(started)
