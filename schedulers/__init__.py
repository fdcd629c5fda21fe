"""omega-cell's schedulers: pure decision logic over a cell-state copy.

Import from here. Behind it, one concept per module: `table` (machines as
numpy columns, refreshed by changed rows), `context` (one decision's local
state), `feasible` (filters with reason codes), `rank` (scorers), `sample`
(relaxed randomisation), `select` (pack and spread), `preempt` (victims),
`stack` (each kind's policy), `core` (`SchedulerCore`), `contract` (what a
core's drivers rely on), `metrics` (figures) and `explain` (why a job is or
is not placed).
"""

from schedulers.contract import Core, CoreDecision
from schedulers.core import Decision, SchedulerCore, shard_of
from schedulers.explain import Explanation, JobMetric
from schedulers.metrics import SchedulerFigures
from schedulers.stack import Stack, stack_for
from schedulers.table import MachineTable, table_for

__all__ = [
    "Core",
    "CoreDecision",
    "Decision",
    "Explanation",
    "JobMetric",
    "MachineTable",
    "SchedulerCore",
    "SchedulerFigures",
    "Stack",
    "shard_of",
    "stack_for",
    "table_for",
]
