"""The fault suite across hosts (issue #19): a short `python -m bench.soak --netns`.

Seven network namespaces on one bridge: three replicas started with the README's several-hosts
command line (one clock 30 s ahead, one 15 s behind), two `omega scheduler` processes, a hollow
and a real `omega agent`, each on its own address; the recorded workload from the test
process. Faults made by the network and by signals: the leader cut off both ways and each one
way (nftables drops, no reset), a leader link losing 30% of its packets, a slow one (tc tbf:
this kernel has no netem), a full restart, a scheduler and an agent SIGKILLed
and restarted. Then the same checker as the loopback suite: the whole feed replayed, every
acknowledgement and every replica's snapshot held against it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.faults import Ack, Cut, cut_stalls, cut_summary, run_scenario, slow_cuts
from harness.hosts import netns_unavailable
from harness.netcell import NETNS_CI_SCHEDULE

# Makes and removes network interfaces: never beside the browser test (its module says why).
pytestmark = pytest.mark.xdist_group("host-network")


def test_its_group_keeps_it_apart_from_the_browser(request: pytest.FixtureRequest) -> None:
    """Under `--dist loadgroup` (setup.sh) this module's tests carry their group; a pytest
    whose node ids xdist cannot tag (9.2, pytest-dev/pytest-xdist#1386) would run them
    beside the browser test, whose requests the netns tests' interfaces then abort."""
    if request.config.getvalue("loadgroup"):
        assert request.node.nodeid.endswith("@host-network"), request.node.nodeid


def test_a_cuts_stall_runs_from_the_cut_to_the_settled_heal() -> None:
    acks = [Ack(f"c{t}", "submit", "j", b"", t) for t in (1.0, 1.1, 1.2, 3.0, 3.1, 4.8, 9.0)]
    acks.append(Ack("k", "kill", "j", b"", 2.0))  # only submissions pace the writer
    cuts = [
        Cut("partition_leader", 1.25, 2.5, 5.0, True, False),
        # The next fault's stall (4.8 to 9.0) is not this cut's: its window ends at 5.0.
        Cut("partition_leader", 3.05, 4.0, 5.0, False, True),
        Cut("partition_leader_inbound", 0.5, 0.7, 0.8, True, False),  # no ack before or during
    ]
    # From the cut, as bench.partition measures it.
    stalls = cut_stalls(cuts, acks)
    assert stalls == [1.75, 1.7, 0.3]
    # Spanning: the first cut came while the writer had waited 0.05 s already.
    spanning = cut_stalls(cuts, acks, spanning=True)
    assert spanning == [1.8, 1.7, 0.3]
    # Where the longest gap lay, from each cut.
    assert slow_cuts(cuts, acks) == [
        {
            "kind": "partition_leader",
            "whole": True,
            "stall_s": 1.8,
            "gap_s": [-0.05, 1.75],
            "healed_s": 1.25,
        },
        {
            "kind": "partition_leader",
            "whole": False,
            "stall_s": 1.7,
            "gap_s": [0.05, 1.75],
            "healed_s": 0.95,
        },
    ]
    assert cut_summary(cuts, stalls, spanning) == {
        "partition_leader:not_whole": {
            "cuts": 1,
            "stall_max_s": 1.7,
            "stall_p50_s": 1.7,
            "spanning_max_s": 1.7,
            "heal_changes": 1,
        },
        "partition_leader:whole": {
            "cuts": 1,
            "stall_max_s": 1.75,
            "stall_p50_s": 1.75,
            "spanning_max_s": 1.8,
            "heal_changes": 0,
        },
        "partition_leader_inbound:whole": {
            "cuts": 1,
            "stall_max_s": 0.3,
            "stall_p50_s": 0.3,
            "spanning_max_s": 0.3,
            "heal_changes": 0,
        },
    }


@pytest.mark.slow
def test_netns_faults_lose_no_acknowledged_operation(tmp_path: Path) -> None:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    seed = int(os.environ.get("OMEGA_FAULT_SEED", "19"))
    lines: list[str] = []
    run = run_scenario(
        tmp_path, seed, 30.0, schedule=NETNS_CI_SCHEDULE, say=lines.append, netns=True
    )
    figures = run.report.figures
    summary = f"seed {seed}\n" + "\n".join(lines) + f"\n{figures}"
    assert run.report.errors == [], summary + "\n" + "\n".join(run.report.errors)
    assert figures["lost"] == 0
    assert run.faults == {kind: NETNS_CI_SCHEDULE.count(kind) for kind in NETNS_CI_SCHEDULE}
    # No cut-off leader acknowledged its write, however it was cut; the majority carried on.
    assert len(run.probes) == 3 and all(not p.outcome.startswith("200") for p in run.probes)
    assert all(gained >= 5 for gained in run.majority_acks), summary
    kinds = figures["acknowledged_by_kind"]
    assert kinds.get("submit", 0) > 50 and kinds.get("commit", 0) > 10, summary
    # The scheduler processes on their hosts placed work, which both agents ran to the end.
    assert {"batch-a", "batch-b", "recorded"} <= set(figures["commits_by_scheduler"]), summary
    ended = figures["ended_by_machine"]
    assert ended.get("real-0", 0) > 0 and ended.get("hollow", 0) > 0, summary
    assert figures["invariant_checks"] == figures["commands"] == figures["version"]
    assert run.leaks == [], run.leaks
    # Every partition is accounted for once, by kind and by whether the cell was whole.
    partitions = [k for k in NETNS_CI_SCHEDULE if k.startswith("partition_leader")]
    assert sum(row["cuts"] for row in run.cuts.values()) == len(partitions), run.cuts
    assert {key.split(":")[0] for key in run.cuts} == set(partitions), run.cuts
    print(
        f"netns soak: {kinds}, faults {run.faults}, longest write stall "
        f"{run.longest_stall_s} s (after {run.stall_after}), leader changes on heal "
        f"{sum(run.heal_changes)} of {len(run.heal_changes)}"
    )
