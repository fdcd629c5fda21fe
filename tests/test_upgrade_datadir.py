"""A data dir written by an earlier release loads with every acknowledged fact intact (issue
13, "Snapshots stay loadable"). Every test runs for each release's fixture:

- `tests/fixtures/datadir-v1/`: written by commit 523456b, the release before the ledger change
  (cpu and memory only, snapshot format 1, rules 1);
- `tests/fixtures/datadir-v2/`: written by commit 0bc4c3f, the release before jobs had versions
  (disk and devices, health checks, snapshot format 2, rules 2);
- `tests/fixtures/datadir-v3/`: written by commit 7af6cd7, the release before machines could be
  removed (versions and rollouts, scaling, weights, zero quotas, tokens, restarts in place,
  purged jobs; snapshot format 3, rules 9);
- `tests/fixtures/datadir-v4/`: written by commit 480c75a, the last release that landed before
  tasks' ports, machine selectors and operators' labels (v2's steps, and a machine retired
  and removed; snapshot format 3, rules 10).

Each holds three replicas' data dirs, each a full dump (`raft.dump`) plus a journal tail of
commands applied after it, and `expected.json`, the facts the old cell's API acknowledged.
`tests/fixtures/make_datadir_v{1,2,3,4}.py` say how they were made.

Raft addresses: the dump and journal hold no address that matters. The old replicas' Raft
addresses appear only as the vote in `raft.journal.meta` (a vote for a node that no longer
exists, in a term every replica leaves at its first election) and as the member list inside
`raft.dump`, which pysyncobj reads only with dynamic membership (off in this store). So the
live test starts the replicas on fresh free ports with their own token and secret, which keeps
it parallel-safe; the fixture's own `replica.json` is checked to still parse.

The fast tests read the files as pysyncobj does (gzip'd pickle; `MachineBox` holds the cell's
snapshot bytes) and replay the journal tail through the current `CellMachine`; the slow one
starts three real replicas of the current code on a copy and asks their HTTP API.
"""

from __future__ import annotations

import functools
import gzip
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from pysyncobj import pickle as raft_pickle
from pysyncobj.journal import FileJournal

from cellstate import (
    CellState,
    Claim,
    Commit,
    JobSpec,
    MachineSpec,
    Ok,
    RegisterMachines,
    ReportTasks,
    SubmitJob,
    TaskReport,
    Transaction,
    views,
)
from cellstate import snapshot as snapshot_format
from cellstate.commands import ReportedState
from cellstate.model import FIRST_RULES, RULES
from cellstate.state import ZERO_QUOTA_RULES
from cellstate.wire import parse, to_json
from cellstore.cell import CellMachine
from cellstore.cellclient import SyncCellClient
from cellstore.config import ReplicaConfig
from cellstore.datadir import unseal
from cellstore.machine import MachineBox
from harness.cluster import LocalCluster, cell_options

REPLICAS = 3
RAFT_FILES = ("raft.dump", "raft.journal", "raft.journal.meta")
REGULAR = 0  # pysyncobj's _COMMAND_TYPE.REGULAR: an `apply_command` call


@dataclass(frozen=True)
class Release:
    """One earlier release's fixture: where it is, what it wrote, what its API acknowledged."""

    name: str
    format: int  # of the snapshot inside every `raft.dump`
    rules: int  # the cell's rules when it was written
    tokens: tuple[str, ...] = ()  # the API tokens it holds besides `bootstrap`

    @property
    def path(self) -> Path:
        return Path(__file__).parent / "fixtures" / f"datadir-{self.name}"

    @functools.cached_property
    def expected(self) -> dict[str, Any]:
        return json.loads((self.path / "expected.json").read_text())

    def quotas(self) -> dict[tuple[str, int], dict[str, int]]:
        """The acknowledged quota limits as resource vectors (v1 wrote cpu and memory columns)."""
        return {
            (q["owner"], q["band"]): (
                q["limit"] if "limit" in q else {"cpu": q["cpu_milli"], "memory": q["memory_bytes"]}
            )
            for q in self.expected["quotas"]
        }


