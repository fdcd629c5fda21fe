"""Conflict avoidance: which machines a scheduler tries first, and which it rests.

Why schedulers conflicted (measured in `bench.placement`: every rejection
`insufficient:cpu`, lost to the rival schedulers): best fit prefers the
tightest machine, and the tightest machines are the ones a rival has just
half filled. Every scheduler reading the same state therefore makes for the
same few machines, and whoever commits second loses. Random sampling
(`sample`) does not help much: each sample holds some of those machines and
best fit picks them first.

Two pieces, both deterministic given the cell and `now` (no clock, no
randomness of their own, so the simulator replays them from its seed):

- **Preferred partitions.** The schedulers that report to the cell
  (`CellState.schedulers`, reported within `RIVAL_STALE_S` of the cell's own
  clock, `CellState.now`, so no two clocks are compared) and this
  one split the machines by rendezvous hashing: a machine belongs to the
  scheduler with the highest hashed weight of (scheduler, machine). Every copy at the
  same version computes the same split, so rivals' first choices are
  disjoint; when a scheduler joins or stops reporting only its share of
  machines moves. Partitions are a preference, not a fence: the stack scores
  a scheduler's own machines first and spills over to the others only when
  they lack room (`Stack._select`), so no task waits while any machine fits
  it, and best fit still packs within each partition. A job that spreads
  also spills where its partition lacks a fresh machine in some domain
  (`sample.candidates`): spreading comes before avoiding rivals.
- **Cooling.** A machine on which a claim lost a fit conflict
  (`insufficient:*`, `machine_changed`) is tried last for `cool_s` seconds:
  a rival is filling it, and best fit would send the next claim straight back
  to it. After the window it is an ordinary candidate again.

`tiers` returns, per table row, the order in which machines are tried:
`PREFERRED`, then `OTHER`, then `COOLED`; the stack turns it into a score
penalty large enough to make (tier, best-fit score) lexicographic. With
avoidance a scheduler scores the machines of its partition that hold
something (a bounded sample of them where there are many) and a sample of the
empty ones, not a sample of the whole cell (`sample` says why).
"""

from __future__ import annotations

import zlib

import attrs
import numpy as np

from cellstate import CellState, CommitResult, reasons
from schedulers.table import MachineTable

PREFERRED, OTHER, COOLED = 0, 1, 2
# A scheduler whose last report is older than this has stopped: its machines
# go back to the others.
RIVAL_STALE_S = 30.0
# Rejections that say a rival is filling the machine, and so cool it.
_COOLING = (reasons.MACHINE_CHANGED, reasons.insufficient(""))


@attrs.frozen
class Avoidance:
    """Which pieces a core uses: partitions among the reporting schedulers,
    and how long a machine that lost a fit conflict rests (0: no cooling)."""

    partition: bool = True
    cool_s: float = 1.0

    def __attrs_post_init__(self) -> None:
        if not self.cool_s >= 0:
            raise ValueError(f"cool_s {self.cool_s!r}: must be a number of seconds >= 0")


def rivals(cell: CellState, me: str) -> tuple[str, ...]:
    """The schedulers sharing the machines with `me`, `me` included, sorted:
    every scheduler that reported to the cell within `RIVAL_STALE_S` of the
    cell's latest command."""
    now = cell.now
    live = {name for name, r in cell.schedulers.items() if now - r.at <= RIVAL_STALE_S}
    return tuple(sorted(live | {me}))


def owners(machine_ids: list[str], names: tuple[str, ...]) -> np.ndarray:
    """Per machine, the index in `names` of the scheduler it belongs to by
    rendezvous hashing: the highest weight `mix(crc32(name) << 32 | crc32(machine))`
    (ties to the first name). crc32 is stable across processes, unlike `hash`;
    being linear, it is mixed before weights are compared, or they correlate."""
    crc = zlib.crc32
    machines = np.fromiter((crc(m.encode()) for m in machine_ids), np.uint64, len(machine_ids))
    weights = np.empty((len(names), len(machine_ids)), dtype=np.uint64)
    for k, name in enumerate(names):
        weights[k] = _mix(machines | np.uint64(crc(name.encode()) << 32))
    return np.argmax(weights, axis=0)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    x = x.copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


class Avoider:
    """One core's avoidance state: the partition it computed last and the
    machines it is resting, with the time each may be tried again."""

    def __init__(self, name: str, policy: Avoidance) -> None:
        self.name = name
        self.policy = policy
        self.cooled: dict[str, float] = {}  # machine id -> cooled until
        self._names: tuple[str, ...] = ()
        self._owner = np.zeros(0, dtype=np.int64)
        self._layout = 0  # the cell's `layout` `_owner` was read under
        # Per row, whether the machine is in this scheduler's own share (at the
        # last `tiers`); None: every machine is (no rival, or partitions off).
        self.mine: np.ndarray | None = None

    def share(self, n: int) -> int:
        """How many of the first `n` machines are this scheduler's own."""
        return n if self.mine is None else int(np.count_nonzero(self.mine[:n]))

    def outside(self, cell: CellState, machines: list[str]) -> int:
        """How many of `machines` (claimed, repeats counted) lie outside its share."""
        mine = self.mine
        if mine is None:
            return 0
        index = cell.machines
        return sum(1 for m in machines if not mine[index[m].index])

    def learn(self, result: CommitResult, now: float) -> None:
        """Cool every machine on which a claim of `result` lost a fit conflict."""
        if self.policy.cool_s <= 0:
            return
        until = now + self.policy.cool_s
        for rejection in result.rejected:
            if rejection.machine and rejection.reason.startswith(_COOLING):
                self.cooled[rejection.machine] = until

    def tiers(self, cell: CellState, table: MachineTable, now: float) -> np.ndarray:
        """Per table row, `PREFERRED`, `OTHER` or `COOLED`."""
        n = table.n
        tier = np.zeros(n, dtype=np.int8)
        self.mine = None
        if self.policy.partition:
            names = rivals(cell, self.name)
            if len(names) > 1:
                machines = cell.machine_list[:n]
                if names != self._names or self._owner.size != n or cell.layout != self._layout:
                    self._owner = owners([m.id for m in machines], names)
                    self._names, self._layout = names, cell.layout
                self.mine = self._owner == names.index(self.name)
                tier = np.where(self.mine, PREFERRED, OTHER).astype(np.int8)
        if self.cooled:
            self.cooled = {m: t for m, t in self.cooled.items() if t > now}
            rows = [cell.machines[m].index for m in self.cooled if m in cell.machines]
            tier[[r for r in rows if r < n]] = COOLED
        return tier
