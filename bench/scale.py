"""What a cell costs at size, measured on a live `LocalCluster` once `bench.placement` has
filled it: each process's peak memory, the snapshot's size (as served and as dumped on disk),
the time a restarted replica takes to catch up, and the time a new scheduler takes to load
its copy of the cell. Linux only (peak memory is `/proc/PID/status` VmHWM)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from harness.cluster import LocalCluster, start_scheduler, stop_processes


def peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident set (VmHWM), or None if it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time the process has used so far, or None if it has gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def processes(
    cluster: LocalCluster, schedulers: dict[str, subprocess.Popen[bytes]]
) -> dict[str, dict[str, Any]]:
    """Peak memory (bytes) and CPU time used (seconds) of every replica and scheduler
    process still running, by name. CPU time, unlike a rate, barely moves when other work
    shares the machine: it is the figure to compare runs on a busy one."""
    pids = {f"replica-{i}": p.pid for i, p in enumerate(cluster.procs) if p is not None}
    pids.update({name: proc.pid for name, proc in schedulers.items()})
    return {
        "peak_rss_bytes": {name: peak_rss_bytes(pid) for name, pid in pids.items()},
        "cpu_seconds": {name: cpu_seconds(pid) for name, pid in pids.items()},
    }


def _leader_version(cluster: LocalCluster) -> tuple[int, int]:
    """(index of the leader, its version)."""
    leader = cluster.wait_for_leader(60.0)
    status = cluster.status(leader, timeout=10.0)
    assert status is not None
    return leader, int(status["version"])


def snapshot_figures(cluster: LocalCluster) -> dict[str, Any]:
    """The leader's snapshot as served (`GET /v1/snapshot`: bytes, seconds to fetch) and the
    Raft dumps on disk (written by log compaction; None where none has been written yet)."""
    leader, _ = _leader_version(cluster)
    began = time.perf_counter()
    resp = httpx.get(  # a million tasks take far longer than the harness's 10 s to serialise
        f"http://{cluster.api[leader]}/v1/snapshot",
        timeout=300,
        headers={"authorization": f"Bearer {cluster.token}"},
    )
    resp.raise_for_status()
    data = resp.content
    fetched = time.perf_counter() - began
    dumps = {}
    for i in range(cluster.n):
        dump = cluster.data_dir(i) / "raft.dump"
        dumps[f"replica-{i}"] = dump.stat().st_size if dump.is_file() else None
    return {"snapshot_bytes": len(data), "snapshot_fetch_s": fetched, "dump_bytes": dumps}


def restart_catch_up(cluster: LocalCluster, timeout_s: float = 600.0) -> dict[str, Any]:
    """Stop a follower (SIGTERM), start it again on its data dir, and time it from start to
    having applied the version the leader had when it came back."""
    leader, _ = _leader_version(cluster)
    follower = next(i for i in range(cluster.n) if i != leader)
    cluster.stop(follower, timeout=30.0)
    _, target = _leader_version(cluster)
    began = time.perf_counter()
    cluster.start_replica(follower)
    deadline = began + timeout_s
    while True:
        status = cluster.status(follower, timeout=2.0)
        if status is not None and int(status["version"]) >= target:
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"replica-{follower} not at version {target} in {timeout_s} s")
        time.sleep(0.05)
    return {"replica": follower, "version": target, "seconds": time.perf_counter() - began}


def new_scheduler_load(cluster: LocalCluster, logs: Path, timeout_s: float = 600.0) -> float:
    """Seconds from starting one more scheduler process to its copy of the cell having caught
    up with the store (its `scheduler_started` log event)."""
    log = logs / "late-scheduler.log"
    began = time.perf_counter()
    proc = start_scheduler(cluster, log, "batch", "late", "--report-period", "1")
    try:
        while b'"scheduler_started"' not in (log.read_bytes() if log.exists() else b""):
            if proc.poll() is not None:
                raise RuntimeError(f"the late scheduler exited {proc.returncode}: see {log}")
            if time.perf_counter() - began > timeout_s:
                raise TimeoutError(f"the late scheduler did not catch up in {timeout_s} s")
            time.sleep(0.05)
        return time.perf_counter() - began
    finally:
        stop_processes([proc])


def describe(figures: dict[str, Any]) -> None:
    mib = 1 << 20
    memory = ", ".join(
        f"{name} {value / mib:.0f}" for name, value in figures["peak_rss_bytes"].items() if value
    )
    print(f"  peak memory (MiB): {memory}")
    cpu = ", ".join(
        f"{name} {value:.1f}" for name, value in figures["cpu_seconds"].items() if value
    )
    print(f"  CPU used (s): {cpu}")
    snap = figures["snapshot"]
    dumps = [v for v in snap["dump_bytes"].values() if v]
    print(
        f"  snapshot {snap['snapshot_bytes'] / mib:.1f} MiB as served "
        f"(fetched in {snap['snapshot_fetch_s']:.2f} s), "
        + (f"{max(dumps) / mib:.1f} MiB dumped on disk" if dumps else "no dump on disk yet")
    )
    restart = figures["restart"]
    print(
        f"  replica-{restart['replica']} restarted and caught up to version "
        f"{restart['version']} in {restart['seconds']:.2f} s; a new scheduler loaded its "
        f"copy in {figures['new_scheduler_load_s']:.2f} s"
    )
