"""Resource vectors and the human units people write them in.

A resource vector has one integer per dimension: cpu in millicores and memory
in bytes. Integers keep arithmetic exact, so every replica and every scheduler
copy agrees to the byte on what fits. People write `500m`, `0.5` or `2` for
cpu and `256Mi`, `1Gi`, `1.5G` or a byte count for memory; `parse_cpu` and
`parse_memory` turn those into integers and name what they refuse.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

DIMENSIONS: tuple[str, ...] = ("cpu", "memory")

# Larger than any machine we model (1M cores, 1 PiB), small enough to keep
# sums of a whole cell far from float-lossy territory in numpy.
MAX_CPU_MILLI = 1_000_000_000
MAX_MEMORY_BYTES = 1 << 50

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


def parse_cpu(value: Any) -> int:
    """Return millicores for `500m`, `0.5`, `2` or a number of cores.

    Raises UnitError for anything else, for zero, and for values beyond
    MAX_CPU_MILLI.
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
    return _bounded("cpu", value, int(milli), MAX_CPU_MILLI)


def parse_memory(value: Any) -> int:
    """Return bytes for `256Mi`, `1Gi`, `1.5G`, `512k` or a byte count.

    Raises UnitError for anything else, for zero, and beyond MAX_MEMORY_BYTES.
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
    return _bounded("memory", value, int(amount), MAX_MEMORY_BYTES)


def _bounded(dimension: str, raw: Any, amount: int, limit: int) -> int:
    if amount <= 0:
        raise UnitError(f"{dimension} {raw!r} must be greater than zero")
    if amount > limit:
        raise UnitError(f"{dimension} {raw!r} is larger than the maximum {limit}")
    return amount


def _positive(bound: int):
    def check(instance: Any, attribute: attrs.Attribute, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{attribute.name} must be an integer, got {value!r}")
        if not 0 < value <= bound:
            raise UnitError(f"{attribute.name} must be in 1..{bound}, got {value}")

    return check


@attrs.frozen(slots=True)
class Resources:
    """A resource vector: cpu in millicores, memory in bytes, both positive."""

    cpu: int = attrs.field(validator=_positive(MAX_CPU_MILLI))
    memory: int = attrs.field(validator=_positive(MAX_MEMORY_BYTES))

    def as_tuple(self) -> tuple[int, int]:
        return (self.cpu, self.memory)

    def fits_in(self, other: Resources) -> bool:
        return self.cpu <= other.cpu and self.memory <= other.memory

    def human(self) -> str:
        return f"cpu={format_cpu(self.cpu)} memory={format_memory(self.memory)}"


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
