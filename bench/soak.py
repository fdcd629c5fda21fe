"""Soak: the fault suite's workload and faults for N minutes, then its checker.

    python -m bench.soak --minutes 2 [--seed S] [--dir D] [--netns]

Runs a three-replica cell behind cuttable Raft proxies, two `python -m schedulers` processes
and the recorded workload of `harness.faults` (submissions, kills, an in-process scheduler,
agent reports), injecting leader kills, follower kills, leader partitions, full restarts and
scheduler kills on a schedule drawn from the seed (printed first; the same seed gives the same
schedule of faults). Then it replays the whole feed from version 1, recounting the machines each
command changed after every command (capacity, sums, single placement; every invariant of the
cell every 100 commands and at the end), and compares it with every acknowledgement and every replica's snapshot. Prints a
summary and, last, one JSON line: `acknowledged`, `faults`, `checks`, `lost` (must be 0),
`errors`, `seed`, `wall_s`, `longest_stall_s`, `heal_leader_changes`, `stalls_by_fault`,
`cuts`, `slow_cuts`, `netns`.

With `--netns` (root, iproute2, nftables, faketime) every process is on a host of its own
(`harness.netcell`): replicas started with the README's several-hosts command line, r1's clock
30 s ahead and r2's 15 s behind, two `omega scheduler` processes, a hollow and a real `omega
agent`; partitions are dropped packets (both ways, or one way), plus lossy and slow leader
links and agent kills. The longest stall is the longest time between two acknowledged
submissions of the steady writer, with the fault that preceded it.

`cuts` takes the leader partitions apart, per kind of cut and per whether every replica had
caught up when it began (`whole`) or one was still restarting or catching up after an earlier
fault (`not_whole`): the longest and median stall from the cut to the settled heal (as
`bench.partition` measures it), the longest one counting a wait already under way when the cut
came (`spanning_max_s`: an earlier fault's), and the heals that moved the leader. A cut of a
whole cell is what an election can fix; a cut that leaves a majority waiting on a replica
still loading its state is not. `slow_cuts` lists every cut whose spanning stall reached 1 s,
with where its longest wait lay relative to the cut and when the heal began.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import orjson
import structlog


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=None, help="default: random, printed")
    p.add_argument("--dir", type=Path, default=None, help="data dirs and logs (default: tmp)")
    p.add_argument("--netns", action="store_true", help="each process on a host of its own")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    if args.netns:
        from harness.hosts import netns_unavailable, skew_unavailable

        why = netns_unavailable() or skew_unavailable()
        if why is not None:
            print(f"error: --netns: {why}", file=sys.stderr)
            return 2
    print(f"soak seed {seed} minutes {args.minutes} netns {args.netns}", flush=True)
    # SIGTERM unwinds like Ctrl-C, so every replica and scheduler is killed by pid on the way
    # out (replicas restarted from worker threads cannot be tied to us by PDEATHSIG).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    from harness.faults import run_scenario

    base = args.dir or Path(tempfile.mkdtemp(prefix="omega-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run = run_scenario(
        base,
        seed,
        args.minutes * 60.0,
        say=lambda line: print(line, flush=True),
        netns=args.netns,
    )
    fig = run.report.figures
    lost = fig.get("lost", 0)
    checks = fig.get("invariant_checks", 0)
    print(f"data and logs in {base}")
    print(f"operations acknowledged: {fig.get('acknowledged')} {fig.get('acknowledged_by_kind')}")
    print(f"unacknowledged (gave up, outcome unknown): {run.unacknowledged}")
    print(f"faults injected: {run.faults}")
    print(
        f"partition probes: {[(p.replica, p.outcome) for p in run.probes]}; "
        f"acks by the majority while cut: {run.majority_acks}; probes committed after "
        f"the heal (allowed: never acknowledged): {fig.get('probes_committed_after_heal')}"
    )
    print(
        f"commands replayed: {fig.get('commands')}; invariant checks passed: {checks} "
        f"(of which whole-cell: {fig.get('full_invariant_checks')})"
    )
    print(f"commits by scheduler: {fig.get('commits_by_scheduler')}")
    print(f"jobs by state: {fig.get('jobs_by_state')}")
    print(f"secret leaks in logs: {run.leaks}")
    print(
        f"longest write stall: {run.longest_stall_s} s (after {run.stall_after}); leader "
        f"changes on heal: {sum(run.heal_changes)} of {len(run.heal_changes)} partitions"
    )
    print(f"longest write stall after each kind of fault (s): {run.stalls_by_fault}")
    print("leader cut off, by kind and by whether every replica was caught up at the cut:")
    for key, row in run.cuts.items():
        print(
            f"  {key}: {row['cuts']} cuts, stall max {row['stall_max_s']} s, "
            f"p50 {row['stall_p50_s']} s (max {row['spanning_max_s']} s counting a wait under "
            f"way at the cut), leader changes on heal {row['heal_changes']}"
        )
    for cut in run.slow_cuts:
        print(
            f"  a cut of {cut['stall_s']} s ({cut['kind']}, "
            f"{'whole' if cut['whole'] else 'not whole'}): the writer waited from "
            f"{cut['gap_s'][0]} to {cut['gap_s'][1]} s after the cut, healed at {cut['healed_s']} s"
        )
    print(f"lost: {lost}; checker errors: {len(run.report.errors)}")
    for error in run.report.errors[:20]:
        print(f"  ERROR {error}")
    for i, status in fig.get("replica_status", {}).items():
        print(f"  replica {i} at the end: {status}")
    print(
        orjson.dumps(
            {
                "acknowledged": fig.get("acknowledged", 0),
                "faults": run.faults,
                "checks": checks,
                "lost": lost,
                "errors": len(run.report.errors) + len(run.leaks),
                "seed": seed,
                "wall_s": round(time.monotonic() - started, 1),
                "longest_stall_s": run.longest_stall_s,
                "heal_leader_changes": sum(run.heal_changes),
                "stalls_by_fault": run.stalls_by_fault,
                "cuts": run.cuts,
                "slow_cuts": run.slow_cuts,
                "netns": args.netns,
            }
        ).decode()
    )
    return 0 if not run.report.errors and not run.leaks and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
