"""omega-cell's cell state: the deterministic, transactional truth of a cell.

Import from here; the modules behind it are `model` (records and specs),
`commands` (what changes the state, and what it answers), `commit` (the
optimistic transaction protocol), `state` (`CellState`), `snapshot` and
`wire` (serialised forms) and `resources` (units).
"""

from cellstate.commands import (
    Command,
    Commit,
    Error,
    Event,
    ExpireHeartbeats,
    Heartbeat,
    JobKilled,
    JobSubmitted,
    KillJob,
    MachineChanged,
    Ok,
    Outcome,
    RegisterMachines,
    ReportedState,
    ReportTasks,
    ReportUsage,
    Result,
    SetMachineState,
    SetQuota,
    Stale,
    SubmitJob,
    TaskEvicted,
    TaskPlaced,
    TaskReport,
    TaskStateChanged,
    TaskUsage,
)
from cellstate.invariants import InvariantViolation
from cellstate.model import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Band,
    Claim,
    CommitResult,
    ConflictMode,
    Job,
    JobSpec,
    JobState,
    Machine,
    MachineSpec,
    MachineState,
    Rejection,
    RestartPolicy,
    SchedulerClass,
    Task,
    TaskState,
    Transaction,
    TxnMode,
    task_id,
)
from cellstate.resources import Resources, parse_cpu, parse_memory
from cellstate.state import CellConfig, CellState
from cellstate.wire import SpecError

__all__ = [
    "ACTIVE_STATES", "TERMINAL_STATES", "Band", "CellConfig", "CellState", "Claim", "Command",
    "Commit", "CommitResult", "ConflictMode", "Error", "Event", "ExpireHeartbeats", "Heartbeat",
    "InvariantViolation", "Job", "JobKilled", "JobSpec", "JobState", "JobSubmitted", "KillJob",
    "Machine", "MachineChanged", "MachineSpec", "MachineState", "Ok", "Outcome",
    "RegisterMachines", "Rejection", "ReportTasks", "ReportUsage", "ReportedState", "Resources",
    "RestartPolicy", "Result", "SchedulerClass", "SetMachineState", "SetQuota", "SpecError",
    "Stale", "SubmitJob", "Task", "TaskEvicted", "TaskPlaced", "TaskReport", "TaskState",
    "TaskStateChanged", "TaskUsage", "Transaction", "TxnMode", "parse_cpu", "parse_memory",
    "task_id",
]
