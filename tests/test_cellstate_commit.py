"""Examples of the commit protocol: each reason code, each mode, preemption, quota."""

from __future__ import annotations

import orjson
import pytest

from cellstate import (
    Band,
    CommitResult,
    ConflictMode,
    Error,
    ExpireHeartbeats,
    Heartbeat,
    KillJob,
    MachineState,
    ReportedState,
    ReportTasks,
    ReportUsage,
    Resources,
    SchedulerClass,
    SetMachineState,
    SetQuota,
    SilentMachine,
    Stale,
    TaskEvicted,
    TaskReport,
    TaskState,
    TaskUsage,
    TxnMode,
)
from cellstate.invariants import InvariantViolation, check_machines
from cellstate.ledger import pack
from tests.cellfixtures import GI, cell_with, commit, reasons, submit


def essence(cell) -> dict:
    """The state without the version and command-id window, which every command moves."""
    doc = orjson.loads(cell.snapshot())
    del doc["version"], doc["recent"], doc["now"]
    return doc


def test_accepts_a_claim_that_fits_and_places_the_task():
    cell = cell_with()
    submit(cell, "a")
    out = commit(cell, ("a.0", "m0"))
    assert out.result == CommitResult(accepted=1)
    task = cell.tasks["a.0"]
    assert (task.state, task.machine) == (TaskState.ASSIGNED, "m0")
    assert cell.machines["m0"].account.used["cpu"] == 1000
    cell.check_invariants()


@pytest.mark.parametrize(
    "cpu,memory,reason",
    [
        (5000, GI, "insufficient:cpu"),
        (1000, 9 * GI, "insufficient:memory"),
    ],
)
def test_insufficient_names_the_dimension(cpu, memory, reason):
    cell = cell_with()
    submit(cell, "a", cpu=cpu, memory=memory)
    assert reasons(commit(cell, ("a.0", "m0"))) == {"a.0": reason}


def test_claims_of_one_transaction_must_fit_together():
    cell = cell_with()
    submit(cell, "a", tasks=5)
    out = commit(cell, *[(f"a.{i}", "m0") for i in range(5)])
    assert out.result.accepted == 4
    assert reasons(out) == {"a.4": "insufficient:cpu"}


def test_task_unknown_and_not_pending_and_duplicate_claim():
    cell = cell_with()
    submit(cell, "a")
    commit(cell, ("a.0", "m0"))
    out = commit(cell, ("a.0", "m1"), ("zz.0", "m1"))
    assert reasons(out) == {"a.0": "task_not_pending", "zz.0": "task_unknown"}


def test_machine_unknown_and_not_up():
    cell = cell_with()
    submit(cell, "a", tasks=2)
    cell.apply(SetMachineState("m1", MachineState.DRAINING, at=2.5))
    out = commit(cell, ("a.0", "nope"), ("a.1", "m1"))
    assert reasons(out) == {"a.0": "machine_unknown", "a.1": "machine_not_up"}


def test_coarse_rejects_a_changed_machine_that_fine_accepts():
    cell = cell_with()
    submit(cell, "a", tasks=2)
    seen = cell.machines["m0"].seqnum
    commit(cell, ("a.0", "m0"))  # another scheduler's commit changes m0
    fine = cell_with()
    submit(fine, "a", tasks=2)
    commit(fine, ("a.0", "m0"))
    assert reasons(commit(cell, ("a.1", "m0", seen), conflicts=ConflictMode.COARSE)) == {
        "a.1": "machine_changed"
    }
    assert commit(fine, ("a.1", "m0", seen), conflicts=ConflictMode.FINE).result.accepted == 1


def test_coarse_compares_claims_with_the_seqnum_before_this_transaction():
    cell = cell_with()
    submit(cell, "a", tasks=3)
    seen = cell.machines["m0"].seqnum
    out = commit(cell, *[(f"a.{i}", "m0", seen) for i in range(3)], conflicts=ConflictMode.COARSE)
    assert out.result.accepted == 3


def test_all_or_nothing_changes_nothing_when_one_claim_fails():
    cell = cell_with()
    submit(cell, "a", tasks=3, gang=True)
    before = essence(cell)
    out = commit(cell, ("a.0", "m0"), ("a.1", "m0"), ("a.2", "nope"), mode=TxnMode.ALL_OR_NOTHING)
    assert out.result.accepted == 0
    assert reasons(out) == {"a.2": "machine_unknown", "a.0": "aborted", "a.1": "aborted"}
    assert out.events == ()
    assert essence(cell) == before


