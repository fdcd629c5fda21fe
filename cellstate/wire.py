"""Wire formats: how commands, results, events and specs become JSON and back.

Two cattrs converters, one per format:
- `edge`: strict, for anything a person or a client sends (HTTP bodies, job
  spec files). Unknown fields, wrong types, bad units and out-of-range values
  are refused with a `SpecError` naming the field path and what is allowed.
  It accepts human units (`500m`, `256Mi`) and band names for priorities.
- `internal`: lean, for data already validated once and now moving inside the
  cell (Raft log entries, the watch feed, snapshots). It skips detailed
  validation, which would be paid again on every replica and every copy.

Both write the same canonical JSON (cpu as millicores with its unit, `"500m"`,
memory in bytes, a `type` tag on every command, result and event), so either
one reads what the other wrote.
"""

from __future__ import annotations

import enum
import shlex
from collections.abc import Callable
from typing import Any, TypeVar, cast

import attrs
import cattrs
import orjson
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    is_mapping,
    is_sequence,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.orjson import make_converter
from cattrs.strategies import configure_tagged_union

from cellstate.commands import (
    COMMAND_TYPES,
    Command,
    Error,
    Event,
    JobKilled,
    JobPurged,
    JobSubmitted,
    JobUpdated,
    MachineChanged,
    MachineLabeled,
    MachineRemoved,
    Ok,
    Outcome,
    ReportedState,
    Result,
    RolloutChanged,
    Stale,
    TaskEvicted,
    TaskHealthChanged,
    TaskPlaced,
    TaskReport,
    TaskStateChanged,
    TaskUsage,
)
from cellstate.model import (
    BAND_NAMES,
    MAX_TASKS_PER_JOB,
    Band,
    Claim,
    CommitResult,
    ConflictMode,
    FieldError,
    HealthCheck,
    JobSpec,
    MachineState,
    Rejection,
    RestartPolicy,
    Role,
    RolloutState,
    SchedulerClass,
    StopReason,
    TaskState,
    TxnMode,
    new_claim,
)
from cellstate.resources import (
    MAX_CPU_MILLI,
    MAX_MEMORY_BYTES,
    Limit,
    Resources,
    UnitError,
    dimension,
)

MAX_BODY_BYTES = 8 << 20
V = TypeVar("V", Resources, Limit)
_ENUMS = (
    Band,
    SchedulerClass,
    MachineState,
    TaskState,
    RestartPolicy,
    TxnMode,
    ConflictMode,
    ReportedState,
    RolloutState,
    StopReason,
    Role,
)

_COMMAND_TAGS = {cls: name for name, cls in COMMAND_TYPES.items()}
_RESULT_TAGS = {Ok: "ok", Error: "error", CommitResult: "commit", Stale: "stale"}
_EVENT_TAGS = {
    MachineChanged: "machine_changed",
    JobSubmitted: "job_submitted",
    JobKilled: "job_killed",
    TaskPlaced: "task_placed",
    TaskStateChanged: "task_state_changed",
    TaskEvicted: "task_evicted",
    TaskHealthChanged: "task_health_changed",
    JobUpdated: "job_updated",
    RolloutChanged: "rollout_changed",
    JobPurged: "job_purged",
    MachineRemoved: "machine_removed",
    MachineLabeled: "machine_labeled",
}


