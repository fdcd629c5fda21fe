"""A replica whose disk fills (issue #19, storage faults): it acknowledges nothing it could not
write, stays up, and carries on by itself once space is back (`cellstore.diskfull`).

Real: replica 2's data dir is a small tmpfs mounted by the test, filled by a file until the
filesystem refuses a byte, then freed. The cell is in `fsync` mode and its third replica is
stopped, so every commit needs replica 2's acknowledgement: a steady writer must stall while
the disk is full and resume once space is back, and every write it saw acknowledged must be on
every replica restarted from its data dir after a SIGKILL. Before, the first journal write
into the full filesystem killed the replica with SIGBUS (pysyncobj writes its journal through
an mmap whose new pages are holes), leaving a torn record its data-dir check then refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import trio

from cellstore.client import StoreClient
from harness.cluster import LocalCluster

pytestmark = pytest.mark.slow

VALUE = "x" * 4096  # large commands, so the journal's slack is used up in a few hundred


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the block, unmounted after, even on failure."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root and mount(8) (CI runs as root)")
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "omega-test", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> Path:
    """Write a file into `path` until its filesystem refuses a single byte more."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


class SmallDiskCell(LocalCluster):
    """Three replicas of the key-value machine in `fsync` mode; replica 2's data dir on
    `disk`, every replica's output off it."""

    def __init__(self, base: Path, disk: Path) -> None:
        super().__init__(base, 3, extra={"fsync": True})
        self.disk = disk

    def data_dir(self, i: int) -> Path:
        return self.disk / "replica-2" if i == 2 else super().data_dir(i)

    def log_file(self, i: int) -> Path:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        return self.base_dir / f"replica-{i}.log"


class Writer:
    """Puts one command at a time (same id on every retry) and records the acknowledged ids."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.acked: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=trio.run, args=(self._run,), daemon=True)

    async def _run(self) -> None:
        async with StoreClient(self.cluster.api[1:], self.cluster.token) as client:
            n = 0
            while not self.stop.is_set():
                cid = f"w-{n}"
                try:
                    [result] = await client.commands(
                        [{"id": cid, "op": "put", "key": cid, "value": VALUE}]
                    )
                except Exception as exc:  # not acknowledged: the same id again
                    self.errors.append(repr(exc))
                    continue
                assert result["ok"], result
                self.acked.append(cid)
                n += 1


def wait_until(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def test_a_full_disk_stalls_a_replica_acknowledges_nothing_unwritten_and_it_recovers(
    tmp_path: Path,
) -> None:
    with (
        small_filesystem(tmp_path / "disk", "8m") as disk,
        SmallDiskCell(tmp_path / "cell", disk) as cluster,
    ):
        # Every commit now needs replica 2: the cell is replicas 1 and 2.
        cluster.kill(0, signal.SIGKILL)
        cluster.wait_for_leader()
        writer = Writer(cluster)
        writer.thread.start()
        try:
            wait_until("the writer got going", lambda: len(writer.acked) >= 20, 30)
            filler = fill(disk)

            def full() -> bool:
                status = cluster.status(2) or {}
                return bool(status.get("disk_full", {}).get("waiting"))

            wait_until("replica 2 waits for space", full, 60)
            time.sleep(0.5)  # acknowledgements already on their way arrive
            stalled_at = len(writer.acked)
            time.sleep(3.0)
            # Nothing acknowledged while replica 2 could not write; it is up, waiting.
            assert len(writer.acked) == stalled_at
            assert cluster.procs[2] is not None and cluster.procs[2].poll() is None
            assert full()

            filler.unlink()
            wait_until("writes resume", lambda: len(writer.acked) >= stalled_at + 20, 30)
            status = cluster.status(2)
            assert status is not None
            assert status["disk_full"]["waiting"] is False and status["disk_full"]["stalls"] >= 1
        finally:
            writer.stop.set()
            writer.thread.join(30)
        assert not writer.thread.is_alive()
        print(f"acknowledged {stalled_at} before the disk filled, {len(writer.acked)} in all")

        # Every acknowledged write is on every replica, each restarted from its data dir.
        for i in (1, 2):
            cluster.kill(i, signal.SIGKILL)
        for i in range(3):
            cluster.start_replica(i)
        leader = cluster.wait_for_leader()
        version = cluster.status(leader)["version"]  # type: ignore[index]
        cluster.wait_for_version(version)
        logs = {cluster.snapshot(i)[1] for i in range(3)}
        assert len(logs) == 1
        assert set(orjson.loads(logs.pop())["log"]) >= set(writer.acked)
