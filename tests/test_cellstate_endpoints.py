"""A running task's port (rules 13): an agent reports the port its task declared, the cell
keeps it while that run lasts, and `views.endpoints` joins it to the host of the machine's
agent. Older rules keep none, as the releases that ran them drop the field; the log and the
snapshot write it only when there is one, so everything without one keeps its bytes."""

from __future__ import annotations

import orjson
import pytest

from cellstate import (
    CellState,
    MachineSpec,
    Ok,
    RegisterMachines,
    ReportedState,
    ReportTasks,
    Resources,
    SetMachineState,
    TaskReport,
)
from cellstate.commands import Command, RaiseRules
from cellstate.model import AGENT_LABEL, HealthCheck, MachineState
from cellstate.views import endpoints, task_view
from cellstate.wire import SpecError, decode_command, encode_command, parse
from tests.cellfixtures import GI, commit, submit

RUNNING = ReportedState.RUNNING


def _cell(rules: int | None = None) -> CellState:
    cell = CellState() if rules is None else CellState(rules=rules)
    capacity = Resources(4000, 8 * GI)
    cell.apply(
        RegisterMachines(
            (
                MachineSpec("a", capacity, labels={AGENT_LABEL: "10.0.0.7:4100"}),
                MachineSpec("b", capacity, labels={AGENT_LABEL: "https://[fd00::2]:4100"}),
                MachineSpec("hollow", capacity),
            ),
            at=1.0,
        )
    )
    submit(cell, "web", tasks=3, check=HealthCheck(http="/healthz"))
    commit(cell, ("web.0", "a"), ("web.1", "b"), ("web.2", "hollow"))
    return cell


def _report(cell: CellState, task: str, state: ReportedState, at: float, **fields) -> None:
    t = cell.tasks[task]
    assert t.machine is not None
    report = TaskReport(task, t.machine, t.incarnation, state, **fields)
    assert cell.apply(ReportTasks((report,), at=at)).result == Ok()


def test_a_running_task_s_port_is_kept_for_its_run_and_served_at_its_agent_s_host():
    cell = _cell()
    for task in ("web.0", "web.1", "web.2"):
        _report(cell, task, RUNNING, 4.0)
    assert endpoints(cell, cell.jobs["web"]) == []  # running, but no port declared yet
    _report(cell, "web.0", RUNNING, 5.0, port=8080)
    _report(cell, "web.1", RUNNING, 5.0, port=9090, healthy=True)
    _report(cell, "web.2", RUNNING, 5.0, port=7070)  # hollow: nobody could reach it
    # A verdict without a port leaves the port alone.
    _report(cell, "web.0", RUNNING, 5.5, healthy=False)
    assert cell.tasks["web.0"].port == 8080
    assert endpoints(cell, cell.jobs["web"]) == [
        {
            "task": "web.0",
            "machine": "a",
            "address": "10.0.0.7:8080",
            "host": "10.0.0.7",
            "port": 8080,
            "ready": False,
            "version": 1,
        },
        {
            "task": "web.1",
            "machine": "b",
            "address": "[fd00::2]:9090",
            "host": "fd00::2",
            "port": 9090,
            "ready": True,
            "version": 1,
        },
    ]
    assert task_view(cell.tasks["web.1"])["port"] == 9090
    # A task that rebinds says so; the snapshot keeps the port, and dumps as it loaded.
    _report(cell, "web.1", RUNNING, 6.0, port=9091)
    assert cell.tasks["web.1"].port == 9091
    copy = CellState.restore(cell.snapshot())
    assert {t.id: t.port for t in copy.tasks.values()} == {
        "web.0": 8080,
        "web.1": 9091,
        "web.2": 7070,
    }
    assert copy.snapshot() == cell.snapshot()
    copy.check_invariants()
    # A restart in place is a new run, which declares its own port.
    _report(cell, "web.0", ReportedState.STARTING, 7.0, exit_code=1, reason="restart after exit:1")
    assert cell.tasks["web.0"].port is None
    _report(cell, "web.0", RUNNING, 7.5)
    assert [e["task"] for e in endpoints(cell, cell.jobs["web"])] == ["web.1"]
    # Lost with its machine: pending again, as a new incarnation, with no port.
    cell.apply(SetMachineState("b", MachineState.DOWN, at=8.0))
    assert (cell.tasks["web.1"].state, cell.tasks["web.1"].port) == ("pending", None)
    # An ended task serves nowhere, whatever its last port was.
    _report(cell, "web.2", ReportedState.EXITED, 9.0, exit_code=0)
    assert endpoints(cell, cell.jobs["web"]) == []
    assert task_view(cell.tasks["web.2"])["port"] is None
    cell.check_invariants()


def test_older_rules_keep_no_port_and_a_report_without_one_keeps_its_bytes():
    old = _cell(rules=12)
    _report(old, "web.0", RUNNING, 4.0, port=8080)
    # As a release of rules 12 decodes it: the field dropped, nothing kept.
    assert old.tasks["web.0"].port is None
    before = old.snapshot()
    assert all(len(row) == 22 for job in orjson.loads(before)["jobs"] for row in job[7])
    assert old.apply(RaiseRules(13, at=5.0)).result == Ok()
    _report(old, "web.0", RUNNING, 6.0, port=8080)
    assert old.tasks["web.0"].port == 8080
    # The log: a report without a port is written as before it existed.
    plain = ReportTasks((TaskReport("web.0", "a", 0, RUNNING, None, None, True),), at=1.0)
    assert b'"port"' not in encode_command(plain)
    said = ReportTasks((TaskReport("web.0", "a", 0, RUNNING, port=8080),), at=1.0)
    assert decode_command(encode_command(said)) == said


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_the_edge_refuses_a_port_no_task_can_listen_on_naming_the_field(port):
    body = {
        "type": "report_tasks",
        "reports": [
            {"task": "web.0", "machine": "a", "incarnation": 0, "state": "running", "port": port}
        ],
    }
    with pytest.raises(SpecError) as caught:
        parse(body, Command)
    assert caught.value.field.endswith("port"), caught.value.field
    assert str(port) in caught.value.message and "1..65535" in caught.value.message
    body["reports"][0]["port"] = 8080
    assert parse(body, Command).reports[0].port == 8080
    # A usage report is no place for a port: the edge names the field it does not know.
    with pytest.raises(SpecError, match="unknown field port"):
        parse({"type": "report_usage", "usages": [], "port": 1}, Command)
