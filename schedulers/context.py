"""The state of one decision: local free resources, randomness, claims so far.

A decision places many tasks before the store sees any of them, so each
placement is subtracted from *local* copies of the table's `free` and
`be_free` arrays (in each column the task's demand names) and later
placements (of the same job or of later jobs) see what earlier ones took. The books move as the
ledger's would:
- a regular task takes its limit from the regular room and, as it reserves
  its limit until usage is reported, from the best-effort room too;
- a best-effort task takes its limit from the best-effort room and, in the
  exclusive dimensions (disk, devices), from the regular room too: what it
  holds there is held, not lent.
Preemption victims chosen in this decision give back their limits (regular
room) and reservations (best-effort room), and are remembered so no later
claim names them again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import numpy as np

from cellstate import CellState, Job, Machine, Task
from schedulers.avoid import PREFERRED
from schedulers.table import Demand, MachineTable

# Free shares are sums of floats: a machine within this of its full share is empty.
EMPTY_TOLERANCE = 1e-9
# Room masks a decision keeps (`DecisionContext.room_at_least`): a machine-sized
# bool array each, updated on every placement.
ROOM_MASKS = 16

Saved = tuple[np.ndarray, np.ndarray, np.ndarray, set[str], dict[str, int]]


class DecisionContext:
    """Per-decision scratch state over a synced `MachineTable`."""

    def __init__(
        self,
        cell: CellState,
        table: MachineTable,
        rng: random.Random,
        sampling: bool,
        tiers: np.ndarray | None = None,
        known_rows: dict[str, tuple[Job, int, np.ndarray]] | None = None,
        np_rng: np.random.Generator | None = None,
    ) -> None:
        self.cell = cell
        self.table = table
        self.sampling = sampling
        # Per row, the order in which machines are tried (`schedulers.avoid`);
        # None: all alike.
        self.tiers = tiers
        self.rng = rng
        # The decision's numpy generator: its core's (seeded once from the core's
        # injected rng, so a seed reproduces every choice), or one seeded here. Seeding
        # one costs as much as the rest of a small decision's set-up: not per decision.
        self.np_rng = np_rng if np_rng is not None else np.random.default_rng(rng.getrandbits(64))
        n = table.n
        self.n = n
        # Column-major like the table: a dimension's column is contiguous.
        self.free = table.free[:n].copy(order="F")
        self.be_free = table.be_free[:n].copy(order="F")
        self.free_frac = table.free_frac[:n].copy()
        self.be_free_frac: np.ndarray | None = None  # built on first best-effort use
        self._full_frac: np.ndarray | None = None
        self.capacity = table.capacity[:n]
        self.inv_cap = table.inv_cap[:n]
        self.exclusive = table.exclusive
        self.evicted: set[str] = set()
        self._preferred: np.ndarray | None = None
        self._preferred_rows: np.ndarray | None = None
        # Per resource class (best effort?), which machines are empty in its room,
        # kept in step by `take`: a decision places many jobs, and recomputing it
        # for each read every machine (`sample`).
        self._empty: dict[bool, np.ndarray] = {}
        # (best effort?, column, amount) -> whether each machine has that much room
        # there, kept in step by `take` like `_empty` (`room_at_least`).
        self._room_masks: dict[tuple[bool, int, int], np.ndarray] = {}
        # Per job, its available tasks this decision's victims take: the store
        # refuses a claim that takes more than its budget spares (`spare`).
        self.spent: dict[str, int] = {}
        self.job_rows: dict[str, np.ndarray] = {}  # job -> rows of its active tasks
        # Across decisions (the core's): job id -> (the job, its `Job.moves` count, rows then).
        self.known_rows = known_rows
        # (static filters, constraints) -> mask and machines removed by reason
        # (`feasible.static_feasible`).
        self.static: dict[tuple[object, ...], tuple[np.ndarray, dict[str, int]]] = {}
        self.machines: list[Machine] = cell.machine_list

    # -- views by resource class -------------------------------------------------

    def room(self, best_effort: bool) -> np.ndarray:
        """Room per machine and dimension (rows, dims) for one more task of the class."""
        return self.be_free if best_effort else self.free

    def frac(self, best_effort: bool) -> np.ndarray:
        """Free share per machine of the resource class, summed over its dimensions."""
        if not best_effort:
            return self.free_frac
        if self.be_free_frac is None:
            self.be_free_frac = (self.be_free * self.inv_cap).sum(axis=1)
        return self.be_free_frac

    @property
    def full_frac(self) -> np.ndarray:
        """Per machine, the free share it has when empty: one per dimension it has."""
        if self._full_frac is None:
            self._full_frac = (self.inv_cap > 0).sum(axis=1).astype(np.float64)
        return self._full_frac

    @property
    def preferred(self) -> np.ndarray:
        """Per machine, whether it is in this scheduler's preferred tier (`avoid`);
        all machines without tiers."""
        if self._preferred is None:
            tiers = self.tiers
            self._preferred = np.ones(self.n, dtype=bool) if tiers is None else tiers == PREFERRED
        return self._preferred

    @property
    def preferred_rows(self) -> np.ndarray:
        """The rows of `preferred`, in order."""
        if self._preferred_rows is None:
            self._preferred_rows = np.flatnonzero(self.preferred)
        return self._preferred_rows

    def empty(self, best_effort: bool) -> np.ndarray:
        """Per machine, whether it is empty in the room of `best_effort`'s class: its
        free share is its full one (within `EMPTY_TOLERANCE`, being a sum of floats)."""
        empty = self._empty.get(best_effort)
        if empty is None:
            frac = self.frac(best_effort)
            empty = self._empty[best_effort] = frac >= self.full_frac - EMPTY_TOLERANCE
        return empty

    def room_at_least(self, best_effort: bool, j: int, amount: int) -> np.ndarray:
        """Per machine, whether the room of `best_effort`'s class in column `j` holds
        `amount`; shared, not to be changed. Jobs of a decision mostly ask for a few
        task shapes: each mask is kept (up to `ROOM_MASKS`) rather than compared
        again over every machine for each job."""
        key = (best_effort, j, amount)
        mask = self._room_masks.get(key)
        if mask is None:
            mask = self.room(best_effort)[:, j] >= amount
            if len(self._room_masks) < ROOM_MASKS:
                self._room_masks[key] = mask
        return mask

    def demand(self, amounts: Mapping[str, int]) -> Demand | None:
        """`amounts` as the table's (column, amount) pairs; None if no machine
        has one of its dimensions."""
        return self.table.demand(amounts)

    # -- taking and giving back ----------------------------------------------------

    def take(self, rows: np.ndarray, counts: np.ndarray, demand: Demand, best_effort: bool) -> None:
        """Subtract `counts[i]` tasks of `demand` from machine `rows[i]` (rows
        unique), in both rooms as the module docstring says."""
        exclusive = self.exclusive
        be_frac = self.be_free_frac
        for j, amount in demand:
            taken = counts * amount
            share = taken * self.inv_cap[:, j][rows]
            self.be_free[:, j][rows] -= taken
            if be_frac is not None:
                be_frac[rows] -= share
            if not best_effort or exclusive[j]:
                self.free[:, j][rows] -= taken
                self.free_frac[rows] -= share
        for cls, empty in self._empty.items():
            empty[rows] = self.frac(cls)[rows] >= self.full_frac[rows] - EMPTY_TOLERANCE
        for (cls, j, amount), mask in self._room_masks.items():
            mask[rows] = self.room(cls)[:, j][rows] >= amount

    def release(self, row: int, victims: list[Task]) -> None:
        """Give back what `victims` (regular tasks on machine `row`) hold."""
        index = self.table.dim_index
        inv_cap = self.inv_cap[row]
        for victim in victims:
            self.evicted.add(victim.id)
            if victim.healthy_at is not None:
                self.spent[victim.job] = self.spent.get(victim.job, 0) + 1
            for dim, amount in victim.demand.items():
                j = index[dim]
                self.free[row, j] += amount
                self.free_frac[row] += amount * inv_cap[j]
            for dim, amount in victim.reserved.items():
                self.be_free[row, index[dim]] += amount
        self.be_free_frac = None
        self._empty.clear()
        self._room_masks.clear()

    def save(self) -> Saved:
        """A restore point (for gang jobs that turn out not to fit whole)."""
        return (
            self.free.copy(order="F"),
            self.be_free.copy(order="F"),
            self.free_frac.copy(),
            set(self.evicted),
            dict(self.spent),
        )

    def restore(self, saved: Saved) -> None:
        self.free, self.be_free, self.free_frac, self.evicted, self.spent = saved
        self.be_free_frac = None
        self._empty.clear()
        self._room_masks.clear()

    def spare(self, job_id: str) -> float:
        """How many more of the job's available tasks its budget lets this decision
        stop (`max_unavailable`; unlimited without one)."""
        job = self.cell.jobs[job_id]
        budget = job.spec.max_unavailable
        if budget is None:
            return math.inf
        return job.available - (job.spec.tasks - budget) - self.spent.get(job_id, 0)
