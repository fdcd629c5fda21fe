"""Property tests: random command sequences never break the cell's promises.

Each step applies one random command (including transactions built against a
stale view of the cell, as a competing scheduler would) to two twin cells and
checks: invariants hold in every dimension (cpu, memory, disk and devices: no
machine over capacity, every reservation between zero and its limit, a task on
at most one machine), task states moved only along legal transitions, a
refused command or a failed all-or-nothing transaction changed nothing, and
the twins are byte-identical. It also holds the commit protocol's loose ends
of issue 13: every claim gets exactly one verdict (duplicates included), a
fine-grained claim is never refused for a victim that left, every task the
commit evicted is in its `preempted` list, a re-registered machine keeps the
state an operator gave it, a task's health is taken only from a running
report of its current incarnation (and forgotten on restart or eviction), and
absurd usage reports (which the edge refuses, but an old log may hold) never
drive a reservation out of range.
"""

from __future__ import annotations

import attrs
import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cellstate import (
    ACTIVE_STATES,
    Band,
    CellState,
    Claim,
    Commit,
    CommitResult,
    ConflictMode,
    EndRollout,
    Error,
    ExpireHeartbeats,
    Heartbeat,
    JobSpec,
    KillJob,
    LabelMachines,
    MachineSpec,
    MachineState,
    PromoteJob,
    PurgeJobs,
    RegisterMachines,
    RemoveMachines,
    ReportedState,
    ReportTasks,
    ReportUsage,
    Resources,
    RevertJob,
    RolloutState,
    ScaleJob,
    SchedulerClass,
    SetMachineState,
    SetQuota,
    SetWeights,
    Stop,
    StopReason,
    SubmitJob,
    SubmitPlan,
    TaskReport,
    TaskState,
    TaskUsage,
    Transaction,
    TxnMode,
    UpdateJob,
    UpdatePolicy,
)
from cellstate.commands import TaskEvicted
from cellstate.model import TRANSITIONS
from cellstate.model import HealthCheck as TaskCheck  # hypothesis has a HealthCheck

GI = 1 << 30


def essence(cell: CellState) -> dict:
    doc = orjson.loads(cell.snapshot())
    del doc["version"], doc["recent"], doc["now"]
    return doc


class CellMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cell = CellState()
        self.twin = CellState()
        self.clock = 0.0
        self.jobs = 0
        self.views: list[dict[str, int]] = [{}]  # seqnums as schedulers saw them
        self.states: dict[str, TaskState] = {}
        self.operator: dict[str, MachineState] = {}  # states operators set, UP excluded
        # Labels operators set (a value) or took away (None), per machine (rules 14).
        self.overlays: dict[str, dict[str, str | None]] = {}
        specs = tuple(
            MachineSpec(f"m{i}", Resources(4000, 4 * GI, 8 * GI, gpu=i), domain=f"d{i % 2}")
            for i in range(3)
        )
        self.apply(RegisterMachines(specs, at=self.at))

    def apply(self, command):
        self.clock += 1.0
        before = essence(self.cell)
        floors = self.budget_floors() if isinstance(command, Commit) else {}
        outcome = self.cell.apply(command)
        self.twin.apply(command)
        result = outcome.result
        refused = isinstance(result, Error) or (
            isinstance(command, Commit)
            and isinstance(result, CommitResult)
            and result.accepted == 0
            and len(result.rejected)
            == len(command.txn.claims) + len(command.txn.stops) + len(command.txn.verdicts)
        )
        if refused:
            assert essence(self.cell) == before, f"{command} changed state but returned {result}"
        # No transaction takes a job that was within its budget out of it.
        for jid, floor in floors.items():
            job = self.cell.jobs[jid]
            assert job.available >= floor, f"{jid}: {job.available} available < {floor}"
        return outcome

    def budget_floors(self) -> dict[str, int]:
        """Per job with a budget, now within it: the fewest available tasks it may
        be left with. Best-effort jobs live on reclaimed room: their squeeze is
        not a disruption any budget covers."""
        floors = {}
        for job in self.cell.jobs.values():
            budget = job.spec.max_unavailable
            if budget is None or job.killed or job.spec.band == 0:
                continue
            floor = job.spec.tasks - budget
            if job.available >= floor:
                floors[job.id] = floor
        return floors

    @property
    def at(self) -> float:
        return self.clock + 1.0

    def draw_active(self, data):
        active = sorted(t.id for t in self.cell.tasks.values() if t.state in ACTIVE_STATES)
        return self.cell.tasks[data.draw(st.sampled_from(active))] if active else None

    def op_register(self, data):
        n = data.draw(st.integers(1, 2))
        base = data.draw(st.sampled_from([0, len(self.cell.machines)]))
        cpu = data.draw(st.sampled_from([2000, 4000, 6000]))
        gpu = data.draw(st.sampled_from([0, 1, 2]))
        disk = data.draw(st.sampled_from([0, 2 * GI, 8 * GI]))
        labels = data.draw(st.sampled_from([{}, {"zone": "a"}, {"zone": "b", "disk": "ssd"}]))
        specs = tuple(
            MachineSpec(
                f"m{base + i}",
                Resources(cpu, 4 * GI, disk, gpu=gpu),
                labels=labels,
                domain=f"d{i % 2}",
            )
            for i in range(n)
        )
        outcome = self.apply(RegisterMachines(specs, at=self.at))
        if not isinstance(outcome.result, Error):
            for spec in specs:
                expected = self.operator.get(spec.id, MachineState.UP)
                assert self.cell.machines[spec.id].state is expected, spec.id
                # What an operator labelled stays so, whatever the agent registers.
                overlay = self.overlays.get(spec.id, {})
                want = {**spec.labels, **overlay}
                want = {k: v for k, v in sorted(want.items()) if v is not None}
                assert self.cell.machines[spec.id].labels == want, (spec.id, overlay)

    def op_label(self, data):
        machines = [*sorted(self.cell.machines), "m99"]  # m99: never registered
        named = data.draw(st.lists(st.sampled_from(machines), min_size=1, max_size=2))
        labels = data.draw(st.sampled_from([{}, {"zone": "c"}, {"tier": "x", "zone": "a"}]))
        remove = data.draw(st.sampled_from([(), ("zone",), ("disk",), ("omega.agent",)]))
        outcome = self.apply(LabelMachines(tuple(named), labels, remove, at=self.at))
        if isinstance(outcome.result, Error):
            return
        for mid in named:
            overlay = self.overlays.setdefault(mid, {})
            overlay.update(labels)
            overlay.update(dict.fromkeys(remove))
            machine = self.cell.machines[mid]
            assert all(machine.labels.get(k) == v for k, v in labels.items()), machine.labels
            assert not set(remove) & set(machine.labels), machine.labels

    def op_submit(self, data):
        self.jobs += 1
        kind = data.draw(st.sampled_from(list(SchedulerClass)))
        spec = JobSpec(
            name=f"j{self.jobs}",
            owner=data.draw(st.sampled_from(["alice", "bob"])),
            scheduler=kind,
            resources=Resources(
                data.draw(st.sampled_from([500, 1000, 1500])),
                GI // 2,
                data.draw(st.sampled_from([0, 0, GI, 3 * GI])),
                gpu=data.draw(st.sampled_from([0, 0, 1, 2])),
            ),
            tasks=data.draw(st.integers(1, 4)),
            gang=data.draw(st.booleans()),
            anti_affinity=data.draw(st.booleans()),
            check=data.draw(st.sampled_from([None, TaskCheck(tcp=True)])),
            update=data.draw(
                st.sampled_from(
                    [None, UpdatePolicy(max_parallel=1), UpdatePolicy(max_parallel=2, canary=1)]
                )
            ),
        )
        self.apply(SubmitJob(f"j{self.jobs}", spec, at=self.at, id=f"submit-{self.jobs}"))

    def op_view(self, data):
        self.views.append({m.id: m.seqnum for m in self.cell.machine_list})

    def op_commit(self, data):
        pending = sorted(
            t.id
            for jid in self.cell.pending_jobs
            for t in self.cell.pending_tasks(self.cell.jobs[jid])
        )
        if not pending:
            return self.op_submit(data)
        view = data.draw(st.sampled_from(self.views[-3:]))
        mode = data.draw(st.sampled_from(list(TxnMode)))
        conflicts = data.draw(st.sampled_from(list(ConflictMode)))
        chosen = data.draw(st.lists(st.sampled_from(pending), min_size=1, max_size=6))
        machines = sorted(self.cell.machines)
        claims = []
        for tid in chosen:
            mid = data.draw(st.sampled_from([*machines, *machines, "ghost"]))
            victims: tuple[str, ...] = ()
            if (
                mid in self.cell.machines
                and self.cell.machines[mid].tasks
                and data.draw(st.booleans())
            ):
                victims = tuple(
                    data.draw(
                        st.lists(st.sampled_from(sorted(self.cell.machines[mid].tasks)), max_size=2)
                    )
                )
            seqnum = view.get(mid, 0) if conflicts is ConflictMode.COARSE else 0
            claims.append(Claim(tid, mid, seqnum, victims))
        # Replacements of placed tasks (beside, or in place stopping it first).
        replaceable = sorted(t.id for t in self.cell.tasks.values() if self.cell.replaceable(t))
        for _ in range(data.draw(st.integers(0, 3))):
            old = (
                self.cell.tasks[data.draw(st.sampled_from(replaceable))]
                if replaceable and data.draw(st.integers(0, 3))
                else self.draw_active(data)
            )
            if old is None:
                break
            mid = data.draw(st.sampled_from([*machines, old.machine]))
            victims = (old.id,) if mid == old.machine and data.draw(st.booleans()) else ()
            seqnum = view.get(mid, 0) if conflicts is ConflictMode.COARSE else 0
            claims.append(Claim(old.id, mid, seqnum, victims, replace=True))
        stops = []
        replaced = sorted(t.id for t in self.cell.tasks.values() if t.replaced_by is not None)
        for _ in range(data.draw(st.integers(0, 2))):
            task = (
                self.cell.tasks[data.draw(st.sampled_from(replaced))]
                if replaced and data.draw(st.booleans())
                else self.draw_active(data)
            )
            if task is not None:
                stops.append(Stop(task.id, data.draw(st.sampled_from(list(StopReason)))))
        txn = Transaction(
            "prop", tuple(claims), self.cell.version, mode, conflicts, stops=tuple(stops)
        )
        outcome = self.apply(Commit(txn, at=self.at))
        result = outcome.result
        assert isinstance(result, CommitResult)
        verdicts = result.accepted + sum(1 for r in result.rejected if r.machine)
        assert verdicts == len(claims), "a claim has no verdict"
        if conflicts is ConflictMode.FINE:
            assert all(r.reason != "victim_gone" for r in result.rejected), result
        # Stops and replacements retire tasks (reason `replaced`, `scaled`): no preemption.
        evicted = [
            e.task for e in outcome.events if isinstance(e, TaskEvicted) and e.reason == "preempted"
        ]
        assert sorted(evicted) == sorted(result.preempted), (evicted, result.preempted)
        self.op_view(data)

    def op_report(self, data):
        task = self.draw_active(data)
        if task is None:
            return
        state = data.draw(st.sampled_from(list(ReportedState)))
        incarnation = task.incarnation - data.draw(st.sampled_from([0, 0, 0, 1]))
        code = data.draw(st.sampled_from([0, 1])) if state is ReportedState.EXITED else None
        healthy = data.draw(st.sampled_from([None, True, False]))
        port = data.draw(st.sampled_from([None, None, 8080, 9090]))
        before = task.healthy, task.state, task.incarnation, task.port
        report = TaskReport(task.id, task.machine, incarnation, state, code, None, healthy, port)
        self.apply(ReportTasks((report,), at=self.at))
        # A port, as health, comes only from a running report on the current incarnation;
        # a (re)start or an eviction forgets it.
        if incarnation != before[2]:
            assert task.port == before[3]
        elif task.state is TaskState.RUNNING and port is not None:
            assert task.port == port
        elif task.state in (TaskState.STARTING, TaskState.PENDING) and task.state is not before[1]:
            assert task.port is None
        # Health comes only from a running report on the current incarnation, of
        # a job with a check; a (re)start or an eviction forgets it.
        if self.cell.jobs[task.job].spec.check is None:
            assert task.healthy is None
        elif incarnation != before[2]:
            assert task.healthy is before[0]
        elif task.state is TaskState.RUNNING and healthy is not None:
            assert task.healthy is healthy
        elif task.state in (TaskState.STARTING, TaskState.PENDING) and task.state is not before[1]:
            assert task.healthy is None

    def op_usage(self, data):
        task = self.draw_active(data)
        if task is None:
            return
        # Absurd fractions stand for reports a log written before the edge
        # refused them may still replay.
        fraction = data.draw(st.sampled_from([0.05, 0.5, 1.0, -3.0, 50.0]))
        usage = TaskUsage(
            task.id,
            task.incarnation,
            int(task.demand["cpu"] * fraction) or 1,
            int(task.demand["memory"] * fraction) or 1,
        )
        # Repeated reports let a reservation decay all the way, so that best-effort
        # tasks move in on what it gave back (and are squeezed when it grows again).
        for _ in range(data.draw(st.integers(1, 3))):
            self.clock += 200.0
            self.apply(ReportUsage((usage,), at=self.at))

    def op_machine_state(self, data):
        machine = data.draw(st.sampled_from(sorted(self.cell.machines)))
        state = data.draw(st.sampled_from(list(MachineState)))
        self.apply(SetMachineState(machine, state, at=self.at))
        if state is MachineState.UP:
            self.operator.pop(machine, None)
        else:
            self.operator[machine] = state

    def op_heartbeats(self, data):
        machines = sorted(self.cell.machines)
        silent = data.draw(st.lists(st.sampled_from(machines), unique=True, max_size=1))
        self.apply(Heartbeat(tuple(m for m in machines if m not in silent), at=self.at))
        self.clock += 30.0
        self.apply(ExpireHeartbeats(timeout=20.0, at=self.at))

    def draw_job(self, data):
        live = sorted(jid for jid, job in self.cell.jobs.items() if not job.killed)
        return self.cell.jobs[data.draw(st.sampled_from(live))] if live else None

    def op_update(self, data):
        job = self.draw_job(data)
        if job is None:
            return
        spec = attrs.evolve(
            job.spec,
            command=("v", str(data.draw(st.integers(0, 3)))),
            tasks=data.draw(st.sampled_from([job.spec.tasks, job.spec.tasks, 1, 5])),
        )
        self.apply(UpdateJob(job.id, spec, at=self.at))

    def op_lifecycle(self, data):
        job = self.draw_job(data)
        if job is None:
            return
        what = data.draw(st.sampled_from(["scale", "revert", "promote", "verdict", "drain"]))
        if what == "scale":
            self.apply(ScaleJob(job.id, data.draw(st.integers(0, 5)), at=self.at))
        elif what == "revert":
            self.apply(RevertJob(job.id, data.draw(st.integers(1, 3)), at=self.at))
        elif what == "promote":
            self.apply(PromoteJob(job.id, at=self.at))
        elif what == "verdict":
            state = data.draw(st.sampled_from([RolloutState.SUCCEEDED, RolloutState.FAILED]))
            version = job.rollout.version if job.rollout else job.spec_version
            self.apply(EndRollout(job.id, version, state, at=self.at))
        else:
            machine = data.draw(st.sampled_from(sorted(self.cell.machines)))
            deadline = data.draw(st.sampled_from([None, 0.0, 50.0]))
            out = self.apply(SetMachineState(machine, MachineState.DRAINING, self.at, "", deadline))
            if not isinstance(out.result, Error):
                self.operator[machine] = MachineState.DRAINING

    def op_kill(self, data):
        self.apply(
            KillJob(data.draw(st.sampled_from(sorted(self.cell.jobs) or ["none"])), at=self.at)
        )

    def op_purge(self, data):
        # Ended jobs forgotten (rules 9): whatever is left must keep every promise, and a
        # restored twin must agree (`twins_are_byte_identical`, `snapshot_round_trips`).
        ago = data.draw(st.sampled_from([0.0, 3.0, 10.0]))
        bound = data.draw(st.sampled_from([0, 1, 4]))
        self.apply(PurgeJobs(self.at - ago, max_tasks=bound, at=self.at))

    def op_remove(self, data):
        # Machines forgotten (rules 10): the rest move up a row, and copies must agree.
        # Mostly down ones (a removal of one that is not is refused whole).
        machines = sorted(self.cell.machines)
        down = [m for m in machines if self.cell.machines[m].state is MachineState.DOWN]
        pool = (
            st.sampled_from(down)
            if down and data.draw(st.booleans())
            else st.sampled_from(machines)
        )
        named = data.draw(st.lists(pool, min_size=1, max_size=2))
        if set(named) >= set(machines):
            return  # keep a machine, for the other steps to draw from
        outcome = self.apply(RemoveMachines(tuple(named), at=self.at))
        if not isinstance(outcome.result, Error):
            for machine in named:
                self.operator.pop(machine, None)
                self.overlays.pop(machine, None)

    def op_quota(self, data):
        cpu = data.draw(st.sampled_from([1000, 3000, 0, None]))
        gpu = data.draw(st.sampled_from([0, 1, 3]))
        limit = Resources(cpu, 64 * GI if cpu else 0, gpu=gpu) if cpu is not None else None
        owner = data.draw(st.sampled_from(["alice", "bob"]))
        self.apply(SetQuota(owner, Band.BATCH, limit, at=self.at))

    def op_weights(self, data):
        owner = data.draw(st.sampled_from(["alice", "bob", "Bad Owner"]))
        weight = data.draw(st.sampled_from([0.5, 1.0, 3.0, 0.0, -2.0]))
        self.apply(SetWeights({owner: weight}, at=self.at))

    def op_plan(self, data):
        """A planned submission: claims read at the machine's seqnum or a stale one;
        refused whole (nothing submitted, `apply` checks) or placed whole."""
        self.jobs += 1
        jid = f"j{self.jobs}"
        tasks = data.draw(st.integers(1, 3))
        spec = JobSpec(
            name=jid,
            owner=data.draw(st.sampled_from(["alice", "bob"])),
            scheduler=SchedulerClass.BATCH,
            resources=Resources(data.draw(st.sampled_from([500, 1500, 4000])), GI // 2),
            tasks=tasks,
        )
        claims = []
        for index in range(data.draw(st.integers(0, tasks))):
            machine = self.cell.machines[data.draw(st.sampled_from(sorted(self.cell.machines)))]
            stale = data.draw(st.sampled_from([0, 0, 0, 1]))
            claims.append(Claim(f"{jid}.{index}", machine.id, machine.seqnum - stale))
        self.apply(SubmitPlan(jid, spec, tuple(claims), at=self.at, id=f"plan-{self.jobs}"))

    # Weighted so that most steps commit, report and evict, which is where
    # the promises are at risk.
    OPS = (
        ["commit"] * 8
        + ["submit"] * 3
        + ["report"] * 4
        + ["usage"] * 3
        + ["view"] * 2
        + ["update", "lifecycle", "lifecycle"]
        + ["register", "machine_state", "heartbeats", "kill", "quota", "weights", "plan"]
        + ["purge", "remove", "label"]
    )

    @rule(data=st.data())
    def step(self, data):
        getattr(self, "op_" + data.draw(st.sampled_from(self.OPS)))(data)

    @invariant()
    def promises_hold(self):
        self.cell.check_invariants()
        for tid, task in self.cell.tasks.items():
            old = self.states.get(tid)
            if old is not None and old is not task.state:
                # One step may pass through several states (e.g. preempted
                # then placed again in one transaction is not possible, but
                # lost -> pending is direct), so check the direct move.
                assert task.state in TRANSITIONS[old] or (
                    old is TaskState.PENDING and task.state in ACTIVE_STATES
                ), f"{tid}: {old} -> {task.state}"
            self.states[tid] = task.state

    @invariant()
    def twins_are_byte_identical(self):
        assert self.cell.snapshot() == self.twin.snapshot()

    @invariant()
    def snapshot_round_trips(self):
        if self.cell.version % 7 == 0:
            blob = self.cell.snapshot()
            assert CellState.restore(blob).snapshot() == blob


TestCellProperties = CellMachine.TestCase
TestCellProperties.settings = settings(
    max_examples=120,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
