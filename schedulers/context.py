"""The state of one decision: local free resources, randomness, claims so far.

A decision places many tasks before the store sees any of them, so each
placement is subtracted from *local* copies of the table's free columns and
later placements (of the same job or of later jobs) see what earlier ones
took. Preemption victims chosen in this decision add their resources back
and are remembered so no later claim names them again.
"""

from __future__ import annotations

import random

import numpy as np

from cellstate import CellState, Machine, Task
from schedulers.table import MachineTable


class DecisionContext:
    """Per-decision scratch state over a synced `MachineTable`."""

    def __init__(
        self, cell: CellState, table: MachineTable, rng: random.Random, sampling: bool
    ) -> None:
        self.cell = cell
        self.table = table
        self.sampling = sampling
        self.rng = rng
        # One numpy generator per decision, seeded from the injected rng, so a
        # seed reproduces every choice.
        self.np_rng = np.random.default_rng(rng.getrandbits(64))
        n = table.n
        self.n = n
        self.free_cpu = table.free_cpu[:n].copy()
        self.free_mem = table.free_mem[:n].copy()
        self.be_free_cpu = table.be_free_cpu[:n].copy()
        self.be_free_mem = table.be_free_mem[:n].copy()
        self.free_frac = table.free_frac[:n].copy()
        self.be_free_frac: np.ndarray | None = None  # built on first best-effort use
        self.inv_cap_cpu = table.inv_cap_cpu[:n]
        self.inv_cap_mem = table.inv_cap_mem[:n]
        self.evicted: set[str] = set()
        self.job_rows: dict[str, np.ndarray] = {}  # job -> rows of its active tasks
        self.machines: list[Machine] = cell.machine_list

    # -- views by resource class -------------------------------------------------

    def free(self, best_effort: bool) -> tuple[np.ndarray, np.ndarray]:
        if best_effort:
            return self.be_free_cpu, self.be_free_mem
        return self.free_cpu, self.free_mem

    def frac(self, best_effort: bool) -> np.ndarray:
        """Free share per machine (cpu share + memory share) of the resource class."""
        if not best_effort:
            return self.free_frac
        if self.be_free_frac is None:
            self.be_free_frac = (
                self.be_free_cpu * self.inv_cap_cpu + self.be_free_mem * self.inv_cap_mem
            )
        return self.be_free_frac

    # -- taking and giving back ----------------------------------------------------

    def take(
        self, rows: np.ndarray, counts: np.ndarray, cpu: int, memory: int, best_effort: bool
    ) -> None:
        """Subtract `counts[i]` tasks of (`cpu`, `memory`) from machine `rows[i]`
        (rows unique). Regular tasks reserve their limit, so they shrink the
        best-effort room too."""
        dcpu = counts * cpu
        dmem = counts * memory
        dfrac = dcpu * self.inv_cap_cpu[rows] + dmem * self.inv_cap_mem[rows]
        if not best_effort:
            self.free_cpu[rows] -= dcpu
            self.free_mem[rows] -= dmem
            self.free_frac[rows] -= dfrac
        self.be_free_cpu[rows] -= dcpu
        self.be_free_mem[rows] -= dmem
        if self.be_free_frac is not None:
            self.be_free_frac[rows] -= dfrac

    def release(self, row: int, victims: list[Task]) -> None:
        """Give back what `victims` (regular tasks on machine `row`) hold."""
        for victim in victims:
            self.evicted.add(victim.id)
            self.free_cpu[row] += victim.cpu
            self.free_mem[row] += victim.memory
            self.free_frac[row] += (
                victim.cpu * self.inv_cap_cpu[row] + victim.memory * self.inv_cap_mem[row]
            )
            self.be_free_cpu[row] += victim.reserved_cpu
            self.be_free_mem[row] += victim.reserved_memory
        self.be_free_frac = None

    def save(self) -> tuple:
        """A restore point (for gang jobs that turn out not to fit whole)."""
        return (
            self.free_cpu.copy(),
            self.free_mem.copy(),
            self.be_free_cpu.copy(),
            self.be_free_mem.copy(),
            self.free_frac.copy(),
            set(self.evicted),
        )

    def restore(self, saved: tuple) -> None:
        (
            self.free_cpu,
            self.free_mem,
            self.be_free_cpu,
            self.be_free_mem,
            self.free_frac,
            self.evicted,
        ) = saved
        self.be_free_frac = None
