"""`omega up --submit` on a data dir it ran before: the cell comes back with its jobs, and a
spec whose job is still live is not submitted a second time (the demo, started twice, ran
two copies of its web service side by side). A finished batch job's spec runs again. A
machine an operator took down stays down, and the cell is ready all the same."""

from __future__ import annotations

import pytest

from harness.upcell import up_cell, wait_for

pytestmark = pytest.mark.slow

SPECS = ("--submit", "examples/web-service.yaml", "--submit", "examples/batch-squares.yaml")


def named(cell, name: str) -> list[dict]:
    return [j for j in cell.json("jobs") if j["name"] == name]


def said_after_ready(cell, wanted: int) -> list[str]:
    """The next `wanted` lines of `omega up`'s output that name a spec file."""
    assert cell.proc is not None and cell.proc.stdout is not None
    lines: list[str] = []
    while len(lines) < wanted:
        line = cell.proc.stdout.readline()
        assert line, f"omega up ended; it said {lines}"
        if "examples/" in line:
            lines.append(line.strip())
    return lines


def test_omega_up_again_brings_back_a_live_job_instead_of_a_second_copy(tmp_path):
    with up_cell(tmp_path / "cell", "--replicas", "1", *SPECS) as cell:
        cell.start()
        said_after_ready(cell, 2)
        web = wait_for("web running", lambda: named(cell, "web"))[0]["id"]
        # A second `omega up` on the running cell's dir is refused at once, naming the
        # first; the first runs on.
        second = cell.omega("up", "--data-dir", str(cell.data_dir), check=False, timeout=60)
        assert second.returncode == 1, second
        assert f"in use by another omega up (pid {cell.proc.pid})" in second.stderr, second
        wait_for(
            "squares done", lambda: [j for j in named(cell, "squares") if j["state"] == "done"]
        )
        # An operator's down is kept when its agent registers again: `omega up` waited for
        # every machine to be up, gave up after 90 s and took the whole cell down.
        cell.omega("node", "state", "agent-0", "down")
        cell.stop()

        cell.start()
        said = said_after_ready(cell, 2)
        states = {m["id"]: m["state"] for m in cell.json("nodes")}
        assert states["agent-0"] == "down" and states["agent-1"] == "up", states
        assert said[0].startswith("examples/web-service.yaml: job " + web), said
        assert "not submitted again" in said[0], said
        assert said[1].startswith("submitted examples/batch-squares.yaml as job squares-"), said
        assert [j["id"] for j in named(cell, "web")] == [web]
        assert len(named(cell, "squares")) == 2


def test_an_ended_job_is_forgotten_after_the_retention_and_its_story_stays_in_the_log(tmp_path):
    """`omega up --job-retention 3`: a batch job done 3 s ago is purged by the leader
    (`PurgeJobs`); the scheduler's and the agent's copies follow, its id is free again, and
    `omega events --job` still tells its story from the log."""
    args = ("--replicas", "1", "--agents", "1", "--schedulers", "batch", "--job-retention", "3")
    with up_cell(tmp_path / "cell", *args) as cell:
        cell.start()
        cell.omega("submit", "examples/batch-squares.yaml", "--id", "sq", "--wait")
        assert cell.json("job", "sq")["state"] == "done"
        wait_for("sq purged", lambda: not named(cell, "squares"), timeout=60)
        gone = cell.omega("job", "sq", check=False)
        assert gone.returncode == 1 and "job_unknown" in gone.stderr, gone
        story = cell.omega("events", "--job", "sq").stdout
        assert "job sq submitted (8 tasks, batch)" in story, story
        assert "job sq purged: it had ended before" in story, story
        nothing = cell.omega("events", "--job", "nope", check=False)
        assert nothing.returncode == 1, nothing
        assert "no job 'nope' in the cell or its log" in nothing.stderr, nothing
        # The same id again, placed and run by the same scheduler and agent.
        cell.omega("submit", "examples/batch-squares.yaml", "--id", "sq", "--wait")
        assert cell.json("job", "sq")["tasks"] == {"exited": 8}
