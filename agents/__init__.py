"""Agents: run the tasks the cell places on a machine.

This package holds the machine side that needs no store: `limits` (probing
and applying cgroup v2 / v1 / rlimit limits), `executor` (real processes:
start, stop with grace, restart with back-off, usage, recovery after an
agent restart), `hollow` (the same interface with simulated run times), and
`task` (the spec, back-off and report types they share). The agent loop that
registers, heartbeats and watches the store is built on top of these.
"""

from agents.executor import Executor, RecoveredTask, open_executor, recover
from agents.hollow import HollowExecutor, TimerHeap
from agents.limits import LimitKind, LimitsMode, probe_limits, release_agent_cgroups
from agents.task import Backoff, TaskSpec

__all__ = [
    "Backoff",
    "Executor",
    "HollowExecutor",
    "LimitKind",
    "LimitsMode",
    "RecoveredTask",
    "TaskSpec",
    "TimerHeap",
    "open_executor",
    "probe_limits",
    "recover",
    "release_agent_cgroups",
]
