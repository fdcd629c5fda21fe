"""A live scheduler's figures in Prometheus form, read from the process at each scrape.

Served at `GET /metrics` next to `GET /v1/metrics` (the same figures as JSON) when the
scheduler runs with `--metrics HOST:PORT`. Every series carries `scheduler` (its name) and
`kind`. Counters: `omega_scheduler_transactions_total`, `..._conflicted_transactions_total`,
`..._conflict_free_transactions_total`, `..._claims_attempted_total`,
`..._claims_accepted_total`, `..._preemptions_total`, `..._claims_spilled_total` (claims
sent outside its own share of the machines, `schedulers.avoid`), `..._conflicts_total{reason}` (claims
rejected by the store, by its reason code), `..._conflicts_by_rival_total{rival}` (by who
last changed the machine: a scheduler's name, `agent`, `operator`...). Gauges:
`..._conflict_fraction` (conflicted per conflict-free transaction, the Omega paper's; NaN
while every transaction conflicted), `..._claim_conflict_fraction` (rejected per claim),
`..._hot_machine_conflicts{machine}` (rejected claims on its hottest machines),
`..._busyness`, `..._partition_machines` (its own share), `..._pending_tasks` (pending tasks of jobs it owns,
in its copy), `..._blocked_jobs`, `..._version` (its copy's). Histogram:
`omega_scheduler_decision_seconds` (one sample per decision). The figures themselves are
counted once, in `schedulers.metrics`; this only renders them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cellstate import TaskState
from schedulers.metrics import HOT_MACHINES, Samples, hottest

if TYPE_CHECKING:
    from schedulers.process import LiveScheduler


class SchedulerCollector(Collector):
    def __init__(self, scheduler: LiveScheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        live = self.scheduler
        figures = live.core.figures
        names = ["scheduler", "kind"]
        values = [live.config.name, str(live.config.kind)]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"omega_scheduler_{name}", doc, labels=names)
            family.add_metric(values, value)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"omega_scheduler_{name}", doc, labels=names)
            family.add_metric(values, value)
            return family

        yield counter("transactions", "Transactions whose result came back.", figures.transactions)
        yield counter(
            "conflicted_transactions",
            "Transactions with claims and at least one rejection.",
            figures.conflicted_transactions,
        )
        yield counter(
            "conflict_free_transactions",
            "Transactions with claims and no rejection.",
            figures.conflict_free_transactions,
        )
        yield counter("claims_attempted", "Claims sent.", figures.claims_attempted)
        yield counter("claims_accepted", "Claims accepted.", figures.claims_accepted)
        yield counter("preemptions", "Tasks preempted by its claims.", figures.preemptions)
        yield counter(
            "claims_spilled",
            "Claims sent to machines of another scheduler's share (its own lacked room).",
            figures.claims_spilled,
        )
        conflicts = CounterMetricFamily(
            "omega_scheduler_conflicts",
            "Claims rejected by the store, by reason.",
            labels=[*names, "reason"],
        )
        for reason, n in sorted(figures.conflicts_by_reason.items()):
            conflicts.add_metric([*values, reason], n)
        yield conflicts
        rivals = CounterMetricFamily(
            "omega_scheduler_conflicts_by_rival",
            "Claims rejected, by who last changed the machine.",
            labels=[*names, "rival"],
        )
        for rival, n in sorted(figures.conflicts_by_rival.items()):
            rivals.add_metric([*values, rival], n)
        yield rivals
        hot = GaugeMetricFamily(
            "omega_scheduler_hot_machine_conflicts",
            f"Claims rejected on its {HOT_MACHINES} hottest machines.",
            labels=[*names, "machine"],
        )
        for machine, n in hottest(figures.conflicts_by_machine).items():
            hot.add_metric([*values, machine], n)
        yield hot
        yield gauge(
            "conflict_fraction",
            "Conflicted per conflict-free transaction (the Omega paper's).",
            figures.conflict_fraction,
        )
        yield gauge(
            "claim_conflict_fraction",
            "Claims rejected per claim sent.",
            figures.claim_conflict_fraction,
        )
        yield gauge("busyness", "Share of time spent deciding.", live.figures()["busyness"])
        yield gauge(
            "partition_machines",
            "Machines in its own share at its last decision (conflict avoidance).",
            figures.partition_machines,
        )
        yield gauge("pending_tasks", "Pending tasks of the jobs it owns.", _pending(live))
        yield gauge("blocked_jobs", "Jobs parked with an explanation.", len(figures.blocked))
        yield gauge("version", "Its copy's cell version.", live.copy.version)
        yield _histogram(
            "omega_scheduler_decision_seconds",
            "Time per decision.",
            names,
            values,
            figures.decision_seconds,
        )


def _pending(live: LiveScheduler) -> int:
    cell, core = live.copy.cell, live.core
    total = 0
    for job_id in cell.pending_jobs:
        job = cell.jobs[job_id]
        if not job.killed and core.owns(job):
            total += job.counts.get(TaskState.PENDING, 0)
    return total


def _histogram(
    name: str, doc: str, names: list[str], values: list[str], samples: Samples
) -> HistogramMetricFamily:
    """A histogram of `samples`, counted in its buckets as they came."""
    buckets = [
        (str(b), n) for b, n in zip((*samples.bounds, "+Inf"), samples.cumulative(), strict=True)
    ]
    family = HistogramMetricFamily(name, doc, labels=names)
    family.add_metric(values, buckets, samples.total)
    return family


def registry_of(scheduler: LiveScheduler) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SchedulerCollector(scheduler))
    return registry
