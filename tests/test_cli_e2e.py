"""The CLI as a user drives it: `omega up`, every example job, kill, explain, restart.

Everything is real: `omega up` starts three replicas, three schedulers and two
agents running real processes; the test talks to it only through `omega`
commands and checks what they print.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
OMEGA = [sys.executable, "-m", "omega"]


class Cell:
    """`omega up` in the background, with the env its clients need."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[str] | None = None
        self.env: dict[str, str] = {}
        self.output: list[str] = []

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ}
        self.proc = subprocess.Popen(
            [
                *OMEGA,
                "up",
                "--data-dir",
                str(self.data_dir),
                "--agents",
                "2",
                "--heartbeat-timeout",
                "10",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if line.startswith(("OMEGA_ADDR=", "OMEGA_TOKEN=")):
                key, value = line.strip().split("=", 1)
                self.env[key] = value
            if line.startswith("cell ready"):
                return
        self.stop()
        raise AssertionError("omega up never became ready:\n" + "".join(self.output) + self.logs())

    def logs(self) -> str:
        out = []
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            out.append(f"--- {path.name}\n" + path.read_text()[-2000:])
        return "\n".join(out)

    def omega(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*OMEGA, *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"omega {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{self.logs()}"
            )
        return result

    def json(self, *args: str):
        return json.loads(self.omega(*args, "--json").stdout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        children = psutil.Process(self.proc.pid).children(recursive=True)
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            for child in children:
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    child.kill()
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        alive = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"omega up left processes behind: {alive}"


@pytest.fixture
def cell(tmp_path):
    started = Cell(tmp_path / "cell")
    try:
        yield started
    finally:
        started.stop()
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(started.data_dir) in cmdline:
                proc.kill()


def test_a_newcomer_runs_every_example_and_the_cell_survives_a_restart(cell):
    cell.start()
    submitted = {}
    for example in ("batch-squares", "gang-train", "web-service", "best-effort-filler"):
        out = cell.omega("submit", f"examples/{example}.yaml", "--json")
        submitted[example] = json.loads(out.stdout)["id"]
        cell.omega(
            "submit", f"examples/{example}.yaml", "--wait", "--id", submitted[example] + "-w"
        )
    jobs = {j["id"]: j for j in cell.json("jobs")}
    for job_id in submitted.values():
        assert set(jobs[job_id]) >= {"id", "name", "scheduler", "priority", "state", "tasks"}
    squares = submitted["batch-squares"] + "-w"
    assert jobs[squares]["state"] == "done", jobs[squares]
    tasks = cell.json("tasks", "--job", squares)
    assert len(tasks) == 8 and {t["state"] for t in tasks} == {"exited"}
    assert all(set(t) >= {"id", "job", "state", "machine"} and t["machine"] for t in tasks)
    printed = cell.omega("logs", tasks[0]["id"]).stdout
    assert printed.split()[0].isdigit(), printed

    web = submitted["web-service"] + "-w"
    running = cell.json("tasks", "--job", web, "--state", "running")
    assert len(running) == 3
    cell.omega("kill", web)
    deadline = time.monotonic() + 30
    while {t["state"] for t in cell.json("tasks", "--job", web)} != {"killed"}:
        assert time.monotonic() < deadline
        time.sleep(0.5)

    bad = cell.omega("submit", "examples/unplaceable.yaml", "--json")
    stuck = json.loads(bad.stdout)["id"]
    deadline = time.monotonic() + 30
    while True:
        explained = cell.omega("explain", stuck).stdout
        if "constraint:accel" in explained:
            break
        assert time.monotonic() < deadline, explained
        time.sleep(1)

    nodes = cell.json("nodes")
    assert len(nodes) == 2 and all(
        set(n) >= {"id", "state", "capacity", "used", "domain", "labels"} for n in nodes
    )
    status = cell.json("status")
    assert set(status) >= {"replicas", "leader", "schedulers", "agents"}
    assert status["leader"] and len(status["replicas"]) == 3

    broken = cell.data_dir.parent / "broken.yaml"
    broken.write_text("name: x\nscheduler: batch\nresources: {cpu: lots, memory: 1Gi}\n")
    refused = cell.omega("submit", str(broken), check=False)
    assert refused.returncode != 0
    assert "broken.yaml: $.resources.cpu" in refused.stderr
    assert len(cell.json("jobs")) == len(jobs) + 1

    before = {j["id"] for j in cell.json("jobs")}
    cell.stop()
    cell.start()
    assert {j["id"] for j in cell.json("jobs")} == before
