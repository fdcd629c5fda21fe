"""What-if plans on a real cell (#18 part 3), used only through `omega`: with nothing
changed in between, `submit --plan` places exactly what `plan` planned; a change to a
planned machine in between is refused naming it, and nothing is submitted; a malformed
token is refused before anything is sent."""

from __future__ import annotations

import pytest

from harness.upcell import up_cell, wait_for

pytestmark = pytest.mark.slow

SPEC = """\
name: {name}
scheduler: batch
tasks: 3
resources: {{cpu: 100m, memory: 8Mi}}
command: ["sleep", "600"]
grace_period: 1
"""


def test_plan_then_submit_places_exactly_the_plan_or_nothing(tmp_path):
    with up_cell(
        tmp_path / "cell", "--replicas", "1", "--agents", "2", "--schedulers", "batch"
    ) as cell:
        cell.start()
        path = tmp_path / "web.yaml"
        path.write_text(SPEC.format(name="web"))

        found = cell.json("plan", str(path), "--id", "web-1")
        assert found["fits"] == 3 and found["job"] == "web-1", found
        planned = {p["task"]: p["machine"] for p in found["placements"]}
        shown = cell.omega("plan", str(path), "--id", "web-1").stdout
        assert "3 of 3 tasks fit" in shown and "plan token:" in shown, shown
        # The command to commit the plan, as printed, is one line a person can copy:
        # the console's width must not break the token.
        lines = shown.splitlines()
        assert f"commit it: omega submit {path} --plan {found['token']}" in lines, shown
        cell.omega("submit", str(path), "--plan", found["token"])
        placed = {t["id"]: t["machine"] for t in cell.json("tasks", "--job", "web-1")}
        assert placed == planned

        # A planned machine changes before the submit: refused, naming it; nothing submitted.
        other = tmp_path / "api.yaml"
        other.write_text(SPEC.format(name="api"))
        stale = cell.json("plan", str(other), "--id", "api-1")
        machine = stale["placements"][0]["machine"]
        cell.omega("node", "state", machine, "draining")
        cell.omega("node", "state", machine, "up")
        refused = cell.omega("submit", str(other), "--plan", stale["token"], check=False)
        assert refused.returncode == 1, refused
        assert "plan_stale" in refused.stderr and machine in refused.stderr, refused.stderr
        assert "nothing was submitted" in refused.stderr
        assert "api-1" not in {j["id"] for j in cell.json("jobs")}

        # Bad tokens: malformed, or made for another spec.
        garbage = cell.omega("submit", str(other), "--plan", "not-a-token", check=False)
        assert garbage.returncode == 2 and "plan token" in garbage.stderr, garbage
        wrong = cell.omega("submit", str(path), "--plan", stale["token"], check=False)
        assert wrong.returncode == 2 and "another spec" in wrong.stderr, wrong
        assert "api-1" not in {j["id"] for j in cell.json("jobs")}

        # A fresh plan of the same job goes through, and the job runs. web-1's running
        # tasks report usage, which may move their machines' reservations (and seqnums)
        # between a plan and its submit: plans are optimistic, so plan again then.
        def plan_and_submit() -> bool:
            fresh = cell.json("plan", str(other), "--id", "api-1")
            out = cell.omega("submit", str(other), "--plan", fresh["token"], check=False)
            assert out.returncode == 0 or "plan_stale" in out.stderr, out
            return out.returncode == 0

        wait_for("a plan of api-1 to stay fresh until its submit", plan_and_submit)
        wait_for(
            "api-1 running",
            lambda: all(t["state"] == "running" for t in cell.json("tasks", "--job", "api-1")),
        )

        # An owner whose quota admits two of the three: the plan places two, and says
        # what holds back the third.
        capped = tmp_path / "capped.yaml"
        capped.write_text("owner: team-q\n" + SPEC.format(name="capped"))
        cell.omega("quota", "set", "team-q", "batch", "cpu=250m")
        shown = cell.omega("plan", str(capped)).stdout
        assert "2 of 3 tasks fit" in shown, shown
        assert "the rest: quota_exceeded:cpu (1 held back by team-q's quota in batch)" in shown

        # A plan that places nothing offers no token to commit it.
        nothing = cell.omega("plan", "examples/unplaceable.yaml").stdout
        assert "0 of 1 task fit" in nothing and "nothing to commit" in nothing, nothing
        assert "plan token" not in nothing and "--plan" not in nothing, nothing

        # A job of a class no scheduler runs for: `--wait` says so when it gives up, as
        # `omega explain` does, rather than only `pending=3`.
        waited = cell.omega(
            "submit",
            "examples/web-service.yaml",
            "--id",
            "web-svc",
            "--wait",
            "--timeout",
            "2",
            check=False,
        )
        assert waited.returncode == 1, waited
        assert "not settled after 2 s: pending=3; no scheduler has reported on it" in (
            waited.stderr
        ), waited.stderr
        assert "is a service scheduler running?" in waited.stderr
        told = cell.omega("explain", "web-svc").stdout
        assert "3 tasks pending; no scheduler has reported on them yet" in told, told
