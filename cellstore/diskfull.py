"""What a replica does when its data dir's filesystem is full: it stalls its Raft thread until
the write fits, so nothing it could not write is ever acknowledged, and it carries on by
itself once space is back.

pysyncobj 0.3.17 grows its journal by `ftruncate` and writes it through a shared mmap. On a
full filesystem the growth succeeds (the new pages are holes) and the first store into a hole
kills the process with SIGBUS, half a record written: the replica dies, and its journal ends
in a torn record that the data-dir check (`cellstore.datadir`) then refuses. Here every growth
of the journal file is reserved first with `posix_fallocate`; if the filesystem cannot give
the space (`ENOSPC`, `EDQUOT`), the Raft thread waits and retries every `RETRY_S` until it can,
so a store into the mapping never meets a hole. The term-and-vote file is stored the same way
(written whole, or retried). While it waits the replica sends no Raft message at all, so it
acknowledges nothing, votes for nobody, and, if it led, the others elect a leader; its API
still answers reads and `/v1/status` says `disk_full`. Dumps (snapshots) that cannot be
written fail and are retried by pysyncobj later; the journal then keeps every entry.

In the default mode the journal write it waits for goes to the page cache; with `fsync` the
acknowledgement also waits for the sync (`cellstore.durability`). A replica whose data dir
was written by a release without this (journal pages that are holes) has them reserved at
start, waiting the same way if they cannot be.

It reaches into pysyncobj's private members (the journal's file, the meta storer), which
`pysyncobj==0.3.17` being pinned makes stable.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("cellstore.diskfull")

RETRY_S = 0.5
FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """The replica is stopping while it waited for space."""


class SpaceGuard:
    """Makes one `SyncObj`'s journal and term-and-vote writes wait for space instead of
    failing half-done (module docstring). Built once the `SyncObj` exists, after
    `DurableJournal` (whose meta store it wraps in turn); `stopping` ends a wait."""

    def __init__(self, syncobj: Any, stopping: threading.Event, replica: Any) -> None:
        self.stopping = stopping
        self.full = False  # waiting for space right now
        self.stalls = 0  # times it had to wait
        self._log = log.bind(replica=replica)
        journal = syncobj._SyncObj__raftLog
        self._file = journal._FileJournal__journalFile
        self._reserve(0, self._file._ResizableFile__mm.size())
        self._file.write = self._reserving(self._file.write)
        meta = journal._FileJournal__metaStorer
        meta.storeMeta = self._retrying(meta.storeMeta)

    def _fd(self) -> int:
        # pysyncobj re-opens the file when mremap is refused: ask for it each time.
        return int(self._file._ResizableFile__f.fileno())

    def _reserving(self, write: Callable[[int, bytes], None]) -> Callable[[int, bytes], None]:
        def reserved(offset: int, values: bytes) -> None:
            resizable = self._file
            mapping = resizable._ResizableFile__mm
            mapped = len(mapping)
            if offset + len(values) > mapped:
                # Grown as `ResizableFile.write` would, but reserved first; the file is then
                # that long already, so the mapping is grown here (pysyncobj reads the file's
                # size, not the mapping's, and would not).
                factor = resizable._ResizableFile__resizeFactor
                grown = max(int(mapped * factor), offset + len(values))
                self._reserve(mapped, grown - mapped)
                try:
                    mapping.resize(grown)
                except (SystemError, OSError):
                    resizable._ResizableFile__extand(0)  # pysyncobj's own fallback: re-map
            write(offset, values)

        return reserved

    def _reserve(self, offset: int, length: int) -> None:
        if length > 0:
            self._wait_for_space(lambda: os.posix_fallocate(self._fd(), offset, length))

    def _retrying(self, store: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
        def stored(values: dict[str, Any]) -> None:
            self._wait_for_space(lambda: store(values))

        return stored

    def _wait_for_space(self, attempt: Callable[[], None]) -> None:
        waited_since: float | None = None
        while True:
            try:
                attempt()
            except OSError as exc:
                if exc.errno not in FULL:
                    raise
                if waited_since is None:
                    waited_since = time.monotonic()
                    self.full = True
                    self.stalls += 1
                    self._log.warning("data_dir_full", error=str(exc), retry_s=RETRY_S)
                if self.stopping.wait(RETRY_S):
                    raise DiskFull("stopping while the data dir is full") from exc
                continue
            if waited_since is not None:
                self.full = False
                self._log.warning(
                    "data_dir_space_back", waited_s=round(time.monotonic() - waited_since, 2)
                )
            return