RELEASES = (
    Release("v1", format=1, rules=FIRST_RULES),
    Release("v2", format=2, rules=2),
    Release("v3", format=3, rules=9, tokens=("ci",)),
    Release("v4", format=3, rules=10),
)


@pytest.fixture(params=RELEASES, ids=[r.name for r in RELEASES])
def old(request: pytest.FixtureRequest) -> Release:
    return request.param


# -- reading the files as a replica does ---------------------------------------------------------


def read_dump(data_dir: Path) -> tuple[bytes, int]:
    """The cell snapshot inside `raft.dump` and the Raft index it was taken at."""
    with gzip.open(data_dir / "raft.dump") as f:
        state, last_entry, _before_last, _members = raft_pickle.load(f)
    box = state["_box"]
    assert isinstance(box, MachineBox) and box.pending is not None
    return box.pending, last_entry[1]


def journal_tail(data_dir: Path, after: int) -> list[bytes]:
    """The committed commands past Raft index `after`, as the replica applies them."""
    meta = raft_pickle.loads((data_dir / "raft.journal.meta").read_bytes())
    journal = FileJournal(str(data_dir / "raft.journal"))
    try:
        entries = [journal[i] for i in range(len(journal))]
    finally:
        journal._destroy()
    commands = []
    for command, index, _term in entries:
        if after < index <= meta["raftCommitIndex"] and command[0] == REGULAR:
            _func, (text,) = raft_pickle.loads(command[1:])
            commands.append(unseal(text).encode())  # (v3 on seal each entry with a checksum)
    return commands


def replayed(data_dir: Path) -> CellMachine:
    """What replica `data_dir` holds after a restart: its dump, then its journal tail."""
    snapshot, index = read_dump(data_dir)
    machine = CellMachine.restore(snapshot)
    for command in journal_tail(data_dir, index):
        result = orjson.loads(machine.apply_encoded(command))["result"]
        assert result["type"] != "error" or result["code"] != "undecodable", result
    return machine


# -- the facts -----------------------------------------------------------------------------------


def specs_and_quotas(
    snapshot: bytes, zeros: bool
) -> tuple[dict[str, Any], dict[tuple[str, int], dict[str, int]]]:
    """Job specs as the snapshot writes them, and the quotas as the ledger holds them (the
    dimensions it holds at zero left out, as releases wrote them before a quota could be
    zero, unless `zeros`: rules 7 on, a zero is a limit of none)."""
    cell = CellState.restore(snapshot)
    specs = {jid: to_json(job.spec, JobSpec) for jid, job in cell.jobs.items()}
    quotas = {
        (owner, int(band)): {dim: n for dim, n in limit.items() if n or zeros}
        for (owner, band), limit in cell.ledger.limits.items()
    }
    return specs, quotas


