"""How the CLI's tables give way on a narrow terminal: ids stay whole (`omega.cli.whole`)."""

from __future__ import annotations

import pytest
from rich.console import Console
from rich.table import Table

from cellstate import CellState
from omega.cli import whole

IDS = ["web-2843d4.0", "web-2843d4.1", "gpu-train-18449f.2"]


def rendered(table: Table, width: int) -> str:
    out = Console(width=width, force_terminal=True, color_system=None, record=True)
    out.print(table)
    return out.export_text()


def narrow_table() -> Table:
    table = Table("id", "job", "state", "health", "machine", "incarnation", "exit", "reason")
    for tid in IDS:
        job = tid.rpartition(".")[0]
        table.add_row(tid, job, "running", "healthy", "agent-12", "0", "-", "preempted by x")
    return table


def test_id_columns_stay_whole_and_the_others_give_way():
    text = rendered(whole(narrow_table(), "id", "job", "machine"), 60)
    for tid in IDS:
        assert tid in text and tid.rpartition(".")[0] in text, text
    assert "agent-12" in text
    assert max(len(line) for line in text.splitlines()) <= 60, text


def test_without_it_rich_cuts_the_ids_which_is_what_this_guards_against():
    text = rendered(narrow_table(), 60)
    assert not all(tid in text for tid in IDS), text


def test_a_table_that_fits_is_unchanged():
    table = narrow_table()
    assert rendered(whole(table, "id"), 200) == rendered(narrow_table(), 200)


def test_the_command_list_gives_each_summary_as_one_paragraph():
    # Typer's rich help kept the line breaks of a docstring's first paragraph in the list
    # of commands: `up`'s summary broke after "CA in", mid-sentence, whatever the width.
    from typer.testing import CliRunner

    from omega.cli import app

    for argv, summary in (
        ([], "with a throwaway CA in the data dir, and each scheduler and agent with a token"),
        ([], "exited with their code, preempted (by whom), lost; machines up, draining, down,"),
        (["weights"], "keep theirs; 1 is the default). All or none: one bad word changes nothing."),
    ):
        shown = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "300"}).output
        assert summary in shown, shown


def test_a_command_s_help_says_what_each_of_its_arguments_is():
    # Click 8.5 gave `Argument` a `help` of its own, which wiped the one typer 0.24 keeps:
    # every `omega ... --help` listed its arguments with no word on what they are.
    from typer.testing import CliRunner

    from omega.cli import app

    for argv, told in (
        (["kill"], "Job id (or -l to choose jobs by label)."),
        (["node", "remove"], "Machine ids, each down (or -l to choose down machines by label)."),
        (["node", "state"], "up, draining or down."),
    ):
        shown = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "300"}).output
        assert told in shown, shown


def test_status_keeps_scheduler_names_whole_at_80_columns():
    from omega.cli import status_tables

    found = {
        "replicas": [{"replica": "r0", "api": "127.0.0.1:48723", "is_leader": True}],
        "schedulers": [
            {"name": name, "kind": "batch", "figures": {"transactions": 3}, "blocked": 0}
            for name in ("best-effort", "batch-sharded-1")
        ],
        "agents": {"up": 4},
        "jobs": 6,
        "tasks": {"running": 3},
        "version": 61,
    }
    out = Console(width=80, force_terminal=True, color_system=None, record=True)
    out.print(status_tables(found))
    text = out.export_text()
    assert "best-effort" in text and "batch-sharded-1" in text and "127.0.0.1:48723" in text
    assert "machines: up=4   jobs: 6   tasks: running=3   version: 61" in text

    # A new cell: no machines and no tasks read "0", as its jobs do, not "-".
    new = {**found, "schedulers": [], "agents": {}, "jobs": 0, "tasks": {"running": 0}}
    new["version"] = 2
    out = Console(width=80, force_terminal=True, color_system=None, record=True)
    out.print(status_tables(new))
    assert "machines: 0   jobs: 0   tasks: 0   version: 2" in out.export_text()


