"""Machines that are down are removed (`RemoveMachines`, rules 10), as `kubectl delete
node` and Nomad's `node purge` do: a cell whose machines are retired and replaced must
not keep every machine it ever had, in every copy and every scheduler's table.

All or none: each named machine must be known and down. The machines after a removed
one move up a row; replicas, copies, snapshots and schedulers' tables agree on the rows."""

from __future__ import annotations

import json

import pytest

from cellstate import (
    CellState,
    Error,
    Heartbeat,
    MachineRemoved,
    MachineSpec,
    MachineState,
    Ok,
    RegisterMachines,
    RemoveMachines,
    Resources,
    SchedulerClass,
    SetMachineState,
    Stale,
)
from cellstate.commands import RaiseRules
from cellstate.state import REMOVE_RULES
from cellstate.wire import decode_command, encode_command
from schedulers import table_for
from tests.cellfixtures import GI, cell_with, commit, submit
from tests.schedfixtures import core, placements, step
from tests.test_sched_table import _assert_matches


def down(cell: CellState, *machines: str) -> None:
    for mid in machines:
        assert cell.apply(SetMachineState(mid, MachineState.DOWN, at=4.0)).result == Ok()


def test_a_removed_machine_leaves_the_cell_and_the_rest_move_up_a_row():
    cell = cell_with(machines=5)
    submit(cell, "web", tasks=2, cpu=500)
    commit(cell, ("web.0", "m1"), ("web.1", "m4"))
    down(cell, "m1", "m2")
    assert cell.tasks["web.0"].state == "pending"  # down took its task away
    outcome = cell.apply(RemoveMachines(("m2", "m1"), at=5.0, id="r1"))
    assert outcome.result == Ok()
    assert [e for e in outcome.events if isinstance(e, MachineRemoved)] == [
        MachineRemoved("m2"),
        MachineRemoved("m1"),
    ]
    assert [(m.id, m.index) for m in cell.machine_list] == [("m0", 0), ("m3", 1), ("m4", 2)]
    assert list(cell.machines) == ["m0", "m3", "m4"]
    assert cell.tasks["web.1"].machine == "m4" and "web.1" in cell.machines["m4"].tasks
    cell.check_invariants()
    # A replica restored from its snapshot holds the same rows and judges alike.
    restored = CellState.restore(cell.snapshot())
    assert restored.snapshot() == cell.snapshot()
    assert [(m.id, m.index) for m in restored.machine_list] == [
        (m.id, m.index) for m in cell.machine_list
    ]
    # The command crosses the wire as it is.
    command = RemoveMachines(("m2", "m1"), at=5.0, id="r1")
    assert decode_command(encode_command(command)) == command


@pytest.mark.parametrize(
    ("named", "code", "field"),
    [
        ((), "invalid", "machines"),
        (("m0", "nope"), "machine_unknown", "machines[1]"),
        (("m0", "m1"), "machine_not_down", "machines[1]"),  # up
        (("m0", "m2"), "machine_not_down", "machines[1]"),  # draining
        (("m0", "m0"), "duplicate_machine", "machines[1]"),
    ],
)
def test_a_removal_that_names_a_machine_it_may_not_remove_changes_nothing(named, code, field):
    cell = cell_with(machines=3)
    down(cell, "m0")
    cell.apply(SetMachineState("m2", MachineState.DRAINING, at=4.0))
    before = json.loads(cell.snapshot())
    refused = cell.apply(RemoveMachines(named, at=5.0)).result
    assert (refused.code, refused.field) == (code, field), refused
    if code == "machine_not_down":
        assert "take it down first" in refused.message and repr(named[1]) in refused.message
    assert [m.id for m in cell.machine_list] == ["m0", "m1", "m2"]
    # Nothing changed but the version and the clock (a refused command is in the log too).
    after = json.loads(cell.snapshot())
    assert {**after, "version": before["version"], "now": before["now"]} == before


