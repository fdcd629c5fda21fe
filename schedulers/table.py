"""The machine table: a cell's machines as numpy columns, kept current row by row.

A scheduler scores thousands of machines per decision, so it reads them as
arrays indexed by the dense `Machine.index`, not as records. The table owns
`cell.changed_machines`: `sync` sets it to an empty set on first use (so the
cell starts recording), and afterwards refreshes only the rows of machines in
it, then clears it. New machines append rows. Nothing else may drain that set.

The table describes the cell, not a scheduler, so every `SchedulerCore`
deciding against one `CellState` object shares one table (`table_for`): two
cores on one copy must not steal each other's change notices.

Columns (int64 unless noted; cpu in millicores, memory in bytes):
- `cap_cpu`, `cap_mem`: capacity;
- `free_cpu`, `free_mem`: free for regular tasks, capacity minus limits;
- `be_free_cpu`, `be_free_mem`: free for best-effort, capacity minus
  reservations minus best-effort limits (Borg's reclaimed resources);
- `up` (bool), `domain` (int32 code into `domains`), `seqnum`;
- `free_frac` (float64): `free_cpu/cap_cpu + free_mem/cap_mem`, the
  task-independent part of the best-fit score, refreshed with its row.
Label columns (`labels(key)`) are built on first use and then kept current by
the same row refreshes.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import numpy as np

from cellstate import CellState, Machine, MachineState

_INT_COLUMNS = (
    "cap_cpu",
    "cap_mem",
    "free_cpu",
    "free_mem",
    "be_free_cpu",
    "be_free_mem",
    "seqnum",
)
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


class MachineTable:
    """Numpy columns over `cell.machine_list`; see the module docstring."""

    def __init__(self) -> None:
        self.n = 0
        self._size = 0
        self.generation = 0  # bumped by every sync that changed a row
        self.rows_refreshed = 0  # total row refreshes, for tests and figures
        self.domains = LabelColumn(0)
        self._labels: dict[str, LabelColumn] = {}
        self.up = np.zeros(0, dtype=bool)
        self.free_frac = np.zeros(0, dtype=np.float64)
        self.inv_cap_cpu = np.zeros(0, dtype=np.float64)
        self.inv_cap_mem = np.zeros(0, dtype=np.float64)
        for name in _INT_COLUMNS:
            setattr(self, name, np.zeros(0, dtype=np.int64))
        # Column attributes, declared for type checkers.
        self.cap_cpu: np.ndarray
        self.cap_mem: np.ndarray
        self.free_cpu: np.ndarray
        self.free_mem: np.ndarray
        self.be_free_cpu: np.ndarray
        self.be_free_mem: np.ndarray
        self.seqnum: np.ndarray

    # -- keeping current --------------------------------------------------------

    def sync(self, cell: CellState) -> int:
        """Bring the table up to `cell`; return how many rows were refreshed."""
        machines = cell.machine_list
        if cell.changed_machines is None or len(machines) < self.n:
            cell.changed_machines = set()
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
        return self._refresh(machines, sorted(set(rows)))

    def _refresh(self, machines: list[Machine], rows: Iterable[int]) -> int:
        rows = list(rows)
        self.n = len(machines)
        if not rows:
            return 0
        ms = [machines[i] for i in rows]
        idx = np.asarray(rows, dtype=np.intp)
        cap_cpu = np.fromiter((m.cpu for m in ms), np.int64, len(ms))
        cap_mem = np.fromiter((m.memory for m in ms), np.int64, len(ms))
        self.cap_cpu[idx] = cap_cpu
        self.cap_mem[idx] = cap_mem
        self.free_cpu[idx] = cap_cpu - np.fromiter((m.used_cpu for m in ms), np.int64, len(ms))
        self.free_mem[idx] = cap_mem - np.fromiter((m.used_memory for m in ms), np.int64, len(ms))
        self.be_free_cpu[idx] = cap_cpu - np.fromiter(
            (m.reserved_cpu + m.be_cpu for m in ms), np.int64, len(ms)
        )
        self.be_free_mem[idx] = cap_mem - np.fromiter(
            (m.reserved_memory + m.be_memory for m in ms), np.int64, len(ms)
        )
        self.seqnum[idx] = np.fromiter((m.seqnum for m in ms), np.int64, len(ms))
        up = MachineState.UP
        self.up[idx] = np.fromiter((m.state is up for m in ms), bool, len(ms))
        self.domains.codes[idx] = [self.domains.code(m.domain) for m in ms]
        for key, column in self._labels.items():
            column.codes[idx] = [
                MISSING if (v := m.labels.get(key)) is None else column.code(v) for m in ms
            ]
        self.inv_cap_cpu[idx] = 1.0 / cap_cpu
        self.inv_cap_mem[idx] = 1.0 / cap_mem
        self.free_frac[idx] = (
            self.free_cpu[idx] * self.inv_cap_cpu[idx] + self.free_mem[idx] * self.inv_cap_mem[idx]
        )
        self.rows_refreshed += len(rows)
        self.generation += 1
        return len(rows)

    def _resize(self, n: int, reset: bool = False) -> None:
        if n <= self._size and not reset:
            return
        size = max(n, 2 * self._size if not reset else n, 16)
        keep = 0 if reset else self.n

        def grow(old: np.ndarray, dtype, fill=0) -> np.ndarray:
            new = np.full(size, fill, dtype=dtype)
            new[:keep] = old[:keep]
            return new

        for name in _INT_COLUMNS:
            setattr(self, name, grow(getattr(self, name), np.int64))
        self.up = grow(self.up, bool, False)
        self.free_frac = grow(self.free_frac, np.float64)
        self.inv_cap_cpu = grow(self.inv_cap_cpu, np.float64)
        self.inv_cap_mem = grow(self.inv_cap_mem, np.float64)
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

    def view(self, name: str) -> np.ndarray:
        """Column `name` cut to the live rows (a view, not a copy)."""
        return getattr(self, name)[: self.n]


_TABLES: weakref.WeakKeyDictionary[CellState, MachineTable] = weakref.WeakKeyDictionary()


def table_for(cell: CellState) -> MachineTable:
    """The one table of `cell`, shared by every core deciding against it, synced."""
    table = _TABLES.get(cell)
    if table is None:
        table = _TABLES[cell] = MachineTable()
    table.sync(cell)
    return table