def test_omega_job_reads_as_people_read_a_job():
    # It printed `submitted_at 1796175872.17`, resources and the command as Python reprs,
    # and a value with `[...]` in it went through rich's markup.
    import time

    from omega.cli import job_facts

    at = 1796175872.25
    facts = dict(
        job_facts(
            {
                "id": "web-0ca88c",
                "name": "web",
                "tasks": {"running": 6},
                "submitted_at": at,
                "resources": {"cpu": "100m", "cpu_milli": 100, "memory": "64Mi"}
                | {"memory_bytes": 64 << 20, "gpu": 1},
                "command": ["sh", "-c", "echo [red]hi; sleep 1"],
                "labels": {"team": "ml", "omega.internal": "x"},
                "rollout": None,
            }
        )
    )
    assert facts["submitted_at"] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    assert facts["resources"] == "cpu 100m, memory 64Mi, gpu 1"
    assert facts["command"] == "sh -c 'echo [red]hi; sleep 1'"
    assert facts["labels"] == "team=ml"
    assert facts["rollout"] == "-" and facts["tasks"] == "running=6"


def test_omega_job_prints_brackets_in_a_command_as_they_are(monkeypatch):
    # Through rich's markup `echo [red]hi[/red]` printed as `echo hi`.
    from typer.testing import CliRunner

    import omega.cli
    from omega.cli import app

    record = {"id": "br-1", "tasks": {}, "command": ["sh", "-c", "echo [red]hi[/red] [bold]"]}
    monkeypatch.setattr(omega.cli, "call", lambda addr, token, fn: record)
    shown = CliRunner().invoke(app, ["job", "br-1", "--token", "t", "--addr", "x"]).output
    assert "command sh -c 'echo [red]hi[/red] [bold]'" in shown, shown
    # A script as the command keeps to the value column, line after line.
    record["command"] = ["python3", "-c", "import os\n\nprint(os.getpid())"]
    shown = CliRunner().invoke(app, ["job", "br-1", "--token", "t", "--addr", "x"]).output
    lines = shown.splitlines()
    first = next(i for i, line in enumerate(lines) if "command python3" in line)
    column = lines[first].index("python3")
    assert lines[first + 1 :][:2] == ["", " " * column + "print(os.getpid())'"], shown


def test_history_and_explain_print_a_specs_brackets_as_they_are(monkeypatch):
    from typer.testing import CliRunner

    import omega.cli
    import omega.lifecycle
    from omega.cli import app

    view = {
        "version": 2,
        "stable_version": 1,
        "versions": [
            {"version": 1, "made_at": 0.0, "changes": []},
            {"version": 2, "made_at": 1.0, "changes": ["env.TAG: 'a' -> '[red]b[/red]'"]},
        ],
        "rollouts": [{"version": 2, "previous": 1, "state": "failed", "reason": "[bold]x"}],
    }
    monkeypatch.setattr(omega.lifecycle, "history_of", lambda addr, token, job: view)
    argv = ["--token", "t", "--addr", "x"]
    shown = CliRunner().invoke(app, ["history", "j", *argv], env={"COLUMNS": "200"}).output
    assert "env.TAG: 'a' -> '[red]b[/red]'" in shown and "failed ([bold]x)" in shown, shown

    found = {
        "job": {"id": "j", "state": "pending", "tasks": {"pending": 1}, "scheduler": "batch"},
        "task": None,
        "pending": 1,
        "schedulers": {"batch": "0/4 machines fit: 4 constraint:zone=[a]"},
    }
    monkeypatch.setattr(omega.cli, "call", lambda addr, token, fn: found)
    shown = CliRunner().invoke(app, ["explain", "j", *argv], env={"COLUMNS": "200"}).output
    assert "constraint:zone=[a]" in shown, shown


