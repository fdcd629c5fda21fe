"""A replica whose data dir is damaged refuses to start, saying where and what to do; moved
aside, it rejoins from its peers and matches them byte for byte (issue #19, storage faults).

Before `cellstore.datadir`, a journal cut short crashed the replica with a bare `struct.error`
from inside pysyncobj, and a journal with one flipped byte inside a command started and served
a state no other replica had: the flipped-byte case below failed so (its snapshot differed).
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import trio

from cellstore.datadir import DamagedEntry, check_data_dir, seal, unseal
from harness.cluster import LocalCluster
from tests.test_store_fsync import _write

pytestmark = pytest.mark.slow

HEADER = 40  # pysyncobj's journal header; the offset where records end is its last 4 bytes


def test_seal_round_trips_and_catches_any_flipped_byte() -> None:
    command = '{"id":"a-1","op":"add","key":"n","delta":1}'
    sealed = seal(command)
    assert unseal(sealed) == command
    assert unseal(command) == command  # written before sealing: taken as it is
    for i in range(1, len(sealed)):
        flipped = sealed[:i] + chr(ord(sealed[i]) ^ 0x01) + sealed[i + 1 :]
        with pytest.raises(DamagedEntry):
            unseal(flipped)
    assert zlib.crc32(command.encode()) == int(sealed[1:9], 16)


def _records_end(journal: Path) -> int:
    return struct.unpack_from("<I", journal.read_bytes(), HEADER - 4)[0]


def _cut_journal(journal: Path) -> None:
    data = journal.read_bytes()
    end = _records_end(journal)
    journal.write_bytes(data[: (HEADER + end) // 2])  # mid-record, below where records end


def _flip_in_a_command(journal: Path) -> None:
    data = bytearray(journal.read_bytes())
    at = data.index(b'"key":"n"', (HEADER + _records_end(journal)) // 2)
    data[at + 8] ^= 0x01  # "n" -> "o": still a well-formed command, for another key
    journal.write_bytes(bytes(data))


def _cut_dump(dump: Path) -> None:
    data = dump.read_bytes()
    dump.write_bytes(data[: len(data) * 2 // 3])


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "journal cut short": ("raft.journal", _cut_journal, "raft.journal"),
    "byte flipped in a command": ("raft.journal", _flip_in_a_command, "checksum"),
    "dump cut short": ("raft.dump", _cut_dump, "raft.dump"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_replica_refuses_to_start_then_rejoins_from_its_peers(
    tmp_path: Path, damage: str
) -> None:
    name, spoil, named = DAMAGE[damage]
    # Compaction only where the dump is the point, so the journal keeps every command.
    raft = {"compaction_min_entries": 50 if name == "raft.dump" else 100_000}
    with LocalCluster(tmp_path, 3, raft=raft) as cluster:
        acked = trio.run(_write, cluster, "a", 120)
        victim = next(i for i in range(3) if i != cluster.wait_for_leader())
        path = cluster.data_dir(victim) / name
        if name == "raft.dump":
            trio.run(_write, cluster, "b", 60)  # past compaction: a dump on every replica
            assert path.exists()
        cluster.stop(victim)
        spoil(path)

        cluster.start_replica(victim)
        proc = cluster.procs[victim]
        assert proc is not None
        assert proc.wait(30) == 3
        log = (cluster.data_dir(victim) / "replica.log").read_text()
        assert "data_dir_damaged" in log and named in log, log[-2000:]
        assert "Move it aside" in log and "rejoins" in log
        with pytest.raises(Exception, match="damaged"):
            check_data_dir(cluster.data_dir(victim))

        # The remedy the message gives: move the data dir aside, start on an empty one.
        aside = tmp_path / "aside"
        shutil.move(cluster.data_dir(victim), aside)
        cluster.data_dir(victim).mkdir()
        shutil.copy(aside / "replica.json", cluster.data_dir(victim) / "replica.json")
        cluster.start_replica(victim)
        acked += trio.run(_write, cluster, "c", 20)
        version = max(s["version"] for s in map(cluster.status, range(3)) if s)
        cluster.wait_for_version(version)
        snapshots = {cluster.snapshot(i)[1] for i in range(3)}
        assert len(snapshots) == 1
        assert set(orjson.loads(snapshots.pop())["log"]) >= set(acked)
