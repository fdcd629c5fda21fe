"""Units, the strict edge converter's errors, and the internal wire round trip."""

from __future__ import annotations

import attrs
import pytest

from cellstate import (
    Claim,
    Commit,
    ConflictMode,
    HealthCheck,
    JobSpec,
    ReportedState,
    ReportTasks,
    SchedulerClass,
    SpecError,
    SubmitJob,
    TaskReport,
    Transaction,
    TxnMode,
    parse_cpu,
    parse_memory,
)
from cellstate.commands import Command, new_report
from cellstate.model import new_claim, quick
from cellstate.resources import UnitError
from cellstate.wire import decode_command, encode_command, parse, parse_json

BASE = {
    "name": "web",
    "owner": "alice",
    "scheduler": "service",
    "resources": {"cpu": "500m", "memory": "256Mi"},
}


@pytest.mark.parametrize(
    "text,milli",
    [("500m", 500), ("0.5", 500), (2, 2000), (0.25, 250), ("1.5", 1500), ("1000m", 1000)],
)
def test_cpu_units(text, milli):
    assert parse_cpu(text) == milli


@pytest.mark.parametrize(
    "text,size",
    [
        ("256Mi", 256 << 20),
        ("1Gi", 1 << 30),
        ("1G", 10**9),
        ("1.5Gi", 3 << 29),
        (4096, 4096),
        ("512k", 512_000),
    ],
)
def test_memory_units(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("bad", ["-1", "0", "abc", "0.0001", True, None, "1.5x"])
def test_bad_cpu_is_refused(bad):
    with pytest.raises(UnitError):
        parse_cpu(bad)


def test_spec_defaults_and_band_names():
    spec = parse(BASE | {"priority": "monitoring", "command": "python -m http.server"}, JobSpec)
    assert spec.scheduler is SchedulerClass.SERVICE
    assert spec.priority == 300 and spec.command == ("python", "-m", "http.server")
    assert parse(BASE, JobSpec).priority == 200


@pytest.mark.parametrize(
    "patch,field,words",
    [
        ({"tasks": 0}, "$.tasks", "1..100000"),
        ({"tasks": 10**9}, "$.tasks", "1..100000"),
        ({"tasks": "3"}, "$.tasks", "expected an integer"),
        ({"scheduler": "gpu"}, "$.scheduler", "service, batch, best-effort"),
        ({"priority": "gold"}, "$", "best-effort, batch, production, monitoring"),
        ({"priority": 7}, "$.priority", "best-effort band"),
        ({"resources": {"cpu": "-1", "memory": "1Gi"}}, "$.resources.cpu", "not a quantity"),
        ({"resources": {"cpu": 1, "memory": 0}}, "$.resources.memory", "greater than zero"),
        (
            {"resources": {"cpu": 1, "memory": 1, "GPU": 1}},
            "$.resources.GPU",
            "not a resource: use cpu, memory, disk, or a device name",
        ),
        ({"resources": {"cpu": 1, "memory": 1, "gpu": 1.5}}, "$.resources.gpu", "not a count"),
        ({"resources": {"cpu": 1, "memory": 1, "disk": "lots"}}, "$.resources.disk", "disk"),
        ({"resources": {"memory": "1Gi"}}, "$.resources.cpu", "is required"),
        ({"colour": "red"}, "$", "unknown field colour"),
        ({"name": "Bad Name"}, "$.name", "must match"),
        ({"labels": {"k": 5}}, "$.labels['k']", "expected a string"),
        ({"restart": "sometimes"}, "$.restart", "never, on-failure, always"),
        ({"scheduler": "batch", "spread": "domain"}, "$.spread", "only the service scheduler"),
        ({"command": ["sh", True]}, "$.command[1]", "got bool True (quote it: 'true')"),
        # A wrong container said "'int' object is not iterable" or "... no attribute 'items'".
        ({"command": 5}, "$.command", "expected a list, got int 5"),
        ({"labels": ["a", "b"]}, "$.labels", "expected a mapping (key: value), got list"),
        ({"constraints": "zone=a"}, "$.constraints", "expected a mapping (key: value), got str"),
        # What no process can be started with: an agent could only fail the task.
        ({"env": {"A=B": "x"}}, "$.env['A=B']", "must not be empty nor hold '='"),
        ({"env": {"": "x"}}, "$.env['']", "must not be empty"),
        ({"env": {"A": "x\0"}}, "$.env['A']", "must not hold a NUL byte"),
        ({"command": ["sh", "a\0b"]}, "$.command[1]", "must not hold a NUL byte"),
        ({"check": {"exec": ["test", "\0"]}}, "$.check.exec[1]", "must not hold a NUL byte"),
    ],
)
def test_spec_errors_name_the_field_and_what_is_allowed(patch, field, words):
    with pytest.raises(SpecError) as caught:
        parse(BASE | patch, JobSpec)
    assert caught.value.field == field
    assert words in caught.value.message


def test_malformed_and_oversized_bodies():
    with pytest.raises(SpecError) as caught:
        parse_json(b"{not json", JobSpec)
    assert caught.value.code == "malformed_json"
    with pytest.raises(SpecError) as caught:
        parse_json(b" " * (9 << 20), JobSpec)
    assert caught.value.code == "too_large"


def test_commands_round_trip_on_the_internal_wire():
    spec = parse(BASE | {"tasks": 3, "env": {"Z": "1", "A": "2"}}, JobSpec)
    for command in (
        SubmitJob("web", spec, at=1.5, id="x"),
        Commit(
            Transaction(
                "s",
                (Claim("web.0", "m0", 3, ("v.1",)),),
                7,
                TxnMode.ALL_OR_NOTHING,
                ConflictMode.COARSE,
            ),
            at=2.0,
            id="y",
        ),
    ):
        blob = encode_command(command)
        assert decode_command(blob) == command
        assert parse_json(blob, Command) == command


def test_health_checks_parse_with_defaults():
    http = parse(BASE | {"check": {"http": "/healthz"}}, JobSpec).check
    assert http == HealthCheck(http="/healthz", interval=10.0, timeout=5.0, failures=3)
    assert http.kind == "http"
    run = parse(BASE | {"check": {"exec": "test -f ready", "interval": 2, "timeout": 1}}, JobSpec)
    assert run.check == HealthCheck(exec=("test", "-f", "ready"), interval=2.0, timeout=1.0)
    tcp = parse(BASE | {"check": {"tcp": True, "failures": 1}}, JobSpec).check
    assert tcp is not None and tcp.kind == "tcp" and tcp.failures == 1
    assert parse(BASE, JobSpec).check is None


@pytest.mark.parametrize(
    "check,field,words",
    [
        ({}, "$.check", "give exactly one of exec, http, tcp"),
        ({"http": "/a", "tcp": True}, "$.check", "give exactly one of exec, http, tcp"),
        ({"tcp": False}, "$.check", "give exactly one of exec, http, tcp"),
        ({"exec": []}, "$.check", "give exactly one of exec, http, tcp"),
        ({"http": "healthz"}, "$.check.http", "starting with '/'"),
        ({"tcp": "yes"}, "$.check.tcp", "expected true or false"),
        ({"exec": [1]}, "$.check.exec[0]", "expected a string"),
        ({"tcp": True, "interval": 0}, "$.check.interval", "0.1..3600 seconds"),
        ({"tcp": True, "timeout": 20}, "$.check.timeout", "longer than the interval"),
        ({"tcp": True, "failures": 0}, "$.check.failures", "1..100"),
        ({"tcp": True, "port": 80}, "$.check", "unknown field port"),
        ("curl localhost", "$.check", "expected an object with fields exec, http, tcp"),
    ],
)
def test_health_check_errors_name_the_field_and_what_is_allowed(check, field, words):
    with pytest.raises(SpecError) as caught:
        parse(BASE | {"check": check}, JobSpec)
    assert caught.value.field == field
    assert words in caught.value.message


def test_task_reports_carry_health_and_old_reports_still_decode():
    report = ReportTasks((TaskReport("web.0", "m0", 1, ReportedState.RUNNING, healthy=False),))
    blob = encode_command(report)
    assert decode_command(blob) == report
    assert parse_json(blob, Command) == report
    # A report logged before health checks has no `healthy`: it decodes as None.
    old = b'{"type":"report_tasks","reports":[{"task":"web.0","machine":"m0","incarnation":1,"state":"running"}]}'
    decoded = decode_command(old)
    assert isinstance(decoded, ReportTasks) and decoded.reports[0].healthy is None
    with pytest.raises(SpecError) as caught:
        parse_json(old.replace(b'"running"', b'"running","healthy":"yes"'), Command)
    assert caught.value.field == "$.reports[0].healthy"


def test_a_logged_spec_the_edge_now_refuses_still_replays():
    # A batch job with `spread` was accepted before the edge refused it (the batch scheduler
    # ignores it). A log holding one must still decode, or an upgraded replica stops.
    spec = attrs.evolve(parse(BASE, JobSpec), scheduler=SchedulerClass.BATCH, spread="domain")
    command = SubmitJob("old-1", spec, at=1.0, id="c1")
    assert decode_command(encode_command(command)) == command
    sent = {"type": "submit_job", "job": "old-1", "at": 1.0, "id": "c1"}
    with pytest.raises(SpecError) as caught:
        parse(sent | {"spec": BASE | {"scheduler": "batch", "spread": "domain"}}, Command)
    assert caught.value.field == "$.spec.spread"
    # So with an environment name no process can be given (an agent fails the task at start).
    spec = attrs.evolve(parse(BASE, JobSpec), env={"A=B": "x"})
    command = SubmitJob("old-2", spec, at=1.0, id="c2")
    assert decode_command(encode_command(command)) == command


def test_a_string_where_a_list_belongs_is_refused_not_split_into_characters():
    """A token for machines "hollow-*" was bound to h, o, l, ... and *: every machine."""
    token = {"type": "create_token", "name": "a", "role": "agent", "digest": "0" * 64}
    with pytest.raises(SpecError) as caught:
        parse({**token, "machines": "hollow-*"}, Command)
    assert (caught.value.field, caught.value.message) == (
        "$.machines",
        "expected a list, got str 'hollow-*'",
    )
    assert parse({**token, "machines": ["hollow-*"]}, Command).machines == ("hollow-*",)
    with pytest.raises(SpecError, match="expected a list, got str"):
        parse({"type": "heartbeat", "machines": "agent-1"}, Command)


def test_quick_constructors_make_the_records_the_classes_make_and_refuse_checked_ones():
    claim = new_claim("j.1", "m1", 3, ("v.0",), True)
    assert claim == Claim("j.1", "m1", 3, ("v.0",), True)
    assert hash(claim) == hash(Claim("j.1", "m1", 3, ("v.0",), True))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        claim.task = "x"  # type: ignore[misc]
    report = new_report("j.1", "m1", 2, ReportedState.EXITED, 0, None, True, 8080)
    assert report == TaskReport("j.1", "m1", 2, ReportedState.EXITED, 0, None, True, 8080)
    assert decode_command(encode_command(ReportTasks((report,)))) == ReportTasks((report,))

    @attrs.frozen(slots=True)
    class Checked:
        amount: int = attrs.field(validator=attrs.validators.ge(0))

    with pytest.raises(TypeError, match=r"Checked\.amount is checked on construction"):
        quick(Checked)
