"""The ledger through the cell: disk and devices, quota per dimension, and the
commit protocol's loose ends of issue 13.

The five loose-end tests each failed against the cell state before the ledger
(commit 523456b), as their docstrings say; the property test in
`test_cellstate_properties.py` covers the same five at random.
"""

from __future__ import annotations

import orjson
import pytest

from cellstate import (
    Band,
    CellState,
    Claim,
    Commit,
    CommitResult,
    ConflictMode,
    ExpireHeartbeats,
    Heartbeat,
    JobSpec,
    KillJob,
    Limit,
    MachineSpec,
    MachineState,
    Ok,
    RegisterMachines,
    ReportedState,
    ReportTasks,
    ReportUsage,
    Resources,
    SchedulerClass,
    SetMachineState,
    SetQuota,
    SpecError,
    SubmitJob,
    TaskReport,
    TaskState,
    TaskUsage,
    Transaction,
    TxnMode,
)
from cellstate.commands import Command, RaiseRules
from cellstate.invariants import InvariantViolation
from cellstate.views import list_quotas
from cellstate.wire import decode_command, edge, encode_command, parse
from tests.cellfixtures import GI, cell_with, commit, reasons, submit

# -- loose end 1: a victim that already left ------------------------------------


def test_fine_claim_whose_victim_left_is_judged_on_fit_alone():
    """Before: refused `victim_gone` although the machine had room again."""
    cell = cell_with(machines=1)
    submit(cell, "batch", cpu=3000)
    commit(cell, ("batch.0", "m0"))
    seen = cell.machines["m0"].seqnum
    submit(cell, "svc", scheduler=SchedulerClass.SERVICE, cpu=2000)
    # The batch task exits after the service scheduler chose it as a victim.
    cell.apply(ReportTasks((TaskReport("batch.0", "m0", 0, ReportedState.EXITED, 0),), at=4.0))
    coarse = commit(cell, ("svc.0", "m0", seen, ["batch.0"]), conflicts=ConflictMode.COARSE)
    assert reasons(coarse) == {"svc.0": "machine_changed"}
    fine = commit(cell, ("svc.0", "m0", seen, ["batch.0"]))
    assert fine.result == CommitResult(accepted=1)
    assert cell.tasks["batch.0"].state is TaskState.EXITED  # not evicted a second time
    cell.check_invariants()


# -- loose end 2: absurd usage reports ---------------------------------------------


@pytest.mark.parametrize(
    "usage,field",
    [
        ({"task": "a.0", "incarnation": 0, "cpu": -500, "memory": 1}, "$.usages[0].cpu"),
        ({"task": "a.0", "incarnation": 0, "cpu": 1, "memory": 1 << 60}, "$.usages[0].memory"),
    ],
)
def test_usage_reports_out_of_range_are_refused_at_the_edge(usage, field):
    """Before: accepted, and a negative report drove reservations below zero."""
    with pytest.raises(SpecError) as caught:
        parse({"type": "report_usage", "usages": [usage]}, Command)
    assert caught.value.field == field
    assert "out of range" in caught.value.message


def test_reservations_stay_within_zero_and_the_limit_whatever_a_log_says():
    """Before: two negative reports took the service task's reservation below
    zero, and a best-effort task was then placed beyond the machine's capacity."""
    cell = cell_with(machines=1)
    submit(cell, "svc", scheduler=SchedulerClass.SERVICE, cpu=3000, memory=4 * GI)
    commit(cell, ("svc.0", "m0"))
    for at in (400.0, 500.0, 600.0):
        cell.apply(ReportUsage((TaskUsage("svc.0", 0, -10_000, -(4 * GI)),), at=at))
    reserved = cell.tasks["svc.0"].reserved
    assert 0 <= reserved["cpu"] <= 3000 and 0 <= reserved["memory"] <= 4 * GI
    submit(cell, "be", scheduler=SchedulerClass.BEST_EFFORT, tasks=2, cpu=4000, memory=GI)
    # The whole machine is reclaimable (reservation zero), and not one millicore more.
    assert reasons(commit(cell, ("be.0", "m0"))) == {}
    submit(cell, "be-more", scheduler=SchedulerClass.BEST_EFFORT, cpu=100, memory=GI)
    assert reasons(commit(cell, ("be-more.0", "m0"))) == {"be-more.0": "insufficient:cpu"}
    cell.check_invariants()


