"""Quantities as people read them in tables: `5.9Gi`, `1.5` cores, `500m`, `1 task`.

The read models carry exact figures (`memory_bytes`, `cpu_milli`, and strings
such as `6171023Ki` that round-trip); a table wants them short. `human`
rounds to at most one decimal in the largest binary unit for bytes, and to
cores (or millicores below one) for cpu; devices are counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_BINARY = (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10))


def count(n: int, noun: str) -> str:
    """`1 task`, `3 tasks`: a number and its noun, plural unless one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def human_bytes(size: int) -> str:
    for suffix, unit in _BINARY:
        if size >= unit:
            return f"{_short(size / unit)}{suffix}"
    return str(size)


def human_cpu(milli: int) -> str:
    if 0 < milli < 1000:
        return f"{milli}m"
    return _short(milli / 1000)


def _short(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0") if value < 100 else f"{value:.0f}"


def human(view: Mapping[str, Any], dim: str) -> str:
    """Dimension `dim` of a read model's resource vector (`cellstate.views.resources`)."""
    if dim == "cpu":
        return human_cpu(int(view.get("cpu_milli", 0)))
    if f"{dim}_bytes" in view or dim in ("memory", "disk"):
        return human_bytes(int(view.get(f"{dim}_bytes", 0)))
    return str(view.get(dim, 0))


def used_of(used: Mapping[str, Any], capacity: Mapping[str, Any], dim: str) -> str:
    """`used/capacity` of one dimension, e.g. `64Mi/5.9Gi`."""
    return f"{human(used, dim)}/{human(capacity, dim)}"


def dimensions(view: Mapping[str, Any]) -> list[str]:
    """The dimensions a resource vector names, without the exact-figure twins."""
    return [d for d in view if not d.endswith(("_milli", "_bytes"))]
