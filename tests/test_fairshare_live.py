"""Weighted DRF on a real cell (#18 part 1), used only through `omega`: weights set
and read from the CLI, bad weights refused naming the owner and changing nothing,
and room freed in a flooded cell split between two owners by their weights."""

from __future__ import annotations

import pytest

from harness.upcell import up_cell, wait_for

pytestmark = pytest.mark.slow

SPEC = """\
name: {name}
owner: {owner}
scheduler: batch
tasks: {tasks}
resources: {{cpu: {cpu}m, memory: 8Mi}}
command: ["sleep", "600"]
grace_period: 1
"""
SLOTS = 20  # tasks the cell holds: each task takes 1/20 of its cpu


def test_weights_split_freed_room_3_to_1(tmp_path):
    with up_cell(
        tmp_path / "cell", "--replicas", "1", "--agents", "2", "--schedulers", "batch"
    ) as cell:
        cell.start()
        # A new cell has none: said so, not an empty table.
        said = cell.omega("weights", "get").stdout
        assert "no owner holds resources or has a weight: every owner weighs 1" in said, said
        cell.omega("weights", "set", "team-a=3", "team-b=1")
        assert {w["owner"]: w["weight"] for w in cell.json("weights", "get")} == {"team-a": 3.0}
        for words, code, said in (
            (["team-a=0"], 2, "positive"),
            (["team-b=-1"], 2, "positive"),
            (["team-a=x"], 2, "not a number"),
            (["team-a=2", "Team_B=2"], 1, "weights.Team_B"),
        ):
            out = cell.omega("weights", "set", *words, check=False)
            assert out.returncode == code and said in out.stderr, out
        assert {w["owner"]: w["weight"] for w in cell.json("weights", "get")} == {"team-a": 3.0}

        total = sum(n["capacity"]["cpu_milli"] for n in cell.json("nodes"))
        cpu = total // SLOTS

        def submit(name: str, owner: str, tasks: int) -> None:
            path = tmp_path / f"{name}.yaml"
            path.write_text(SPEC.format(name=name, owner=owner, tasks=tasks, cpu=cpu))
            cell.omega("submit", str(path), "--id", name)

        def placed() -> dict[str, int]:
            counts: dict[str, int] = {}
            for task in cell.json("tasks"):
                if task["machine"] is not None and task["state"] in (
                    "assigned",
                    "starting",
                    "running",
                ):
                    counts[task["job"]] = counts.get(task["job"], 0) + 1
            return counts

        # A third owner fills the cell; both teams flood it behind.
        submit("hog", "team-c", SLOTS)
        wait_for("the hog to fill the cell", lambda: placed().get("hog") == SLOTS)
        submit("flood-a", "team-a", 3 * SLOTS)
        submit("flood-b", "team-b", 3 * SLOTS)
        cell.omega("kill", "hog")
        got = wait_for(
            "the freed room to be taken",
            lambda: (p := placed()).get("flood-a", 0) + p.get("flood-b", 0) == SLOTS and p,
        )
        assert got["flood-a"] == 3 * SLOTS // 4 and got["flood-b"] == SLOTS // 4, got
        shown = cell.omega("weights", "get").stdout
        assert "team-a" in shown and "75.0%" in shown and "25.0%" in shown, shown
        shares = {w["owner"]: w for w in cell.json("weights", "get")}
        assert shares["team-a"]["weighted_share"] == pytest.approx(
            shares["team-b"]["weighted_share"], rel=0.1
        )
