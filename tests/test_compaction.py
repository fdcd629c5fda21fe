"""Cell compaction (#18 part 2, `cellsim.compaction`): the smallest cell a workload fits in
under each policy, the real scheduler core deciding on a real `CellState`.

Deterministic per seed; spreading needs at least as many machines as best fit on a
workload that rewards packing; the devices and disk a snapshot's jobs ask for are counted
by the real ledger; bad input (unknown preset, trials 0, an unreadable or foreign
snapshot) is refused with a clear error, exit 2, by both command lines.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cellsim import options
from cellsim.compaction import (
    POLICIES,
    CompactionError,
    CompactionWorkload,
    compact,
    fits,
    from_cell,
    from_preset,
    from_snapshot,
    main,
    trial_order,
)
from cellsim.workload import load
from cellstate import JobSpec, MachineSpec, Resources, SchedulerClass
from omega.cli import app
from tests.cellfixtures import GI, cell_with, commit, submit

BATCH = SchedulerClass.BATCH


def _flat(text: str) -> str:
    return re.sub(r"[\s│╭╮╰╯─]+", " ", text)


def test_policies_and_flags_match_across_the_command_lines():
    import argparse

    import typer.main

    assert list(options.POLICIES) == list(POLICIES)
    command = typer.main.get_command(app).commands["bench"].commands["compaction"]
    omega_flags = {o for p in command.params for o in p.opts if o.startswith("--")}
    parser = argparse.ArgumentParser()
    options.add_to_argparse(parser, flags=options.COMPACTION_FLAGS, experiment=False)
    argparse_flags = {o for a in parser._actions for o in a.option_strings}
    assert omega_flags == argparse_flags - {"-h", "--help"}
    assert omega_flags == {f.option for f in options.COMPACTION_FLAGS}


def test_compaction_is_deterministic_per_seed():
    """Cluster C's three machine types make the smallest cell depend on the order machines
    are removed in, and sampling and random fit draw from the seeded generators."""
    workload = from_preset(load("C").with_machines(60), seed=3)
    chosen = [POLICIES["best-fit"], POLICIES["random-fit"]]
    first = compact(workload, chosen, trials=3, seed=11).as_dict()
    again = compact(from_preset(load("C").with_machines(60), seed=3), chosen, 3, 11).as_dict()
    assert first == again
    assert from_preset(load("C").with_machines(60), seed=3) == workload
    # Each trial removes machines in its own order, fixed by (seed, trial).
    assert list(trial_order(workload, 11, 0)) != list(trial_order(workload, 11, 1))
    assert list(trial_order(workload, 11, 0)) == list(trial_order(workload, 11, 0))
    # No trial beats its own lower bound from demand and capacity, nor needs more than all.
    bounds = first["lower_bound"]["sizes"]
    for result in first["policies"].values():
        for size, bound in zip(result["sizes"], bounds, strict=True):
            assert bound <= size <= workload_machines(workload)


def workload_machines(workload: CompactionWorkload) -> int:
    return len(workload.machines)


def test_spreading_needs_at_least_as_many_machines_as_best_fit_when_packing_pays():
    """Twenty 1-core tasks then ten whole-machine tasks on 4-core machines: best fit packs
    the small ones four to a machine (15 machines in all); worst fit puts each on its own
    machine, so the big ones need ten machines left empty (30)."""
    machines = tuple(MachineSpec(f"m{i}", Resources(4000, 16 * GI)) for i in range(40))
    jobs = (
        ("a-small", JobSpec("a-small", "o", BATCH, Resources(1000, GI), tasks=20)),
        ("b-big", JobSpec("b-big", "o", BATCH, Resources(4000, GI), tasks=10)),
    )
    workload = CompactionWorkload("packing", machines, jobs)
    result = compact(workload, list(POLICIES.values()), trials=2, seed=1).as_dict()
    p90 = {name: r["p90"] for name, r in result["policies"].items()}
    assert p90["best-fit"] == p90["best-fit-all"] == 15
    for spreading in ("worst-fit", "worst-fit-all"):
        assert p90[spreading] >= p90["best-fit"]
    assert p90["worst-fit-all"] == 30
    # The smallest cell is one that fits, and one machine fewer does not.
    order = trial_order(workload, 1, 0)
    best = POLICIES["best-fit-all"]
    assert fits(workload, order[:15], best, 1) and not fits(workload, order[:14], best, 1)


def test_a_snapshot_with_devices_and_disk_is_counted_by_the_ledger(tmp_path: Path):
    """Eight machines, two of them with a gpu each and only they with disk: a job of two
    gpu tasks and one of disk tasks fit only in cells holding both gpu machines."""
    cell = cell_with(machines=6, cpu=4000, memory=8 * GI)
    from cellstate import RegisterMachines

    gpu = Resources(4000, 8 * GI, disk=100 * GI, gpu=1)
    cell.apply(RegisterMachines((MachineSpec("g0", gpu), MachineSpec("g1", gpu)), at=1.5))
    submit(cell, "train", tasks=2, cpu=500, extra={"gpu": 1})
    submit(cell, "scratch", tasks=2, cpu=500, extra={"disk": 60 * GI})
    submit(cell, "web", tasks=3, cpu=1000)
    commit(cell, ("train.0", "g1"), ("web.0", "m0"))
    path = tmp_path / "cell.snapshot"
    path.write_bytes(cell.snapshot())

    workload = from_snapshot(path)
    assert workload == from_cell(cell, "cell.snapshot")
    assert len(workload.machines) == 8 and workload.tasks == 7
    result = compact(workload, [POLICIES["best-fit"], POLICIES["hybrid"]], trials=4, seed=5)
    names = [m.id for m in workload.machines]
    for trial in range(4):
        order = [names[i] for i in trial_order(workload, 5, trial)]
        needed = max(order.index("g0"), order.index("g1")) + 1
        for policy in result.policies:
            assert policy.sizes[trial] >= needed, (policy.policy, trial, order)


def test_bad_input_is_refused_by_both_command_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    foreign = tmp_path / "not-a-snapshot.json"
    foreign.write_text('{"hello": 1}')
    cases = [
        (["--preset", "Z"], "--preset", "'Z' is not a preset: one of A, B, C"),
        (["--preset", "A", "--trials", "0"], "--trials", "a whole number of 1 or more"),
        (["--snapshot", str(tmp_path / "gone")], "--snapshot", "a readable file (no such file)"),
        (["--snapshot", str(foreign)], "--snapshot", "not a cell snapshot"),
        (["--preset", "A", "--policies", "best-fit,tightest"], "--policies", "from best-fit"),
        ([], "--preset", "give exactly one of --preset P and --snapshot FILE"),
    ]
    for argv, option, allowed in cases:
        result = CliRunner().invoke(app, ["bench", "compaction", *argv], env={"COLUMNS": "200"})
        text = _flat(result.output)
        assert result.exit_code == 2, (argv, text)
        assert option in text and allowed in text, (argv, text)
        with pytest.raises(SystemExit) as exit:
            main(argv)
        captured = capsys.readouterr()
        text = _flat(captured.out + captured.err)
        assert exit.value.code == 2, (argv, text)
        assert option in text and allowed in text, (argv, text)
    with pytest.raises(CompactionError, match="trials: 0"):
        compact(from_preset(load("A").with_machines(20), 1), [POLICIES["best-fit"]], 0, 1)


def test_the_command_prints_a_table_then_one_json_line_and_draws_the_plot(tmp_path: Path):
    png = tmp_path / "compaction.png"
    argv = ["--preset", "A", "--machines", "40", "--trials", "3", "--seed", "2"]
    argv += ["--policies", "best-fit,worst-fit,random-fit", "--plot", str(png)]
    result = CliRunner().invoke(app, ["bench", "compaction", *argv])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["bench"] == "compaction" and summary["machines"] == 40
    assert list(summary["policies"]) == ["best-fit", "worst-fit", "random-fit"]
    for name, figures in summary["policies"].items():
        assert len(figures["sizes"]) == 3
        assert figures["min"] <= figures["p90"] <= figures["max"] <= 40
        row = next(line for line in lines if line.startswith(name + " "))
        assert f" {figures['p90']} " in row
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_job_with_more_tasks_alive_than_a_spec_holds_goes_as_two(monkeypatch):
    """During a rollout a job at the size limit runs replacements beside the tasks they
    replace; every task alive still has to fit (the limit lowered here to 2)."""
    import cellsim.compaction

    monkeypatch.setattr(cellsim.compaction, "MAX_TASKS_PER_JOB", 2)
    cell = cell_with(machines=2)
    submit(cell, "web", tasks=3, cpu=1000)
    workload = from_cell(cell, "cell")
    assert [(job, spec.tasks) for job, spec in workload.jobs] == [("web", 2), ("web-part1", 1)]


def test_a_workload_that_does_not_fit_the_whole_cell_names_the_job_and_why():
    # A live cell's snapshot may hold a job pending for good (a constraint no machine
    # meets): the error said only that the workload did not fit.
    machines = tuple(MachineSpec(f"m{i}", Resources(4000, 16 * GI)) for i in range(4))
    jobs = (
        ("web", JobSpec("web", "o", BATCH, Resources(1000, GI), tasks=3)),
        (
            "needs-gpu",
            JobSpec("needs-gpu", "o", BATCH, Resources(1000, GI), constraints={"accel": "gpu"}),
        ),
    )
    workload = CompactionWorkload("live", machines, jobs)
    with pytest.raises(CompactionError) as caught:
        compact(workload, [POLICIES["best-fit"]], trials=1, seed=1)
    assert "job needs-gpu: 0 of 1 tasks placed (constraint:accel)" in str(caught.value)


def test_a_snapshot_job_no_machine_can_take_is_left_out_and_named(tmp_path: Path):
    """`omega bench compaction --snapshot` of a live cell holding a job pending for good
    (a constraint no machine meets, a task larger than every machine) refused the whole
    workload; it now measures the rest and names what it left out, and why."""
    cell = cell_with(machines=4, cpu=4000, memory=8 * GI)
    submit(cell, "web", tasks=6, cpu=1000)
    submit(cell, "needs-gpu", tasks=2, cpu=100, constraints={"accel": "gpu"})
    submit(cell, "needs-gpu-too", tasks=1, cpu=100, constraints={"accel": "gpu"})
    submit(cell, "huge", tasks=1, cpu=5000)
    path = tmp_path / "live.snap"
    path.write_bytes(cell.snapshot())
    argv = ["--snapshot", str(path), "--trials", "2", "--policies", "best-fit"]
    result = CliRunner().invoke(app, ["bench", "compaction", *argv], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    summary = json.loads(lines[-1])
    assert (summary["jobs"], summary["tasks"]) == (1, 6)
    left = {job["job"]: job for job in summary["left_out"]}
    assert sorted(left) == ["huge", "needs-gpu", "needs-gpu-too"]
    assert left["needs-gpu"]["tasks"] == 2
    assert "0/4 machines fit: 4 constraint:accel" in left["needs-gpu-too"]["why"]
    assert left["needs-gpu-too"]["why"].startswith("job needs-gpu-too:")
    assert "insufficient:cpu" in left["huge"]["why"]
    assert any(
        line.startswith("left out, fits no machine of the cell: job huge:") for line in lines
    )
    # Nothing left to measure: refused, naming the snapshot.
    cell = cell_with(machines=2)
    submit(cell, "needs-gpu", constraints={"accel": "gpu"})
    path.write_bytes(cell.snapshot())
    result = CliRunner().invoke(app, ["bench", "compaction", "--snapshot", str(path)])
    assert result.exit_code == 2, result.output
    assert "no job left that a machine of the cell could take" in _flat(result.output)


def test_a_decision_that_places_nothing_says_which_job_and_why():
    machines = tuple(MachineSpec(f"m{i}", Resources(4000, 16 * GI)) for i in range(4))
    spec = JobSpec("needs-gpu", "o", BATCH, Resources(1000, GI), constraints={"accel": "gpu"})
    workload = CompactionWorkload("live", machines, (("needs-gpu", spec),))
    with pytest.raises(CompactionError) as caught:
        compact(workload, [POLICIES["best-fit"]], trials=1, seed=1)
    assert "job needs-gpu: 1 pending" in str(caught.value)
    assert "0/4 machines fit: 4 constraint:accel" in str(caught.value)
