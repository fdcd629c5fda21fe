"""How a live scheduler commits: the `Committer` seam between its decision loop and the store.

A `LiveScheduler` decides against its local copy, then hands each decision's transaction to a
`Committer` and learns what the store made of it. That one call is the only write the decision
loop makes, so it is the seam a harness needs: the fault suite wraps the real committer to
record what was sent and what came back, and runs the ordinary `LiveScheduler` around it, as
Nomad's test harness stands in for its `Planner`. Everything else about the scheduler (the
copy it follows, its reports) goes through the cell client unchanged.

The command id is the caller's: a retried send carries the same id, so the store applies the
transaction once, and a recorder sees the id the log will hold.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from cellstate import CommitResult, Transaction
from cellstore.cellclient import CellClient


@attrs.frozen(slots=True)
class Committed:
    """The store's answer to one committed transaction: the version its command was applied
    at, and its result: the claims accepted, rejected (with reasons) and preempted. A refused
    commit is a `CellError`, not a result."""

    version: int
    result: CommitResult


class Committer(Protocol):
    async def commit(self, transaction: Transaction, command_id: str) -> Committed:
        """Commit `transaction` as command `command_id` and return what the store applied.
        Raises `CellError`: with code `unavailable` if no replica acknowledged it (the outcome
        is then unknown), with the cell's code if the cell refused it."""
        ...


@attrs.frozen(slots=True)
class CellCommitter:
    """The real `Committer`: one commit through the typed cell client."""

    client: CellClient

    async def commit(self, transaction: Transaction, command_id: str) -> Committed:
        applied = await self.client.commit(transaction, id=command_id)
        return Committed(applied.version, applied.result)
