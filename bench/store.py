"""Throughput of the replicated store: raw Raft, transactions, claims, latency, failover.

All figures come from one run on this machine:
- `raw_ops_per_s`: bare pysyncobj, three processes, the store's own Raft settings
  (no batching, encryption, journal and dump), a replicated no-op method, 1,000
  commands in flight: the ceiling any store on pysyncobj can reach here.
- `txn_per_s`: 1-claim transactions through the real store (HTTP, edge
  validation, Raft, CellState), many in flight from one client process.
- `claims_per_s`: claims/s committed in 100-claim transactions.
- `commit_p50_ms`, `commit_p99_ms`: one transaction at a time, request to answer.
- `failover_s`: SIGKILL of the leader to the first accepted write.
- with `--fsync`, a second cell whose replicas sync their journals before acknowledging
  (`cellstore.durability`) is measured the same way: `fsync_txn_per_s`, `fsync_claims_per_s`,
  `fsync_commit_p50_ms`, `fsync_commit_p99_ms`, and `fsync_syncs_per_commit` (journal syncs
  of the leader per sequential commit).
- with `--tls`, a second cell whose replicas serve https (`cellstore.tls`, its own CA; the
  first cell is plain http, `--insecure`), measured the same way: `tls_txn_per_s`,
  `tls_claims_per_s`, `tls_commit_p50_ms`, `tls_commit_p99_ms`: what TLS costs. Then both
  cells at once, one sequential commit to each in turn (`--latency` of each), so a machine
  whose load drifts weighs on both alike: `paired_commit_p50_ms`/`_p99_ms` (http) and
  `paired_tls_commit_p50_ms`/`_p99_ms`.

    python -m bench.store [--txns 20000] [--claim-txns 500] [--in-flight 2000] [--fsync] [--tls]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from cellstate import (
    Claim,
    JobSpec,
    MachineSpec,
    Resources,
    SchedulerClass,
    Transaction,
    parse_cpu,
    parse_memory,
)
from cellstore.cellclient import CellClient
from cellstore.client import StoreClient
from cellstore.config import free_ports
from harness.cluster import LocalCluster, agentless_options

MACHINES = 1000


# -- raw pysyncobj ---------------------------------------------------------------


def raw_node(index: int, ports: list[int], directory: Path, seconds: float, window: int) -> None:
    """One bare pysyncobj replica; replica 0 also drives the load and prints ops/s."""
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Noop(SyncObj):
        def __init__(self, me: str, others: list[str], conf: SyncObjConf) -> None:
            super().__init__(me, others, conf)

        @replicated
        def noop(self, value: str) -> int:
            return 0

    from cellstore.config import ReplicaConfig
    from cellstore.raft import syncobj_conf

    addresses = [f"127.0.0.1:{p}" for p in ports]
    # The store's own Raft settings, so the baseline differs only in what is applied.
    conf = syncobj_conf(
        ReplicaConfig(
            id=f"raw{index}",
            api_host="127.0.0.1",
            api_port=0,
            raft_host="127.0.0.1",
            raft_port=ports[index],
            peers_raft=tuple(addresses),
            peers_api=tuple(addresses),
            data_dir=directory / f"raw-{index}",
            token="unused",
            secret="bench-secret",
            machine_class=object,
        )
    )
    (directory / f"raw-{index}").mkdir(exist_ok=True)
    conf.autoTick = True
    node = Noop(addresses[index], [a for i, a in enumerate(addresses) if i != index], conf)
    if index != 0:
        while True:
            time.sleep(1)
    while not (node.isReady() and node._getLeader() is not None):
        time.sleep(0.05)
    done = [0]
    in_flight = [0]

    def callback(result: object, error: int) -> None:
        in_flight[0] -= 1
        if error == 0:
            done[0] += 1

    deadline = time.monotonic() + seconds
    started = time.monotonic()
    payload = "x" * 16
    while time.monotonic() < deadline:
        while in_flight[0] < window:
            in_flight[0] += 1
            node.noop(payload, callback=callback)
        time.sleep(0.0005)
    elapsed = time.monotonic() - started
    print(json.dumps({"ops": done[0], "seconds": elapsed}), flush=True)


def measure_raw(seconds: float, window: int) -> float:
    ports = free_ports(3)
    with tempfile.TemporaryDirectory() as tmp:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.store",
                    "--raw-node",
                    str(i),
                    "--raw-ports",
                    ",".join(map(str, ports)),
                    "--raw-dir",
                    tmp,
                    "--raw-seconds",
                    str(seconds),
                    "--raw-window",
                    str(window),
                ],
                stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            for i in range(3)
        ]
        try:
            out, _ = procs[0].communicate(timeout=seconds + 60)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    result = json.loads(out.decode().strip().splitlines()[-1])
    return result["ops"] / result["seconds"]


# -- the real store ------------------------------------------------------------------


def commit_command(claims: list[list]) -> dict:
    return {
        "type": "commit",
        "id": secrets.token_hex(8),
        "txn": {"scheduler": "bench", "claims": claims},
    }


async def setup_cell(cell: CellClient, tasks: int) -> list[str]:
    capacity = Resources(parse_cpu(64), parse_memory("256Gi"))
    await cell.register_machines(
        [MachineSpec(f"m{i}", capacity, domain=f"rack-{i % 20}") for i in range(MACHINES)]
    )
    ids = []
    small = Resources(parse_cpu("10m"), parse_memory("1Mi"))
    for j in range(0, tasks, 10_000):
        size = min(10_000, tasks - j)
        job = f"bench-{j // 10_000}"
        await cell.submit(JobSpec(job, "bench", SchedulerClass.BATCH, small, tasks=size), job)
        ids.extend(f"{job}.{i}" for i in range(size))
    return ids


def one_claim(task: str, machine: str) -> Transaction:
    return Transaction("bench", (Claim(task, machine),))


async def pump(client: StoreClient, commands: list[dict], in_flight: int, batch: int) -> float:
    """Send `commands` with about `in_flight` outstanding; the seconds it took."""
    queue = list(reversed(commands))
    started = trio.current_time()

    async def sender() -> None:
        while queue:
            chunk = [queue.pop() for _ in range(min(batch, len(queue)))]
            results = await client.commands(chunk)
            bad = [r for r in results if r["result"]["type"] != "commit"]
            if bad:
                raise RuntimeError(f"unexpected results: {bad[:2]}")

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, in_flight // batch)):
            nursery.start_soon(sender)
    return trio.current_time() - started


async def measure_store(cluster: LocalCluster, args: argparse.Namespace) -> dict:
    figures: dict[str, float] = {}
    total = args.txns + args.claim_txns * 100 + args.latency + args.failovers + 1000
    ca = cluster.ca
    async with StoreClient(cluster.api, cluster.token, retry_deadline_s=60, ca=ca) as client:
        cell = CellClient(client)
        ids = await setup_cell(cell, total)
        cursor = 0

        def take(n: int) -> list[str]:
            nonlocal cursor
            chunk = ids[cursor : cursor + n]
            cursor += n
            return chunk

        machine = iter(range(10**9))
        one = [
            commit_command([[t, f"m{next(machine) % MACHINES}", 0, []]]) for t in take(args.txns)
        ]
        seconds = await pump(client, one, args.in_flight, 250)
        figures["txn_per_s"] = len(one) / seconds

        hundred = [
            commit_command([[t, f"m{next(machine) % MACHINES}", 0, []] for t in take(100)])
            for _ in range(args.claim_txns)
        ]
        seconds = await pump(client, hundred, max(8, args.in_flight // 100), 4)
        figures["claims_per_s"] = len(hundred) * 100 / seconds

        latencies = []
        syncs_before = sum((cluster.status(i) or {}).get("journal_syncs", 0) for i in range(3))
        for task in take(args.latency):
            began = time.perf_counter()
            await cell.commit(one_claim(task, f"m{next(machine) % MACHINES}"))
            latencies.append((time.perf_counter() - began) * 1000)
        latencies.sort()
        figures["commit_p50_ms"] = statistics.median(latencies)
        figures["commit_p99_ms"] = latencies[int(len(latencies) * 0.99) - 1]
        syncs = sum((cluster.status(i) or {}).get("journal_syncs", 0) for i in range(3))
        figures["syncs_per_commit"] = (syncs - syncs_before) / 3 / len(latencies)

        leader = next(i for i in range(3) if (cluster.status(i) or {}).get("is_leader"))
        if args.no_failover:
            syncs = [(cluster.status(i) or {}).get("journal_syncs", 0) for i in range(3)]
            figures["leader_syncs"] = syncs[leader]
            return figures
        spare = take(args.failovers)
        # One failover is one draw of a randomised election timeout: several, with the
        # killed replica restarted and caught up before the next.
        took = []
        for task in spare:
            leader = await trio.to_thread.run_sync(cluster.wait_for_leader)
            killed, wall = time.monotonic(), time.time()
            cluster.kill(leader)
            async with CellClient.connect(
                [a for i, a in enumerate(cluster.api) if i != leader],
                cluster.token,
                retry_deadline_s=60,
                timeout_s=2.0,
            ) as survivor:
                await survivor.commit(one_claim(task, "m0"))
            took.append(time.monotonic() - killed)
            print(
                f"  failover {len(took)}: r{leader} killed at "
                f"{time.strftime('%H:%M:%S', time.localtime(wall))}.{int(wall % 1 * 1000):03d}, "
                f"a write accepted {took[-1]:.3f} s later",
                flush=True,
            )
            cluster.start_replica(leader)
        figures["failover_s"] = statistics.median(took)
        figures["failover_max_s"] = max(took)
    return figures


async def paired_latency(plain: LocalCluster, secure: LocalCluster, n: int) -> dict:
    """Sequential commits to the plain and the https cell in turn: p50/p99 of each."""
    times: dict[str, list[float]] = {"http": [], "https": []}
    async with (
        CellClient.connect(plain.api, plain.token) as one,
        CellClient.connect(secure.api, secure.token, ca=secure.ca) as other,
    ):
        tasks = {"http": await setup_cell(one, n), "https": await setup_cell(other, n)}
        for k in range(n):
            for side, cell in (("http", one), ("https", other)):
                began = time.perf_counter()
                await cell.commit(one_claim(tasks[side][k], f"m{k % MACHINES}"))
                times[side].append((time.perf_counter() - began) * 1000)
    figures = {}
    for side, name in (("http", "paired_commit"), ("https", "paired_tls_commit")):
        ordered = sorted(times[side])
        figures[f"{name}_p50_ms"] = statistics.median(ordered)
        figures[f"{name}_p99_ms"] = ordered[int(len(ordered) * 0.99) - 1]
    return figures


@contextlib.contextmanager
def kept_or_temporary(directory: str) -> Iterator[str]:
    """`directory`, created and kept, or a temporary one removed afterwards."""
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield tmp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--txns", type=int, default=20_000, help="1-claim transactions")
    parser.add_argument("--claim-txns", type=int, default=500, help="100-claim transactions")
    parser.add_argument("--latency", type=int, default=300, help="sequential commits timed")
    parser.add_argument("--in-flight", type=int, default=2000)
    parser.add_argument(
        "--failovers", type=int, default=5, help="leader SIGKILLs timed (median and max)"
    )
    parser.add_argument("--raw-seconds", type=float, default=8.0)
    parser.add_argument("--raw-window", type=int, default=1000)
    parser.add_argument(
        "--fsync", action="store_true", help="also measure a cell that syncs its journals"
    )
    parser.add_argument("--tls", action="store_true", help="also measure a cell that serves https")
    parser.add_argument(
        "--dir",
        default="",
        help="keep the measured cell's data dirs and replica logs here (default: a temporary dir)",
    )
    parser.add_argument("--raw-node", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--raw-ports", default="", help=argparse.SUPPRESS)
    parser.add_argument("--raw-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.failovers < 1:
        parser.error(f"--failovers {args.failovers}: time at least one failover")
    if args.raw_node is not None:
        raw_node(
            args.raw_node,
            [int(p) for p in args.raw_ports.split(",")],
            Path(args.raw_dir),
            args.raw_seconds,
            args.raw_window,
        )
        return

    raw = measure_raw(args.raw_seconds, args.raw_window)
    print(f"raw pysyncobj no-ops: {raw:,.0f} ops/s ({args.raw_window} in flight)")
    with (
        kept_or_temporary(args.dir) as tmp,
        LocalCluster(Path(tmp), **agentless_options()) as cluster,
    ):
        args.no_failover = False
        figures = trio.run(measure_store, cluster, args)
    synced: dict[str, float] = {}
    if args.fsync:
        with (
            tempfile.TemporaryDirectory() as tmp,
            LocalCluster(Path(tmp), **agentless_options(fsync=True)) as cluster,
        ):
            args.no_failover = True
            synced = trio.run(measure_store, cluster, args)
    secured: dict[str, float] = {}
    if args.tls:
        with (
            tempfile.TemporaryDirectory() as tmp,
            LocalCluster(Path(tmp), tls=True, **agentless_options()) as cluster,
        ):
            args.no_failover = True
            secured = trio.run(measure_store, cluster, args)
        with (
            tempfile.TemporaryDirectory() as tmp,
            LocalCluster(Path(tmp) / "http", **agentless_options()) as plain,
            LocalCluster(Path(tmp) / "https", tls=True, **agentless_options()) as secure,
        ):
            secured |= trio.run(paired_latency, plain, secure, args.latency)
    print(
        f"1-claim transactions: {figures['txn_per_s']:,.0f} txn/s "
        f"({figures['txn_per_s'] / raw:.2f} of raw)"
    )
    print(f"100-claim transactions: {figures['claims_per_s']:,.0f} claims/s")
    print(
        f"commit latency: p50 {figures['commit_p50_ms']:.2f} ms, "
        f"p99 {figures['commit_p99_ms']:.2f} ms"
    )
    print(
        f"failover: median {figures['failover_s']:.2f} s, max {figures['failover_max_s']:.2f} s "
        f"from leader SIGKILL to an accepted write ({args.failovers} kill{'s' if args.failovers != 1 else ''})"
    )
    summary = {
        "raw_ops_per_s": round(raw),
        "txn_per_s": round(figures["txn_per_s"]),
        "claims_per_s": round(figures["claims_per_s"]),
        "commit_p50_ms": round(figures["commit_p50_ms"], 2),
        "commit_p99_ms": round(figures["commit_p99_ms"], 2),
        "failover_s": round(figures["failover_s"], 2),
        "failover_max_s": round(figures["failover_max_s"], 2),
    }
    if synced:
        print(
            f"with fsync: {synced['txn_per_s']:,.0f} txn/s, "
            f"{synced['claims_per_s']:,.0f} claims/s, commit p50 "
            f"{synced['commit_p50_ms']:.2f} ms, p99 {synced['commit_p99_ms']:.2f} ms, "
            f"{synced['syncs_per_commit']:.1f} journal syncs per replica per commit"
        )
        summary |= {
            "fsync_txn_per_s": round(synced["txn_per_s"]),
            "fsync_claims_per_s": round(synced["claims_per_s"]),
            "fsync_commit_p50_ms": round(synced["commit_p50_ms"], 2),
            "fsync_commit_p99_ms": round(synced["commit_p99_ms"], 2),
            "fsync_syncs_per_commit": round(synced["syncs_per_commit"], 2),
        }
    if secured:
        print(
            f"over https: {secured['txn_per_s']:,.0f} txn/s, "
            f"{secured['claims_per_s']:,.0f} claims/s, commit p50 "
            f"{secured['commit_p50_ms']:.2f} ms, p99 {secured['commit_p99_ms']:.2f} ms"
        )
        print(
            f"in turn, plain and https: commit p50 {secured['paired_commit_p50_ms']:.2f} / "
            f"{secured['paired_tls_commit_p50_ms']:.2f} ms, p99 "
            f"{secured['paired_commit_p99_ms']:.2f} / {secured['paired_tls_commit_p99_ms']:.2f} ms"
        )
        summary |= {
            name: round(secured[name], 2)
            for name in (
                "paired_commit_p50_ms",
                "paired_commit_p99_ms",
                "paired_tls_commit_p50_ms",
                "paired_tls_commit_p99_ms",
            )
        }
        summary |= {
            "tls_txn_per_s": round(secured["txn_per_s"]),
            "tls_claims_per_s": round(secured["claims_per_s"]),
            "tls_commit_p50_ms": round(secured["commit_p50_ms"], 2),
            "tls_commit_p99_ms": round(secured["commit_p99_ms"], 2),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
