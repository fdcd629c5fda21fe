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
