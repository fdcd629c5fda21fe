"""One hollow agent process standing in for many machines against a real 3-replica store.

Figures:
- `register_s`: the agent's own time to register every machine (batched
  requests, from its `agent_registered` log event).
- `ready_s`: agent process spawn to every machine `up` in the store.
- `cpu_share_per_1000`: the agent process's CPU time (psutil user+system)
  over a steady window of heartbeats (one request for all machines every
  `--heartbeat` s, the copy following the store), divided by wall time and
  by thousands of machines. 0.01 means 1% of one core per 1,000 machines.

    python -m bench.hollow [--machines 10000] [--window 20] [--heartbeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from harness.cluster import LocalCluster, cell_options


def machines_up(cluster: LocalCluster) -> int:
    headers = {"authorization": f"Bearer {cluster.token}"}
    for i in range(cluster.n):
        try:
            resp = httpx.get(
                f"{cluster.url(i)}/v1/cell", headers=headers, timeout=5, verify=cluster.verify
            )
        except httpx.HTTPError:
            continue
        if resp.status_code == 200:
            return int(resp.json()["machines"].get("up", 0))
    return 0


def registered_seconds(log: Path) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        if '"agent_registered"' in line and line.startswith("{"):
            return float(json.loads(line)["seconds"])
    return None


def run(args: argparse.Namespace, base: Path) -> dict:
    timeout = max(10.0, 5 * args.heartbeat)
    with LocalCluster(base / "store", **cell_options(heartbeat_timeout_s=timeout)) as cluster:
        log = base / "agent.log"
        began = time.monotonic()
        with open(log, "wb") as out:
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agents",
                    "--name",
                    "hollow",
                    "--hollow",
                    str(args.machines),
                    "--cpu",
                    "4",
                    "--memory",
                    "8Gi",
                    "--addr",
                    ",".join(cluster.api),
                    f"--token={cluster.token}",
                    *cluster.client_args(),
                    "--work-dir",
                    str(base / "agent"),
                    "--heartbeat",
                    str(args.heartbeat),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            deadline = began + 300
            while machines_up(cluster) < args.machines:
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"agent failed; see {log}")
                time.sleep(0.1)
            ready_s = time.monotonic() - began
            while "agent_ready" not in log.read_text(errors="replace"):
                time.sleep(0.1)
            time.sleep(args.settle)
            proc = psutil.Process(agent.pid)
            t0, c0 = time.monotonic(), proc.cpu_times()
            time.sleep(args.window)
            t1, c1 = time.monotonic(), proc.cpu_times()
            up_after = machines_up(cluster)
            rss = proc.memory_info().rss
        finally:
            if agent.poll() is None:
                os.kill(agent.pid, signal.SIGKILL)
                agent.wait(10)
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    share = cpu / (t1 - t0)
    return {
        "machines": args.machines,
        "register_s": registered_seconds(log),
        "ready_s": ready_s,
        "cpu_share": share,
        "cpu_share_per_1000": share / (args.machines / 1000),
        "window_s": t1 - t0,
        "up_after_window": up_after,
        "agent_rss_mib": rss / (1 << 20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=20.0, help="CPU sampling window (s)")
    parser.add_argument("--settle", type=float, default=3.0, help="wait after ready (s)")
    parser.add_argument("--heartbeat", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hollow-") as tmp:
        r = run(args, Path(tmp))
    print(f"hollow agent, {r['machines']} machines, 3 replicas, heartbeat {args.heartbeat} s")
    print(
        f"  registration: {r['register_s']:.2f} s in the agent, {r['ready_s']:.2f} s "
        "from spawn to all machines up"
    )
    print(
        f"  steady CPU: {100 * r['cpu_share']:.1f}% of a core over {r['window_s']:.1f} s "
        f"= {100 * r['cpu_share_per_1000']:.2f}% per 1,000 machines; "
        f"{r['up_after_window']} up after the window; RSS {r['agent_rss_mib']:.0f} MiB"
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