class SpecError(ValueError):
    """Input refused at the edge. `field` is a JSON path (`$.spec.tasks`)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.message = message
        self.field = field

    def as_error(self) -> Error:
        return Error(self.code, self.message, self.field)


# -- strict scalars for the edge ---------------------------------------------------


def _strict_int(value: Any, _: type) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {_describe(value)}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if type(value) not in (int, float):
        raise TypeError(f"expected a number, got {_describe(value)}")
    return float(value)


def _strict_str(value: Any, _: type) -> str:
    if type(value) is not str:
        # YAML reads a bare true, no, on or 1.0 as a boolean or a number: the usual slip in
        # a spec file's command or labels.
        scalar = isinstance(value, bool | int | float)
        hint = f" (quote it: '{orjson.dumps(value).decode()}')" if scalar else ""
        raise TypeError(f"expected a string, got {_describe(value)}{hint}")
    return value


def _strict_bool(value: Any, _: type) -> bool:
    if type(value) is not bool:
        raise TypeError(f"expected true or false, got {_describe(value)}")
    return value


def _only(
    kind: Any, expected: str, inner: Callable[[Any, Any], Any], cl: Any
) -> Callable[[Any, type], Any]:
    """`inner` (a structure hook for `cl`) for values of `kind` only; anything else is
    refused saying what was `expected` and what came."""

    def structure(value: Any, _: type) -> Any:
        if not isinstance(value, kind):
            raise TypeError(f"expected {expected}, got {_describe(value)}")
        return inner(value, cl)

    return structure


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}"


def _human_vector(
    make: Callable[[dict[str, int]], V], zero: bool = False
) -> Callable[[Any, type], V]:
    """The edge's hook for a vector (`Resources.of`, or `Limit.of` with `zero`: a quota may
    limit a dimension to none) written in human units."""

    def structure(value: Any, _: type) -> V:
        if not isinstance(value, dict):
            raise TypeError(
                f"expected a mapping of resource to amount (cpu, memory, disk, devices such as "
                f"gpu), got {_describe(value)}"
            )
        amounts = {}
        for name, raw in value.items():
            try:
                amounts[name] = dimension(name).parse(raw, zero=zero)
            except UnitError as exc:
                raise FieldError(str(name), str(exc)) from None
        try:
            return make(amounts)
        except UnitError as exc:
            raise ValueError(str(exc)) from None

    return structure


def _vector_to_wire(vector: Resources | Limit) -> dict[str, Any]:
    # cpu is written as millicores with its unit ("500m"): a bare number in a
    # spec means cores, so the canonical form must not be a bare number.
    out: dict[str, Any] = dict(vector.amounts)
    if "cpu" in out:
        out["cpu"] = f"{out['cpu']}m"
    return out


def _vector_from_wire(make: Callable[[dict[str, int]], V]) -> Callable[[Any, type], V]:
    def structure(value: dict[str, Any], _: type) -> V:
        amounts = dict(value)
        if "cpu" in amounts:
            amounts["cpu"] = int(amounts["cpu"][:-1])
        return make(amounts)

    return structure


def _checked_usage(usage: TaskUsage) -> TaskUsage:
    """A usage report from an agent: measured amounts are never negative nor
    beyond what any machine could have."""
    for name, bound in (("cpu", MAX_CPU_MILLI), ("memory", MAX_MEMORY_BYTES)):
        amount = getattr(usage, name)
        if not 0 <= amount <= bound:
            raise FieldError(name, f"{amount} is out of range: a measured {name} is 0..{bound}")
    return usage


def _checked_report(report: TaskReport) -> TaskReport:
    """An agent's report: a port, when it says one, is one a task can listen on."""
    if report.port is not None and not 0 < report.port < 65536:
        raise FieldError("port", f"{report.port} is not a port: a task declares one in 1..65535")
    return report


def _strict_enum(cls: type[enum.Enum]) -> Callable[[Any, type], Any]:
    allowed = ", ".join(str(member.value) for member in cls)

    def structure(value: Any, _: type) -> Any:
        if issubclass(cls, int) and type(value) is str:
            try:
                return cls[value.upper().replace("-", "_")]
            except KeyError:
                pass
        try:
            if type(value) in (str, int):
                return cls(value)
        except ValueError:
            pass
        raise ValueError(f"{value!r} is not allowed: use one of {allowed}")

    return structure


