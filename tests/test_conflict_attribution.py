"""Issue #16, items 1 and 2: one conflict fraction, and what each conflict lost to.

The conflict fraction is the Omega paper's (conflicted per conflict-free
transaction, so 3 and 2 give 1.5), computed by one function that the live
scheduler's figures and the simulator's rows both call. Under rules 4 each
machine records the version and actor of its last change, a rejected claim
names them, and the snapshot and wire carry them without changing the bytes
of what was written before.
"""

from __future__ import annotations

import math

import orjson
import pytest

import cellsim.metrics
import schedulers.metrics
from cellsim.engine import omega_schedulers, simulate
from cellsim.metrics import Metrics
from cellstate import (
    CellState,
    Claim,
    Commit,
    CommitResult,
    ConflictMode,
    MachineSpec,
    MachineState,
    Ok,
    RegisterMachines,
    RemoveMachines,
    ReportedState,
    ReportScheduler,
    ReportTasks,
    Resources,
    SchedulerClass,
    SetMachineState,
    TaskReport,
    Transaction,
    TxnMode,
)
from cellstate.commands import RaiseRules
from cellstate.model import Rejection
from cellstate.views import conflicts_view, explain
from cellstate.wire import decode_result, encode_result
from schedulers.metrics import SchedulerFigures, conflict_fraction
from schedulers.process import flatten
from tests.cellfixtures import GI, cell_with, commit, submit
from tests.schedfixtures import core, step
from tests.test_sim_support import tiny_workload

# -- one definition ------------------------------------------------------------------


def test_conflict_fraction_is_conflicted_per_conflict_free_and_can_exceed_one():
    assert conflict_fraction(3, 2) == 1.5
    assert conflict_fraction(0, 4) == conflict_fraction(0, 0) == 0.0
    assert math.isnan(conflict_fraction(2, 0))  # unbounded, not 0: nothing got through


def test_live_figures_use_the_papers_definition_not_the_claim_share():
    f = SchedulerFigures(
        transactions=5,
        successful_transactions=5,  # every one placed something
        conflicted_transactions=3,
        conflict_free_transactions=2,
        claims_attempted=10,
        claims_accepted=7,
    )
    assert f.conflict_fraction == 1.5
    assert f.claim_conflict_fraction == 0.3
    figures = f.as_dict()
    assert (figures["conflict_fraction"], figures["claim_conflict_fraction"]) == (1.5, 0.3)


def test_simulated_rows_use_the_papers_definition():
    metrics = Metrics()
    metrics.scheduler("batch", "batch")
    for rejected in (1, 2, 1, 0, 0):
        metrics.transaction("batch", claims=2, rejected=rejected)
    metrics.transaction("batch", claims=0, rejected=0)  # no claims: not a transaction
    row = metrics.rows(run_time=10.0)[0]
    assert (row["transactions"], row["conflicted"]) == (5, 3)
    assert row["conflict_fraction"] == 1.5
    assert row["claim_conflict_fraction"] == 0.4


def test_live_and_simulated_share_one_function():
    assert cellsim.metrics.conflict_fraction is schedulers.metrics.conflict_fraction
    assert cellsim.metrics.claim_conflict_fraction is schedulers.metrics.claim_conflict_fraction


def test_a_simulation_counts_the_cores_figures_as_its_own_rows():
    """The scheduler core (what runs live) and the simulator's tally count the
    same transactions the same way, so their fractions agree exactly."""
    workload = tiny_workload(
        machines=8, batch_mean=5.0, service_mean=5.0, prefill=0.3, service_duration=30.0
    ).with_think("service", t_job=2.0)
    result = simulate(
        workload, omega_schedulers(workload, conflicts=ConflictMode.COARSE), days=0.01, seed=4
    )
    compared = 0
    for row in result.rows:
        name = str(row["scheduler"])
        if name.startswith("class:"):
            continue
        core_fraction = result.figures[name]["conflict_fraction"]
        if math.isnan(row["conflict_fraction"]):
            assert math.isnan(core_fraction)
        else:
            assert core_fraction == row["conflict_fraction"]
            compared += row["conflicted"] > 0
    assert compared  # some scheduler did conflict, so the check saw a real figure


# -- attribution ---------------------------------------------------------------------


def _commit_as(cell: CellState, scheduler: str, *claims, **options):
    return commit(cell, *claims, scheduler=scheduler, **options)


def test_an_insufficient_claim_names_the_rival_the_version_and_the_dimension():
    cell = cell_with(machines=1, cpu=4000)
    submit(cell, "big", cpu=3000)
    submit(cell, "late", cpu=2000)
    seen = cell.machines["m0"].seqnum
    won = _commit_as(cell, "batch-2", ("big.0", "m0"))
    lost = _commit_as(cell, "service", ("late.0", "m0", seen))
    (rejection,) = lost.result.rejected
    assert rejection == Rejection("late.0", "m0", "insufficient:cpu", "batch-2", won.version)
    assert cell.machines["m0"].changed == (won.version, "batch-2")