def test_all_or_nothing_sees_earlier_claims_of_the_same_transaction():
    cell = cell_with(machines=1)
    submit(cell, "a", tasks=5, gang=True)
    out = commit(cell, *[(f"a.{i}", "m0") for i in range(5)], mode=TxnMode.ALL_OR_NOTHING)
    assert reasons(out)["a.4"] == "insufficient:cpu"
    assert out.result.accepted == 0
    ok = commit(cell, *[(f"a.{i}", "m0") for i in range(4)], mode=TxnMode.ALL_OR_NOTHING)
    assert ok.result.accepted == 4


def test_constraints_and_anti_affinity():
    cell = cell_with(machines=2)
    submit(cell, "gpu", constraints={"accel": "gpu"})
    submit(cell, "spread", tasks=2, anti_affinity=True)
    commit(cell, ("spread.0", "m0"))
    out = commit(cell, ("gpu.0", "m0"), ("spread.1", "m0"))
    assert reasons(out) == {"gpu.0": "constraint:accel", "spread.1": "anti_affinity"}
    assert commit(cell, ("spread.1", "m1")).result.accepted == 1


def test_a_selector_is_read_at_the_edge_and_refused_under_older_rules():
    from cellstate import JobSpec, Ok, SubmitJob
    from cellstate.commands import RaiseRules
    from cellstate.wire import SpecError, parse

    doc = {
        "name": "x",
        "owner": "o",
        "scheduler": "batch",
        "resources": {"cpu": "1", "memory": "1Gi"},
        "selector": "zone in (a,b),!spot",
    }
    spec = parse(doc, JobSpec)
    assert spec.selector == "zone in (a,b),!spot"
    with pytest.raises(SpecError) as caught:
        parse({**doc, "selector": "zone in ()"}, JobSpec)
    assert caught.value.field == "$.selector" and "is empty" in caught.value.message
    with pytest.raises(SpecError) as caught:
        parse({**doc, "selector": "zone=a,=b"}, JobSpec)
    assert caught.value.field == "$.selector" and "cannot read '=b'" in caught.value.message
    old = cell_with(machines=1)
    old.rules = 11
    refused = old.apply(SubmitJob("x", spec, at=2.0)).result
    assert isinstance(refused, Error) and refused.code == "rules_too_old", refused
    assert refused.field == "spec.selector" and "x" not in old.jobs
    assert old.apply(RaiseRules(12, at=3.0)).result == Ok()
    assert old.apply(SubmitJob("x", spec, at=4.0)).result == Ok()


def test_preemption_evicts_lower_band_victims_and_makes_them_pending():
    cell = cell_with(machines=1)
    submit(cell, "batch", tasks=4)
    commit(cell, *[(f"batch.{i}", "m0") for i in range(4)])
    submit(cell, "web", scheduler=SchedulerClass.SERVICE, cpu=2000)
    out = commit(cell, ("web.0", "m0", None, ["batch.0", "batch.1"]))
    assert out.result.accepted == 1
    assert out.result.preempted == ("batch.0", "batch.1")
    victim = cell.tasks["batch.0"]
    assert (victim.state, victim.machine, victim.incarnation) == (TaskState.PENDING, None, 1)
    assert TaskEvicted("batch.0", "m0", 0, "preempted") in out.events
    cell.check_invariants()


def test_production_and_equal_bands_are_never_victims():
    cell = cell_with(machines=1)
    submit(cell, "prod", scheduler=SchedulerClass.SERVICE, cpu=3000)
    submit(cell, "peer", cpu=1000)
    commit(cell, ("prod.0", "m0"), ("peer.0", "m0"))
    submit(cell, "mon", scheduler=SchedulerClass.SERVICE, priority=300, cpu=3000)
    submit(cell, "b2", cpu=1000)
    assert reasons(commit(cell, ("mon.0", "m0", None, ["prod.0"]))) == {
        "mon.0": "victim_not_preemptible"
    }
    assert reasons(commit(cell, ("b2.0", "m0", None, ["peer.0"]))) == {
        "b2.0": "victim_not_preemptible"
    }
    # A victim that is not there frees nothing: under fine detection the claim
    # is judged on fit alone, under coarse the machine is not what was read.
    assert reasons(commit(cell, ("b2.0", "m0", None, ["ghost.0"]))) == {"b2.0": "insufficient:cpu"}
    coarse = commit(cell, ("b2.0", "m0", None, ["ghost.0"]), conflicts=ConflictMode.COARSE)
    assert reasons(coarse) == {"b2.0": "victim_gone"}


