"""Partitions of the leader, one at a time: the stall a steady writer sees, and leader changes
on heal.

    python -m bench.partition [--rounds 5] [--kinds both,inbound,outbound] [--cut-s 3]

A three-replica cell with each replica on a host of its own (`harness.netcell.NetnsCell`:
network namespaces on one bridge, the README's several-hosts command line; root, iproute2 and
nftables). One writer submits a job at a time through `StoreClient` for the whole run. Each
round cuts the current leader's link for `--cut-s` seconds, dropping packets both ways,
inbound only (it still sends heartbeats, so its followers never time out and only
check-quorum removes it) or outbound only, then heals it. Per cut: the longest time between
two acknowledgements from the cut to the heal (the stall), and whether the whole cell's
leader and term 2 s after the heal differ from the majority's just before it (a leader
change on heal). The soak (`bench.soak --netns`) sees the same faults mixed with others; this
repeats one kind many times, so its spread shows.

Prints a line per cut and a summary per kind, and last one JSON line: per kind `stall_max_s`,
`stall_p50_s`, `heal_changes`, `cuts`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog

from harness.hosts import Hosts, netns_unavailable
from harness.netcell import NetnsCell
from harness.writer import Writer, agreed_leader, leaders

KINDS = {"both": (True, True), "inbound": (True, False), "outbound": (False, True)}
# As the soak (`harness.faults.HEAL_SETTLE_S`): long enough for a needless election to show.
HEAL_SETTLE_S = 2.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.partition", description=__doc__)
    p.add_argument("--rounds", type=int, default=5, help="cuts of each kind")
    p.add_argument(
        "--kinds", default="both,inbound,outbound", help="comma-separated: " + ", ".join(KINDS)
    )
    p.add_argument("--cut-s", type=float, default=3.0, help="how long each cut lasts")
    p.add_argument("--dir", type=Path, default=None, help="keep the cell's files here")
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        p.error(
            f"--kinds: {','.join(unknown) or 'nothing'} unknown; choose from {', '.join(KINDS)}"
        )
    if args.rounds < 1 or args.cut_s <= 0:
        p.error("--rounds must be at least 1 and --cut-s above 0")
    # The client's retries are the point of the exercise, not news: only warnings.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    why = netns_unavailable()
    if why is not None:
        print(f"bench.partition needs network namespaces: {why}", file=sys.stderr)
        return 2
    base = args.dir or Path(tempfile.mkdtemp(prefix="omega-partition-"))
    stalls: dict[str, list[float]] = {k: [] for k in kinds}
    changes: dict[str, int] = {k: 0 for k in kinds}
    with Hosts(3) as hosts, NetnsCell(base, hosts) as cluster:
        first = cluster.wait_for_leader()
        writer = Writer(cluster, first=first)
        writer.thread.start()
        try:
            time.sleep(1.0)
            for round_ in range(args.rounds):
                for kind in kinds:
                    leader = agreed_leader(cluster, [0, 1, 2], timeout=30.0)
                    others = [i for i in range(3) if i != leader]
                    inbound, outbound = KINDS[kind]
                    cut_at = time.monotonic()
                    hosts.cut(leader, inbound=inbound, outbound=outbound)
                    time.sleep(args.cut_s)
                    stall = writer.longest_stall(cut_at, time.monotonic())
                    before = agreed_leader(cluster, others, timeout=30.0)
                    [held] = leaders(cluster, [before])  # (leader, term)
                    hosts.heal(leader)
                    time.sleep(HEAL_SETTLE_S)
                    after = agreed_leader(cluster, [0, 1, 2], timeout=30.0)
                    [held_after] = leaders(cluster, [after])
                    changed = held_after != held
                    stalls[kind].append(stall)
                    changes[kind] += changed
                    print(
                        f"round {round_ + 1} {kind:>8}: leader r{leader} cut, stall {stall:.2f} s;"
                        f" before heal {held}, after {held_after}"
                        f"{' (changed)' if changed else ''}",
                        flush=True,
                    )
        finally:
            writer.stop.set()
            writer.thread.join(30)
        if writer.thread.is_alive():
            print("the writer did not stop", file=sys.stderr)
            return 1
    summary = {}
    for kind in kinds:
        s = stalls[kind]
        summary[kind] = {
            "cuts": len(s),
            "stall_max_s": round(max(s), 3),
            "stall_p50_s": round(statistics.median(s), 3),
            "heal_changes": changes[kind],
        }
        print(
            f"{kind:>8}: {len(s)} cuts, stall p50 {statistics.median(s):.2f} s, max {max(s):.2f} s;"
            f" leader changes on heal {changes[kind]}"
        )
    print(f"{len(writer.acked)} writes acknowledged")
    print(
        json.dumps(
            {
                "bench": "partition",
                "cut_s": args.cut_s,
                "acknowledged": len(writer.acked),
                **summary,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
