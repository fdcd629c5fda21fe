"""The watch feed: the last N applied commands, written by the Raft thread, read by trio.

The Raft thread appends (version, command) under the replica's state lock; trio watchers read
slices by version. Wake-ups are coalesced: however many commands are applied between two trio
scheduling rounds, the Raft thread schedules at most one `run_sync_soon`, which swaps in a fresh
`trio.Event` and sets the old one.
"""

from __future__ import annotations

import threading

import attrs
import trio


@attrs.frozen
class FeedRead:
    """The result of `AppliedFeed.read`: `too_old` means `from_version` fell out of the buffer
    (the watcher needs a snapshot); otherwise `entries` (possibly empty) and `changed`, an event
    set when anything new arrives."""

    too_old: bool
    entries: list[tuple[int, bytes]]
    changed: trio.Event | None
    last_version: int


class AppliedFeed:
    """A bounded, version-indexed buffer of applied commands (an `AppliedSink`)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._capacity = max(1, capacity)
        self._lock = threading.Lock()
        self._entries: list[tuple[int, bytes]] = []
        self._base = 0  # the version just before the first buffered entry
        self._last = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._wake_pending = False
        self._changed: trio.Event | None = None
        self.subscribers = 0

    def attach(self) -> None:
        """Bind to the running trio loop (call from trio before serving watchers)."""
        with self._lock:
            self._token = trio.lowlevel.current_trio_token()
            self._changed = trio.Event()

    def detach(self) -> None:
        with self._lock:
            self._token = None

    # -- Raft thread -------------------------------------------------------------------------

    def applied(self, version: int, command: bytes, result: bytes) -> None:
        with self._lock:
            if version != self._last + 1:
                # Not contiguous (cannot happen with a well-behaved machine): restart the window.
                self._entries.clear()
                self._base = version - 1
            self._entries.append((version, command))
            self._last = version
            overflow = len(self._entries) - self._capacity
            if overflow > self._capacity // 8:
                del self._entries[:overflow]
                self._base += overflow
            self._schedule_wake_locked()

    def restored(self, version: int) -> None:
        with self._lock:
            self._entries.clear()
            self._base = self._last = version
            self._schedule_wake_locked()

    def _schedule_wake_locked(self) -> None:
        if self._token is None or self._wake_pending:
            return
        self._wake_pending = True
        try:
            self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            self._token = None

    # -- trio ----------------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
            old, self._changed = self._changed, trio.Event()
        if old is not None:
            old.set()

    def read(self, from_version: int, limit: int = 1024) -> FeedRead:
        """Buffered commands with versions `from_version`, `from_version + 1`, ... (at most
        `limit`)."""
        with self._lock:
            if from_version <= self._base:
                return FeedRead(True, [], None, self._last)
            start = from_version - self._base - 1
            entries = self._entries[start : start + limit]
            return FeedRead(False, entries, self._changed, self._last)

    @property
    def window(self) -> tuple[int, int]:
        """(oldest version a watcher can resume from without a snapshot, last version)."""
        with self._lock:
            return self._base + 1, self._last
