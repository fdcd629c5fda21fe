"""Prometheus metrics: the `/metrics` endpoint every process serves, and a replica's figures.

Each process keeps its own `CollectorRegistry` (never the library's global one,
so two replicas in one test process do not collide) and serves it in the text
exposition format at `GET /metrics`, behind the same bearer token as every
other endpoint (`metrics_endpoint`). Figures that already live somewhere (Raft's
term and indexes, the watch feed's subscribers, a scheduler's counters) are read
at scrape time by a collector, so nothing is counted twice; what exists nowhere
else (request counts, commit latency) is counted here as it happens.

A replica's metrics, all prefixed `omega_replica_`: `raft_term`, `raft_leader`
(1 on the leader), `raft_commit_index`, `raft_applied_index`, `raft_log_entries`,
`version` (the cell's), `watchers`, `commands_in_flight`, `commit_seconds`
(histogram, one sample per command batch a client sent), `requests_total{route,
method,code}` and `request_seconds{route}`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from cellstore.http import Request, Response, Router

if TYPE_CHECKING:
    from cellstore.api import Replica

METRICS = "/metrics"
# Commits wait on Raft: sub-millisecond alone, up to seconds in a failover.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def metrics_endpoint(router: Router, registry: CollectorRegistry) -> None:
    """Serve `registry` at `GET /metrics` on `router`."""

    async def metrics(request: Request) -> Response:
        return Response(
            200, generate_latest(registry), [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        )

    router.add("GET", METRICS, metrics)


class ReadAtScrape(Collector):
    """A collector of gauges read from live objects when Prometheus scrapes."""

    def __init__(self, read: Callable[[], Iterator[GaugeMetricFamily]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._read()


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class ReplicaMetrics:
    """One replica's registry: Raft and feed gauges read at scrape, requests and commit
    latency counted as they happen (`observe_request`, `observe_commit`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "omega_replica_requests",
            "HTTP requests answered, by route, method and status code.",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "omega_replica_request_seconds",
            "Time to answer a request (streams: until their first byte), by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "omega_replica_commit_seconds",
            "Time from handing commands to Raft to their results, per batch.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(self, replica: Replica) -> None:
        """Read `replica`'s Raft and feed figures at every scrape."""
        self.registry.register(ReadAtScrape(lambda: _replica_gauges(replica)))

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        self.requests.labels(route, method, str(code)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_commit(self, started: float) -> None:
        self.commit_seconds.observe(time.perf_counter() - started)


def _replica_gauges(replica: Replica) -> Iterator[GaugeMetricFamily]:
    raft: dict[str, Any] = replica.raft.raft_status()
    yield gauge("omega_replica_raft_term", "Raft term.", raft["term"] or 0)
    yield gauge("omega_replica_raft_leader", "1 if this replica leads.", int(raft["is_leader"]))
    yield gauge("omega_replica_raft_ready", "1 once Raft is ready.", int(raft["ready"]))
    yield gauge("omega_replica_raft_commit_index", "Raft commit index.", raft["commit_index"] or 0)
    yield gauge(
        "omega_replica_raft_applied_index",
        "Raft index last applied here.",
        raft["last_applied_index"] or 0,
    )
    yield gauge("omega_replica_raft_log_entries", "Raft log entries kept.", raft["log_entries"])
    yield gauge("omega_replica_version", "State version.", replica.raft.current_version())
    yield gauge("omega_replica_watchers", "Open watch streams.", replica.feed.subscribers)
    yield gauge("omega_replica_commands_in_flight", "Commands in Raft.", replica.gateway.in_flight)
