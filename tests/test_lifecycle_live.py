"""Changing a running job end to end: real replicas, a real service scheduler,
real agents running the example's real HTTP servers (`omega up`), driven with
the `omega` CLI. A checker follows the store's watch feed and replays every
command into its own cell state, so the budget is checked at every version of
the cell, not at the moments a poll happens to look."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.budget import BudgetChecker
from harness.upcell import up_cell, wait_for

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).parent.parent / "examples" / "web-rolling.yaml"


# The example's update timings are a person's to watch; what this test checks (the budget,
# the revert, the canary) holds as well at shorter ones, and each second of min_healthy_time
# is paid once per round of every update below.
QUICK = {"min_healthy_time": 1}


def spec_file(tmp_path: Path, name: str, update: dict | None = None, **env: str) -> str:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["env"] = {**doc["env"], **env}
    doc["update"] = {**doc["update"], **QUICK, **(update or {})}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_update_revert_canary_scale_and_drain_keep_the_budget(tmp_path):
    with up_cell(tmp_path / "cell", "--agents", "3") as cell:
        cell.start()
        submitted = cell.json("submit", str(EXAMPLE), "--id", "web")
        assert submitted["id"] == "web"

        def available() -> int:
            return cell.json("job", "web")["available"]

        wait_for("six healthy tasks", lambda: available() == 6)
        with BudgetChecker(
            cell.env["OMEGA_ADDR"], cell.env["OMEGA_TOKEN"], "web", cell.env["OMEGA_CA"]
        ) as checker:
            checker.measure_from(cell.json("status")["version"])

            # v1 -> v2: two at a time, every task ends on v2.
            out = cell.omega("update", "web", spec_file(tmp_path, "v2", VERSION="v2"), "--wait")
            assert "succeeded" in out.stdout, out.stdout
            tasks = [t for t in cell.json("tasks", "--job", "web") if t["state"] == "running"]
            assert len(tasks) == 6 and {t["version"] for t in tasks} == {2}, tasks
            assert all(t["healthy"] is True for t in tasks)

            # A broken v3: its update fails, the job returns to v2's spec.
            # Its tasks never become healthy, however long the deadline: no need to wait 15 s.
            broken = spec_file(
                tmp_path, "v3", update={"healthy_deadline": 4}, VERSION="v3", BROKEN="1"
            )
            out = cell.omega("update", "web", broken, "--wait", check=False)
            assert out.returncode == 1, out.stdout + out.stderr
            assert "reverted to version 4" in out.stderr, out.stderr
            job = cell.json("job", "web")
            assert job["version"] == 4 and job["stable_version"] == 4
            wait_for("six healthy tasks again", lambda: available() == 6)
            history = cell.json("history", "web")
            assert [r["state"] for r in history["rollouts"]] == ["succeeded", "reverted"]
            assert "env.VERSION: 'v1' -> 'v2'" in history["versions"][1]["changes"]
            assert not any(
                t["version"] == 3 and t["state"] == "running"
                for t in cell.json("tasks", "--job", "web")
            )

            # A canary update waits for `omega promote`; --plan commits nothing.
            canary = yaml.safe_load(EXAMPLE.read_text())
            canary["env"] = {"VERSION": "v5"}
            canary["update"] = {**canary["update"], **QUICK, "canary": 1}
            path = tmp_path / "v5.yaml"
            path.write_text(yaml.safe_dump(canary))
            plan = cell.json("update", "web", str(path), "--plan")
            assert "env.VERSION: 'v2' -> 'v5'" in plan["changes"], plan
            assert plan["claims"] and cell.json("job", "web")["version"] == 4
            cell.omega("update", "web", str(path))
            wait_for(
                "one healthy canary",
                lambda: (
                    sum(
                        t["version"] == 5 and t["healthy"] is True
                        for t in cell.json("tasks", "--job", "web")
                    )
                    == 1
                ),
            )
            assert cell.json("job", "web")["rollout"]["state"] == "canary"
            assert sum(t["state"] == "running" for t in cell.json("tasks", "--job", "web")) == 7
            cell.omega("promote", "web")
            wait_for(
                "the canary update done",
                lambda: cell.json("job", "web")["rollout"]["state"] == "succeeded",
            )

            # Scale up, then down within the budget, highest index first.
            checker.measuring = False  # new tasks are missing until they run, not disrupted
            cell.omega("scale", "web", "10")
            wait_for("ten healthy tasks", lambda: available() == 10)
            checker.measure_from(cell.json("status")["version"])
            cell.omega("scale", "web", "3")
            wait_for(
                "three tasks left",
                lambda: (
                    sorted(
                        t["index"]
                        for t in cell.json("tasks", "--job", "web")
                        if t["state"] == "running"
                    )
                    == [0, 1, 2]
                ),
            )
            assert checker.failure is None, checker.failure
            assert checker.worst <= 2, checker.worst

        # Bad input changes nothing and names what is wrong.
        bad = cell.omega("scale", "web", "-1", check=False)
        assert bad.returncode == 2 and "tasks: -1 is out of range: use 0" in bad.stderr, bad
        empty = yaml.safe_load(EXAMPLE.read_text())
        empty["tasks"] = 0
        path = tmp_path / "empty.yaml"
        path.write_text(yaml.safe_dump(empty))
        refused = cell.omega("submit", str(path), "--id", "empty", check=False)
        assert refused.returncode != 0 and "must be in 1..100000, got 0" in refused.stderr
        assert "empty" not in {j["id"] for j in cell.json("jobs")}
        again = cell.omega("submit", str(EXAMPLE), "--id", "web", check=False)
        assert again.returncode == 1, again
        said = " ".join(again.stderr.split())  # as one line, however the console wrapped it
        assert (
            "job web exists (running): nothing submitted; choose another --id, or change it "
            f"with omega update web {EXAMPLE}"
        ) in said, again.stderr
        gone = cell.omega("update", "nope", str(EXAMPLE), check=False)
        assert gone.returncode == 1 and "job_unknown" in gone.stderr
        other = yaml.safe_load(EXAMPLE.read_text())
        other.update(scheduler="batch", priority="batch")
        path = tmp_path / "batch.yaml"
        path.write_text(yaml.safe_dump(other))
        changed = cell.omega("update", "web", str(path), check=False)
        assert changed.returncode == 1 and "spec.scheduler" in changed.stderr
        renamed = yaml.safe_load(EXAMPLE.read_text())
        renamed.update(name="db", env={"VERSION": "db"})
        path.write_text(yaml.safe_dump(renamed))
        changed = cell.omega("update", "web", str(path), check=False)
        assert changed.returncode == 1, changed
        assert "name_changed: 'db' is not this job's name ('web')" in changed.stderr
        assert "(spec.name)" in changed.stderr
        drain = cell.omega("drain", "no-such-machine", check=False)
        assert drain.returncode == 1 and "machine_unknown" in drain.stderr
        assert cell.json("job", "web")["version"] == 7

        # A drain with a deadline: tasks move (replacement first), the rest is evicted.
        machine = next(t["machine"] for t in cell.json("tasks", "--job", "web") if t["machine"])
        cell.omega("drain", machine, "--deadline", "30")
        wait_for(
            "the drained machine empty",
            lambda: (
                not any(
                    t["machine"] == machine and t["state"] == "running"
                    for t in cell.json("tasks", "--job", "web")
                )
            ),
        )
        assert next(n for n in cell.json("nodes") if n["id"] == machine)["state"] == "draining"
        wait_for("three healthy tasks elsewhere", lambda: available() == 3)
        cell.omega("drain", machine, "--undo")
        assert next(n for n in cell.json("nodes") if n["id"] == machine)["state"] == "up"

        # To zero and back, as `kubectl scale --replicas=0` does: the job is kept, idle, with
        # its versions (the leader does not purge it as an ended one), and places anew.
        cell.omega("scale", "web", "0")
        wait_for("the job idle", lambda: cell.json("job", "web")["state"] == "idle")
        assert not any(t["state"] == "running" for t in cell.json("tasks", "--job", "web"))
        assert {j["id"]: j["state"] for j in cell.json("jobs")}["web"] == "idle"
        idle = cell.omega("restart", "web", check=False)
        assert idle.returncode == 1 and "web is idle (scaled to zero)" in idle.stderr, idle
        cell.omega("scale", "web", "2")
        wait_for("two healthy tasks again", lambda: available() == 2)
        assert cell.json("job", "web")["state"] == "running"
        assert cell.json("job", "web")["version"] == 9

        # A rolling restart: every task replaced by a fresh one as an update replaces them
        # (a version whose only change is OMEGA_RESTARTED_AT), none lost on the way; the
        # job's update policy holds, so its canary (v5 on) waits for `omega promote`.
        running = {t["id"] for t in cell.json("tasks", "--job", "web") if t["state"] == "running"}
        out = cell.omega("restart", "web")
        assert "web updating to version 10" in " ".join(out.stdout.split()), out.stdout
        wait_for("the canary", lambda: cell.json("job", "web")["rollout"]["state"] == "canary")
        cell.omega("promote", "web")
        wait_for(
            "the restart done", lambda: cell.json("job", "web")["rollout"]["state"] == "succeeded"
        )
        history = cell.json("history", "web")
        assert history["version"] == 10
        assert [c.split(":")[0] for c in history["versions"][-1]["changes"]] == [
            "env.OMEGA_RESTARTED_AT"
        ], history["versions"][-1]["changes"]
        now = [t for t in cell.json("tasks", "--job", "web") if t["state"] == "running"]
        assert len(now) == 2 and running.isdisjoint(t["id"] for t in now), now
        assert available() == 2
        unknown = cell.omega("restart", "nope", check=False)
        assert unknown.returncode == 1 and "job_unknown" in unknown.stderr, unknown
