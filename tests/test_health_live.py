"""Health checks end to end: the example web service through real replicas, a
real service scheduler and real agents running its real servers (`omega up`).
Each task binds a port the OS picks, declares it in `$OMEGA_PORT_FILE`, and
the agent's http check on `/healthz` judges it; `omega tasks --json` then
shows every task running, healthy and on its job's spec version, spread over
machines and racks, and the table shows the health column; `omega endpoints` lists
where each serves (the port its agent reported, at the agent's host), and each answers
there."""

from __future__ import annotations

import urllib.request

import pytest

from harness.upcell import up_cell, wait_for

pytestmark = pytest.mark.slow


def test_the_example_web_service_runs_healthy(tmp_path):
    # Four agents in two racks, as `./setup.sh demo` runs.
    with up_cell(tmp_path / "cell", "--agents", "4") as cell:
        cell.start()
        job = cell.json("submit", "examples/web-service.yaml")["id"]

        def all_healthy() -> list[dict] | None:
            tasks = cell.json("tasks", "--job", job)
            ok = len(tasks) == 3 and all(
                t["state"] == "running" and t["healthy"] is True for t in tasks
            )
            return tasks if ok else None

        tasks = wait_for("three running, healthy tasks", all_healthy)
        assert isinstance(tasks, list)
        assert all(t["version"] == 1 and t["restarts"] == 0 for t in tasks), tasks
        # `spread: domain` among three schedulers with conflict avoidance on: three
        # machines, both of `omega up`'s racks (all three once ran on one machine).
        domain = {n["id"]: n["domain"] for n in cell.json("nodes")}
        on = [t["machine"] for t in tasks]
        assert len(set(on)) == 3 and len({domain[m] for m in on}) == 2, (on, domain)
        table = cell.omega("tasks", "--job", job).stdout
        assert "health" in table and table.count("healthy") >= 3, table

        # Where they serve: each task's agent reported the port it declared, and
        # `omega endpoints` joins it to its machine's host; each answers at that address.
        def three_endpoints() -> list[dict] | None:
            found = cell.json("endpoints", job, "--ready")
            return found if len(found) == 3 else None

        served = wait_for("three ready endpoints", three_endpoints)
        assert isinstance(served, list)
        assert {e["task"] for e in served} == {t["id"] for t in tasks}, served
        assert {e["machine"] for e in served} == set(on), served
        for endpoint in served:
            assert endpoint["address"] == f"127.0.0.1:{endpoint['port']}", endpoint
            with urllib.request.urlopen(f"http://{endpoint['address']}/healthz", timeout=10) as r:
                assert r.read() == b"ok\n"
        ports = {t["id"]: t["port"] for t in cell.json("tasks", "--job", job)}
        assert ports == {e["task"]: e["port"] for e in served}, ports
        listed = cell.omega("endpoints", job).stdout
        assert all(e["address"] in listed for e in served), listed
        unknown = cell.omega("endpoints", "no-such-job", check=False)
        assert unknown.returncode != 0 and "no-such-job" in unknown.stderr, unknown

        # A job without a check has no health: null, not false.
        other = cell.json("submit", "examples/batch-squares.yaml")["id"]
        wait_for(
            "a batch task placed",
            lambda: any(t["machine"] for t in cell.json("tasks", "--job", other)),
        )
        assert {t["healthy"] for t in cell.json("tasks", "--job", other)} == {None}
        # A task that declared no port serves nowhere anyone was told of.
        assert cell.json("endpoints", other) == []
        assert "has no endpoint" in cell.omega("endpoints", other).stdout

        # An ended task has no health: its last verdict read "killed  healthy".
        cell.omega("kill", job)

        def all_killed() -> list[dict] | None:
            tasks = cell.json("tasks", "--job", job)
            return tasks if all(t["state"] == "killed" for t in tasks) else None

        killed = wait_for("the web tasks killed", all_killed)
        assert {t["healthy"] for t in killed} == {None}, killed
        assert cell.json("endpoints", job) == [], "a killed task serves nowhere"
        assert "healthy" not in cell.omega("tasks", "--job", job).stdout
