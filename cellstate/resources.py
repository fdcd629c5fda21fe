"""Resource vectors over named dimensions, and the human units people write them in.

A resource vector maps dimension names to integers: cpu in millicores, memory
and disk in bytes, and any number of countable devices (`gpu`, `fpga`, any
name matching `DEVICE_RE`) as counts. Integers keep arithmetic exact, so every
replica and every scheduler copy agrees to the byte on what fits.

`DIMENSIONS` is the one table of the cell's named dimensions: how each is
parsed and printed, its bound, and whether it is *reclaimable*. cpu and memory
are: best-effort tasks may run on what other tasks reserve but do not use
(Borg's reclamation). Every other dimension, disk and devices alike, is held
exclusively: never reclaimed, never overcommitted. Adding a dimension is one
entry here; the ledger, the wire format and the schedulers' table all iterate
over vectors and this table.

People write `500m`, `0.5` or `2` for cpu, `256Mi`, `1Gi`, `1.5G` or a byte
count for memory and disk, and a whole number for devices; the parsers turn
those into integers and name what they refuse.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

# Larger than any machine we model (1M cores, 1 PiB), small enough to keep
# sums of a whole cell far from float-lossy territory in numpy.
MAX_CPU_MILLI = 1_000_000_000
MAX_MEMORY_BYTES = 1 << 50
MAX_DISK_BYTES = MAX_MEMORY_BYTES
MAX_DEVICES = 1 << 20
MAX_DEVICE_KINDS = 32  # in one vector
# In one cell, across machines, jobs and quotas: the ledger gives every kind a
# field of its packed vectors, so their number bounds the vectors' width.
MAX_CELL_DEVICE_KINDS = 64
DEVICE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")

_MEMORY_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "p": 10**15,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
    "ti": 1 << 40,
    "pi": 1 << 50,
}
_MEMORY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtpKMGTP][iI]?)?[bB]?\s*$")
_CPU_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(m?)\s*$")


class UnitError(ValueError):
    """A resource quantity that cannot be read; the message says what is allowed."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_cpu(value: Any, zero: bool = False) -> int:
    """Return millicores for `500m`, `0.5`, `2` or a number of cores.

    Raises UnitError for anything else, for zero (unless `zero`: a quota's limit may be
    none), and for values beyond MAX_CPU_MILLI.
    """
    if _is_number(value):
        milli = Decimal(str(value)) * 1000
    elif isinstance(value, str) and (match := _CPU_RE.match(value)):
        number, unit = match.groups()
        milli = Decimal(number) if unit == "m" else Decimal(number) * 1000
    else:
        raise UnitError(
            f"cpu {value!r} is not a quantity: use cores (2, 0.5) or millicores ('500m')"
        )
    if milli != milli.to_integral_value():
        raise UnitError(f"cpu {value!r} is finer than one millicore")
    return _bounded("cpu", value, int(milli), MAX_CPU_MILLI, zero)


def parse_memory(value: Any, zero: bool = False) -> int:
    """Return bytes for `256Mi`, `1Gi`, `1.5G`, `512k` or a byte count.

    Raises UnitError for anything else, for zero (unless `zero`), and beyond
    MAX_MEMORY_BYTES.
    """
    if _is_number(value):
        amount = Decimal(str(value))
    elif isinstance(value, str) and (match := _MEMORY_RE.match(value)):
        number, suffix = match.groups()
        try:
            amount = Decimal(number) * _MEMORY_SUFFIXES[(suffix or "").lower()]
        except (InvalidOperation, KeyError) as exc:  # pragma: no cover - regex guards
            raise UnitError(f"memory {value!r} is not a quantity") from exc
    else:
        raise UnitError(
            f"memory {value!r} is not a quantity: use bytes or a suffix "
            "(k, M, G, T, Ki, Mi, Gi, Ti), e.g. '256Mi'"
        )
    if amount != amount.to_integral_value():
        raise UnitError(f"memory {value!r} is not a whole number of bytes")
    return _bounded("memory", value, int(amount), MAX_MEMORY_BYTES, zero)


def parse_disk(value: Any, zero: bool = False) -> int:
    """Return bytes of disk, written as memory is (`10Gi`, `500M`, a byte count)."""
    try:
        return parse_memory(value, zero)
    except UnitError as exc:
        raise UnitError(str(exc).replace("memory", "disk", 1)) from None