def test_invariants_refuse_a_reservation_outside_zero_and_the_limit():
    """Before: the checker summed the same numbers and never looked at their range."""
    cell = cell_with(machines=1)
    submit(cell, "a")
    commit(cell, ("a.0", "m0"))
    task, account = cell.tasks["a.0"], cell.machines["m0"].account
    cell.ledger.reserve(task, account, {"cpu": -1, "memory": GI})
    with pytest.raises(InvariantViolation, match="reserves -1 cpu"):
        cell.check_invariants()


# -- loose end 3: re-registration keeps an operator's word -------------------------


@pytest.mark.parametrize("state", [MachineState.DRAINING, MachineState.DOWN])
def test_reregistering_keeps_the_state_an_operator_set(state):
    """Before: an agent's restart set the machine back to `up`."""
    cell = cell_with(machines=1)
    cell.apply(SetMachineState("m0", state, at=2.0))
    again = RegisterMachines((MachineSpec("m0", Resources(4000, 8 * GI)),), at=3.0)
    cell.apply(again)
    assert cell.machines["m0"].state is state
    # Its agent keeps heartbeating without being told to register again.
    assert cell.apply(Heartbeat(("m0",), at=4.0)).result == Ok()
    cell.apply(SetMachineState("m0", MachineState.UP, at=5.0))
    cell.apply(again)
    assert cell.machines["m0"].state is MachineState.UP


def test_reregistering_brings_back_a_machine_marked_down_for_silence():
    cell = cell_with(machines=1)
    cell.apply(ExpireHeartbeats(timeout=10.0, at=30.0))
    assert cell.machines["m0"].state is MachineState.DOWN
    cell.apply(RegisterMachines((MachineSpec("m0", Resources(4000, 8 * GI)),), at=31.0))
    assert cell.machines["m0"].state is MachineState.UP


# -- loose end 4: squeezed best-effort tasks are reported --------------------------