def _claim_from_wire(value: Any, _: type) -> Claim:
    replace: Any = False
    if isinstance(value, list | tuple):
        if len(value) not in (4, 5):
            raise ValueError("a claim is [task, machine, seqnum, victims] or [..., replace]")
        task, machine, seqnum, victims = value[:4]
        if len(value) == 5:
            replace = value[4]
    elif isinstance(value, dict):
        extra = set(value) - {"task", "machine", "seqnum", "victims", "replace"}
        if extra:
            raise ValueError(f"unknown claim field {sorted(extra)[0]!r}")
        task, machine = value.get("task"), value.get("machine")
        seqnum, victims = value.get("seqnum", 0), value.get("victims", [])
        replace = value.get("replace", False)
    else:
        raise TypeError(f"expected a claim, got {_describe(value)}")
    if type(task) is not str or type(machine) is not str:
        raise TypeError("claim task and machine must be strings")
    if type(seqnum) is not int:
        raise TypeError("claim seqnum must be an integer")
    if not isinstance(victims, list | tuple) or any(type(v) is not str for v in victims):
        raise TypeError("claim victims must be a list of task ids")
    if type(replace) is not bool:
        raise TypeError("claim replace must be true or false")
    return new_claim(task, machine, seqnum, tuple(victims), replace)


def _claim_to_wire(claim: Claim) -> list[Any]:
    # A plain claim keeps the four columns it had before replacements existed.
    row = [claim.task, claim.machine, claim.seqnum, list(claim.victims)]
    if claim.replace:
        row.append(True)
    return row


def _check_exec_strings(spec: JobSpec) -> None:
    """Refuse what no process can be started with: an environment name that is empty or
    holds '=', and a NUL byte in a name, a value or an argument (the command's or the
    check's). An agent could only fail the task at its start."""
    for name, value in spec.env.items():
        if not name or "=" in name or "\0" in name:
            raise FieldError(
                f"env[{name!r}]", "a variable's name must not be empty nor hold '=' or a NUL byte"
            )
        if "\0" in value:
            raise FieldError(f"env[{name!r}]", "a variable's value must not hold a NUL byte")
    argvs = [("command", spec.command)]
    if spec.check is not None and spec.check.exec:
        argvs.append(("check.exec", spec.check.exec))
    for field, argv in argvs:
        for i, arg in enumerate(argv):
            if "\0" in arg:
                raise FieldError(f"{field}[{i}]", "an argument must not hold a NUL byte")


