"""Cell compaction on a live cell's snapshot (#18 part 2), used only through `omega`:
`omega snapshot save FILE` writes the real cell's state, and `omega bench compaction
--snapshot FILE` runs the real scheduler core on its machines and jobs (the running tasks
and the pending ones alike)."""

from __future__ import annotations

import json

import pytest

from harness.upcell import up_cell, wait_for

pytestmark = pytest.mark.slow

SPEC = """\
name: {name}
scheduler: batch
tasks: {tasks}
resources: {{cpu: {cpu}, memory: 8Mi}}
command: ["sleep", "600"]
grace_period: 1
"""


def test_snapshot_of_a_live_cell_feeds_compaction(tmp_path):
    with up_cell(
        tmp_path / "cell", "--replicas", "1", "--agents", "2", "--schedulers", "batch"
    ) as cell:
        cell.start()
        nodes = cell.json("nodes")
        assert len(nodes) == 2, nodes
        milli = min(node["capacity"]["cpu_milli"] for node in nodes)
        # Two tasks of just over half a machine's cpu need both machines, whatever the
        # policy; three small ones fit beside them.
        for name, tasks, cpu in (("big", 2, f"{milli // 2 + 1}m"), ("small", 3, "100m")):
            spec = tmp_path / f"{name}.yaml"
            spec.write_text(SPEC.format(name=name, tasks=tasks, cpu=cpu))
            cell.omega("submit", str(spec), "--id", f"{name}-1")
        wait_for(
            "every task running",
            lambda: {t["state"] for t in cell.json("tasks")} == {"running"},
        )

        path = tmp_path / "cell.snapshot"
        saved = cell.omega("snapshot", "save", str(path))
        assert "saved the cell's snapshot" in saved.stdout, saved
        # Owner-only, as the data dir: job specs and their environments are in it.
        assert path.stat().st_mode & 0o777 == 0o600, oct(path.stat().st_mode)
        out = cell.omega(
            "bench",
            "compaction",
            "--snapshot",
            str(path),
            "--trials",
            "3",
            "--policies",
            "best-fit,worst-fit",
        )
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert summary["machines"] == 2 and summary["jobs"] == 2, summary
        assert summary["tasks"] == 5, summary
        for name in ("best-fit", "worst-fit"):
            assert summary["policies"][name]["sizes"] == [2, 2, 2], summary

        # One small task is enough for one machine: the smallest cell shrinks to one.
        cell.omega("kill", "big-1")
        wait_for("big-1 gone", lambda: cell.json("job", "big-1")["state"] != "running")
        cell.omega("snapshot", "save", str(path))
        out = cell.omega("bench", "compaction", "--snapshot", str(path), "--trials", "2")
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert summary["tasks"] == 3, summary
        assert {r["p90"] for r in summary["policies"].values()} == {1}, summary

        missing = cell.omega("snapshot", "save", str(tmp_path / "no" / "x"), check=False)
        assert missing.returncode == 2 and "does not exist" in missing.stderr, missing
