"""The machine table refreshes only the rows of machines that changed."""

from __future__ import annotations

import numpy as np

from cellstate import (
    CellState,
    MachineSpec,
    MachineState,
    RegisterMachines,
    Resources,
    SchedulerClass,
    SetMachineState,
)
from schedulers import MachineTable, table_for
from tests.cellfixtures import GI, cell_with, commit, submit
from tests.schedfixtures import core, step


def _assert_matches(table: MachineTable, cell: CellState) -> None:
    ms = cell.machine_list
    assert table.n == len(ms)
    assert list(table.view("free_cpu")) == [m.cpu - m.used_cpu for m in ms]
    assert list(table.view("free_mem")) == [m.memory - m.used_memory for m in ms]
    assert list(table.view("be_free_cpu")) == [m.cpu - m.reserved_cpu - m.be_cpu for m in ms]
    assert list(table.view("seqnum")) == [m.seqnum for m in ms]
    assert list(table.view("up")) == [m.state is MachineState.UP for m in ms]


def test_table_refreshes_only_changed_rows():
    cell = cell_with(machines=50, cpu=4000, domains=5)
    table = MachineTable()
    assert table.sync(cell) == 50  # first sync builds every row
    assert cell.changed_machines == set()
    assert table.sync(cell) == 0
    submit(cell, "j", tasks=2, cpu=1000)
    commit(cell, ("j.0", "m3"), ("j.1", "m7"))
    cell.apply(SetMachineState("m9", MachineState.DRAINING, at=4.0))
    assert cell.changed_machines == {"m3", "m7", "m9"}
    before = table.rows_refreshed
    assert table.sync(cell) == 3
    assert table.rows_refreshed - before == 3
    assert not cell.changed_machines
    _assert_matches(table, cell)


def test_new_machines_append_rows_and_labels_stay_current():
    cell = cell_with(machines=3, labels={"disk": "ssd"})
    table = MachineTable()
    table.sync(cell)
    column = table.labels(cell, "disk")
    assert list(column.codes[:3]) == [column.vocab["ssd"]] * 3
    cell.apply(
        RegisterMachines(
            tuple(
                MachineSpec(f"n{i}", Resources(2000, GI), labels={"disk": "hdd"}, domain="far")
                for i in range(40)
            ),
            at=5.0,
        )
    )
    cell.apply(RegisterMachines((MachineSpec("m1", Resources(4000, 8 * GI)),), at=6.0))
    assert table.sync(cell) == 41  # 40 new rows and m1's relabel
    _assert_matches(table, cell)
    codes = table.labels(cell, "disk").codes[: table.n]
    assert codes[1] == -1 and codes[3] == column.vocab["hdd"]
    assert table.domains.codes[3] == table.domains.vocab["far"]


def test_cores_on_one_cell_share_its_table():
    cell = cell_with(machines=4)
    submit(cell, "j", tasks=3, cpu=500)
    one, two = core(SchedulerClass.BATCH, "one"), core(SchedulerClass.BATCH, "two")
    table = table_for(cell)
    refreshed = table.rows_refreshed
    step(one, cell)  # its commit changes some machines
    assert two.decide(cell, 6.0) is None  # nothing pending: but the table synced
    assert table_for(cell) is table
    assert table.rows_refreshed - refreshed == len({t.machine for t in cell.tasks.values()})
    _assert_matches(table, cell)


def test_restored_copy_rebuilds_its_table():
    cell = cell_with(machines=3)
    table_for(cell)
    copy = CellState.restore(cell.snapshot())
    table = table_for(copy)
    assert table.n == 3 and np.all(table.view("up"))
