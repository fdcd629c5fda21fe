"""The machine table: a cell's machines as numpy columns, kept current row by row.

A scheduler scores thousands of machines per decision, so it reads them as
arrays indexed by the dense `Machine.index`, not as records. The table owns
`cell.changed_machines`: `sync` sets it to an empty set on first use (so the
cell starts recording), and afterwards refreshes only the rows of machines in
it, then clears it. New machines append rows; removed ones (`cell.layout` moved)
make it read every row again. Nothing else may drain that set.

The table describes the cell, not a scheduler, so every `SchedulerCore`
deciding against one `CellState` object shares one table (`table_for`): two
cores on one copy must not steal each other's change notices.

Resources mirror each machine's ledger `Account` column by column. `dims`
lists the table's dimensions (cpu and memory first, then disk and devices in
the order machines declaring them appeared; a new one grows every 2-D array
by a column of zeros, which is right for the machines that have none of it),
and `dim_index` maps a name to its column. Per row and dimension (int64,
shape `(rows, len(dims))`, in the units of `cellstate.resources`; stored
column-major, as policy reads one dimension over many machines at a time):
- `capacity`: what the machine declares;
- `free`: room for one more regular task, `Account.free(dim, False)`:
  capacity minus limits, minus best-effort limits in exclusive dimensions;
- `be_free`: room for one more best-effort task, `Account.free(dim, True)`:
  capacity minus reservations minus best-effort limits (Borg's reclaimed
  resources in cpu and memory; in the others a reservation is the limit).
The fit rules are `cellstate.ledger`'s alone: a refresh copies each changed
row's rooms as the ledger decodes them (`Account.rooms`), and a test holds
the table equal to `Account.free` on every row and dimension. Per row besides:
- `inv_cap` (float64, 2-D): `1/capacity`, 0 where the machine has none, so a
  dimension a machine lacks adds nothing to its scores;
- `free_frac` (float64): `sum(free * inv_cap)`, the task-independent part of
  the best-fit score, refreshed with its row;
- `up` (bool), `domain` (int32 code into `domains`), `seqnum`.
Label columns (`labels(key)`) are built on first use and then kept current by
the same row refreshes (of the rows whose machine re-registered or an operator
labelled: only those change a machine's labels or domain).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from cellstate import CellState, Machine, MachineState
from cellstate.ledger import Account, field_offset
from cellstate.resources import RECLAIMABLE, REQUIRED

_DIM_COLUMNS = ("capacity", "free", "be_free")
# A task's demand over the table: (column, amount) per dimension it asks for.
# Policy reads one column at a time (a column gather is far cheaper than a
# gather of whole rows), and only the dimensions a task names.
Demand = list[tuple[int, int]]
MISSING = -1  # label code of a machine without the label


class LabelColumn:
    """One label key as integer codes per machine (`MISSING` if absent)."""

    __slots__ = ("codes", "vocab")

    def __init__(self, size: int) -> None:
        self.codes = np.full(size, MISSING, dtype=np.int32)
        self.vocab: dict[str, int] = {}

    def code(self, value: str) -> int:
        code = self.vocab.get(value)
        if code is None:
            code = self.vocab[value] = len(self.vocab)
        return code

    def codes_of(self, values: list[str]) -> list[int]:
        """`code` of each value; a plain lookup while no value is new."""
        vocab = self.vocab
        try:
            return [vocab[value] for value in values]
        except KeyError:
            return [self.code(value) for value in values]


class MachineTable:
    """Numpy columns over `cell.machine_list`; see the module docstring."""

    def __init__(self) -> None:
        self.n = 0
        self._size = 0
        self.layout = 0  # the cell's `layout` the rows were read under
        self.generation = 0  # bumped by every sync that changed a row
        self.rows_refreshed = 0  # total row refreshes, for tests and figures
        self.dims: list[str] = []
        self.dim_index: dict[str, int] = {}
        # Per column: held exclusively (best-effort tasks count against
        # regular room there), as opposed to reclaimable.
        self.exclusive = np.zeros(0, dtype=bool)
        self.domains = LabelColumn(0)
        self._labels: dict[str, LabelColumn] = {}
        self.up = np.zeros(0, dtype=bool)
        self.seqnum = np.zeros(0, dtype=np.int64)
        self.free_frac = np.zeros(0, dtype=np.float64)
        self.capacity = np.zeros((0, 0), dtype=np.int64, order="F")
        self.free = np.zeros((0, 0), dtype=np.int64, order="F")
        self.be_free = np.zeros((0, 0), dtype=np.int64, order="F")
        self.inv_cap = np.zeros((0, 0), dtype=np.float64, order="F")
        # The capacity mapping and labels dict each row was last read from, and the
        # rows whose capacity lacks some of the table's dimensions.
        self._capacity_of: list[Mapping[str, int] | None] = []
        self._labels_of: list[Mapping[str, str] | None] = []
        self._narrow: set[int] = set()
        for dim in REQUIRED:
            self._add_dim(dim)

    # -- keeping current --------------------------------------------------------

    def sync(self, cell: CellState) -> int:
        """Bring the table up to `cell`; return how many rows were refreshed."""
        machines = cell.machine_list
        if cell.changed_machines is None or len(machines) < self.n or cell.layout != self.layout:
            # First use, or machines were removed and rows moved up: read every row.
            cell.changed_machines = set()
            self.layout = cell.layout
            self._resize(len(machines), reset=True)
            self.n = 0
            return self._refresh(machines, range(len(machines)))
        changed = cell.changed_machines
        if not changed and len(machines) == self.n:
            return 0
        rows = [cell.machines[mid].index for mid in changed]
        changed.clear()
        if len(machines) > self.n:
            self._resize(len(machines))
            rows.extend(range(self.n, len(machines)))
            rows = list(set(rows))  # a new machine may have changed too
        rows.sort()
        return self._refresh(machines, rows)

    def changes_pending(self, cell: CellState) -> bool:
        """Whether `sync(cell)` would refresh a row, and so bump `generation`."""
        machines = cell.machine_list
        if cell.changed_machines is None or len(machines) < self.n or cell.layout != self.layout:
            return bool(machines)
        return bool(cell.changed_machines) or len(machines) > self.n

    def _refresh(self, machines: list[Machine], rows: Iterable[int]) -> int:
        rows = list(rows)
        self.n = len(machines)
        if not rows:
            return 0
        ms = [machines[i] for i in rows]
        accounts = [m.account for m in ms]
        # A machine's capacity, labels and domain change only when it re-registers, and
        # then the ledger holds a new capacity mapping (vectors are replaced, never
        # written through) and the machine a new labels dict: read capacity, its
        # inverse, new dimensions, domain and labels of those rows only.
        seen, seen_labels = self._capacity_of, self._labels_of
        moved = [
            i
            for i, m in zip(rows, ms, strict=True)
            if seen[i] is not m.account.capacity or seen_labels[i] is not m.labels
        ]
        if moved:
            self._read_capacity(moved, [machines[i].account.capacity for i in moved])
            self._read_labels(moved, [machines[i] for i in moved])
        dims = self.dims
        idx = np.asarray(rows, dtype=np.intp)
        narrow = self._narrow
        if not narrow or narrow.isdisjoint(rows):
            # Every row declares every column (capacities are read above, so none has a
            # dimension the table lacks): decode every room of every row at once, from
            # the low 8 bytes of each dimension's field (`Account.rooms_bytes`).
            raw, size = Account.rooms_bytes(accounts)
            starts = np.asarray([field_offset(dim) for dim in dims], dtype=np.intp)
            picked = (starts[:, None] + np.arange(8)).ravel()
            fields = np.frombuffer(raw, dtype=np.uint8).reshape(len(rows), 2, size)[:, :, picked]
            both = fields.copy().view("<i8")  # (rows, 2, width): regular, then best-effort
            free, be_free = both[:, 0, :], both[:, 1, :]
        else:
            rooms = [a.rooms() for a in accounts]
            free = _matrix([regular for regular, _ in rooms], dims)
            be_free = _matrix([be for _, be in rooms], dims)
        self.free[idx] = free
        self.be_free[idx] = be_free
        self.free_frac[idx] = (free * self.inv_cap[idx]).sum(axis=1)
        self.seqnum[idx] = [m.seqnum for m in ms]
        up = MachineState.UP
        self.up[idx] = [m.state is up for m in ms]
        self.rows_refreshed += len(rows)
        self.generation += 1
        return len(rows)

    def _read_capacity(self, rows: list[int], capacities: list[Mapping[str, int]]) -> None:
        """Store the capacity (and its inverse) of `rows`, adding a column for
        any dimension the table has not seen yet."""
        index = self.dim_index
        for vector in capacities:
            for dim in vector:
                if dim not in index:
                    self._add_dim(dim)
        idx = np.asarray(rows, dtype=np.intp)
        capacity = _matrix(capacities, self.dims)
        self.capacity[idx] = capacity
        with np.errstate(divide="ignore"):
            self.inv_cap[idx] = np.where(capacity > 0, 1.0 / capacity, 0.0)
        width = len(self.dims)
        for row, mapping in zip(rows, capacities, strict=True):
            self._capacity_of[row] = mapping
            if len(mapping) < width:
                self._narrow.add(row)
            else:
                self._narrow.discard(row)

    def _read_labels(self, rows: list[int], ms: list[Machine]) -> None:
        """Store the domain and label codes of `rows` (machines `ms`)."""
        idx = np.asarray(rows, dtype=np.intp)
        self.domains.codes[idx] = self.domains.codes_of([m.domain for m in ms])
        for key, column in self._labels.items():
            column.codes[idx] = [
                MISSING if (v := m.labels.get(key)) is None else column.code(v) for m in ms
            ]
        for row, m in zip(rows, ms, strict=True):
            self._labels_of[row] = m.labels

    def _add_dim(self, dim: str) -> None:
        """Append a column for `dim`: zeros, as every machine not yet refreshed
        with it has none of it."""
        self.dim_index[dim] = len(self.dims)
        self.dims.append(dim)
        self._narrow.update(i for i, c in enumerate(self._capacity_of) if c is not None)
        self.exclusive = np.append(self.exclusive, dim not in RECLAIMABLE)
        for name in (*_DIM_COLUMNS, "inv_cap"):
            old = getattr(self, name)
            new = np.zeros((old.shape[0], old.shape[1] + 1), dtype=old.dtype, order="F")
            new[:, :-1] = old
            setattr(self, name, new)

    def _resize(self, n: int, reset: bool = False) -> None:
        if n <= self._size and not reset:
            return
        size = max(n, 2 * self._size if not reset else n, 16)
        keep = 0 if reset else self.n

        def grow(old: np.ndarray, dtype, fill=0) -> np.ndarray:
            new = np.full((size, *old.shape[1:]), fill, dtype=dtype, order="F")
            new[:keep] = old[:keep]
            return new

        for name in _DIM_COLUMNS:
            setattr(self, name, grow(getattr(self, name), np.int64))
        self.inv_cap = grow(self.inv_cap, np.float64)
        self.seqnum = grow(self.seqnum, np.int64)
        self.up = grow(self.up, bool, False)
        self.free_frac = grow(self.free_frac, np.float64)
        self._capacity_of = self._capacity_of[:keep] + [None] * (size - keep)
        self._labels_of = self._labels_of[:keep] + [None] * (size - keep)
        if reset:
            self._narrow = set()
        if reset:
            self.domains = LabelColumn(size)
            self._labels = {}
        else:
            self.domains.codes = grow(self.domains.codes, np.int32, MISSING)
            for column in self._labels.values():
                column.codes = grow(column.codes, np.int32, MISSING)
        self._size = size

    # -- reading ------------------------------------------------------------------

    def labels(self, cell: CellState, key: str) -> LabelColumn:
        """The column of label `key`, built from every machine on first use."""
        column = self._labels.get(key)
        if column is None:
            column = LabelColumn(self._size)
            column.codes[: self.n] = [
                MISSING if (v := m.labels.get(key)) is None else column.code(v)
                for m in cell.machine_list[: self.n]
            ]
            self._labels[key] = column
        return column

    def view(self, name: str, dim: str | None = None) -> np.ndarray:
        """Column `name` cut to the live rows (a view, not a copy); for the
        per-dimension arrays, `dim` picks one dimension's column."""
        array = getattr(self, name)[: self.n]
        return array if dim is None else array[:, self.dim_index[dim]]

    def demand(self, amounts: Mapping[str, int]) -> Demand | None:
        """`amounts` as (column, amount) pairs; None if it names a dimension
        no machine in the table has (nothing can fit it)."""
        index = self.dim_index
        pairs = []
        for dim, amount in amounts.items():
            j = index.get(dim)
            if j is None:
                return None
            pairs.append((j, amount))
        return pairs


def _matrix(vectors: Sequence[Mapping[str, int]], dims: list[str]) -> np.ndarray:
    """The dict vectors as an int64 array of shape (len(vectors), len(dims))."""
    out = np.empty((len(vectors), len(dims)), dtype=np.int64)
    for j, dim in enumerate(dims):
        out[:, j] = [vector.get(dim, 0) for vector in vectors]
    return out


_TABLES: weakref.WeakKeyDictionary[CellState, MachineTable] = weakref.WeakKeyDictionary()


def table_for(cell: CellState) -> MachineTable:
    """The one table of `cell`, shared by every core deciding against it, synced."""
    table = _TABLES.get(cell)
    if table is None:
        table = _TABLES[cell] = MachineTable()
    table.sync(cell)
    return table


def generation_for(cell: CellState) -> int:
    """The `generation` that `table_for(cell)` would have, without syncing an existing
    table: a core asking only whether it has work need not pay for refreshing rows that
    its next decision refreshes anyway (often with later changes to the same machines)."""
    table = _TABLES.get(cell)
    if table is None:
        return table_for(cell).generation
    return table.generation + table.changes_pending(cell)