def parse_count(value: Any, name: str = "device", zero: bool = False) -> int:
    """Return a whole number of devices: `2` or `'2'`."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if type(value) is not int:
        raise UnitError(f"{name} {value!r} is not a count: use a whole number of devices, e.g. 2")
    return _bounded(name, value, value, MAX_DEVICES, zero)


def _bounded(dimension: str, raw: Any, amount: int, limit: int, zero: bool = False) -> int:
    if amount < 0 and zero:
        raise UnitError(f"{dimension} {raw!r} must be 0 or more")
    if amount <= 0 and not zero:
        raise UnitError(f"{dimension} {raw!r} must be greater than zero")
    if amount > limit:
        raise UnitError(f"{dimension} {raw!r} is larger than the maximum {limit}")
    return amount


@attrs.frozen(slots=True)
class Dimension:
    """One named resource dimension: how it is read and printed, and its rules."""

    name: str
    # (value, zero=False): zero is refused unless asked for (a quota's limit may be none).
    parse: Callable[..., int]
    format: Callable[[int], str]
    limit: int
    # Reclaimable dimensions lend what regular tasks reserve but do not use to
    # best-effort tasks; all others are held exclusively.
    reclaimable: bool = False
    # The unit of the integer, as read models name it (`cpu_milli`, `memory_bytes`).
    unit: str = "count"


def format_cpu(milli: int) -> str:
    return f"{milli // 1000}" if milli % 1000 == 0 else f"{milli}m"


def format_memory(size: int) -> str:
    for suffix, unit in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    for suffix, unit in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20)):
        if size >= unit:
            return f"{size / unit:.1f}{suffix}"
    return str(size)


DIMENSIONS: dict[str, Dimension] = {
    "cpu": Dimension("cpu", parse_cpu, format_cpu, MAX_CPU_MILLI, True, "milli"),
    "memory": Dimension("memory", parse_memory, format_memory, MAX_MEMORY_BYTES, True, "bytes"),
    "disk": Dimension("disk", parse_disk, format_memory, MAX_DISK_BYTES, False, "bytes"),
}
RECLAIMABLE: frozenset[str] = frozenset(d.name for d in DIMENSIONS.values() if d.reclaimable)
# Dimensions every job and every machine must state (the rest default to none).
REQUIRED = ("cpu", "memory")


def dimension(name: str) -> Dimension:
    """The named dimension; any other name matching `DEVICE_RE` is a countable device.

    Raises UnitError for a name that is neither."""
    known = DIMENSIONS.get(name)
    if known is not None:
        return known
    if not isinstance(name, str) or not DEVICE_RE.match(name):
        raise UnitError(
            f"{name!r} is not a resource: use {', '.join(DIMENSIONS)}, or a device name "
            f"matching {DEVICE_RE.pattern} (e.g. gpu)"
        )
    return Dimension(name, functools.partial(parse_count, name=name), str, MAX_DEVICES)


def parse_declaration(text: str, zero: bool = False) -> tuple[str, int]:
    """`NAME=AMOUNT` as a machine declares one of its dimensions (`gpu=2`,
    `disk=100Gi`), or with `zero` a quota limits one (`gpu=0`: none); raises UnitError
    naming what is wrong."""
    name, sep, amount = text.partition("=")
    if not sep or not name:
        raise UnitError(f"{text!r} is not NAME=AMOUNT, e.g. gpu=2 or disk=100Gi")
    return name, dimension(name).parse(amount, zero=zero)


def _order(name: str) -> tuple[int, str]:
    # Named dimensions in table order, then devices by name: one canonical
    # order, so equal vectors serialise to equal bytes.
    return (list(DIMENSIONS).index(name), "") if name in DIMENSIONS else (len(DIMENSIONS), name)


class _Amounts:
    """What `Resources` and `Limit` read alike from their `amounts`."""

    __slots__ = ()
    amounts: dict[str, int]

    def devices(self) -> dict[str, int]:
        return {k: v for k, v in self.amounts.items() if k not in DIMENSIONS}

    def human(self) -> str:
        return " ".join(f"{name}={format_amount(name, v)}" for name, v in self.amounts.items())


@attrs.frozen(slots=True, init=False)
class Resources(_Amounts):
    """A resource vector: a positive integer per dimension it names, none for the rest.

    `Resources(500, 256 << 20, gpu=1)` or `Resources.of({"cpu": 500, ...})`.
    `amounts` holds only positive entries, in canonical order; never mutate it
    (the cell shares it between a job's tasks)."""

    amounts: dict[str, int]

    def __init__(self, cpu: int = 0, memory: int = 0, disk: int = 0, **devices: int) -> None:
        raw = {"cpu": cpu, "memory": memory, "disk": disk, **devices}
        self.__attrs_init__(_canonical(raw))

    @classmethod
    def of(cls, amounts: Mapping[str, int]) -> Resources:
        """A vector from a mapping of dimension name to integer amount."""
        made = object.__new__(cls)
        made.__attrs_init__(_canonical(amounts))
        return made

    @property
    def cpu(self) -> int:
        return self.amounts.get("cpu", 0)

    @property
    def memory(self) -> int:
        return self.amounts.get("memory", 0)

    @property
    def disk(self) -> int:
        return self.amounts.get("disk", 0)

    def get(self, name: str) -> int:
        return self.amounts.get(name, 0)

    def items(self) -> Iterator[tuple[str, int]]:
        return iter(self.amounts.items())


@attrs.frozen(slots=True)
class Limit(_Amounts):
    """A quota's limit: an amount per dimension it names, zero included (none of it may be
    taken); a dimension it does not name is unlimited. `Resources` drops zeros, which here
    would turn "none" into "unlimited". `Limit.of({"cpu": 64_000, "gpu": 0})`."""

    amounts: dict[str, int]

    @classmethod
    def of(cls, amounts: Mapping[str, int]) -> Limit:
        return cls(_canonical(amounts, keep_zero=True))


def _canonical(raw: Mapping[str, Any], keep_zero: bool = False) -> dict[str, int]:
    if len(raw) > len(DIMENSIONS) + MAX_DEVICE_KINDS:
        raise UnitError(f"at most {MAX_DEVICE_KINDS} kinds of device")
    out = {}
    for name, amount in raw.items():
        dim = dimension(name)
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError(f"{name} must be an integer, got {amount!r}")
        if not 0 <= amount <= dim.limit:
            raise UnitError(f"{name} must be in 0..{dim.limit}, got {amount}")
        if amount or keep_zero:
            out[name] = amount
    return dict(sorted(out.items(), key=lambda item: _order(item[0])))


def format_amount(name: str, amount: int) -> str:
    """An amount of dimension `name` as people write it (`500m`, `2Gi`, `2`)."""
    known = DIMENSIONS.get(name)
    return known.format(amount) if known is not None else str(amount)
