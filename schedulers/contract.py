"""The contract between a scheduler core and what drives it: `CoreDecision` and `Core`.

Two drivers run a core: the live scheduler process (`schedulers.process`), against a local
copy of the cell and through the store, and the virtual-time simulator (`cellsim.engine`),
against one `CellState` it owns. Both make the same calls (see `schedulers.core`):

    if core.has_work(cell):
        decision = core.decide(cell, now)      # None: nothing to commit
        ... commit decision.transaction ...
        core.on_result(cell, decision, result, now)
        core.figures.add_busy(seconds_spent_deciding)

`SchedulerCore` is the real core; a test's stand-in with a simpler policy satisfies the same
Protocol, so the simulator reads every core through it and never probes for attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from cellstate import CellState, CommitResult, Transaction
from schedulers.metrics import SchedulerFigures


class CoreDecision(Protocol):
    """One decision: the transaction to commit, and the jobs that went into it."""

    @property
    def transaction(self) -> Transaction: ...

    @property
    def jobs(self) -> tuple[str, ...]:
        """Jobs with claims in the transaction."""
        ...

    @property
    def tasks(self) -> int:
        """Claims in the transaction."""
        ...

    @property
    def considered(self) -> Sequence[str]:
        """Every job the decision considered, with claims or without: each is one attempt,
        and the paper's decision time is paid once per considered job."""
        ...

    @property
    def unscheduled(self) -> int:
        """Tasks the decision tried to place, claimed or not (the paper model's
        think time is paid per one)."""
        ...


D = TypeVar("D", bound=CoreDecision)


class Core(Protocol[D]):
    """A scheduler core as its drivers see it; `D` is the decision type it hands out and
    takes back in `on_result`."""

    @property
    def name(self) -> str: ...

    @property
    def figures(self) -> SchedulerFigures:
        """The core's own counters; `figures.blocked` holds the jobs it parked."""
        ...

    @property
    def attempts(self) -> Mapping[str, int]:
        """Attempts so far per job it is still trying to place."""
        ...

    def has_work(self, cell: CellState) -> bool: ...

    def wakes_at(self) -> float | None:
        """When a job it holds back (the paper model's re-queue, a parked job's rest) may
        be tried again; None if it holds none back."""
        ...

    def decide(self, cell: CellState, now: float) -> D | None:
        """Read `cell` (never change it) and return the transaction to commit, or None when
        there is nothing to commit (no work, or no room for any of it)."""
        ...

    def on_result(self, cell: CellState, decision: D, result: CommitResult, now: float) -> None:
        """Learn what the store made of `decision`'s transaction (`cell` already holds it)."""
        ...
