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

How it counts, and why so: a commit books a claim in every dimension, on
the cell's hottest path (hundreds of thousands of claims a second). So each
vector is *packed* into one Python integer, a field of `FIELD_BITS` bits per
dimension, and a whole vector is added, subtracted or compared in a handful
of integer operations whatever the number of dimensions (SWAR: SIMD within a
register). An account keeps its two *rooms* (for a regular and for a
best-effort task) biased by `BIAS` per declared dimension, so that "does a
demand fit" is one subtraction and one mask test of each field's bias bit.
Values stay far below the bias (2^78) and fields never borrow from each
other. Packing is internal and per process: fields are assigned to names as
they appear (`slot`); dicts are what the rest of the cell reads and what
snapshots write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from cellstate import reasons
from cellstate.resources import DIMENSIONS, RECLAIMABLE

if TYPE_CHECKING:
    from cellstate.model import Task

Vector = dict[str, int]
EMPTY: Mapping[str, int] = {}
QuotaKey = tuple[str, int]  # (owner, band)

FIELD_BITS = 80
FIELD_BYTES = FIELD_BITS // 8
_FIELD_MASK = (1 << FIELD_BITS) - 1
_BIAS_BIT = FIELD_BITS - 2
BIAS = 1 << _BIAS_BIT

# The process's field assignment: named dimensions first, devices as they appear.
_SLOTS: dict[str, int] = {name: i for i, name in enumerate(DIMENSIONS)}
_ALL_BIAS = [sum(BIAS << (FIELD_BITS * i) for i in range(len(_SLOTS)))]


# Quota keys as small integers, assigned per process as they appear (as fields are): the
# ledger books one per placement, and an integer hashes and compares for nothing where a
# tuple is hashed anew at every lookup. `QUOTA_KEYS[i]` is the key of id i.
_QUOTA_IDS: dict[QuotaKey, int] = {}
QUOTA_KEYS: list[QuotaKey] = []


def quota_id(owner: str, band: int) -> int:
    """The process's integer for the quota key (owner, band)."""
    key = (owner, int(band))
    found = _QUOTA_IDS.get(key)
    if found is None:
        found = _QUOTA_IDS[key] = len(QUOTA_KEYS)
        QUOTA_KEYS.append(key)
    return found


def slot(dim: str) -> int:
    """The field of dimension `dim` in packed vectors (assigned on first use)."""
    found = _SLOTS.get(dim)
    if found is None:
        found = _SLOTS[dim] = len(_SLOTS)
        _ALL_BIAS[0] += BIAS << (FIELD_BITS * found)
    return found


def field_offset(dim: str) -> int:
    """The first byte of dimension `dim`'s field in `Account.rooms_bytes`."""
    return FIELD_BYTES * slot(dim)


def pack(vector: Mapping[str, int]) -> int:
    """A vector as one integer: the sum of each amount shifted to its field."""
    return sum(amount << (FIELD_BITS * slot(dim)) for dim, amount in vector.items())


def _bias(dims: Iterable[str]) -> int:
    return sum(BIAS << (FIELD_BITS * slot(dim)) for dim in dims)


def _mask(dims: Iterable[str]) -> int:
    # The bias bit of each dimension's field: set after a subtraction iff it did not go below zero.
    return sum(1 << (FIELD_BITS * slot(dim) + _BIAS_BIT) for dim in dims)


def _field(biased: int, dim: str) -> int:
    """One dimension's amount from a biased integer."""
    return ((biased >> (FIELD_BITS * slot(dim))) & _FIELD_MASK) - BIAS


def unpack(packed: int, dims: Iterable[str]) -> Vector:
    """The amounts of `dims` in a packed vector (any sign)."""
    dims = list(dims)
    for dim in dims:
        slot(dim)  # assign every field before reading the bias over all of them
    biased = packed + _ALL_BIAS[0]
    return {dim: _field(biased, dim) for dim in dims}


