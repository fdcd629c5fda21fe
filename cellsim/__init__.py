"""omega-cell's virtual-time simulator (issue 7; Omega paper, EuroSys 2013, section 4).

It drives the real `cellstate.CellState` and the real
`schedulers.core.SchedulerCore` with a workload generator parameterised like
the paper's lightweight simulator, and measures job wait time, scheduler
busyness and conflict fraction the paper's way.

    python -m cellsim tjob --preset B --days 1 --out out/sim

Modules: `workload` (TOML presets and distributions), `engine` (the event
loop), `metrics` (the paper's definitions), `experiments` (the sweeps, CSV and
plots), `options` (the command line's flags, for `python -m cellsim` and
`omega bench conflicts` both), `__main__` (the command line).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cellsim.engine import SchedulerSetup, SimResult, Simulation, omega_schedulers, simulate
    from cellsim.experiments import EXPERIMENTS, run_experiment
    from cellsim.workload import Workload, WorkloadError, load

# The names below load on first use (PEP 562), not with the package: `omega` builds the
# `bench conflicts` command from the light `cellsim.options` at every start, and importing
# the engine (the cell state, the scheduler core, numpy) would add ~0.6 s to `omega jobs`.
_HOMES = {
    "SchedulerSetup": "cellsim.engine",
    "SimResult": "cellsim.engine",
    "Simulation": "cellsim.engine",
    "omega_schedulers": "cellsim.engine",
    "simulate": "cellsim.engine",
    "EXPERIMENTS": "cellsim.experiments",
    "run_experiment": "cellsim.experiments",
    "Workload": "cellsim.workload",
    "WorkloadError": "cellsim.workload",
    "load": "cellsim.workload",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'cellsim' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)


__all__ = [
    "EXPERIMENTS",
    "SchedulerSetup",
    "SimResult",
    "Simulation",
    "Workload",
    "WorkloadError",
    "load",
    "omega_schedulers",
    "run_experiment",
    "simulate",
]