def test_older_rules_refuse_a_removal_and_keep_every_machine():
    cell = CellState(rules=REMOVE_RULES - 1)
    cell.apply(RegisterMachines((MachineSpec("m0", Resources(1000, GI)),), at=1.0))
    down(cell, "m0")
    refused = cell.apply(RemoveMachines(("m0",), at=2.0)).result
    assert isinstance(refused, Error), refused
    assert refused.code == "rules_too_old" and list(cell.machines) == ["m0"]
    assert cell.apply(RaiseRules(REMOVE_RULES, at=3.0)).result == Ok()
    assert cell.apply(RemoveMachines(("m0",), at=4.0)).result == Ok()
    assert cell.machines == {} and cell.machine_list == []


def test_an_agent_still_running_registers_its_removed_machine_again_as_a_new_one():
    cell = cell_with(machines=3)
    down(cell, "m0")
    cell.apply(RemoveMachines(("m0",), at=5.0))
    # Its heartbeat names a machine the cell no longer knows: register again.
    assert cell.apply(Heartbeat(("m0", "m1"), at=6.0)).result == Stale(machines=("m0",))
    cell.apply(RegisterMachines((MachineSpec("m0", Resources(4000, 8 * GI)),), at=7.0))
    assert [(m.id, m.index, m.state) for m in cell.machine_list] == [
        ("m1", 0, "up"),
        ("m2", 1, "up"),
        ("m0", 2, "up"),
    ]
    cell.check_invariants()


def test_a_device_kind_only_a_removed_machine_had_no_longer_counts():
    cell = cell_with(machines=1)
    cell.apply(RegisterMachines((MachineSpec("f0", Resources(1000, GI, fpga=1)),), at=2.0))
    assert "fpga" in cell.device_kinds
    down(cell, "f0")
    cell.apply(RemoveMachines(("f0",), at=5.0))
    assert "fpga" not in cell.device_kinds
    assert CellState.restore(cell.snapshot()).device_kinds == cell.device_kinds


def test_a_scheduler_s_table_and_rows_follow_a_removal_that_keeps_the_count():
    """A removal and a registration between two decisions leave as many machines, each on
    another row: the table reads every row again, and the core what it knew of where each
    job's tasks are, so an anti-affine job is not misled by rows that moved."""
    zone_a = Resources(4000, 8 * GI)
    cell = CellState()
    small = Resources(2000, 4 * GI)
    cell.apply(RegisterMachines((MachineSpec("x0", small, labels={"zone": "b"}),), at=1.0))
    cell.apply(
        RegisterMachines(
            tuple(MachineSpec(f"m{i}", zone_a, labels={"zone": "a"}) for i in range(4)), at=1.0
        )
    )
    sched = core(SchedulerClass.SERVICE)
    submit(
        cell,
        "aa",
        tasks=5,
        cpu=100,
        scheduler=SchedulerClass.SERVICE,
        constraints={"zone": "a"},
        anti_affinity=True,
    )
    step(sched, cell, now=5.0)  # one task per zone-a machine; the fifth waits for one more
    assert placements(cell, "aa") == {f"m{i}": 1 for i in range(4)}
    table_for(cell)  # the table reads that commit's changes: no row is left to refresh
    down(cell, "x0")
    assert cell.apply(RemoveMachines(("x0",), at=6.0)).result == Ok()
    cell.apply(RegisterMachines((MachineSpec("n0", zone_a, labels={"zone": "a"}),), at=6.5))
    assert len(cell.machine_list) == 5  # as many rows as before, each another machine
    decision, result = step(sched, cell, now=7.0)
    assert decision is not None and result is not None
    assert not result.rejected, result.rejected
    assert placements(cell, "aa") == {**{f"m{i}": 1 for i in range(4)}, "n0": 1}
    table = table_for(cell)
    _assert_matches(table, cell)
    zones = table.labels(cell, "zone")
    assert list(zones.codes[:5]) == [zones.vocab["a"]] * 5