_RECLAIM_MASK = _mask(RECLAIMABLE)
# Every bit of every field but the reclaimable ones.
_EXCLUSIVE_FIELDS = ~sum(_FIELD_MASK << (FIELD_BITS * slot(dim)) for dim in RECLAIMABLE)


class Need:
    """A demand packed for the ledger, made once per job spec and shared by its tasks:
    the whole vector, its exclusive (not reclaimable) part, and its fields' bias bits."""

    __slots__ = ("amounts", "exclusive", "mask", "whole")

    def __init__(self, amounts: Mapping[str, int]) -> None:
        self.amounts = amounts
        self.whole = pack(amounts)
        self.exclusive = pack({d: a for d, a in amounts.items() if d not in RECLAIMABLE})
        self.mask = _mask(amounts)


class Account:
    """One machine's books; see the module docstring.

    `room` and `be_room` are the biased packed rooms for one more regular and
    best-effort task; `be_packed` the packed limits of best-effort tasks. A
    *delta* account (`Account.delta()`) holds unbiased changes not yet applied
    (an overlay's claims, a claim's victims), added to a real account's rooms."""

    __slots__ = ("_base", "be_packed", "be_room", "capacity", "declared", "room")

    def __init__(self, capacity: Mapping[str, int]) -> None:
        self.capacity: Mapping[str, int] = capacity
        self.be_packed = 0
        self._base = _bias(capacity) + pack(capacity)
        self.room = self.be_room = self._base
        # Bias bits of the dimensions the machine has: a demand elsewhere never fits.
        self.declared = _mask(capacity)

    @classmethod
    def delta(cls) -> Account:
        return cls(EMPTY)

    def resize(self, capacity: Mapping[str, int]) -> None:
        """Declare a new capacity; what the machine holds stays booked."""
        base = _bias(capacity) + pack(capacity)
        self.room += base - self._base
        self.be_room += base - self._base
        self._base = base
        self.capacity = capacity
        self.declared = _mask(capacity)

    def shortfall(self, need: Need, best_effort: bool, delta: Account | None = None) -> str | None:
        """The first dimension of `need` (in its canonical order) in which one more
        task does not fit, `delta` applied first; None if it fits."""
        room = self.be_room if best_effort else self.room
        extra = 0 if delta is None else (delta.be_room if best_effort else delta.room)
        for dim, amount in need.amounts.items():
            if dim not in self.capacity:
                return dim
            if _field(room, dim) + unpack(extra, (dim,))[dim] < amount:
                return dim
        return None

    def overcommitted(self) -> bool:
        """Reservations plus best-effort limits exceed capacity in a reclaimable dimension."""
        return self.be_room & _RECLAIM_MASK != _RECLAIM_MASK

    def free(self, dim: str, best_effort: bool) -> int:
        """Room left in `dim` for one more regular (or best-effort) task's demand."""
        if dim not in self.capacity:
            return 0
        return _field(self.be_room if best_effort else self.room, dim)

    def rooms(self) -> tuple[Vector, Vector]:
        """`free` of every declared dimension for a regular and for a best-effort
        task, decoded in one pass (the schedulers' table reads a row with it)."""
        room, be_room = self.room, self.be_room
        regular: Vector = {}
        be: Vector = {}
        for dim in self.capacity:
            shift = FIELD_BITS * _SLOTS[dim]
            regular[dim] = ((room >> shift) & _FIELD_MASK) - BIAS
            be[dim] = ((be_room >> shift) & _FIELD_MASK) - BIAS
        return regular, be

    @staticmethod
    def room_columns(accounts: Sequence[Account], dim: str) -> tuple[list[int], list[int]]:
        """`rooms()[0][dim]` and `rooms()[1][dim]` of each of `accounts`, which all declare
        `dim`: the schedulers' table reads many changed rows a dimension at a time, and one
        pass per dimension decodes them without building two dicts per row."""
        shift = FIELD_BITS * _SLOTS[dim]
        mask, bias = _FIELD_MASK, BIAS
        return (
            [((a.room >> shift) & mask) - bias for a in accounts],
            [((a.be_room >> shift) & mask) - bias for a in accounts],
        )

    @staticmethod
    def rooms_bytes(accounts: Sequence[Account]) -> tuple[bytes, int]:
        """Both rooms of each of `accounts` (regular, then best-effort) as little-endian
        two's complement bytes, `width` bytes a room: what the schedulers' table decodes
        many changed rows from at once, with numpy, where `room_columns` takes big-integer
        steps per row and dimension. A dimension's field starts at byte `field_offset(dim)`,
        and its low 8 bytes are the room itself as a signed 64-bit integer: the bias
        (2^78) is a multiple of 2^64, so the field's value modulo 2^64 is the room."""
        width = FIELD_BYTES * len(_SLOTS) + 1  # and a byte for the sign
        return (
            b"".join(
                [
                    a.room.to_bytes(width, "little", signed=True)
                    + a.be_room.to_bytes(width, "little", signed=True)
                    for a in accounts
                ]
            ),
            width,
        )

    @property
    def used(self) -> Vector:
        # What regular tasks and best-effort devices took from the regular room, less
        # the latter: one fewer integer to keep per placement.
        taken = self._base - self.room - (self.be_packed & _EXCLUSIVE_FIELDS)
        return unpack(taken, self.capacity)

    @property
    def best_effort(self) -> Vector:
        return unpack(self.be_packed, self.capacity)

    @property
    def reserved(self) -> Vector:
        # capacity - best_effort - be_room, in unbiased terms.
        return unpack(self._base - self.be_room - self.be_packed, self.capacity)

    def breach(self, squeeze: bool = False) -> str | None:
        """The first rule of the module docstring these books break, described; None if none.

        With `squeeze`, reclaimable dimensions overcommitted by best-effort
        tasks pass: shedding those tasks mends them."""
        capacity = self.capacity
        used, reserved, be = self.used, self.reserved, self.best_effort
        for name, vector in (("used", used), ("reserved", reserved), ("best-effort", be)):
            for dim, amount in vector.items():
                if amount < 0:
                    return f"{name} {dim} is negative: {amount}"
        for dim, cap in capacity.items():
            if used[dim] > cap:
                return f"limits of regular tasks {used[dim]} exceed capacity {cap} in {dim}"
            held = reserved[dim] + be[dim]
            if held > cap and not (squeeze and dim in RECLAIMABLE):
                return f"reservations plus best-effort {held} exceed capacity {cap} in {dim}"
        return None

    def copy(self) -> Account:
        other = Account.__new__(Account)
        other.capacity, other._base, other.declared = self.capacity, self._base, self.declared
        other.be_packed = self.be_packed
        other.room, other.be_room = self.room, self.be_room
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
        # Packed quota taken per owner and band, by `quota_id`.
        self.taken: dict[int, int] = {}

    def add(self, task: Task, account: Account, reserved: int | None = None) -> None:
        """Book `task` on `account` and its owner: its limits, and for a regular task
        its reservation (packed; `reserved` overrides the task's own, for a claim
        not yet placed, which reserves its whole demand)."""
        # Written out, sign by sign, with `remove`: every placement and release
        # in the cell runs one of the two.
        need = task.need
        whole = need.whole
        if task.best_effort:
            account.be_packed += whole
            account.be_room -= whole
            account.room -= need.exclusive
            return
        account.room -= whole
        account.be_room -= task.reserved_packed if reserved is None else reserved
        taken = self.taken
        key = task.quota
        taken[key] = taken.get(key, 0) + whole

    def remove(self, task: Task, account: Account) -> None:
        """Take back exactly what `add` booked for the same task."""
        need = task.need
        whole = need.whole
        if task.best_effort:
            account.be_packed -= whole
            account.be_room += whole
            account.room += need.exclusive
            return
        account.room += whole
        account.be_room += task.reserved_packed
        taken = self.taken
        key = task.quota
        taken[key] = taken.get(key, 0) - whole

    def reserve(self, task: Task, account: Account, reserved: Mapping[str, int]) -> None:
        """Replace a placed regular task's reservation with `reserved`."""
        packed = pack(reserved)
        account.be_room += task.reserved_packed - packed
        task.reserved = reserved
        task.reserved_packed = packed

    def refusal(
        self,
        task: Task,
        account: Account,
        delta: Account | None = None,
        pending: Ledger | None = None,
    ) -> str | None:
        """Why one task may not be placed on the machine of `account` now (with
        `delta` and `pending` not yet applied on top); None if it may."""
        # `Account.fits`, written out: every claim of every commit is judged here.
        need = task.need
        mask = need.mask
        room = account.be_room if task.best_effort else account.room
        if delta is not None:
            room += delta.be_room if task.best_effort else delta.room
        # Each field of `need` must keep its bias bit after the subtraction, and be one the
        # machine declares. An undeclared field has no bias and may borrow from the field
        # above; a borrow only ever clears a bit, never sets one, so it cannot pass a
        # claim that does not fit, and the undeclared field itself fails on `declared`.
        if (room - need.whole) & mask & account.declared != mask:
            dim = account.shortfall(need, task.best_effort, delta)
            if dim is None:  # pragma: no cover - the packed test and the fields disagree
                raise AssertionError(f"packed room of {task.id} disagrees with its fields")
            return reasons.short(dim, account.capacity.get(dim, 0))
        if not self.limits or task.best_effort:
            return None  # (checked here too: no call per claim in a cell without quotas)
        return self.admits(task, 1, pending)[1] or None

    def admits(self, task: Task, wanted: int, pending: Ledger | None = None) -> tuple[int, str]:
        """How many of `wanted` tasks like `task` (one job's: one owner, band and demand)
        its owner's quota in its band lets be placed beyond what is taken and what
        `pending` (claims not yet applied) takes, and the reason the rest are kept out
        (`quota_exceeded:<dim>`; empty if none is). A scheduler asks before it claims,
        so that it does not send claims `refusal` would refuse one by one."""
        if not self.limits or task.best_effort:
            return wanted, ""
        key = task.quota
        limit = self.limits.get(QUOTA_KEYS[key])
        if limit is None:
            return wanted, ""
        demand = task.need.amounts
        taken = self.taken.get(key, 0) + (pending.taken.get(key, 0) if pending else 0)
        counted = unpack(taken, demand)
        admitted, why = wanted, ""
        for dim, amount in demand.items():
            cap = limit.get(dim)
            if cap is not None and amount > 0:
                room = max(0, (cap - counted[dim]) // amount)
                if room < admitted:
                    admitted, why = room, reasons.quota_exceeded(dim)
        return admitted, why

    def quota_state(self, owner: str, band: int) -> tuple[Vector | None, int]:
        """The limit set for (owner, band) and what its tasks take (packed): `admits` says
        the same for as long as neither changes."""
        return self.limits.get((owner, int(band))), self.taken.get(quota_id(owner, band), 0)

    def take(self, task: Task, count: int) -> None:
        """Count `count` more tasks like `task` as taken by its owner: a scratch ledger's
        claims not yet applied (`admits`' `pending`)."""
        if not task.best_effort and count:
            key = task.quota
            self.taken[key] = self.taken.get(key, 0) + count * task.need.whole

    def set_limit(self, key: QuotaKey, limit: Mapping[str, int] | None) -> None:
        if limit is None:
            self.limits.pop(key, None)
        else:
            self.limits[key] = dict(limit)

    def usage(self) -> dict[QuotaKey, Vector]:
        """Quota taken per owner and band, without zero entries, for comparison."""
        out = {}
        for key, taken in self.taken.items():
            counted = _nonzero(unpack(taken, _SLOTS))
            if counted:
                out[QUOTA_KEYS[key]] = counted
        return out


def _nonzero(vector: Mapping[str, int]) -> Vector:
    return {dim: amount for dim, amount in sorted(vector.items()) if amount}
