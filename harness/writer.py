"""A steady writer and who-leads probes for partition tests and benchmarks on a replicated
store: the writer submits one job at a time through `StoreClient` (the path agents and
schedulers use) and records when each was acknowledged, so the longest stall across a fault
can be read off afterwards."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import trio

from cellstore.client import StoreClient
from harness.cluster import LocalCluster


def leaders(cluster: LocalCluster, replicas: list[int]) -> list[tuple[int, int] | None]:
    """(leader index, term) as each of `replicas` sees it; None if it does not answer."""
    seen: list[tuple[int, int] | None] = []
    for i in replicas:
        status = cluster.status(i, timeout=0.5)
        api = (status or {}).get("leader", {}).get("api")
        seen.append((cluster.api.index(api), status["term"]) if status and api else None)
    return seen


def agreed_leader(cluster: LocalCluster, replicas: list[int], timeout: float = 10.0) -> int:
    """The leader `replicas` all name, once they name the same one of themselves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = leaders(cluster, replicas)
        named = {s[0] for s in seen if s}
        if None not in seen and len(named) == 1 and named <= set(replicas):
            return named.pop()
        time.sleep(0.05)
    raise AssertionError(f"no agreed leader among {replicas}: {leaders(cluster, replicas)}")


class Writer:
    """Submits one job at a time through `StoreClient` (the path agents and schedulers use),
    recording when each was acknowledged. It is given replica `first` first, so that is where
    it writes until that replica fails it."""

    def __init__(self, cluster: LocalCluster, first: int) -> None:
        self.cluster = cluster
        self.addresses = [cluster.api[first]] + [a for i, a in enumerate(cluster.api) if i != first]
        self.acked: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=trio.run, args=(self._run,), daemon=True)

    async def _run(self) -> None:
        async with StoreClient(
            self.addresses, self.cluster.token, retry_deadline_s=60, ca=self.cluster.ca
        ) as c:
            n = 0
            while not self.stop.is_set():
                job = f"w-{n}"
                [result] = await c.commands([submit_job(job)])
                assert result["result"] == {"type": "ok"}, result
                self.acked.append((time.monotonic(), job))
                n += 1

    def longest_stall(self, since: float, until: float) -> float:
        """The longest time between acknowledgements (or the ends) from `since` to `until`."""
        times = [since, *(t for t, _ in list(self.acked) if since < t < until), until]
        return max(b - a for a, b in itertools.pairwise(times))


def submit_job(job: str) -> dict[str, Any]:
    spec = {
        "name": job,
        "owner": "test",
        "scheduler": "batch",
        "tasks": 1,
        "resources": {"cpu": "10m", "memory": "1Mi"},
        "command": ["true"],
    }
    return {"type": "submit_job", "job": job, "spec": spec}
