"""Where an experiment's points run: in this process, in local worker processes, or on a
Dask cluster.

An experiment is a list of independent simulations (its *points*), each fully seeded by
its own arguments, so they may run anywhere and in any order: the rows are gathered
back in the order the points were made, and the CSV is the same byte for byte whichever
executor ran them. `executor(jobs, cluster)` picks one:

- `cluster` given: an existing Dask distributed scheduler at that address (`dask
  scheduler` / `dask worker ...`), for sweeps that outgrow one machine; its workers must
  have this package installed (the same version, or the rows will not be the same);
- else `jobs` > 1 (default: the local cores): a `ProcessPoolExecutor` of `jobs` processes;
- else (or for one point): in this process, one after another.

Every executor has `submit(point) -> handle` with `handle.result()`, and `close()`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol

import attrs

from cellsim.engine import CoreFactory, SchedulerSetup, Simulation
from cellsim.workload import Workload


@attrs.frozen
class Point:
    """One simulation of a sweep: everything it needs, picklable."""

    workload: Workload
    schedulers: tuple[SchedulerSetup, ...]
    days: float
    seed: int
    core_factory: CoreFactory | None = None


@attrs.frozen
class PointResult:
    rows: list[dict[str, object]]
    figures: dict[str, dict[str, Any]]
    stats: dict[str, float]
    wall_s: float  # wall time of the run where it ran: progress only, never in the CSV


def run_point(point: Point) -> PointResult:
    """Run one point (in whichever process the executor chose)."""
    began = time.perf_counter()
    sim = Simulation(
        point.workload,
        point.schedulers,
        days=point.days,
        seed=point.seed,
        core_factory=point.core_factory,
    )
    result = sim.run()
    return PointResult(result.rows, result.figures, result.stats, time.perf_counter() - began)


class Handle(Protocol):
    def result(self) -> PointResult: ...


class Executor(Protocol):
    name: str

    def submit(self, point: Point) -> Handle: ...

    def close(self) -> None: ...


class _Done:
    def __init__(self, value: PointResult) -> None:
        self.value = value

    def result(self) -> PointResult:
        return self.value


class _Lazy:
    """A point run in this process when its result is first asked for, so that an
    experiment that stops early (batch-load) runs no more than it reads."""

    def __init__(self, point: Point) -> None:
        self.point: Point | None = point
        self.value: PointResult | None = None

    def result(self) -> PointResult:
        if self.value is None:
            assert self.point is not None
            self.value, self.point = run_point(self.point), None
        return self.value


class InProcess:
    name = "in-process"

    def submit(self, point: Point) -> Handle:
        return _Lazy(point)

    def close(self) -> None:
        pass


class LocalProcesses:
    def __init__(self, jobs: int) -> None:
        self.name = f"{jobs} local processes"
        self.pool = ProcessPoolExecutor(max_workers=jobs)

    def submit(self, point: Point) -> Future[PointResult]:
        return self.pool.submit(run_point, point)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class DaskCluster:
    """An existing Dask distributed cluster (`distributed.Client(address)`)."""

    def __init__(self, address: str, timeout_s: float = 30.0) -> None:
        from distributed import Client  # only when asked for: it is heavy to import

        self.name = f"dask cluster {address}"
        self.client = Client(address, timeout=timeout_s, set_as_default=False)

    def submit(self, point: Point) -> Handle:
        # `pure=False`: two equal points (a sweep may repeat one) are two runs, not one.
        future: Handle = self.client.submit(run_point, point, pure=False)
        return future

    def close(self) -> None:
        self.client.close()


def default_jobs() -> int:
    """The local cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not every platform has it
        return os.cpu_count() or 1


def executor(jobs: int | None = None, cluster: str | None = None) -> Executor:
    """The executor for `jobs` local processes (None: one per core) or a Dask `cluster`."""
    if cluster:
        return DaskCluster(cluster)
    count = default_jobs() if jobs is None else jobs
    return LocalProcesses(count) if count > 1 else InProcess()


def run_all(points: Sequence[Point], runner: Executor) -> list[PointResult]:
    """Run `points` on `runner`; their results in the points' order."""
    handles = [runner.submit(p) for p in points]
    return [h.result() for h in handles]