def test_coarse_conflicts_name_what_moved_the_sequence_number():
    cell = cell_with(machines=1)
    submit(cell, "a", tasks=2)
    seen = cell.machines["m0"].seqnum
    placed = _commit_as(cell, "batch-1", ("a.0", "m0"))
    incarnation = cell.tasks["a.0"].incarnation
    exited = cell.apply(
        ReportTasks((TaskReport("a.0", "m0", incarnation, ReportedState.EXITED),), at=4.0)
    )
    lost = _commit_as(cell, "batch-2", ("a.1", "m0", seen), conflicts=ConflictMode.COARSE)
    (rejection,) = lost.result.rejected
    assert (rejection.reason, rejection.by, rejection.at) == (
        "machine_changed",
        "agent",
        exited.version,
    )
    assert placed.version < exited.version


def test_an_operator_change_and_an_aborted_claim():
    cell = cell_with(machines=2)
    submit(cell, "g", tasks=2)
    down = cell.apply(SetMachineState("m1", MachineState.DRAINING, at=3.0))
    out = _commit_as(cell, "batch", ("g.0", "m0"), ("g.1", "m1"), mode=TxnMode.ALL_OR_NOTHING)
    got = {r.task: (r.reason, r.by, r.at) for r in out.result.rejected}
    # The aborted claim lost to its own transaction, not to m0's last change.
    assert got == {
        "g.0": ("aborted", None, None),
        "g.1": ("machine_not_up", "operator", down.version),
    }


def _as_before_rules_4(data: bytes) -> bytes:
    """`data` as a build before rules 4 wrote it: no trailing machine column,
    no attribution in remembered results."""
    doc = orjson.loads(data)
    for row in doc["machines"]:
        del row[9:]
    for _cid, _version, result in doc["recent"]:
        for rejection in result.get("rejected", []):
            rejection.pop("by", None)
            rejection.pop("at", None)
    return orjson.dumps(doc)


def _rules_3_cell(machines: int) -> CellState:
    """A cell judging by rules 3, as one replaying an old log is until its `RaiseRules`."""
    cell = CellState(rules=3)
    specs = tuple(MachineSpec(f"m{i}", Resources(4000, 8 * GI)) for i in range(machines))
    cell.apply(RegisterMachines(specs, at=1.0))
    return cell


def test_rules_3_records_nothing_and_raising_to_4_starts_recording():
    cell = _rules_3_cell(machines=1)
    submit(cell, "a", tasks=2, cpu=3000)
    commit(cell, ("a.0", "m0"))
    out = commit(cell, ("a.1", "m0"))
    assert out.result.rejected[0].by is None and cell.machines["m0"].changed is None
    assert b'"by"' not in encode_result(out.result)
    raised = cell.apply(RaiseRules(4, at=5.0))
    assert raised.result.__class__.__name__ == "Ok"
    commit(cell, ("a.1", "m0"))  # still refused, still nothing changed the machine
    assert cell.machines["m0"].changed is None


def test_replaying_across_rules_4_agrees_with_restoring_a_rules_3_snapshot():
    """A replica that replays the whole log and one that restored a snapshot
    written before rules 4 must stay byte-identical. Recording under rules 3
    failed this: the replaying replica named m0's last change, the restored
    one could not."""
    cell = _rules_3_cell(machines=2)
    submit(cell, "a", tasks=3, cpu=3000)
    commit(cell, ("a.0", "m0"))
    # As the previous build wrote it: it recorded nothing (a no-op under the gate).
    restored = CellState.restore(_as_before_rules_4(cell.snapshot()))
    m0, m1 = cell.machines["m0"].seqnum, cell.machines["m1"].seqnum
    claims = (Claim("a.1", "m1", m1), Claim("a.2", "m0", m0))
    txn = Transaction("batch", claims, cell.version + 1)
    for replica in (cell, restored):
        replica.apply(RaiseRules(4, at=4.0, id="raise"))
        replica.apply(Commit(txn, at=5.0, id="txn"))
    assert cell.snapshot() == restored.snapshot()
    assert cell.machines["m0"].changed is None  # untouched since before rules 4
    assert cell.machines["m1"].changed is not None


def test_snapshot_round_trips_attribution_and_still_reads_rows_without_it():
    cell = cell_with(machines=2)
    submit(cell, "a", cpu=3000, tasks=2)
    commit(cell, ("a.0", "m0"))
    commit(cell, ("a.1", "m0"))  # rejected: lands in `recent` with its attribution
    data = cell.snapshot()
    doc = orjson.loads(data)
    assert [len(row) for row in doc["machines"]] == [10, 10]
    restored = CellState.restore(data)
    assert restored.snapshot() == data
    assert restored.machines["m0"].changed == cell.machines["m0"].changed
    old = _as_before_rules_4(data)
    assert old != data
    loaded = CellState.restore(old)
    assert loaded.machines["m0"].changed is None
    assert loaded.snapshot() == old


