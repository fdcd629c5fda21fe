"""omega-cell's virtual-time simulator (issue 7; Omega paper, EuroSys 2013, section 4).

It drives the real `cellstate.CellState` and the real
`schedulers.core.SchedulerCore` with a workload generator parameterised like
the paper's lightweight simulator, and measures job wait time, scheduler
busyness and conflict fraction the paper's way.

    python -m cellsim tjob --preset B --days 1 --out out/sim

Modules: `workload` (TOML presets and distributions), `engine` (the event
loop), `metrics` (the paper's definitions), `experiments` (the sweeps, CSV and
plots), `__main__` (the command line).
"""

from cellsim.engine import SchedulerSetup, SimResult, Simulation, omega_schedulers, simulate
from cellsim.experiments import EXPERIMENTS, run_experiment
from cellsim.workload import Workload, WorkloadError, load

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
