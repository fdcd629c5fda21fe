"""The ledger: the one piece of code that counts resources.

Every placement, release, reservation change and fit test in the cell goes
through here, over resource vectors of named dimensions (`resources`): the
cell state books tasks with it, the commit protocol judges claims with it
(and keeps its all-or-nothing overlay in it), the snapshot loader and the
invariant checker recount with it, and the schedulers' numpy table mirrors
an `Account` column by column.

Per machine, an `Account` holds four vectors:
- `capacity`: what the machine declares;
- `used`: the limits of its regular (non-best-effort) tasks;
- `reserved`: those tasks' reservations: Borg's usage-plus-margin estimate in
  the reclaimable dimensions (cpu, memory), the limit in every other;
- `best_effort`: the limits of its best-effort tasks.

What fits (the rules the invariants check after every command):
- a regular task: `used + demand <= capacity` in reclaimable dimensions, and
  `used + best_effort + demand <= capacity` in the others: a device or disk
  held by a best-effort task is held, never squeezed;
- a best-effort task: `reserved + best_effort + demand <= capacity` in every
  dimension, i.e. it lives on what regular tasks reserve but do not use.
When reservations grow back (usage rose, a regular task arrived) so that
`reserved + best_effort > capacity` in a reclaimable dimension, the machine
is `overcommitted` and the cell sheds best-effort tasks until it is not.

Per owner and priority band, the `Ledger` holds the quota taken (limits of
regular tasks) and the quota set; a dimension a quota does not name is
unlimited, and the best-effort band has no quota at all.

Vectors here are plain dicts of dimension name to integer. A task's `demand`
is its job's `Resources.amounts`, shared, and its `reserved` dict is replaced,
never mutated: neither is ever written through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cellstate import reasons
from cellstate.resources import RECLAIMABLE

if TYPE_CHECKING:
    from cellstate.model import Task

Vector = dict[str, int]
EMPTY: Mapping[str, int] = {}
QuotaKey = tuple[str, int]  # (owner, band)


class Account:
    """One machine's books; see the module docstring."""

    __slots__ = ("best_effort", "capacity", "reserved", "used")

    def __init__(self, capacity: Mapping[str, int]) -> None:
        self.capacity: Mapping[str, int] = capacity
        self.used: Vector = {}
        self.reserved: Vector = {}
        self.best_effort: Vector = {}

    def add(
        self, demand: Mapping[str, int], reserved: Mapping[str, int], best_effort: bool
    ) -> None:
        """Book one task: its limits, and for a regular task its reservation."""
        self._book(demand, reserved, best_effort, 1)

    def remove(
        self, demand: Mapping[str, int], reserved: Mapping[str, int], best_effort: bool
    ) -> None:
        """Take back exactly what `add` booked for the same task."""
        self._book(demand, reserved, best_effort, -1)

    def _book(
        self, demand: Mapping[str, int], reserved: Mapping[str, int], best_effort: bool, sign: int
    ) -> None:
        # Loops written out, not a helper per vector: this runs for every
        # placement and release in the cell.
        if best_effort:
            be = self.best_effort
            for dim, amount in demand.items():
                be[dim] = be.get(dim, 0) + sign * amount
            return
        used = self.used
        for dim, amount in demand.items():
            used[dim] = used.get(dim, 0) + sign * amount
        held = self.reserved
        for dim, amount in reserved.items():
            held[dim] = held.get(dim, 0) + sign * amount

    def shortfall(
        self, demand: Mapping[str, int], best_effort: bool, delta: Account | None = None
    ) -> str | None:
        """The first dimension in which one more task of `demand` does not fit,
        or None if it fits; `delta` is added to the books first (claims and
        victims not yet applied)."""
        capacity = self.capacity
        be = self.best_effort
        if best_effort:
            reserved = self.reserved
            for dim, amount in demand.items():
                taken = reserved.get(dim, 0) + be.get(dim, 0) + amount
                if delta is not None:
                    taken += delta.reserved.get(dim, 0) + delta.best_effort.get(dim, 0)
                if taken > capacity.get(dim, 0):
                    return dim
            return None
        used = self.used
        for dim, amount in demand.items():
            taken = used.get(dim, 0) + amount
            if delta is not None:
                taken += delta.used.get(dim, 0)
            if dim not in RECLAIMABLE:
                taken += be.get(dim, 0)
                if delta is not None:
                    taken += delta.best_effort.get(dim, 0)
            if taken > capacity.get(dim, 0):
                return dim
        return None

    def overcommitted(self) -> bool:
        """Reservations plus best-effort limits exceed capacity in a reclaimable dimension."""
        be = self.best_effort
        if not be:
            return False
        capacity, reserved = self.capacity, self.reserved
        return any(
            reserved.get(dim, 0) + be.get(dim, 0) > capacity.get(dim, 0) for dim in RECLAIMABLE
        )

    def free(self, dim: str, best_effort: bool) -> int:
        """Room left in `dim` for one more regular (or best-effort) task's demand."""
        capacity = self.capacity.get(dim, 0)
        be = self.best_effort.get(dim, 0)
        if best_effort:
            return capacity - self.reserved.get(dim, 0) - be
        return capacity - self.used.get(dim, 0) - (0 if dim in RECLAIMABLE else be)

    def breach(self, squeeze: bool = False) -> str | None:
        """The first rule of the module docstring these books break, described; None if none.

        With `squeeze`, reclaimable dimensions overcommitted by best-effort
        tasks pass: shedding those tasks mends them."""
        capacity = self.capacity
        for name, vector in (("used", self.used), ("reserved", self.reserved)):
            for dim, amount in vector.items():
                if amount < 0:
                    return f"{name} {dim} is negative: {amount}"
        for dim in set(self.used) | set(self.best_effort):
            used, be = self.used.get(dim, 0), self.best_effort.get(dim, 0)
            cap = capacity.get(dim, 0)
            if used > cap:
                return f"limits of regular tasks {used} exceed capacity {cap} in {dim}"
            held = self.reserved.get(dim, 0) + be
            if held > cap and not (squeeze and dim in RECLAIMABLE):
                return f"reservations plus best-effort {held} exceed capacity {cap} in {dim}"
        return None

    def copy(self) -> Account:
        other = Account(self.capacity)
        other.used, other.reserved, other.best_effort = (
            dict(self.used),
            dict(self.reserved),
            dict(self.best_effort),
        )
        return other

    def books(self) -> tuple[Vector, Vector, Vector]:
        """used, reserved and best-effort vectors without zero entries, for comparison."""
        return (_nonzero(self.used), _nonzero(self.reserved), _nonzero(self.best_effort))


