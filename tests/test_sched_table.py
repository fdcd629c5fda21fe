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
    """Every row and dimension of the table equals what the ledger says."""
    ms = cell.machine_list
    assert table.n == len(ms)
    for dim in table.dims:
        capacity = [m.account.capacity.get(dim, 0) for m in ms]
        assert list(table.view("capacity", dim)) == capacity, dim
        assert list(table.view("free", dim)) == [m.account.free(dim, False) for m in ms], dim
        assert list(table.view("be_free", dim)) == [m.account.free(dim, True) for m in ms], dim
    for m in ms:  # a dimension the table lacks is one no machine has
        assert set(m.account.capacity) <= set(table.dims)
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


def test_a_gpu_machine_grows_a_gpu_column():
    cell = cell_with(machines=3)
    table = MachineTable()
    table.sync(cell)
    assert table.dims == ["cpu", "memory"]
    assert table.capacity.shape[1] == 2
    cell.apply(
        RegisterMachines(
            (
                MachineSpec("g0", Resources(8000, 16 * GI, gpu=2)),
                MachineSpec("d0", Resources(8000, 16 * GI, disk=100 * GI, fpga=1)),
            ),
            at=5.0,
        )
    )
    assert table.sync(cell) == 2
    assert table.dims == ["cpu", "memory", "gpu", "disk", "fpga"]
    assert table.dim_index["gpu"] == 2
    assert table.capacity.shape[1] == table.free.shape[1] == table.be_free.shape[1] == 5
    assert list(table.view("capacity", "gpu")) == [0, 0, 0, 2, 0]
    assert list(table.view("free", "disk")) == [0, 0, 0, 0, 100 * GI]
    # Only cpu and memory are lent to best-effort tasks.
    assert list(table.exclusive) == [False, False, True, True, True]
    _assert_matches(table, cell)


def test_table_follows_the_ledger_on_every_dimension_and_class():
    """Regular and best-effort tasks over cpu, memory, disk and gpu: after each
    step every row equals `Account.free` of both classes."""
    cell = cell_with(machines=4, extra={"disk": 100 * GI, "gpu": 2})
    table = MachineTable()
    table.sync(cell)
    submit(cell, "reg", tasks=2, extra={"disk": 30 * GI, "gpu": 1})
    commit(cell, ("reg.0", "m0"), ("reg.1", "m1"))
    table.sync(cell)
    _assert_matches(table, cell)
    submit(cell, "be", tasks=2, scheduler=SchedulerClass.BEST_EFFORT, extra={"gpu": 1})
    submit(cell, "be2", tasks=1, scheduler=SchedulerClass.BEST_EFFORT, extra={"disk": GI})
    commit(cell, ("be.0", "m2"), ("be.1", "m0"), ("be2.0", "m0"))
    table.sync(cell)
    _assert_matches(table, cell)
    # A best-effort gpu and disk are held: the regular room shrinks too.
    gpu, disk = table.dim_index["gpu"], table.dim_index["disk"]
    assert table.free[0, gpu] == 0 and table.be_free[0, gpu] == 0
    assert table.free[0, disk] == 100 * GI - 30 * GI - GI
    assert table.free[2, gpu] == 1


def test_rows_keep_their_capacity_until_the_machine_reregisters():
    cell = cell_with(machines=2)
    table = MachineTable()
    table.sync(cell)
    cell.apply(RegisterMachines((MachineSpec("m1", Resources(2000, GI, gpu=4)),), at=5.0))
    assert table.sync(cell) == 1
    assert list(table.view("capacity", "cpu")) == [4000, 2000]
    assert list(table.view("capacity", "gpu")) == [0, 4]
    assert table.inv_cap[1, table.dim_index["gpu"]] == 0.25
    assert table.inv_cap[0, table.dim_index["gpu"]] == 0.0
    _assert_matches(table, cell)


def test_rooms_below_zero_read_as_the_ledger_reads_them():
    """The table decodes every room from the low bytes of its packed field, whatever its
    sign. No command leaves a room below zero (the commit protocol refuses what does not
    fit, a smaller re-registration what is held), so the books are written here by hand."""
    from cellstate.ledger import Need

    cell = cell_with(machines=2, cpu=4000, extra={"disk": 100 * GI, "gpu": 2})
    table = MachineTable()
    table.sync(cell)
    account = cell.machines["m1"].account
    beyond = Need({"cpu": 6000, "memory": GI, "disk": 150 * GI, "gpu": 3})
    account.room -= beyond.whole
    account.be_room -= beyond.whole
    assert cell.changed_machines is not None
    cell.changed_machines.add("m1")
    assert table.sync(cell) == 1
    for column in (table.free, table.be_free):
        row = {dim: int(column[1, j]) for dim, j in table.dim_index.items()}
        assert row == {"cpu": -2000, "memory": 7 * GI, "disk": -50 * GI, "gpu": -1}, row
    _assert_matches(table, cell)


def test_a_machine_reregistered_with_the_same_capacity_gets_its_new_labels():
    """A refresh reads labels and domains again only for rows whose machine re-registered.
    One that comes back with the very same capacity mapping but new labels and domain must
    still be read again: the table notices the new labels dict, not only a new capacity.
    (Checking the capacity alone left the row's old label and domain codes.)"""
    capacity = Resources(4000, 8 * GI)
    cell = CellState()
    cell.apply(RegisterMachines((MachineSpec("m0", capacity, {"disk": "ssd"}, "d0"),), at=1.0))
    table = MachineTable()
    table.sync(cell)
    column = table.labels(cell, "disk")
    assert column.codes[0] == column.vocab["ssd"]
    submit(cell, "j", tasks=1, cpu=1000)
    commit(cell, ("j.0", "m0"))
    assert table.sync(cell) == 1  # a placement: the row's labels stay as they were
    assert column.codes[0] == column.vocab["ssd"]
    cell.apply(RegisterMachines((MachineSpec("m0", capacity, {"disk": "hdd"}, "d1"),), at=2.0))
    assert table.sync(cell) == 1
    assert column.codes[0] == column.vocab["hdd"]
    assert table.domains.codes[0] == table.domains.vocab["d1"]
    _assert_matches(table, cell)


def test_rows_without_a_new_dimension_are_decoded_by_name():
    """Rows whose machine lacks a column the table has are refreshed through their own
    dimensions; one machine gaining a gpu makes every other row such a row, and a
    machine re-registered with a gpu too stops being one."""
    cell = cell_with(machines=3)
    table = MachineTable()
    table.sync(cell)
    cell.apply(RegisterMachines((MachineSpec("m1", Resources(4000, 8 * GI, gpu=2)),), at=2.0))
    table.sync(cell)
    submit(cell, "j", tasks=2, cpu=1000)
    commit(cell, ("j.0", "m0"), ("j.1", "m1"))
    assert table.sync(cell) == 2
    _assert_matches(table, cell)
    cell.apply(RegisterMachines((MachineSpec("m0", Resources(4000, 8 * GI, gpu=1)),), at=3.0))
    submit(cell, "k", tasks=1, cpu=500)
    commit(cell, ("k.0", "m0"))
    table.sync(cell)
    _assert_matches(table, cell)
    assert list(table.view("capacity", "gpu")) == [1, 2, 0]
