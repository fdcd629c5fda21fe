"""Job spec files: YAML, TOML or JSON on disk, read into a typed `JobSpec`.

Every error names the file, the field path inside it and what is allowed, so
a person can fix the file without reading code.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import yaml

from cellstate import JobSpec, SpecError
from cellstate.wire import parse

MAX_SPEC_BYTES = 1 << 20


class SpecFileError(Exception):
    """A spec file that cannot become a job; `str()` is the message to print."""

    def __init__(self, path: Path, message: str, field: str | None = None) -> None:
        where = f"{path}: {field}" if field else str(path)
        super().__init__(f"{where}: {message}")
        self.path = path
        self.field = field
        self.message = message


class _DuplicateKey(ValueError):
    """A mapping that names one key twice: YAML and JSON parsers keep the last silently."""


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (`cpu: 1` then
    `cpu: 2` would otherwise mean 2, with no word said)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise _DuplicateKey(f"line {mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"key {key!r} is given twice in one object")
        out[key] = value
    return out


def read_document(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecFileError(path, f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecFileError(path, f"is {len(raw)} bytes; a spec is at most {MAX_SPEC_BYTES}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            return yaml.load(raw, Loader=_StrictLoader)  # a SafeLoader: builds plain data only
        if suffix == ".toml":
            return tomllib.loads(raw.decode())
        if suffix == ".json":
            return json.loads(raw, object_pairs_hook=_unique_pairs)
    except (
        yaml.YAMLError,
        tomllib.TOMLDecodeError,
        json.JSONDecodeError,
        UnicodeDecodeError,
        _DuplicateKey,
    ) as exc:
        raise SpecFileError(path, f"is not valid {suffix[1:].upper()}: {exc}") from None
    raise SpecFileError(path, f"unknown format {suffix!r}: use .yaml, .yml, .toml or .json")


def load_spec(path: Path, owner: str | None = None) -> JobSpec:
    """Read a job spec file. `owner` fills in a spec that names none."""
    document = read_document(path)
    if not isinstance(document, dict):
        raise SpecFileError(path, "must be a mapping of job fields", "$")
    if "owner" not in document:
        document = {**document, "owner": owner or default_owner()}
    try:
        return parse(document, JobSpec)
    except SpecError as exc:
        raise SpecFileError(path, exc.message, exc.field) from None


def default_owner() -> str:
    name = os.environ.get("OMEGA_OWNER") or os.environ.get("USER") or "default"
    cleaned = "".join(ch for ch in name.lower() if ch.isalnum() or ch in "-_")
    return cleaned if cleaned[:1].isalpha() else "default"
