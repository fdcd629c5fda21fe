"""A full local copy of the cell, kept current from the store's watch feed.

Schedulers decide against it and agents find their placements in it. It is
the very `CellState` the replicas run, fed the very commands of the log in
order, so at version V it is byte-identical to every replica at version V.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from cellstate import CellState, Event
from cellstate.model import FIRST_RULES
from cellstate.wire import COMMAND, internal
from cellstore.client import StoreClient

log = structlog.get_logger("cellstore.copy")

EventSink = Callable[[int, tuple[Event, ...]], None]


class LocalCopy:
    """A `CellState` that follows the store. Run `follow` in a nursery.

    `on_events(version, events)` is called for each applied command; after a
    snapshot replaces the state, `on_reset(cell)` is called instead (events
    between the old and new versions are not known, so consumers resync).
    """

    def __init__(
        self,
        on_events: EventSink | None = None,
        on_reset: Callable[[CellState], None] | None = None,
    ) -> None:
        # The feed replays the log from its start, under the rules it began with.
        self.cell = CellState(rules=FIRST_RULES)
        # A copy nobody reads events from (a scheduler's) builds none, as a replica does:
        # one event per claim was a tenth of the instructions of applying it.
        self.cell.keep_events = on_events is not None
        self._on_events = on_events
        self._on_reset = on_reset
        self._changed = trio.Event()

    @property
    def version(self) -> int:
        return self.cell.version

    async def follow(
        self, client: StoreClient, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Apply the feed forever; `task_status.started()` once caught up with the
        store's version at the time of the call."""
        target = (await client.status()).get("version", 0)
        started = False
        if target <= self.version:
            task_status.started()
            started = True
        async for batch in client.watch(self.version + 1):
            if batch.snapshot is not None:
                self.cell = CellState.restore(batch.snapshot)
                self.cell.keep_events = self._on_events is not None
                log.info("copy_reset", version=self.version)
                if self._on_reset is not None:
                    self._on_reset(self.cell)
            else:
                self.apply_batch(batch.commands)
            self._changed.set()
            self._changed = trio.Event()
            if not started and self.version >= target:
                task_status.started()
                started = True

    def apply_batch(self, commands: list[tuple[int, object]]) -> None:
        cell = self.cell
        structure = internal.structure
        for version, document in commands:
            outcome = cell.apply(structure(document, COMMAND))
            if outcome.version != version:  # pragma: no cover - a broken feed
                raise RuntimeError(f"copy diverged: applied {outcome.version}, feed said {version}")
            if self._on_events is not None and outcome.events:
                self._on_events(version, outcome.events)

    async def wait_for(self, version: int) -> None:
        """Return once the copy has applied `version` (e.g. a commit's result)."""
        while self.version < version:
            await self._changed.wait()

    async def changed(self) -> None:
        """Wait for the next batch to be applied."""
        await self._changed.wait()
