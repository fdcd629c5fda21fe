"""An agent's metrics for Prometheus, served at `GET /metrics` on its log server's address
(the `omega.agent` label of its machine; hollow agents serve no HTTP and so no metrics).

Gauges read at scrape from the agent's copy of the cell: `omega_agent_tasks{state}`, the
tasks placed on its machines by state, and `omega_agent_machines`. Counted as the agent's
executors report: `omega_agent_task_failures_total{reason}` (`oom`, `signal`, `unhealthy`,
`start_error`, ...: the reason code before any `:` detail), `omega_agent_oom_kills_total`,
`omega_agent_unhealthy_total` (running tasks whose health check verdict turned false),
`omega_agent_check_probes_total{kind,result}` (every health-check probe: `passed`, `failed`).
`omega_agent_request_seconds{what}`: time from a report, heartbeat, usage or register batch
to the cell's acknowledgement, retries included.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cellstate import ReportedState, TaskReport
from cellstore.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from agents.agent import Agent


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.failures = Counter(
            "omega_agent_task_failures",
            "Tasks reported failed, by reason code.",
            ["reason"],
            registry=self.registry,
        )
        self.oom_kills = Counter(
            "omega_agent_oom_kills", "Tasks killed for memory.", registry=self.registry
        )
        self.unhealthy = Counter(
            "omega_agent_unhealthy",
            "Running tasks whose health check verdict turned false.",
            registry=self.registry,
        )
        self.probes = Counter(
            "omega_agent_check_probes",
            "Health-check probes run on tasks, by kind and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "omega_agent_request_seconds",
            "Time until the cell acknowledged a batch, retries included.",
            ["what"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(self, agent: Agent) -> None:
        self.registry.register(_TaskGauges(agent))

    def probed(self, kind: str, passed: bool) -> None:
        self.probes.labels(kind, "passed" if passed else "failed").inc()

    def reported(self, report: TaskReport) -> None:
        if report.state is ReportedState.FAILED:
            reason = (report.reason or "unknown").split(":", 1)[0]
            self.failures.labels(reason).inc()
            if reason == "oom":
                self.oom_kills.inc()
        if report.healthy is False:
            self.unhealthy.inc()


class _TaskGauges(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        cell = self.agent.copy.cell
        counts: dict[str, int] = {}
        for machine_id in self.agent.machines:
            machine = cell.machines.get(machine_id)
            for task_id in machine.tasks if machine is not None else ():
                state = str(cell.tasks[task_id].state)
                counts[state] = counts.get(state, 0) + 1
        tasks = GaugeMetricFamily(
            "omega_agent_tasks", "Tasks placed on its machines, by state.", labels=["state"]
        )
        for state, n in sorted(counts.items()):
            tasks.add_metric([state], n)
        yield tasks
        yield GaugeMetricFamily(
            "omega_agent_machines", "Machines it runs.", value=len(self.agent.machines)
        )