@pytest.mark.parametrize(
    "rejection",
    [Rejection("t.0", "m0", "insufficient:cpu"), Rejection("t.0", "m0", "x", "batch", 12)],
)
def test_wire_omits_unknown_attribution_and_reads_results_without_it(rejection):
    result = CommitResult(1, (rejection,))
    assert decode_result(encode_result(result)) == result
    old = b'{"type":"commit","accepted":0,"rejected":[{"task":"t","machine":"m","reason":"r"}]}'
    assert decode_result(old) == CommitResult(0, (Rejection("t", "m", "r"),))


def test_scheduler_counts_conflicts_by_rival_and_machine_and_explains_them():
    cell = cell_with(machines=1, cpu=4000)
    submit(cell, "hog", cpu=4000)
    submit(cell, "mine", cpu=1000, scheduler=SchedulerClass.SERVICE)
    sched = core(SchedulerClass.SERVICE, name="service")
    decision = sched.decide(cell, 5.0)
    assert decision is not None
    won = _commit_as(cell, "batch-1", ("hog.0", "m0"))
    result = cell.apply(Commit(decision.transaction, at=6.0)).result
    assert isinstance(result, CommitResult)
    sched.on_result(cell, decision, result, 6.0)
    figures = sched.figures.as_dict()
    assert figures["conflicts_by_rival"] == {"batch-1": 1}
    assert figures["hot_machines"] == {"m0": 1}
    assert figures["conflicted_transactions"] == 1
    assert math.isnan(figures["conflict_fraction"])  # nothing conflict-free yet
    flat = flatten(figures)
    assert "conflict_fraction" not in flat
    assert conflicts_view(flat) == {"by_rival": {"batch-1": 1}, "hot_machines": {"m0": 1}}
    assert "to batch-1 x1" in sched.explain(cell, "mine").summary()
    assert won.version == cell.machines["m0"].changed[0]
    # A machine the cell removes is no longer among the hot ones: nobody can act on it,
    # and a cell whose machines come and go would count every one it ever had.
    sched.forget_gone(cell)
    assert sched.figures.as_dict()["hot_machines"] == {"m0": 1}
    assert cell.apply(SetMachineState("m0", MachineState.DOWN, at=7.0)).result == Ok()
    assert cell.apply(RemoveMachines(("m0",), at=8.0)).result == Ok()
    sched.forget_gone(cell)
    assert sched.figures.as_dict()["hot_machines"] == {}
    assert sched.figures.as_dict()["conflicts_by_rival"] == {"batch-1": 1}


def test_explain_view_shows_each_schedulers_rivals():
    cell = cell_with(machines=1)
    submit(cell, "a")
    figures = {"conflicts_by_rival.batch-2": 4.0, "conflicts_by_rival.agent": 1.0}
    figures |= {"hot_machines.m0": 5.0}
    cell.apply(ReportScheduler("batch-1", SchedulerClass.BATCH, figures, {}, at=3.0))
    view = explain(cell, "a")
    assert view is not None
    assert view["conflicts"] == {
        "batch-1": {"by_rival": {"batch-2": 4, "agent": 1}, "hot_machines": {"m0": 5}}
    }


def test_a_lone_scheduler_never_conflicts():
    cell = cell_with(machines=2)
    submit(cell, "a", tasks=2)
    sched = core()
    step(sched, cell)
    assert sched.figures.conflict_fraction == 0.0


def test_prometheus_shows_conflicts_by_rival_and_hot_machines():
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from schedulers.prometheus import registry_of

    figures = SchedulerFigures(
        transactions=5, conflicted_transactions=3, conflict_free_transactions=2
    )
    figures.conflicts_by_rival.update({"batch-2": 2, "agent": 1})
    figures.conflicts_by_machine.update({f"m{i}": i for i in range(8)})
    for seconds in (0.003, 0.004, 0.2):
        figures.add_busy(seconds)
    live = SimpleNamespace(
        core=SimpleNamespace(figures=figures),
        config=SimpleNamespace(name="service", kind="service"),
        figures=lambda: {"busyness": 0.5},
        copy=SimpleNamespace(cell=CellState(), version=7),
    )
    text = generate_latest(registry_of(live)).decode()  # type: ignore[arg-type]
    assert 'omega_scheduler_conflict_fraction{kind="service",scheduler="service"} 1.5' in text
    assert (
        'conflicts_by_rival_total{kind="service",rival="batch-2",scheduler="service"} 2.0' in text
    )
    hot = [line for line in text.splitlines() if line.startswith("omega_scheduler_hot_machine")]
    assert len(hot) == schedulers.metrics.HOT_MACHINES and 'machine="m7"' in hot[0]
    decision = 'omega_scheduler_decision_seconds_{}{{kind="service",{}scheduler="service"}} {}'
    assert decision.format("bucket", 'le="0.005",', "2.0") in text
    assert decision.format("bucket", 'le="+Inf",', "3.0") in text
    assert decision.format("count", "", "3.0") in text