def assert_same(kind: str, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """Every record of `old` is in `new` with every field of it equal (new ones may have
    more fields: views grew other dimensions, shown only where non-zero)."""
    found = {r["id"]: r for r in new}
    assert sorted(found) == sorted(r["id"] for r in old), kind
    for record in old:
        now = found[record["id"]]
        for field, value in record.items():
            if field != "spec":
                assert now[field] == value, (kind, record["id"], field, now[field], value)


def assert_facts(
    old: Release,
    jobs: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    machines: list[dict[str, Any]],
    snapshot: bytes,
) -> None:
    expected = old.expected
    assert_same("job", expected["jobs"], jobs)
    assert_same("task", expected["tasks"], tasks)
    assert_same("machine", expected["machines"], machines)
    specs, quotas = specs_and_quotas(snapshot, zeros=old.rules >= ZERO_QUOTA_RULES)
    for job in expected["jobs"]:
        for field, value in job["spec"].items():
            assert specs[job["id"]][field] == value, (job["id"], field)
    assert quotas == old.quotas()
    draining = [m["id"] for m in machines if m["state"] == "draining"]
    assert draining == ["m3"]


def test_fixture_holds_an_old_format_dump_and_a_journal_tail_on_every_replica(
    old: Release,
) -> None:
    for i in range(REPLICAS):
        data_dir = old.path / f"replica-{i}"
        snapshot, index = read_dump(data_dir)
        assert orjson.loads(snapshot)["format"] == old.format
        assert len(journal_tail(data_dir, index)) >= 10, "the tail must hold commands"
    total = sum(f.stat().st_size for f in old.path.rglob("*") if f.is_file())
    assert total < 200_000


@pytest.mark.parametrize("replica", range(REPLICAS))
def test_old_dump_restores_checks_and_rewrites_as_stable_current_format(
    old: Release, replica: int
) -> None:
    snapshot, _ = read_dump(old.path / f"replica-{replica}")
    cell = CellState.restore(snapshot)
    cell.check_invariants()
    upgraded = cell.snapshot()
    assert orjson.loads(upgraded)["format"] == snapshot_format.FORMAT
    again = CellState.restore(upgraded)
    again.check_invariants()
    assert again.snapshot() == upgraded


def test_dump_plus_journal_replayed_by_current_code_keeps_every_fact(old: Release) -> None:
    snapshots = set()
    for i in range(REPLICAS):
        cell = replayed(old.path / f"replica-{i}").cell
        cell.check_invariants()
        assert (cell.version, cell.rules) == (old.expected["version"], old.rules)
        snapshot = cell.snapshot()
        assert_facts(
            old, views.list_jobs(cell), views.list_tasks(cell), views.list_machines(cell), snapshot
        )
        snapshots.add(snapshot)
    assert len(snapshots) == 1, "replicas came back different"


def test_a_replica_that_dumped_last_comes_back_as_one_that_replays_its_tail() -> None:
    """Where a replica's dump falls in the log must not matter: the old leader's own
    snapshot at the end (what a replica that compacted last would load) restores to the
    very state the others reach by replaying their tails. v2's fixture keeps that
    snapshot (`final.snapshot`); v1's was written before this check."""
    v2 = next(r for r in RELEASES if r.name == "v2")
    final = CellState.restore((v2.path / "final.snapshot").read_bytes())
    final.check_invariants()
    for i in range(REPLICAS):
        cell = replayed(v2.path / f"replica-{i}").cell
        assert cell.snapshot() == final.snapshot(), f"replica {i}"


@pytest.mark.parametrize(("rules", "healthy_since"), [(2, 4.0), (RULES, 9.0)])
def test_under_old_rules_a_task_is_healthy_since_its_start_as_old_snapshots_load_it(
    rules: int, healthy_since: float
) -> None:
    """A checked task started at 4 and judged healthy at 9. Formats 1 and 2 keep no time
    of becoming healthy and load it as the start, so a cell replaying the same commands
    under those rules must say the start too. It said 9, and the v2 test above found two
    upgraded replicas disagreeing (web.1, judged healthy in the journal tail). Under rules
    3 the time is the verdict's, which the schedulers' `min_healthy_time` counts from."""
    cell = CellState(rules=rules)
    machine = {"id": "m0", "capacity": {"cpu": 4, "memory": "8Gi"}}
    spec = {
        "name": "web",
        "owner": "alice",
        "scheduler": "service",
        "resources": {"cpu": 1, "memory": "1Gi"},
        "check": {"tcp": True},
    }
    cell.apply(RegisterMachines((parse(machine, MachineSpec),), at=1.0))
    cell.apply(SubmitJob("web", parse(spec, JobSpec), at=2.0))
    cell.apply(Commit(Transaction("s", (Claim("web.0", "m0"),)), at=3.0))
    cell.apply(ReportTasks((TaskReport("web.0", "m0", 0, ReportedState.RUNNING),), at=4.0))
    assert cell.tasks["web.0"].healthy_at is None  # running, not judged yet
    judged = TaskReport("web.0", "m0", 0, ReportedState.RUNNING, healthy=True)
    cell.apply(ReportTasks((judged,), at=9.0))
    assert cell.tasks["web.0"].healthy_at == healthy_since
    assert CellState.restore(cell.snapshot()).snapshot() == cell.snapshot()


def test_rules_raised_to_current_keep_every_fact(old: Release) -> None:
    # What the new leader's first command does to the replayed cell: the facts hold under
    # this build's rules, and the state it leaves round-trips through the current format.
    raise_rules = CellMachine.canonical({"type": "raise_rules", "rules": RULES})
    for i in range(REPLICAS):
        machine = replayed(old.path / f"replica-{i}")
        result = orjson.loads(machine.apply_encoded(raise_rules))["result"]
        assert result["type"] == "ok", result
        cell = machine.cell
        assert cell.rules == RULES
        cell.check_invariants()
        snapshot = cell.snapshot()
        assert_facts(
            old, views.list_jobs(cell), views.list_tasks(cell), views.list_machines(cell), snapshot
        )
        assert CellState.restore(snapshot).snapshot() == snapshot


def register_again(machine: dict[str, Any]) -> dict[str, Any]:
    """What an agent sends when it restarts: its machine's registration, as the API takes it
    (the view's capacity in people's units: cpu, memory, disk and devices by name)."""
    capacity = machine["capacity"]
    return {
        "id": machine["id"],
        "capacity": {
            dim: amount
            for dim, amount in capacity.items()
            if not dim.endswith(("_milli", "_bytes"))
        },
        "domain": machine["domain"],
        "labels": machine["labels"],
    }


def test_drain_set_before_the_upgrade_survives_an_agent_restart(old: Release) -> None:
    # m3 was drained before every replica's dump: only the old snapshot says so.
    # The old log is judged by the old rules until the leader raises them; from then
    # on a drain outlives an agent's restart.
    m3 = next(m for m in old.expected["machines"] if m["id"] == "m3")
    register = {"type": "register_machines", "machines": [register_again(m3)]}
    for i in range(REPLICAS):
        machine = replayed(old.path / f"replica-{i}")
        assert machine.cell.rules == old.rules
        machine.apply_encoded(CellMachine.canonical({"type": "raise_rules", "rules": RULES}))
        machine.apply_encoded(CellMachine.canonical(register))
        assert machine.cell.machines["m3"].state == "draining"
        machine.cell.check_invariants()


def test_fixture_replica_config_still_parses(old: Release) -> None:
    for i in range(REPLICAS):
        document = json.loads((old.path / f"replica-{i}" / "replica.json").read_text())
        config = ReplicaConfig.from_json(
            {**document, "token": "t", "secret": "s", "data_dir": "/nonexistent"}
        )
        assert config.machine_class is CellMachine
        assert config.raft.compaction_min_entries == 30


# -- the live upgrade ----------------------------------------------------------------------------


@pytest.fixture
def upgraded_cell(old: Release, tmp_path: Path):
    for i in range(REPLICAS):
        (tmp_path / f"replica-{i}").mkdir()
        for name in RAFT_FILES:
            shutil.copy(old.path / f"replica-{i}" / name, tmp_path / f"replica-{i}" / name)
    # The fixture's machines last sent a heartbeat when it was written; without agents here,
    # they must not be marked down for silence. Nor may the leader purge a job the fixture
    # holds that ended (it ended when the fixture was written, hours ago or more): the facts
    # checked are the release's, and what the retention does is tested on its own.
    options = cell_options(heartbeat_timeout_s=1e12, job_retention_s=0, machine_retention_s=0)
    with LocalCluster(
        tmp_path, REPLICAS, raft={"compaction_min_entries": 30}, **options
    ) as cluster:
        yield cluster


def client(cluster: LocalCluster, replica: int | None = None) -> SyncCellClient:
    """The typed client to the cell, or to one replica only (to read what that one says)."""
    addresses = cluster.api if replica is None else [cluster.api[replica]]
    return SyncCellClient(addresses, cluster.token, timeout_s=10.0)


def settled_snapshots(cluster: LocalCluster) -> bytes:
    """Every replica's snapshot once all have applied the leader's version; all equal."""
    top = cluster.status(cluster.wait_for_leader())["version"]
    cluster.wait_for_version(top, list(range(REPLICAS)))
    snapshots = {cluster.snapshot(i)[1] for i in range(REPLICAS)}
    assert len(snapshots) == 1, "replicas differ"
    return snapshots.pop()


def dump_format(data_dir: Path) -> int | None:
    try:
        return orjson.loads(read_dump(data_dir)[0])["format"]
    except (OSError, EOFError):
        return None


@pytest.mark.slow
def test_current_replicas_start_on_old_data_dir_keep_every_fact_and_take_writes(
    old: Release, upgraded_cell: LocalCluster
) -> None:
    cluster = upgraded_cell
    expected = old.expected
    # The new leader's first acts are to raise the old log's rules to this build's, then to
    # enter its config token into the cell (rules 6): two commands past the old release's last.
    cluster.wait_for_version(expected["version"] + 2, list(range(REPLICAS)))
    snapshot = settled_snapshots(cluster)
    assert orjson.loads(snapshot)["format"] == snapshot_format.FORMAT
    restored = CellState.restore(snapshot)
    assert (restored.version, restored.rules) == (expected["version"] + 2, RULES)
    assert sorted(t.name for t in restored.tokens.values()) == ["bootstrap", *old.tokens]
    restored.check_invariants()
    for i in range(REPLICAS):  # every replica answers with the same facts
        with client(cluster, i) as one:
            assert_facts(old, one.jobs(), one.tasks(), one.machines(), snapshot)

    # It takes new writes: a job, claims onto old machines, a report.
    cell = client(cluster)
    spec = {
        "name": "after",
        "owner": "erin",
        "scheduler": "batch",
        "tasks": 2,
        "resources": {"cpu": "500m", "memory": "512Mi"},
    }
    assert cell.submit(parse(spec, JobSpec), "after").job == "after"
    claims = (Claim("after.0", "m1"), Claim("late.1", "m4"))
    result = cell.commit(Transaction("upgrade-test", claims)).result
    assert (result.accepted, result.rejected) == (2, ()), result
    refused = cell.commit(Transaction("upgrade-test", (Claim("after.1", "m3"),))).result
    assert [r.reason for r in refused.rejected] == ["machine_not_up"], refused
    report = TaskReport("after.0", "m1", 0, ReportedState.RUNNING)
    assert isinstance(cell.report_tasks([report]).result, Ok)

    # An agent restart re-registers its machine: the operator's drain, set before the
    # upgrade, holds (issue 13, loose end 3).
    m3 = next(m for m in expected["machines"] if m["id"] == "m3")
    again = parse(register_again(m3), MachineSpec)
    assert isinstance(cell.register_machines([again]).result, Ok)
    assert {m["id"]: m["state"] for m in cell.machines()}["m3"] == "draining"

    tasks = {t["id"]: t for t in cell.tasks()}
    assert (tasks["after.0"]["state"], tasks["after.0"]["machine"]) == ("running", "m1")
    assert (tasks["late.1"]["state"], tasks["late.1"]["machine"]) == ("assigned", "m4")
    before = settled_snapshots(cluster)
    CellState.restore(before).check_invariants()

    # Enough commands for every replica to compact: its dump is then written in this build's
    # format,
    # and a full restart from it comes back byte for byte.
    data_dirs = [cluster.data_dir(i) for i in range(REPLICAS)]
    deadline = time.monotonic() + 60
    while any(dump_format(d) != snapshot_format.FORMAT for d in data_dirs):
        assert time.monotonic() < deadline, [dump_format(d) for d in data_dirs]
        cell.heartbeat(["m0"])
    cell.close()
    before = settled_snapshots(cluster)
    for i in range(REPLICAS):
        cluster.stop(i)
    cluster.start()
    assert settled_snapshots(cluster) == before