def test_list_tables_print_label_values_and_reasons_as_they_are(monkeypatch):
    # A label value may be any string; a reason comes from an agent.
    from typer.testing import CliRunner

    import omega.cli
    from omega.cli import app

    job = {"id": "j-1", "name": "j", "scheduler": "batch", "priority": 100, "state": "done"}
    job |= {"tasks": {"exited": 1}, "labels": {"team": "[red]ml"}}
    task = {"id": "j-1.0", "state": "failed", "healthy": None, "machine": "m", "incarnation": 0}
    task |= {"exit_code": 1, "reason": "[bold]oom", "job": "j-1"}
    argv = ["--token", "t", "--addr", "x"]
    env = {"COLUMNS": "200"}
    monkeypatch.setattr(omega.cli, "call", lambda addr, token, fn: [job])
    assert "team=[red]ml" in CliRunner().invoke(app, ["jobs", *argv], env=env).output
    monkeypatch.setattr(omega.cli, "call", lambda addr, token, fn: [task])
    assert "[bold]oom" in CliRunner().invoke(app, ["tasks", *argv], env=env).output


def test_omega_scheduler_and_agent_errors_name_the_command_that_was_run():
    # They said `python -m schedulers: error: ...` to someone who typed `omega scheduler`.
    from typer.testing import CliRunner

    from omega.cli import app

    for argv, said in (
        (["scheduler", "--kind", "nope"], "omega scheduler: error: argument --kind"),
        (["agent", "--name", "a"], "omega agent: error: the following arguments are required"),
    ):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2 and said in result.output, result.output


def test_one_of_a_thing_is_not_said_in_the_plural():
    from cellstate import CellState, JobSpec, Resources, SchedulerClass, SubmitJob
    from omega.events import describe
    from omega.units import count

    assert [count(n, "task") for n in (0, 1, 2)] == ["0 tasks", "1 task", "2 tasks"]
    cell = CellState()
    spec = JobSpec("one", "default", SchedulerClass.BATCH, Resources(100, 1 << 20), tasks=1)
    command = SubmitJob("one-1", spec, at=1.0)
    [event] = cell.apply(command).events
    assert describe(cell, command, event)["message"] == "job one-1 submitted (1 task, batch)"


def test_submit_wait_reads_one_attempt_as_tried():
    from omega.waiting import tried

    assert tried("job j: 1 pending, 1 attempt; 0/2 machines fit: 2 constraint:accel")
    assert tried("job j: 1 pending, 12 attempts; placed 0/1")
    assert not tried("job j: 1 pending, 0 attempts")


def test_a_replica_refuses_a_secret_file_others_may_read_or_that_is_missing(tmp_path):
    # A missing --token-file was a traceback; a world-readable Raft secret, accepted.
    from typer.testing import CliRunner

    from omega.cli import app

    token, secret = tmp_path / "token", tmp_path / "secret"
    for path in (token, secret):
        path.write_text("s3cret\n")
        path.chmod(0o600)
    base = ["store", "--id", "0", "--data-dir", str(tmp_path / "d"), "--insecure"]
    base += ["--peer", "127.0.0.1:1/127.0.0.1:2"]

    def refused(token_file, secret_file) -> str:
        argv = [*base, "--token-file", str(token_file), "--secret-file", str(secret_file)]
        out = CliRunner().invoke(app, argv)
        assert out.exit_code == 2, out.output
        return out.output

    assert "--token-file" in refused(tmp_path / "nope", secret)
    assert "No such file or directory" in refused(tmp_path / "nope", secret)
    secret.chmod(0o644)
    assert f"mode 0644 lets other users read it: chmod 600 {secret}" in refused(token, secret)
    secret.chmod(0o600)
    token.write_text("\n")
    assert "--token-file" in refused(token, secret) and "empty" in refused(token, secret)
    assert not (tmp_path / "d").exists()  # nothing started