def test_quota_per_owner_and_band_and_unlimited_lowest_band():
    cell = cell_with(machines=2)
    cell.apply(SetQuota("alice", Band.BATCH, Resources(1500, 4 * GI)))
    submit(cell, "a", tasks=2)
    out = commit(cell, ("a.0", "m0"), ("a.1", "m1"))
    assert reasons(out) == {"a.1": "quota_exceeded:cpu"}
    refused = cell.apply(SetQuota("alice", Band.BEST_EFFORT, Resources(1, 1)))
    assert isinstance(refused.result, Error) and refused.result.field == "band"
    submit(cell, "other", owner="bob")
    assert commit(cell, ("other.0", "m1")).result.accepted == 1


def test_best_effort_runs_on_reclaimed_resources_and_is_squeezed_out():
    cell = cell_with(machines=1)
    submit(cell, "svc", scheduler=SchedulerClass.SERVICE, cpu=3000, memory=6 * GI)
    commit(cell, ("svc.0", "m0"))
    submit(cell, "be", scheduler=SchedulerClass.BEST_EFFORT, cpu=2000, memory=GI)
    assert reasons(commit(cell, ("be.0", "m0"))) == {"be.0": "insufficient:cpu"}
    # The service task uses far less than its limit: its reservation decays.
    cell.apply(ReportUsage((TaskUsage("svc.0", 0, 500, GI),), at=1000.0))
    assert cell.machines["m0"].account.reserved["cpu"] < 3000
    assert commit(cell, ("be.0", "m0")).result.accepted == 1
    cell.check_invariants()
    # Usage climbs back: the reservation grows at once and best-effort goes.
    out = cell.apply(ReportUsage((TaskUsage("svc.0", 0, 2900, 5 * GI),), at=1001.0))
    assert TaskEvicted("be.0", "m0", 0, "preempted") in out.events
    assert cell.tasks["be.0"].state is TaskState.PENDING
    cell.check_invariants()


def test_task_reports_walk_legal_transitions_and_flag_stale_incarnations():
    cell = cell_with()
    submit(cell, "a", tasks=2)
    commit(cell, ("a.0", "m0"), ("a.1", "m0"))
    report = lambda task, state, **kw: TaskReport(task, "m0", 0, state, **kw)  # noqa: E731
    cell.apply(ReportTasks((report("a.0", ReportedState.RUNNING),), at=4.0))
    out = cell.apply(
        ReportTasks(
            (
                report("a.0", ReportedState.EXITED, exit_code=0),
                report("a.1", ReportedState.FAILED, reason="oom"),
                TaskReport("a.1", "m1", 0, ReportedState.RUNNING),
            ),
            at=5.0,
        )
    )
    assert out.result == Stale(tasks=("a.1",))
    assert cell.tasks["a.0"].state is TaskState.EXITED
    assert cell.tasks["a.1"].state is TaskState.FAILED and cell.tasks["a.1"].reason == "oom"
    assert cell.machines["m0"].account.used["cpu"] == 0
    assert cell.jobs["a"].state.value == "failed"
    # A report after the end changes nothing; one claiming a run is stale.
    again = cell.apply(ReportTasks((report("a.0", ReportedState.RUNNING),), at=6.0))
    assert again.result == Stale(tasks=("a.0",))


def test_heartbeat_expiry_marks_machines_down_and_tasks_lost():
    cell = cell_with()
    submit(cell, "a", tasks=2)
    commit(cell, ("a.0", "m0"), ("a.1", "m1"))
    cell.apply(Heartbeat(("m0",), at=20.0))
    out = cell.apply(ExpireHeartbeats(timeout=10.0, at=25.0))
    assert cell.machines["m1"].state is MachineState.DOWN
    assert cell.machines["m0"].state is MachineState.UP
    assert TaskEvicted("a.1", "m1", 0, "lost") in out.events
    assert cell.tasks["a.1"].state is TaskState.PENDING
    assert cell.apply(Heartbeat(("m1",), at=26.0)).result == Stale(machines=("m1",))
    cell.check_invariants()


