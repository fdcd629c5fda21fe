"""Workloads for the simulator: the cell, the job classes and their distributions.

A workload is read from a small TOML file (see `cellsim/presets/`), in the shape
of the Omega paper's lightweight simulator (EuroSys 2013, section 4): per job
class (batch, service), an interarrival-time distribution, and per job the
number of tasks, the task duration and the per-task cpu and memory, each drawn
from its own distribution; a cell of homogeneous or mixed machines; and an
initial utilisation made of long-running service tasks ("prefill": a target
share of cpu, or `[[cell.prefill_jobs]]`, a trace's jobs present at the start).

Every draw comes from a numpy `Generator` seeded from the run's seed, one
stream per job class, so adding a class or sampling more of one never shifts
another's numbers.

Distributions, written as TOML inline tables:

    { dist = "constant", value = 3 }
    { dist = "exponential", mean = 4.0 }
    { dist = "lognormal", median = 300, sigma = 1.5 }
    { dist = "uniform", low = 1, high = 10 }
    { dist = "empirical", values = [1, 10, 100], weights = [0.7, 0.2, 0.1] }

each with optional `min` and `max` (clipping). Numbers of tasks are rounded.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

GIB = 1 << 30
PRESETS = Path(__file__).resolve().parent / "presets"
CLASSES = ("batch", "service")


class WorkloadError(ValueError):
    """A workload file that cannot be used; the message names the field."""


@attrs.frozen(slots=True)
class Distribution:
    """One named distribution with its parameters, clipped to [low, high]."""

    kind: str
    params: tuple[tuple[str, Any], ...]
    low: float = -math.inf
    high: float = math.inf

    @classmethod
    def parse(cls, where: str, table: Any) -> Distribution:
        if isinstance(table, int | float):
            return cls("constant", (("value", float(table)),))
        if not isinstance(table, Mapping) or "dist" not in table:
            raise WorkloadError(f"{where}: expected a number or a table with 'dist'")
        params = {k: v for k, v in table.items() if k not in ("dist", "min", "max")}
        kind = table["dist"]
        need = _PARAMS.get(kind)
        if need is None:
            raise WorkloadError(f"{where}.dist: unknown {kind!r}; one of {sorted(_PARAMS)}")
        if set(params) != set(need):
            raise WorkloadError(f"{where}: {kind} takes {sorted(need)}, got {sorted(params)}")
        if kind == "empirical":
            values, weights = params["values"], params["weights"]
            if len(values) != len(weights) or not values or min(weights) < 0:
                raise WorkloadError(f"{where}: values and weights must be equal, non-empty lists")
        return cls(
            kind,
            tuple(sorted((k, _freeze(v)) for k, v in params.items())),
            float(table.get("min", -math.inf)),
            float(table.get("max", math.inf)),
        )

    def param(self, name: str) -> Any:
        return dict(self.params)[name]

    def sample(self, rng: np.random.Generator) -> float:
        p = dict(self.params)
        kind = self.kind
        if kind == "constant":
            value = float(p["value"])
        elif kind == "exponential":
            value = float(rng.exponential(p["mean"]))
        elif kind == "lognormal":
            value = float(rng.lognormal(math.log(p["median"]), p["sigma"]))
        elif kind == "uniform":
            value = float(rng.uniform(p["low"], p["high"]))
        else:
            weights = np.asarray(p["weights"], dtype=float)
            value = float(
                rng.choice(np.asarray(p["values"], dtype=float), p=weights / weights.sum())
            )
        return min(self.high, max(self.low, value))

    def mean(self) -> float:
        """The mean before clipping (used to size loads and prefill)."""
        p = dict(self.params)
        kind = self.kind
        if kind == "constant":
            return float(p["value"])
        if kind == "exponential":
            return float(p["mean"])
        if kind == "lognormal":
            return float(p["median"] * math.exp(p["sigma"] ** 2 / 2))
        if kind == "uniform":
            return (p["low"] + p["high"]) / 2
        weights = np.asarray(p["weights"], dtype=float)
        return float(np.dot(np.asarray(p["values"], dtype=float), weights / weights.sum()))

    def scaled(self, factor: float) -> Distribution:
        """The same shape with every value multiplied by `factor`."""
        scale = {"value", "mean", "median", "low", "high", "values"}
        params = tuple(
            (k, tuple(x * factor for x in v) if k == "values" else v * factor)
            if k in scale
            else (k, v)
            for k, v in self.params
        )
        return Distribution(self.kind, params, self.low * factor, self.high * factor)


_PARAMS = {
    "constant": ("value",),
    "exponential": ("mean",),
    "lognormal": ("median", "sigma"),
    "uniform": ("low", "high"),
    "empirical": ("values", "weights"),
}


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(slots=True)
class JobClass:
    """One class of jobs (the paper's batch or service workload)."""

    name: str
    interarrival: Distribution  # seconds between submissions
    tasks: Distribution  # tasks per job
    duration: Distribution  # seconds a task runs (one value per job)
    cpu: Distribution  # cores per task
    memory: Distribution  # GiB per task


@attrs.frozen(slots=True)
class MachineType:
    share: float
    cpu: float  # cores
    memory: float  # GiB


@attrs.frozen(slots=True)
class PrefillJob:
    """A job already running when the run starts (a trace's prefill), placed directly."""

    tasks: int
    cpu: float  # cores per task
    memory: float  # GiB per task
    duration: float | None  # seconds from the start; None: to the end of the run


@attrs.frozen(slots=True)
class Workload:
    name: str
    machines: int
    machine_types: tuple[MachineType, ...]
    domains: int
    prefill: float  # target share of cpu held by long-running service tasks
    prefill_job_tasks: int
    classes: tuple[JobClass, ...]
    think: tuple[tuple[str, float, float], ...]  # (class, t_job, t_task)
    prefill_jobs: tuple[PrefillJob, ...] = ()

    def job_class(self, name: str) -> JobClass:
        for job_class in self.classes:
            if job_class.name == name:
                return job_class
        raise KeyError(name)

    def think_time(self, name: str) -> tuple[float, float]:
        for cls, t_job, t_task in self.think:
            if cls == name:
                return t_job, t_task
        return 0.1, 0.005

    def with_rate(self, name: str, multiplier: float) -> Workload:
        """The same workload with class `name` arriving `multiplier` times as often."""
        classes = tuple(
            attrs.evolve(c, interarrival=c.interarrival.scaled(1.0 / multiplier))
            if c.name == name
            else c
            for c in self.classes
        )
        return attrs.evolve(self, classes=classes)

    def with_machines(self, machines: int) -> Workload:
        """The same workload on `machines` machines, arrivals scaled to keep the load."""
        factor = machines / self.machines
        scaled = attrs.evolve(self, machines=machines)
        for job_class in self.classes:
            scaled = scaled.with_rate(job_class.name, factor)
        return scaled

    def with_think(
        self, name: str, t_job: float | None = None, t_task: float | None = None
    ) -> Workload:
        base_job, base_task = self.think_time(name)
        think = (
            *tuple(item for item in self.think if item[0] != name),
            (name, base_job if t_job is None else t_job, base_task if t_task is None else t_task),
        )
        return attrs.evolve(self, think=tuple(sorted(think)))


def load(source: str | Path) -> Workload:
    """Read a workload from a TOML file, or a preset by name ('A', 'b', 'cluster_c')."""
    path = Path(source)
    if not path.suffix:
        key = str(source).lower()
        path = PRESETS / (key if key.startswith("cluster_") else f"cluster_{key}")
        path = path.with_suffix(".toml")
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WorkloadError(f"{path}: {exc}") from exc
    return parse(doc, name=path.stem)


def parse(doc: Mapping[str, Any], name: str = "workload") -> Workload:
    cell = doc.get("cell", {})
    types = cell.get("machine_types")
    if types:
        machine_types = tuple(
            MachineType(float(t["share"]), float(t["cpu"]), float(t["memory_gib"])) for t in types
        )
    else:
        machine_types = (
            MachineType(1.0, float(cell.get("cpu", 4.0)), float(cell.get("memory_gib", 16.0))),
        )
    classes = []
    for cls in CLASSES:
        table = doc.get("jobs", {}).get(cls)
        if table is None:
            continue
        where = f"jobs.{cls}"
        classes.append(
            JobClass(
                cls,
                *(
                    Distribution.parse(f"{where}.{field}", table.get(field))
                    for field in ("interarrival", "tasks", "duration", "cpu", "memory_gib")
                ),
            )
        )
    think = tuple(
        sorted(
            (cls, float(t.get("t_job", 0.1)), float(t.get("t_task", 0.005)))
            for cls, t in doc.get("schedulers", {}).items()
        )
    )
    prefill_jobs = []
    for i, table in enumerate(cell.get("prefill_jobs", ())):
        where = f"cell.prefill_jobs[{i}]"
        try:
            job = PrefillJob(
                int(table["tasks"]),
                float(table["cpu"]),
                float(table["memory_gib"]),
                None if table.get("duration") is None else float(table["duration"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkloadError(
                f"{where}: needs tasks, cpu, memory_gib (numbers) and may have duration: {exc}"
            ) from exc
        if job.tasks < 1 or job.cpu <= 0 or job.memory <= 0:
            raise WorkloadError(f"{where}: tasks, cpu and memory_gib must be above 0")
        prefill_jobs.append(job)
    return Workload(
        name=str(doc.get("name", name)),
        machines=int(cell.get("machines", 1000)),
        machine_types=machine_types,
        domains=int(cell.get("domains", 20)),
        prefill=float(cell.get("prefill_utilisation", 0.0)),
        prefill_job_tasks=int(cell.get("prefill_job_tasks", 50)),
        classes=tuple(classes),
        think=think,
        prefill_jobs=tuple(prefill_jobs),
    )
