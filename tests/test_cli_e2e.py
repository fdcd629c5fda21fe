"""The CLI as a user drives it: `omega up`, every example job, kill, explain, restart.

Everything is real: `omega up` starts three replicas, three schedulers and two
agents running real processes; the test talks to it only through `omega`
commands and checks what they print.
"""

from __future__ import annotations

import json
import time

import pytest

from harness.upcell import up_cell

pytestmark = pytest.mark.slow


@pytest.fixture
def cell(tmp_path):
    with up_cell(tmp_path / "cell") as started:
        yield started


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
