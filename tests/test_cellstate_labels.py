"""An operator's labels on machines (`LabelMachines`, rules 14): set and taken away on every
machine named or none, kept over what an agent registers when it comes back, carried by the
snapshot, and seen by a scheduler's table, whose selector then chooses by them."""

from __future__ import annotations

import orjson
import pytest

from cellstate import (
    CellState,
    Error,
    LabelMachines,
    MachineLabeled,
    MachineSpec,
    Ok,
    RegisterMachines,
    Resources,
)
from cellstate.commands import RaiseRules
from cellstate.model import AGENT_LABEL
from cellstate.wire import SpecError, decode_command, encode_command, parse
from tests.cellfixtures import GI, cell_with


def _cell() -> CellState:
    return cell_with(machines=3, labels={"zone": "a", AGENT_LABEL: "10.0.0.1:4100"})


def test_labels_are_set_and_taken_away_and_kept_over_what_the_agent_registers_again():
    cell = _cell()
    before = cell.machines["m0"].labels
    seqnum = cell.machines["m0"].seqnum
    out = cell.apply(LabelMachines(("m0", "m1"), {"disk": "ssd", "zone": "b"}, (), at=2.0))
    assert out.result == Ok()
    assert cell.machines["m0"].labels == {AGENT_LABEL: "10.0.0.1:4100", "disk": "ssd", "zone": "b"}
    assert cell.machines["m0"].labels is not before  # a new dict: tables read it anew
    assert cell.machines["m0"].seqnum == seqnum + 1
    assert MachineLabeled("m1", cell.machines["m1"].labels) in out.events
    assert cell.machines["m2"].labels == {AGENT_LABEL: "10.0.0.1:4100", "zone": "a"}
    assert cell.apply(LabelMachines(("m0",), {}, ("zone",), at=3.0)).result == Ok()
    assert "zone" not in cell.machines["m0"].labels
    # The agent comes back with its own labels: what the operator set or took away stays.
    capacity = Resources(4000, 8 * GI)
    again = MachineSpec("m0", capacity, labels={"zone": "c", "rack": "r1", AGENT_LABEL: "x:1"})
    assert cell.apply(RegisterMachines((again,), at=4.0)).result == Ok()
    assert cell.machines["m0"].labels == {AGENT_LABEL: "x:1", "disk": "ssd", "rack": "r1"}
    # The snapshot carries the operator's word: a copy restored from it agrees, now and
    # after the agent registers again.
    copy = CellState.restore(cell.snapshot())
    assert copy.snapshot() == cell.snapshot()
    assert copy.machines["m0"].label_overlay == {"disk": "ssd", "zone": None}
    for state in (cell, copy):
        state.apply(RegisterMachines((again,), at=5.0))
    assert copy.machines["m0"].labels == cell.machines["m0"].labels
    copy.check_invariants()
    # The log: as sent, in key order whatever the order it came in.
    sent = LabelMachines(("m0",), {"b": "2", "a": "1"}, ("c",), at=1.0)
    assert list(decode_command(encode_command(sent)).labels) == ["a", "b"]


@pytest.mark.parametrize(
    ("command", "field", "said"),
    [
        (LabelMachines(("m0", "nope"), {"disk": "ssd"}), "machines[1]", "no machine 'nope'"),
        (LabelMachines(("m0", "m0"), {"disk": "ssd"}), "machines[1]", "appears twice"),
        (LabelMachines((), {"disk": "ssd"}), "machines", "at least one machine"),
        (LabelMachines(("m0",)), None, "nothing to do"),
        (LabelMachines(("m0",), {AGENT_LABEL: "evil:1"}), f"labels.{AGENT_LABEL}", "agent's own"),
        (LabelMachines(("m0",), {}, ("omega.agent",)), "remove[0]", "agent's own"),
        (LabelMachines(("m0",), {"zone": "b"}, ("zone",)), "remove[0]", "both set and removed"),
        (LabelMachines(("m0",), {"bad key": "x"}), "labels.bad key", "must match"),
        (LabelMachines(("m0",), {"k": "v" * 257}), "labels.k", "at most 256"),
    ],
)
def test_a_refused_labelling_names_what_is_wrong_and_changes_nothing(command, field, said):
    cell = _cell()
    before = orjson.loads(cell.snapshot())["machines"]
    result = cell.apply(command).result
    assert isinstance(result, Error), result
    assert result.field == field and said in result.message, result
    assert orjson.loads(cell.snapshot())["machines"] == before
    assert all(m.labels["zone"] == "a" and not m.label_overlay for m in cell.machine_list)


def test_older_rules_refuse_it_as_older_releases_cannot_decode_it():
    cell = CellState(rules=13)
    cell.apply(RegisterMachines((MachineSpec("m0", Resources(4000, GI)),), at=1.0))
    refused = cell.apply(LabelMachines(("m0",), {"zone": "a"}, at=2.0)).result
    assert isinstance(refused, Error) and refused.code == "rules_too_old", refused
    assert cell.machines["m0"].labels == {}
    assert cell.apply(RaiseRules(14, at=3.0)).result == Ok()
    assert cell.apply(LabelMachines(("m0",), {"zone": "a"}, at=4.0)).result == Ok()


def test_the_edge_reads_a_labelling_and_refuses_what_is_not_one():
    command = parse(
        {"machines": ["m0"], "labels": {"zone": "a"}, "remove": ["x"]},
        LabelMachines,
    )
    assert command == LabelMachines(("m0",), {"zone": "a"}, ("x",))
    with pytest.raises(SpecError) as caught:
        parse({"machines": ["m0"], "labels": {"zone": 3}}, LabelMachines)
    assert "labels" in caught.value.field, caught.value
    with pytest.raises(SpecError) as caught:
        parse({"machines": "m0", "labels": {"zone": "a"}}, LabelMachines)
    assert caught.value.field == "$.machines", caught.value


def test_a_scheduler_s_table_reads_new_labels_and_its_selector_chooses_by_them():
    from schedulers.table import MachineTable

    cell = _cell()
    table = MachineTable()
    table.sync(cell)
    zone = table.labels(cell, "zone")
    assert list(zone.codes[:3]) == [zone.code("a")] * 3
    cell.apply(LabelMachines(("m2",), {"zone": "b"}, at=2.0))
    table.sync(cell)
    zone = table.labels(cell, "zone")
    assert list(zone.codes[:3]) == [zone.code("a"), zone.code("a"), zone.code("b")]