class Ledger:
    """Quota per owner and band: what is set and what regular tasks take.

    `add` and `remove` book a task on its machine's `Account` and its owner
    together; `refusal` is the whole fit test of one claim. A `Ledger` also
    serves as a scratch overlay of claims not yet applied (see `commit`)."""

    __slots__ = ("limits", "taken")

    def __init__(self) -> None:
        self.limits: dict[QuotaKey, Vector] = {}
        self.taken: dict[QuotaKey, Vector] = {}

    def add(self, task: Task, account: Account, reserved: Mapping[str, int] | None = None) -> None:
        """Book `task` on `account` and its owner; `reserved` overrides the
        task's own reservation (for a claim not yet placed, which reserves its demand)."""
        account.add(task.demand, task.reserved if reserved is None else reserved, task.best_effort)
        if not task.best_effort:
            key = (task.owner, task.band)
            taken = self.taken.get(key)
            if taken is None:
                self.taken[key] = dict(task.demand)
            else:
                for dim, amount in task.demand.items():
                    taken[dim] = taken.get(dim, 0) + amount

    def remove(self, task: Task, account: Account) -> None:
        account.remove(task.demand, task.reserved, task.best_effort)
        if not task.best_effort:
            # setdefault: an overlay ledger books removals it never saw added.
            _add(self.taken.setdefault((task.owner, task.band), {}), task.demand, -1)

    def reserve(self, task: Task, account: Account, reserved: Vector) -> None:
        """Replace a placed regular task's reservation with `reserved`."""
        _add(account.reserved, task.reserved, -1)
        _add(account.reserved, reserved, 1)
        task.reserved = reserved

    def refusal(
        self,
        task: Task,
        account: Account,
        delta: Account | None = None,
        pending: Ledger | None = None,
    ) -> str | None:
        """Why one task may not be placed on the machine of `account` now (with
        `delta` and `pending` not yet applied on top); None if it may."""
        dim = account.shortfall(task.demand, task.best_effort, delta)
        if dim is not None:
            return reasons.short(dim, account.capacity.get(dim, 0))
        if not self.limits or task.best_effort:
            return None
        key = (task.owner, task.band)
        limit = self.limits.get(key)
        if limit is None:
            return None
        taken = self.taken.get(key, EMPTY)
        ahead = pending.taken.get(key, EMPTY) if pending is not None else EMPTY
        for dim, amount in task.demand.items():
            cap = limit.get(dim)
            if cap is not None and taken.get(dim, 0) + ahead.get(dim, 0) + amount > cap:
                return reasons.quota_exceeded(dim)
        return None

    def set_limit(self, key: QuotaKey, limit: Mapping[str, int] | None) -> None:
        if limit is None:
            self.limits.pop(key, None)
        else:
            self.limits[key] = dict(limit)

    def usage(self) -> dict[QuotaKey, Vector]:
        """Quota taken per owner and band, without zero entries, for comparison."""
        return {key: v for key, taken in self.taken.items() if (v := _nonzero(taken))}


def _add(into: Vector, vector: Mapping[str, int], sign: int) -> None:
    for dim, amount in vector.items():
        into[dim] = into.get(dim, 0) + sign * amount


def _nonzero(vector: Mapping[str, int]) -> Vector:
    return {dim: amount for dim, amount in sorted(vector.items()) if amount}
