"""The seam from trio into Raft: submit commands, await their acknowledgement.

A trio task hands each command to `ReplicatedMachine.submit` with a callback (non-blocking), so
every command of a request is in flight at once and many requests pipeline into the Raft log.
Callbacks run on the Raft thread; the last one of a request wakes the waiting trio task with a
single `TrioToken.run_sync_soon`. A callback with a FAIL_REASON is not an acknowledgement: it
becomes a `CommitFailure` the HTTP layer turns into a retryable error. So does a command with no
callback before the deadline (its outcome is unknown, which is why clients retry with the same
command ids and the machine deduplicates).

At most `max_in_flight` commands are in flight per replica: on 2 cores, 16,000 in flight starved
the leader's heartbeats into an election (as did 20,000-50,000 in the first measurements of
pysyncobj, with commands failing), while ~4,000 keeps
throughput. A request larger than the cap goes in cap-sized chunks. Units are taken under a lock
so two requests never each hold part of the units and wait for the rest.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence

import attrs
import trio

from cellstore.raft import FAIL_REASON_NAMES, ReplicatedMachine


@attrs.frozen
class CommitFailure:
    """A command that was not acknowledged; `reason` is a pysyncobj FAIL_REASON name or
    `timeout`. Its outcome is unknown: retry it unchanged."""

    reason: str


class _Batch:
    __slots__ = ("done", "lock", "remaining", "results", "token")

    def __init__(self, n: int, token: trio.lowlevel.TrioToken) -> None:
        self.results: list[bytes | CommitFailure | None] = [None] * n
        self.remaining = n
        self.lock = threading.Lock()
        self.done = trio.Event()
        self.token = token

    def callback(self, index: int) -> Callable[[bytes | None, int], None]:
        def on_result(result: bytes | None, reason: int) -> None:
            with self.lock:
                if self.results[index] is not None:
                    return
                if reason == 0 and result is not None:
                    self.results[index] = result
                else:
                    self.results[index] = CommitFailure(FAIL_REASON_NAMES.get(reason, str(reason)))
                self.remaining -= 1
                finished = self.remaining == 0
            if finished:
                with contextlib.suppress(trio.RunFinishedError):
                    self.token.run_sync_soon(self.done.set)

        return on_result


class CommandGateway:
    """Submits wire-encoded commands to Raft from trio."""

    def __init__(
        self, raft: ReplicatedMachine, timeout_s: float = 10.0, max_in_flight: int = 4000
    ) -> None:
        self._raft = raft
        self._timeout_s = timeout_s
        self._cap = max(1, max_in_flight)
        self._slots = trio.Semaphore(self._cap)
        self._taking = trio.Lock()

    @property
    def in_flight(self) -> int:
        return self._cap - self._slots.value

    async def submit(self, commands: Sequence[bytes]) -> list[bytes | CommitFailure]:
        """Replicate each command as its own log entry, all in flight at once.

        Returns, in order, each command's result bytes or a `CommitFailure`. Never raises for a
        failed commit. On cancellation the commands may still commit (outcome unknown).
        """
        out: list[bytes | CommitFailure] = []
        for start in range(0, len(commands), self._cap):
            chunk = commands[start : start + self._cap]
            taken = 0
            try:
                async with self._taking:
                    for _ in chunk:
                        try:
                            self._slots.acquire_nowait()  # no checkpoint per command
                        except trio.WouldBlock:
                            await self._slots.acquire()
                        taken += 1
                out.extend(await self._submit_chunk(chunk))
            finally:
                for _ in range(taken):
                    self._slots.release()
        return out

    async def _submit_chunk(self, commands: Sequence[bytes]) -> list[bytes | CommitFailure]:
        batch = _Batch(len(commands), trio.lowlevel.current_trio_token())
        for i, command in enumerate(commands):
            self._raft.submit(command, batch.callback(i))
        with trio.move_on_after(self._timeout_s):
            await batch.done.wait()
        with batch.lock:
            out = [r if r is not None else CommitFailure("timeout") for r in batch.results]
            # Late callbacks are ignored from here on.
            batch.results = list(out)
        return out