@pytest.mark.parametrize("mode", list(TxnMode))
def test_best_effort_squeezed_by_a_commit_is_in_its_preempted_list(mode):
    """Before: the squeezed task was evicted but missing from `preempted`."""
    cell = cell_with(machines=1)
    submit(cell, "svc", scheduler=SchedulerClass.SERVICE, cpu=2000, memory=2 * GI)
    commit(cell, ("svc.0", "m0"))
    cell.apply(ReportUsage((TaskUsage("svc.0", 0, 100, GI // 8),), at=1000.0))
    submit(cell, "be", scheduler=SchedulerClass.BEST_EFFORT, cpu=3000, memory=GI)
    assert commit(cell, ("be.0", "m0")).result.accepted == 1
    submit(cell, "more", scheduler=SchedulerClass.SERVICE, cpu=2000, memory=GI)
    out = commit(cell, ("more.0", "m0"), mode=mode)
    assert out.result.accepted == 1
    assert out.result.preempted == ("be.0",)
    assert cell.tasks["be.0"].state is TaskState.PENDING
    cell.check_invariants()


# -- loose end 5: one task named twice -----------------------------------------------


def test_a_task_named_twice_gets_a_verdict_for_every_claim():
    """Before: all-or-nothing answered one rejection for two claims."""
    cell = cell_with(machines=2)
    submit(cell, "a", tasks=2)
    gang = commit(cell, ("a.0", "m0"), ("a.1", "m0"), ("a.0", "m1"), mode=TxnMode.ALL_OR_NOTHING)
    verdicts = [(r.task, r.machine, r.reason) for r in gang.result.rejected]
    assert gang.result.accepted == 0
    assert sorted(verdicts) == [
        ("a.0", "m0", "aborted"),
        ("a.0", "m1", "duplicate_claim"),
        ("a.1", "m0", "aborted"),
    ]
    one_by_one = commit(cell, ("a.0", "m0"), ("a.0", "m1"))
    assert one_by_one.result.accepted == 1
    assert [(r.machine, r.reason) for r in one_by_one.result.rejected] == [
        ("m1", "duplicate_claim")
    ]
    assert cell.tasks["a.0"].machine == "m0"


# -- disk and devices ------------------------------------------------------------------


def test_devices_are_counted_and_never_overcommitted():
    cell = cell_with(machines=2, extra={"gpu": 2})
    cell.apply(RegisterMachines((MachineSpec("plain", Resources(4000, 8 * GI)),), at=1.5))
    submit(cell, "train", tasks=3, cpu=500, extra={"gpu": 1})
    out = commit(cell, ("train.0", "m0"), ("train.1", "m0"), ("train.2", "m0"))
    assert reasons(out) == {"train.2": "insufficient:gpu"}
    assert reasons(commit(cell, ("train.2", "plain"))) == {"train.2": "no_capacity:gpu"}
    assert cell.machines["m0"].account.used["gpu"] == 2
    cell.apply(ReportTasks((TaskReport("train.0", "m0", 0, ReportedState.EXITED, 0),), at=4.0))
    assert commit(cell, ("train.2", "m0")).result.accepted == 1
    cell.check_invariants()


def test_best_effort_never_takes_a_device_or_disk_another_task_holds():
    cell = cell_with(machines=1, extra={"gpu": 1, "disk": 10 * GI})
    submit(cell, "svc", scheduler=SchedulerClass.SERVICE, cpu=1000, extra={"gpu": 1})
    submit(cell, "be", scheduler=SchedulerClass.BEST_EFFORT, cpu=100, extra={"gpu": 1})
    submit(cell, "be-disk", scheduler=SchedulerClass.BEST_EFFORT, cpu=100, extra={"disk": 6 * GI})
    submit(cell, "disk", cpu=100, extra={"disk": 6 * GI})
    commit(cell, ("svc.0", "m0"))
    # The service task uses no gpu at all: a device is never lent out.
    cell.apply(ReportUsage((TaskUsage("svc.0", 0, 10, 1),), at=1000.0))
    assert reasons(commit(cell, ("be.0", "m0"))) == {"be.0": "insufficient:gpu"}
    # Disk a best-effort task holds is held: a regular task cannot squeeze it.
    assert commit(cell, ("be-disk.0", "m0")).result.accepted == 1
    assert reasons(commit(cell, ("disk.0", "m0"))) == {"disk.0": "insufficient:disk"}
    cell.check_invariants()


def test_quota_is_per_dimension_and_names_the_one_exceeded():
    cell = cell_with(machines=2, extra={"gpu": 4})
    cell.apply(SetQuota("alice", Band.BATCH, Resources(gpu=3), at=1.5))
    submit(cell, "a", tasks=2, cpu=500, extra={"gpu": 2})
    submit(cell, "cpu-only", tasks=4, cpu=3000)
    out = commit(cell, ("a.0", "m0"), ("a.1", "m1"))
    assert reasons(out) == {"a.1": "quota_exceeded:gpu"}
    # cpu is not named by the quota: unlimited.
    placed = commit(cell, ("cpu-only.0", "m0"), ("cpu-only.1", "m1"))
    assert placed.result.accepted == 2
    assert cell.ledger.usage()[("alice", Band.BATCH)] == {
        "cpu": 6500,
        "gpu": 2,
        "memory": 3 * GI,
    }
    cell.check_invariants()


def test_a_quota_of_zero_allows_none_and_an_unnamed_dimension_stays_unlimited():
    cell = cell_with(machines=2, extra={"gpu": 4})
    # Written as a person writes it: a zero is kept, not read as "not named".
    command = edge.structure(
        {"type": "set_quota", "owner": "alice", "band": 1, "limit": {"cpu": "8", "gpu": 0}},
        Command,
    )
    assert command.limit == Limit({"cpu": 8000, "gpu": 0})
    with pytest.raises(SpecError) as negative:
        parse({"owner": "alice", "band": 1, "limit": {"gpu": -1}}, SetQuota)
    assert (negative.value.field, negative.value.message) == (
        "$.limit.gpu",
        "gpu -1 must be 0 or more",
    )
    assert isinstance(cell.apply(command).result, Ok)
    submit(cell, "train", tasks=1, cpu=500, extra={"gpu": 1})
    submit(cell, "plain", tasks=2, cpu=500, memory=6 * GI)
    refused = commit(cell, ("train.0", "m0"))
    assert reasons(refused) == {"train.0": "quota_exceeded:gpu"}
    # The quota refused it, not a change to m0: no rival is named (rules 7).
    assert refused.result.rejected[0].by is None and refused.result.rejected[0].at is None
    # memory is not named: unlimited, though each task takes most of a machine's.
    assert commit(cell, ("plain.0", "m0"), ("plain.1", "m1")).result.accepted == 2
    # The read model names what the quota limits, and only that: a missing memory is
    # unlimited, not a limit of 0.
    [alice] = [q for q in list_quotas(cell) if q["owner"] == "alice"]
    assert alice["limit"] == {"cpu": "8", "cpu_milli": 8000, "gpu": 0}
    # The zero survives the log's encoding and a snapshot.
    assert decode_command(encode_command(command)).limit == command.limit
    restored = CellState.restore(cell.snapshot())
    assert (
        restored.ledger.limits
        == cell.ledger.limits
        == {("alice", Band.BATCH): command.limit.amounts}
    )
    cell.check_invariants()


def test_a_quota_of_zero_needs_rules_7_and_an_old_limit_decodes_as_it_did():
    cell = cell_with(machines=1)
    cell.rules = 6
    out = cell.apply(SetQuota("alice", Band.BATCH, Limit.of({"cpu": 1000, "gpu": 0})))
    assert out.result.code == "rules_too_old" and out.result.field == "limit"
    assert "quotas of zero need rules 7" in out.result.message
    assert cell.ledger.limits == {}
    # A limit a previous release logged (never a zero: its parsers refused one).
    old = decode_command(
        b'{"type":"set_quota","owner":"alice","band":1,"limit":{"cpu":"64000m","gpu":4}}'
    )
    assert old.limit == Limit({"cpu": 64000, "gpu": 4})
    assert isinstance(cell.apply(old).result, Ok)
    # Under rules 6 a quota refusal named the machine's last change, as it still does then.
    assert isinstance(cell.apply(SetQuota("alice", Band.BATCH, Limit.of({"cpu": 1000}))).result, Ok)
    submit(cell, "big", tasks=1, cpu=2000)
    refused = commit(cell, ("big.0", "m0"))
    assert reasons(refused) == {"big.0": "quota_exceeded:cpu"}
    assert refused.result.rejected[0].at is not None
    # A Resources given to the command (as callers of the client did) is its Limit.
    assert SetQuota("bob", Band.BATCH, Resources(cpu=5)).limit == Limit({"cpu": 5})


def test_a_machine_cannot_shrink_below_the_devices_its_tasks_hold():
    cell = cell_with(machines=1, extra={"gpu": 2})
    submit(cell, "a", tasks=2, cpu=500, extra={"gpu": 1})
    commit(cell, ("a.0", "m0"), ("a.1", "m0"))
    out = cell.apply(RegisterMachines((MachineSpec("m0", Resources(4000, 8 * GI, gpu=1)),)))
    assert out.result.code == "capacity_below_claims"
    assert "gpu" in out.result.message
    assert cell.machines["m0"].account.capacity["gpu"] == 2


# -- rules: an old log is judged as the old release judged it ---------------------------


def _old_log() -> list:
    """Commands of a cell that began under rules 1 and was raised to rules 2 midway:
    each loose end's command appears on both sides of `RaiseRules`."""

    def job(name: str, cpu: int, scheduler=SchedulerClass.BATCH, tasks: int = 1) -> SubmitJob:
        spec = JobSpec(name, "alice", scheduler, Resources(cpu, GI), tasks=tasks)
        return SubmitJob(name, spec, at=2.0)

    def claim(task: str, machine: str, *victims: str, mode=TxnMode.INCREMENTAL) -> Commit:
        txn = Transaction("s", (Claim(task, machine, 0, victims),), 0, mode)
        return Commit(txn, at=3.0)

    def exited(task: str, machine: str) -> ReportTasks:
        return ReportTasks((TaskReport(task, machine, 0, ReportedState.EXITED, 0),), at=4.0)

    machines = RegisterMachines(
        tuple(MachineSpec(f"m{i}", Resources(4000, 8 * GI)) for i in range(2)), at=1.0
    )
    log = [machines]
    for era in ("a", "b"):
        log += [
            SetMachineState("m1", MachineState.DRAINING, at=1.5),
            job(f"{era}-batch", 3000),
            job(f"{era}-svc", 2000, SchedulerClass.SERVICE, tasks=2),
            claim(f"{era}-batch.0", "m0"),
            exited(f"{era}-batch.0", "m0"),
            claim(f"{era}-svc.0", "m0", f"{era}-batch.0"),  # its victim left
            Commit(
                Transaction(
                    "s",
                    (Claim(f"{era}-svc.1", "m0", 0), Claim(f"{era}-svc.1", "m0", 0)),
                    0,
                    TxnMode.ALL_OR_NOTHING,
                ),
                at=3.5,
            ),
            machines,  # an agent restarts: does the drain of m1 hold?
            KillJob(f"{era}-svc", at=5.0),
        ]
        if era == "a":
            log.append(RaiseRules(2, at=6.0))
    return log


def test_rules_1_judge_an_old_log_as_the_old_release_did_and_rules_2_as_this_one():
    cell = CellState(rules=1)
    answers = []
    for command in _old_log():
        if isinstance(command, RaiseRules):
            assert cell.machines["m1"].state is MachineState.UP  # era a's drain undone
        answers.append(cell.apply(command).result)
    assert cell.rules == 2
    gone = [a for a in answers if isinstance(a, CommitResult) and a.rejected]
    # Rules 1: the victim that left is `victim_gone`, the doubled task has one verdict.
    assert [r.reason for r in gone[0].rejected] == ["victim_gone"]
    assert len(gone[1].rejected) == 1
    # Rules 2: judged on fit (accepted), and both claims of the doubled task answered.
    assert [r.reason for r in gone[2].rejected] == ["aborted", "duplicate_claim"]
    assert cell.tasks["b-svc.0"].state is TaskState.KILLED  # it had been placed
    # Rules 1 let an agent's restart undo the drain of era a; rules 2 keep era b's.
    assert cell.machines["m1"].state is MachineState.DRAINING
    cell.check_invariants()


def test_replicas_rebuilt_from_any_point_of_an_old_log_agree():
    """A replica restores its last dump and replays the rest of its journal: wherever
    the dump was cut, before, across or after `RaiseRules`, it must reach the same bytes."""
    log = _old_log()
    whole = CellState(rules=1)
    for command in log:
        whole.apply(command)
    for cut in range(len(log) + 1):
        early = CellState(rules=1)
        for command in log[:cut]:
            early.apply(command)
        rebuilt = CellState.restore(early.snapshot())
        for command in log[cut:]:
            rebuilt.apply(command)
        assert rebuilt.snapshot() == whole.snapshot(), f"diverged when cut at {cut}"


def test_a_cell_knows_a_bounded_number_of_device_kinds():
    """Each device kind widens every packed vector by a field: a cell refuses the one
    kind too many, whoever names it, and changes nothing."""
    from cellstate.resources import MAX_CELL_DEVICE_KINDS, MAX_DEVICE_KINDS

    cell = cell_with(machines=0)
    kinds = [f"dev{i}" for i in range(MAX_CELL_DEVICE_KINDS)]
    for start in range(0, len(kinds), MAX_DEVICE_KINDS):
        batch = {name: 1 for name in kinds[start : start + MAX_DEVICE_KINDS]}
        spec = MachineSpec(f"m{start}", Resources(4000, 8 * GI, **batch))
        assert cell.apply(RegisterMachines((spec,), at=1.0)).result == Ok()

    def essence() -> dict:
        doc = orjson.loads(cell.snapshot())
        del doc["version"], doc["now"], doc["recent"]
        return doc

    before = essence()
    one_more = Resources(4000, 8 * GI, extra=1)
    refused = cell.apply(RegisterMachines((MachineSpec("late", one_more),), at=2.0)).result
    assert (refused.code, refused.field) == ("too_many_device_kinds", "machines")
    refused = cell.apply(SetQuota("alice", Band.BATCH, Resources(extra=1), at=2.0)).result
    assert (refused.code, refused.field) == ("too_many_device_kinds", "limit")
    spec = JobSpec("j", "alice", SchedulerClass.BATCH, Resources(100, GI, extra=1))
    refused = cell.apply(SubmitJob("j", spec, at=2.0)).result
    assert (refused.code, refused.field) == ("too_many_device_kinds", "spec.resources")
    assert essence() == before  # three refusals changed nothing
    # Kinds already known are fine, and a restored cell knows the same ones.
    spec = JobSpec("k", "alice", SchedulerClass.BATCH, Resources(100, GI, dev7=1))
    assert cell.apply(SubmitJob("k", spec, at=3.0)).result == Ok()
    assert CellState.restore(cell.snapshot()).device_kinds == cell.device_kinds
    assert len(cell.device_kinds) == MAX_CELL_DEVICE_KINDS
