"""Owners' weighted dominant shares: Mesos's weighted DRF, read off the cell.

An owner's *dominant share* is the largest, over the cell's dimensions, of what
its regular tasks hold (their limits, as quota counts them: `Ledger.usage`) over
what the cell's machines that are up declare (what it can offer now). Its *weighted* share is that
divided by its weight (`CellState.weights`, 1 by default). There is no central
allocator: every scheduler holds the whole cell and orders its pending work by
these numbers (`schedulers.fairshare`), and `omega weights get` shows them.
Best-effort tasks are not counted: they live on what others reserve and leave.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cellstate.model import MachineState

if TYPE_CHECKING:
    from cellstate.state import CellState

Vector = dict[str, int]


def owner_usage(cell: CellState) -> dict[str, Vector]:
    """What each owner's regular tasks hold, summed over bands."""
    out: dict[str, Vector] = {}
    for (owner, _band), vector in cell.ledger.usage().items():
        mine = out.setdefault(owner, {})
        for dim, amount in vector.items():
            mine[dim] = mine.get(dim, 0) + amount
    return out


def cell_capacity(cell: CellState) -> Vector:
    """What the machines that are up declare, summed."""
    total: Vector = {}
    for machine in cell.machine_list:
        if machine.state is not MachineState.UP:
            continue
        for dim, amount in machine.account.capacity.items():
            total[dim] = total.get(dim, 0) + amount
    return total


def dominant_share(usage: Mapping[str, int], capacity: Mapping[str, int]) -> float:
    """max over dimensions of usage / capacity (dimensions the cell lacks count 0)."""
    return max(
        (amount / capacity[dim] for dim, amount in usage.items() if capacity.get(dim, 0) > 0),
        default=0.0,
    )


def shares(cell: CellState) -> dict[str, tuple[float, float]]:
    """Per owner with a weight or with regular tasks placed: (weight, dominant share)."""
    usage, capacity = owner_usage(cell), cell_capacity(cell)
    return {
        owner: (cell.weights.get(owner, 1.0), dominant_share(usage.get(owner, {}), capacity))
        for owner in sorted({*usage, *cell.weights})
    }
