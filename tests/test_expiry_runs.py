"""Silent machines are marked down a bounded number of tasks at a time.

One `ExpireHeartbeats` is one Raft entry, applied whole in one tick. `bench.store`'s 20
agentless machines went silent holding 70,000 tasks, and the one command that marked them
down held each replica's tick for 10-18 s under load: every leader in turn was deposed while
applying it. The leader now cuts the silent machines into runs holding at most
`EXPIRY_TASKS_PER_COMMAND` tasks, a command each. Checked on the cut itself, then on a real
three-replica cell whose log is read back through the watch feed.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import trio

from cellstate import (
    JobSpec,
    MachineSpec,
    Resources,
    SchedulerClass,
    SilentMachine,
    parse_cpu,
    parse_memory,
)
from cellstore.cell import EXPIRY_TASKS_PER_COMMAND, expiry_runs
from cellstore.cellclient import CellClient
from harness.cluster import LocalCluster, cell_options


def test_runs_keep_order_stay_under_the_limit_and_a_big_machine_goes_alone() -> None:
    silent = [SilentMachine(f"m{i}", float(i)) for i in range(6)]
    held = {"m0": 1500, "m1": 400, "m2": 100, "m3": 5000, "m4": 0, "m5": 2000}
    runs = expiry_runs(silent, held, limit=2000)
    assert [[m.machine for m in run] for run in runs] == [
        ["m0", "m1", "m2"],
        ["m3"],
        ["m4", "m5"],
    ]
    assert expiry_runs([], held) == []
    # A machine the cell no longer knows holds nothing.
    assert expiry_runs(silent[:2], {}, limit=1) == [tuple(silent[:2])]


PER_MACHINE = 1_000
MACHINES = 5


@pytest.mark.slow
def test_a_silent_cell_is_marked_down_in_runs_of_bounded_tasks(tmp_path: Path) -> None:
    assert PER_MACHINE * 2 <= EXPIRY_TASKS_PER_COMMAND < PER_MACHINE * 3
    with LocalCluster(tmp_path, **cell_options(heartbeat_timeout_s=2.0)) as cluster:

        async def scenario() -> list[list[str]]:
            async with CellClient.connect(cluster.api, cluster.token) as cell:
                capacity = Resources(parse_cpu(64), parse_memory("64Gi"))
                names = [f"m{i}" for i in range(MACHINES)]
                await cell.register_machines([MachineSpec(name, capacity) for name in names])
                small = Resources(parse_cpu("10m"), parse_memory("1Mi"))
                tasks = PER_MACHINE * MACHINES
                spec = JobSpec("load", "alice", SchedulerClass.BATCH, small, tasks=tasks)
                await cell.submit(spec, "load")
                claims = [[f"load.{i}", names[i % MACHINES], 0, []] for i in range(tasks)]
                for start in range(0, tasks, 500):
                    # Kept up while the tasks are placed, however slow a loaded machine is.
                    await cell.heartbeat(names)
                    command = {
                        "type": "commit",
                        "id": secrets.token_hex(8),
                        "txn": {"scheduler": "test", "claims": claims[start : start + 500]},
                    }
                    (result,) = await cell.store.commands([command])
                    assert result["result"]["accepted"] == 500, result
                # Silent from this heartbeat on, with every task placed.
                await cell.heartbeat(names)
                with trio.fail_after(30):
                    while any(m["state"] != "down" for m in await cell.machines()):
                        await trio.sleep(0.2)
                view = await cell.job("load")
                assert view["tasks"] == {"pending": tasks}  # every one evicted, to come back

                version = (await cell.status())["version"]
                runs: list[list[str]] = []
                async for batch in cell.watch(1):
                    assert batch.snapshot is None  # a young log: no compaction yet
                    for _, command in batch.commands:
                        if command.get("type") == "expire_heartbeats" and command.get("silent"):
                            runs.append([s["machine"] for s in command["silent"]])
                    if batch.version >= version:
                        break
                return runs

        runs = trio.run(scenario)
    # Two machines' tasks per command at most: runs of 2, 2 and 1, in the leader's order.
    assert sorted(m for run in runs for m in run) == [f"m{i}" for i in range(MACHINES)]
    assert [len(run) for run in runs] == [2, 2, 1], runs