@pytest.mark.parametrize("width", [200, 70])
def test_a_long_table_is_drawn_fast_as_rich_draws_it(monkeypatch, width):
    # `omega tasks` on a job of 5,000 tasks took 3.4 s in rich's layout; a table that fits
    # is now drawn line by line, and must read exactly as rich would have drawn it.
    import io

    import omega.cli
    from omega.cli import FAST_ROWS, show

    def table() -> Table:
        made = Table("id", "state", "health", "machine", "inc", "restarts", "reason")
        for i in range(FAST_ROWS + 50):
            reason = "" if i % 3 else f"restart after exit:{i % 7}"
            made.add_row(f"big-5b1330.{i}", "running", "-", f"hollow-{i:04d}", "0", "1", reason)
        return made

    def printed(fast: bool) -> str:
        out = io.StringIO()
        console = Console(file=out, width=width, color_system=None, force_terminal=False)
        monkeypatch.setattr(omega.cli, "_console", console)
        if fast:
            show(table(), "id")
        else:
            console.print(omega.cli.whole(table(), "id"))
        return out.getvalue()

    assert printed(fast=True) == printed(fast=False)
    if width == 200:  # it fits: drawn directly (rich's layout is the slow path)
        monkeypatch.setattr(omega.cli, "whole", None)  # any call to rich's path would fail
        assert printed(fast=True).count("\n") == FAST_ROWS + 50 + 4


def test_a_restart_says_the_health_verdict_is_to_come_not_not_judged():
    # At every (re)start the feed said `task web.1 not judged`, which read as a fault.
    from cellstate import ReportTasks, TaskHealthChanged
    from omega.events import describe

    report = ReportTasks((), at=1.0)
    event = TaskHealthChanged("web.1", "agent-0", 0, None)
    said = describe(CellState(), report, event)["message"]
    assert said == "task web.1 health not judged yet (a new run)"


def test_the_feed_says_when_an_upgrade_raises_the_rules():
    # README: what a leader decides itself (rules raised) shows with no `by`; it did not show.
    from cellstate.commands import RaiseRules
    from omega.events import describe_setting

    said = describe_setting(RaiseRules(8, at=1.0))
    assert said is not None and (said["kind"], said["message"]) == (
        "rules",
        "cell rules raised to 8",
    )


def test_machines_are_listed_by_id_not_in_the_order_they_registered():
    from cellstate import RegisterMachines
    from cellstate.model import MachineSpec
    from cellstate.resources import Resources
    from cellstate.views import list_machines

    cell = CellState()
    for name in ("agent-10", "agent-2", "rack-b", "agent-1", "rack-a"):
        spec = MachineSpec(name, Resources(1000, 1 << 30))
        cell.apply(RegisterMachines((spec,), at=1.0, id=f"r-{name}"))
    ids = [m["id"] for m in list_machines(cell)]
    assert ids == ["agent-1", "agent-2", "agent-10", "rack-a", "rack-b"]


def test_a_ca_file_that_is_missing_or_not_a_certificate_is_named_at_once(tmp_path):
    """A client handed a bad OMEGA_CA retried every replica for 15 s, then blamed them:
    `no replica answered: ... FileNotFoundError(2, 'No such file or directory')`."""
    from typer.testing import CliRunner

    from omega.cli import app

    foreign = tmp_path / "hostname"
    foreign.write_text("not a certificate\n")
    cases = [
        (tmp_path / "gone.pem", "cannot read it: No such file or directory"),
        (foreign, "not a PEM certificate"),
        (tmp_path, "cannot read it: Is a directory"),
    ]
    for ca, said in cases:
        env = {"OMEGA_ADDR": "https://127.0.0.1:1", "OMEGA_TOKEN": "t", "OMEGA_CA": str(ca)}
        for argv in (["jobs"], ["events"]):
            result = CliRunner().invoke(app, argv, env={**env, "COLUMNS": "200"})
            assert result.exit_code == 2, (argv, ca, result.output)
            assert f"OMEGA_CA {ca}: {said}" in result.output, (argv, result.output)


def test_omega_jobs_help_names_every_job_state():
    # The CLI lists them by hand (it does not import the cell state to start fast): this
    # keeps the list in step with `JobState`, which the store's ?state= checks against.
    from typer.testing import CliRunner

    from cellstate import JobState
    from omega.cli import app

    shown = CliRunner().invoke(app, ["jobs", "--help"], env={"COLUMNS": "300"}).output
    said = " ".join(shown.split())
    assert all(state.value in said for state in JobState), said
    assert "idle (scaled to zero)" in said, said
