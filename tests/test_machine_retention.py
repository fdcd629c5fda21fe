"""The leader removes machines down for silence and silent `machine_retention_s`
(`RemoveMachines`), as Nomad collects down nodes: a cell whose machines are replaced does not
keep them all; one an operator took down stays until the operator removes it.

A real three-replica cell: one machine keeps heartbeating, one falls silent. The silent one
is marked down, then removed once the retention has passed, in a command every replica's
log holds; the one that heartbeats stays; `omega logs` of a task that ran there says where
its output went. Its agent, back, registers it again as new."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from cellstate import (
    Claim,
    ExpireHeartbeats,
    Heartbeat,
    JobSpec,
    MachineSpec,
    MachineState,
    Ok,
    ReportedState,
    Resources,
    SchedulerClass,
    SetMachineState,
    TaskReport,
    Transaction,
    parse_cpu,
    parse_memory,
)
from cellstate.state import CellState
from cellstore.cellclient import CellClient
from harness.cluster import LocalCluster, cell_options
from tests.cellfixtures import cell_with


def test_removable_machines_are_down_for_silence_and_silent_since_the_cut_in_order():
    cell = cell_with(machines=4)  # registered at 1.0
    cell.apply(Heartbeat(("m1", "m2"), at=5.0))
    cell.apply(SetMachineState("m3", MachineState.DOWN, at=5.5))  # an operator's word
    cell.apply(ExpireHeartbeats(timeout=3.0, at=6.0))  # m0 silent since 1.0: down
    cell.apply(Heartbeat(("m1",), at=7.0))
    cell.apply(ExpireHeartbeats(timeout=1.5, at=7.5))  # m2 silent since 5.0: down
    assert [m.state for m in cell.machine_list] == ["down", "up", "down", "down"]
    assert cell.removable(before=3.0) == ["m0"]
    assert cell.removable(before=9.0) == ["m0", "m2"]  # never m3, whatever its silence
    assert cell.removable(before=9.0, limit=1) == ["m0"]
    assert CellState().removable(before=9.0) == []


@pytest.mark.slow
def test_the_leader_removes_a_machine_silent_for_the_retention_and_spares_the_rest(
    tmp_path: Path,
) -> None:
    options = cell_options(heartbeat_timeout_s=1.0, machine_retention_s=2.0)
    with LocalCluster(tmp_path, **options) as cluster:

        async def heartbeats(cell: CellClient, machines: list[str]) -> None:
            # "stays" speaks throughout, as its agent would, however long a step takes (an
            # `omega logs` process starts in more than the heartbeat timeout on a slow host).
            while True:
                await cell.heartbeat(machines)
                await trio.sleep(0.2)

        async def scenario() -> None:
            async with (
                CellClient.connect(cluster.api, cluster.token) as cell,
                trio.open_nursery() as beats,
            ):
                capacity = Resources(parse_cpu(4), parse_memory("8Gi"))
                await cell.register_machines([MachineSpec(m, capacity) for m in ("stays", "goes")])
                beats.start_soon(heartbeats, cell, ["stays"])
                # A task that ran on it and ended: its output went with the machine.
                small = Resources(parse_cpu("10m"), parse_memory("1Mi"))
                await cell.submit(JobSpec("ran", "alice", SchedulerClass.BATCH, small), "ran")
                placed = await cell.commit(Transaction("test", (Claim("ran.0", "goes"),)))
                assert placed.result.accepted == 1, placed
                done = TaskReport("ran.0", "goes", 0, ReportedState.EXITED, 0)
                assert isinstance((await cell.report_tasks([done])).result, Ok)
                seen_down = False
                with trio.fail_after(60):
                    while True:
                        states = {m["id"]: m["state"] for m in await cell.machines()}
                        seen_down = seen_down or states.get("goes") == "down"
                        if "goes" not in states:
                            break
                        await trio.sleep(0.2)
                assert seen_down  # marked down for silence first, then removed
                assert states == {"stays": "up"}
                # Every replica's log holds the leader's command, with no author.
                version = (await cell.status())["version"]
                removals = []
                async for batch in cell.watch(1):
                    removals += [c for _, c in batch.commands if c["type"] == "remove_machines"]
                    if batch.version >= version:
                        break
                assert [c["machines"] for c in removals] == [["goes"]], removals
                assert removals[0].get("by") is None
                logs = await trio.to_thread.run_sync(omega, cluster, "logs", "ran.0")
                assert logs.returncode == 1, logs
                assert "ran on machine goes, which was removed from the cell" in logs.stderr
                # Its agent, back, registers it again: a new machine, up, on the last row.
                await cell.register_machines([MachineSpec("goes", capacity)])
                machines = await cell.machines()
                assert [(m["id"], m["state"]) for m in machines] == [
                    ("goes", "up"),
                    ("stays", "up"),
                ]
                beats.cancel_scope.cancel()

        trio.run(scenario)


def omega(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMEGA_ADDR": ",".join(cluster.api), "OMEGA_TOKEN": cluster.token}
    env.pop("OMEGA_CA", None)
    command = [sys.executable, "-m", "omega", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