def test_expiry_naming_silent_machines_spares_one_heard_from_since():
    """The leader names the machines it timed as silent with the stamp it saw; a heartbeat
    committed before the expiry (its stamp from any replica's clock) keeps a machine up, and
    `at` far ahead of every stamp (a leader whose clock runs fast) marks nothing down itself."""
    cell = cell_with()
    submit(cell, "a", tasks=2)
    commit(cell, ("a.0", "m0"), ("a.1", "m1"))
    cell.apply(Heartbeat(("m0", "m1"), at=20.0))
    cell.apply(Heartbeat(("m0",), at=19.5))  # stamped by a replica whose clock runs behind
    silent = (SilentMachine("m0", 20.0), SilentMachine("m1", 20.0))
    out = cell.apply(ExpireHeartbeats(timeout=10.0, at=1000.0, silent=silent))
    assert cell.machines["m0"].state is MachineState.UP
    assert cell.machines["m1"].state is MachineState.DOWN
    assert TaskEvicted("a.1", "m1", 0, "lost") in out.events
    assert cell.tasks["a.0"].state is not TaskState.PENDING
    assert cell.apply(ExpireHeartbeats(timeout=10.0, at=1e6, silent=())).events == ()
    assert cell.machines["m0"].state is MachineState.UP
    cell.check_invariants()


def test_kill_job_releases_claims_and_is_idempotent():
    cell = cell_with()
    submit(cell, "a", tasks=2)
    commit(cell, ("a.0", "m0"))
    out = cell.apply(KillJob("a", at=4.0))
    assert TaskEvicted("a.0", "m0", 0, "killed") in out.events
    assert {t.state for t in cell.tasks.values()} == {TaskState.KILLED}
    assert cell.machines["m0"].account.used["cpu"] == 0
    assert cell.apply(KillJob("a", at=5.0)).events == ()
    missing = cell.apply(KillJob("nope"))
    assert isinstance(missing.result, Error) and missing.result.code == "job_unknown"


def test_duplicate_command_ids_apply_once():
    cell = cell_with()
    submit(cell, "a", tasks=2)
    from cellstate import Claim, Commit, Transaction

    cmd = Commit(Transaction("s", (Claim("a.0", "m0", 0),)), at=3.0, id="retry-me")
    first = cell.apply(cmd)
    second = cell.apply(cmd)
    assert first.result == second.result and second.events == ()
    assert cell.version == first.version + 1


def test_snapshot_round_trip_is_byte_identical():
    cell = cell_with(machines=3, domains=2, labels={"zone": "a"})
    submit(cell, "a", tasks=3, env={"B": "1", "A": "2"})
    submit(cell, "be", scheduler=SchedulerClass.BEST_EFFORT, tasks=2)
    commit(cell, ("a.0", "m0"), ("a.1", "m1"), ("be.0", "m2"))
    cell.apply(ReportUsage((TaskUsage("a.0", 0, 200, GI // 2),), at=50.0))
    blob = cell.snapshot()
    restored = type(cell).restore(blob)
    assert restored.snapshot() == blob
    restored.check_invariants()


def test_check_machines_recounts_changed_machines_from_their_tasks():
    cell = cell_with(machines=2)
    cell.changed_machines = changed = set()
    submit(cell, "j", tasks=2)
    commit(cell, ("j.0", "m0"), ("j.1", "m0"))
    assert changed == {"m0"}
    check_machines(cell, changed)  # holds for an honest cell
    machine = cell.machines["m0"]
    drift = pack({"cpu": 1000})
    machine.account.room += drift  # a running sum that drifted from its tasks
    with pytest.raises(InvariantViolation, match="books"):
        check_machines(cell, ["m0"])
    machine.account.room -= drift
    capacity = machine.account.capacity
    machine.account.resize({**capacity, "cpu": 1500})  # now its tasks exceed it
    with pytest.raises(InvariantViolation, match="over capacity"):
        check_machines(cell, ["m0"])
    machine.account.resize(capacity)
    cell.tasks["j.1"].machine = "m1"  # held by m0, but says it runs elsewhere
    with pytest.raises(InvariantViolation, match="not active on it"):
        check_machines(cell, ["m0"])