def _make(edge: bool) -> cattrs.Converter:
    conv = make_converter(detailed_validation=edge, forbid_extra_keys=edge)
    # cpu is written as millicores with its unit ("500m"): a bare number in a
    # spec means cores, so the canonical form must not be a bare number.
    conv.register_unstructure_hook(Resources, _vector_to_wire)
    conv.register_unstructure_hook(Limit, _vector_to_wire)
    conv.register_unstructure_hook(Claim, _claim_to_wire)
    conv.register_structure_hook(Claim, _claim_from_wire)
    # What a rejection lost to is written only when known, so results of
    # cells before rules 4 keep their bytes and their size; results without
    # it decode with None.
    conv.register_unstructure_hook(
        Rejection, make_dict_unstructure_fn(Rejection, conv, _cattrs_omit_if_default=True)
    )
    # A report's port (rules 13) is written only when said, so every report of an older
    # log, and every report without one, keeps its bytes.
    conv.register_unstructure_hook(
        TaskReport,
        make_dict_unstructure_fn(TaskReport, conv, port=override(omit_if_default=True)),
    )
    # Who sent a command (rules 6) is written only when known, so commands a
    # leader issues itself, and every command of an older log, keep their bytes.
    for command_class in COMMAND_TYPES.values():
        conv.register_unstructure_hook(
            command_class,
            make_dict_unstructure_fn(command_class, conv, by=override(omit_if_default=True)),
        )
    if edge:
        scalar_hooks: tuple[tuple[type, Callable[[Any, type], Any]], ...] = (
            (int, _strict_int),
            (float, _strict_float),
            (str, _strict_str),
            (bool, _strict_bool),
        )
        for scalar, hook in scalar_hooks:
            conv.register_structure_hook(scalar, hook)

        def objects_only(cl: type) -> Any:
            inner: Callable[[Any, type], Any] = make_dict_structure_fn(
                cl, conv, _cattrs_forbid_extra_keys=True
            )
            fields = ", ".join(a.name for a in attrs.fields(cl))
            return _only(dict, f"an object with fields {fields}", inner, cl)

        conv.register_structure_hook_factory(attrs.has, objects_only)

        def lists_only(cl: Any) -> Any:
            # cattrs iterates whatever it is given: a string where a list belongs became its
            # characters, so a token for machines "hollow-*" was bound to h, o, ... and *.
            origin = getattr(cl, "__origin__", cl)
            made = homogenous_tuple_structure_factory if origin is tuple else list_structure_factory
            return _only(list | tuple, "a list", made(cl, conv), cl)

        def mappings_only(cl: Any) -> Any:
            inner = mapping_structure_factory(cl, conv)
            return _only(dict, "a mapping (key: value)", inner, cl)

        conv.register_structure_hook_factory(is_sequence, lists_only)
        conv.register_structure_hook_factory(is_mapping, mappings_only)
        conv.register_structure_hook(Resources, _human_vector(Resources.of))
        conv.register_structure_hook(Limit, _human_vector(Limit.of, zero=True))
        plain_report = objects_only(TaskReport)
        conv.register_structure_hook(
            TaskReport, lambda v, _: _checked_report(plain_report(v, TaskReport))
        )
        plain_usage = objects_only(TaskUsage)
        conv.register_structure_hook(
            TaskUsage, lambda v, _: _checked_usage(plain_usage(v, TaskUsage))
        )
        for kind in _ENUMS:
            conv.register_structure_hook(kind, _strict_enum(kind))
        spec_hook = objects_only(JobSpec)

        def structure_spec(value: Any, _: type) -> JobSpec:
            if isinstance(value, dict):
                value = dict(value)
                if isinstance(value.get("priority"), str):
                    name = value["priority"]
                    try:
                        value["priority"] = int(Band.parse(name)) * 100
                    except KeyError:
                        raise ValueError(
                            f"priority {name!r} is not a band: use one of "
                            f"{', '.join(BAND_NAMES)} or a number"
                        ) from None
                if isinstance(value.get("command"), str):
                    value["command"] = shlex.split(value["command"])
            spec: JobSpec = spec_hook(value, JobSpec)
            # Refused here, where a person sends a spec, not by `JobSpec` itself: a log
            # written before these checks may hold such a spec, and must still replay.
            _check_exec_strings(spec)
            if not spec.tasks:
                # Only a scale takes a job to zero (rules 11): older releases read no spec
                # of none, and a job submitted with none would be idle from the start.
                raise FieldError(
                    "tasks",
                    f"must be in 1..{MAX_TASKS_PER_JOB}, got 0 (`omega scale JOB 0` keeps a "
                    "running job, idle, with none)",
                )
            if spec.spread is not None and spec.scheduler is not SchedulerClass.SERVICE:
                raise FieldError(
                    "spread",
                    f"only the service scheduler spreads a job's tasks; this job's is "
                    f"{spec.scheduler.value}: drop spread, or use scheduler: service",
                )
            return spec

        conv.register_structure_hook(JobSpec, structure_spec)
        check_hook = objects_only(HealthCheck)

        def structure_check(value: Any, _: type) -> HealthCheck:
            # A string command is split as a shell would (as a job's `command`),
            # never iterated into one-character arguments.
            if isinstance(value, dict) and isinstance(value.get("exec"), str):
                value = {**value, "exec": shlex.split(value["exec"])}
            return check_hook(value, HealthCheck)

        conv.register_structure_hook(HealthCheck, structure_check)
    else:
        conv.register_structure_hook(Resources, _vector_from_wire(Resources.of))
        conv.register_structure_hook(Limit, _vector_from_wire(Limit.of))
    configure_tagged_union(Command, conv, tag_generator=_COMMAND_TAGS.__getitem__, tag_name="type")
    configure_tagged_union(Result, conv, tag_generator=_RESULT_TAGS.__getitem__, tag_name="type")
    configure_tagged_union(Event, conv, tag_generator=_EVENT_TAGS.__getitem__, tag_name="type")
    return conv


