"""A disruption-budget checker that follows a live cell's watch feed.

It replays every command the store applied into a cell state of its own (the
same pure code the replicas run), so a job's budget is checked at every
version of the cell, not at the moments a poll happens to look.
"""

from __future__ import annotations

import threading
import time

import trio

from cellstate import CellState
from cellstate.model import FIRST_RULES
from cellstate.wire import COMMAND, internal
from cellstore.cellclient import CellClient


class BudgetChecker:
    """Replays the watch feed; while `measuring`, records the most tasks of `job`
    not running-and-healthy at any version of the cell from `measure_from(version)` on.

    A version bound, not just a flag: the replay starts at the beginning of the log,
    and history in which the job's tasks had not yet come up is not a disruption."""

    def __init__(self, addr: str, token: str, job: str, ca: str | None = None) -> None:
        """`ca`: the CA file of a cell that serves https (`OMEGA_CA`)."""
        self.addr, self.token, self.job, self.ca = addr.split(","), token, job, ca
        self.measuring = False
        self.worst = 0
        self.version = 0  # the last version of the cell replayed
        self._from: int | None = None
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BudgetChecker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def measure_from(self, version: int, timeout: float = 60.0) -> None:
        """Measure from cell `version` on (the store's current version, read by the
        caller after the job settled), once the replay has reached it."""
        self._from = version
        deadline = time.monotonic() + timeout
        while self.version < version:
            if self.failure is not None:
                raise self.failure
            if time.monotonic() > deadline:
                raise TimeoutError(f"the checker replayed to {self.version}, not {version}")
            time.sleep(0.05)
        self.measuring = True

    def _run(self) -> None:
        try:
            trio.run(self._follow)
        except BaseException as exc:  # surfaced by the test
            self.failure = exc

    async def _follow(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch)
            while not self.stop.is_set():
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    async def _watch(self) -> None:
        cell = CellState(rules=FIRST_RULES)
        cell.keep_events = False
        async with CellClient.connect(self.addr, self.token, ca=self.ca) as client:
            async for batch in client.watch(1):
                if batch.snapshot is not None:
                    cell = CellState.restore(batch.snapshot)
                    cell.keep_events = False
                    self.version = batch.version
                for version, command in batch.commands:
                    cell.apply(internal.structure(command, COMMAND))
                    self.version = version
                    job = cell.jobs.get(self.job)
                    start = self._from
                    if (
                        job is not None
                        and self.measuring
                        and start is not None
                        and version >= start
                    ):
                        self.worst = max(self.worst, job.spec.tasks - job.available)
