"""What the store's `fsync` mode does to pysyncobj's files: nothing is acknowledged before it
is on disk.

pysyncobj 0.3.17 writes its journal through a shared mmap and never syncs it, writes its term
and vote file without fsync, and renames its dump into place unsynced: a write it acknowledged
survives a killed process (the page cache keeps it) but not a lost host. With `fsync` on:

* The journal is synced (`fdatasync`) before any acknowledgement it underwrites leaves this
  replica: a follower's "I have your entries up to N" (`next_node_idx`, success) is held until
  the entries are on disk, and a leader syncs what it appended before each tick, in which it
  counts itself towards the commit of those entries and answers clients. One sync covers
  every entry written since the last one (group commit), so its cost is per round trip, not
  per command.
* The term and vote are synced, with their directory, before a vote is sent (Raft requires
  them durable; a replica that forgot its vote could vote twice in a term).
* A dump (written by compaction, or received from the leader) is synced, with its directory,
  before pysyncobj deletes the journal entries it replaces.

It reaches into pysyncobj's private members (the journal's file, the meta storer, the
serializer), which `pysyncobj==0.3.17` being pinned makes stable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from pysyncobj import SERIALIZER_STATE


def _sync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(path: Path) -> None:
    _sync_file(path)


class DurableJournal:
    """Tracks unsynced journal writes of one `SyncObj` and syncs them on demand (`sync`).
    Built once the `SyncObj` exists; call `sync()` on the Raft thread only."""

    def __init__(self, syncobj: Any, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.dirty = False
        self.syncs = 0
        self._journal = syncobj._SyncObj__raftLog
        for name in ("add", "clear", "deleteEntriesFrom", "deleteEntriesTo"):
            self._mark_dirty_after(name)
        meta = self._journal._FileJournal__metaStorer
        meta.storeMeta = self._durable_meta(meta)
        serializer = syncobj._SyncObj__serializer
        serializer.checkSerializing = self._durable_dump_check(serializer.checkSerializing)
        serializer.setTransmissionData = self._durable_dump_install(serializer.setTransmissionData)
        self._dump = data_dir / "raft.dump"

    def _mark_dirty_after(self, name: str) -> None:
        original = getattr(self._journal, name)

        def marked(*args: Any) -> Any:
            self.dirty = True
            return original(*args)

        setattr(self._journal, name, marked)

    def sync(self) -> None:
        """Put every journal write so far on disk (nothing to do if there was none)."""
        if not self.dirty:
            return
        self.dirty = False
        journal_file = self._journal._FileJournal__journalFile
        # The file object is re-opened when the journal grows: ask for it each time.
        os.fdatasync(journal_file._ResizableFile__f.fileno())
        self.syncs += 1

    def _durable_meta(self, meta: Any) -> Any:
        path = meta.getPath()

        def store(values: dict[str, Any]) -> None:
            from pysyncobj.pickle import dumps

            with open(path + ".tmp", "wb") as f:
                f.write(dumps(values))
                f.flush()
                os.fsync(f.fileno())
            shutil.move(path + ".tmp", path)
            _sync_directory(self.data_dir)

        return store

    def _sync_dump(self) -> None:
        if self._dump.exists():
            _sync_file(self._dump)
            _sync_directory(self.data_dir)

    def _durable_dump_check(self, check: Any) -> Any:
        def checked() -> Any:
            status, ident = check()
            if status == SERIALIZER_STATE.SUCCESS:
                self._sync_dump()  # before pysyncobj drops the journal entries it replaces
            return status, ident

        return checked

    def _durable_dump_install(self, install: Any) -> Any:
        def installed(data: Any) -> Any:
            done = install(data)
            if done:
                self._sync_dump()
            return done

        return installed