edge = _make(edge=True)
internal = _make(edge=False)


# -- the edge ---------------------------------------------------------------------


def parse(data: Any, cls: Any, path: str = "$") -> Any:
    """Structure untrusted `data` into `cls` with the strict converter.

    Raises SpecError naming the first offending field path and what is allowed.
    """
    if cls is Command:
        _check_envelope(data, path)
    try:
        return edge.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, UnitError, KeyError) as exc:
        field, message = _first_error(exc, path)
        raise SpecError("invalid", message, field) from None


def _check_envelope(data: Any, path: str) -> None:
    allowed = ", ".join(COMMAND_TYPES)
    if not isinstance(data, dict):
        raise SpecError("invalid", f"a command is a JSON object, got {_describe(data)}", path)
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in COMMAND_TYPES:
        raise SpecError(
            "invalid", f"type {kind!r} is not a command: use one of {allowed}", f"{path}.type"
        )


def _first_error(exc: BaseException, path: str) -> tuple[str, str]:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        keys = ", ".join(sorted(exc.extra_fields))
        allowed = ", ".join(a.name for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else ""
        return path, f"unknown field {keys}" + (f" (allowed: {allowed})" if allowed else "")
    if isinstance(exc, cattrs.ClassValidationError | cattrs.IterableValidationError):
        with_notes, _ = exc.group_exceptions()
        for inner, note in with_notes:
            step = f".{note.name}" if hasattr(note, "name") else f"[{note.index!r}]"
            if getattr(note, "name", None) is None and hasattr(note, "index"):
                step = f"[{note.index!r}]"
            return _first_error(inner, path + step)
        for inner in exc.exceptions:
            return _first_error(inner, path)
    if isinstance(exc, FieldError):
        # An empty field is the record's own rule across its fields (a check's
        # "exactly one of exec, http, tcp"): the path is the record's.
        return (f"{path}.{exc.field}" if exc.field else path), str(exc)
    if isinstance(exc, KeyError):
        return path, f"required field {exc.args[0]!r} is missing"
    if isinstance(exc, cattrs.BaseValidationError):
        for inner in exc.exceptions:
            return _first_error(inner, path)
    message = str(exc)
    if message.startswith("__init__() missing"):
        return path, message.replace("__init__() missing", "missing")
    return path, message


def parse_json(body: bytes, cls: Any) -> Any:
    """Parse a JSON document from a client into `cls`; SpecError if it is not."""
    if len(body) > MAX_BODY_BYTES:
        raise SpecError("too_large", f"body is {len(body)} bytes; at most {MAX_BODY_BYTES}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SpecError("malformed_json", f"body is not JSON: {exc}") from None
    return parse(data, cls)


# -- inside the cell ---------------------------------------------------------------

# The unions as `structure` targets. cattrs structures a union through its tagged-union hook,
# but to a type checker a union alias is a value of `types.UnionType`, not a `type[T]` (until
# PEP 747's TypeForm): the casts name the union `structure` returns.
COMMAND = cast("type[Command]", Command)
RESULT = cast("type[Result]", Result)


def encode_command(command: Command) -> bytes:
    return orjson.dumps(internal.unstructure(command, Command))


def decode_command(data: bytes | str) -> Command:
    return internal.structure(orjson.loads(data), COMMAND)


def encode_result(result: Result) -> bytes:
    return orjson.dumps(internal.unstructure(result, Result))


def decode_result(data: bytes | str) -> Result:
    return internal.structure(orjson.loads(data), RESULT)


def outcome_to_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "version": outcome.version,
        "result": internal.unstructure(outcome.result, Result),
        "events": [internal.unstructure(e, Event) for e in outcome.events],
    }


def to_json(value: Any, cls: Any = None) -> Any:
    return internal.unstructure(value, cls) if cls is not None else internal.unstructure(value)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
