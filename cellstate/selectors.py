"""Label selectors in the `kubectl` syntax, matched against jobs' and machines' labels.

    team=ml,env!=prod          equality (`=` or `==`) and inequality
    zone in (a,b),tier notin (x)  set membership
    gpu,!spot                  the key exists / does not exist

Requirements are comma-separated and all must hold. A key or value is what a
cell's labels allow (letters, digits, `-_./`). `parse` raises `SelectorError`
naming the requirement it could not read; the CLI prints it and exits 2.

It lives with the cell's vocabulary, not the CLI's, because the CLI is not its only
reader.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping

import attrs

_WORD = r"[A-Za-z0-9][A-Za-z0-9_.\-/]*"
_VALUE = re.compile(_WORD)
_REQUIREMENT = re.compile(
    rf"""\s*(?:
        (?P<not>!)\s*(?P<absent>{_WORD})
      | (?P<key>{_WORD})\s*(?:
            (?P<op>==|!=|=)\s*(?P<value>{_WORD}|)
          | \s(?P<set>in|notin)\s*\((?P<values>[^()]*)\)
        )?
    )\s*(?:,|$)""",
    re.VERBOSE,
)


class SelectorError(ValueError):
    """A selector that does not parse; the message names the part."""


Labels = Mapping[str, str]


@attrs.frozen(slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def __call__(self, labels: Labels) -> bool:
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return value in self.values
        if self.op in ("!=", "notin"):
            return value not in self.values
        return (value is not None) == (self.op == "exists")


@attrs.frozen(slots=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def __call__(self, labels: Labels) -> bool:
        return all(requirement(labels) for requirement in self.requirements)


def parse(text: str) -> Selector:
    """`text` as a selector; the empty selector matches everything."""
    requirements: list[Requirement] = []
    position = 0
    text = text.strip()
    while position < len(text):
        found = _REQUIREMENT.match(text, position)
        if found is None or found.end() == position:
            rest = text[position:].split(",", 1)[0]
            raise SelectorError(
                f"selector {text!r}: cannot read {rest!r}: use key=value, key!=value, "
                "key in (a,b), key notin (a,b), key or !key"
            )
        requirements.append(_requirement(found))
        position = found.end()
    return Selector(tuple(requirements))


@functools.lru_cache(maxsize=4096)
def parsed(text: str) -> Selector:
    """`parse(text)` of a selector already known to parse (a job's `selector`),
    remembered: the cell reads it at every claim and a scheduler at every decision."""
    return parse(text)


def _requirement(found: re.Match[str]) -> Requirement:
    if found["absent"]:
        return Requirement(found["absent"], "!exists")
    key = found["key"]
    if found["op"]:
        op = "!=" if found["op"] == "!=" else "="
        return Requirement(key, op, frozenset({found["value"]}))
    if found["set"]:
        values = [v.strip() for v in found["values"].split(",")]
        # kubectl refuses an empty set, and a value no label can hold would match
        # nothing (or, after notin, everything) without a word.
        bad = next((v for v in values if not _VALUE.fullmatch(v)), None)
        if bad is not None:
            what = (
                f"the set after {found['set']} is empty"
                if values == [""]
                else f"{bad!r} cannot be a label value"
            )
            raise SelectorError(
                f"selector requirement {found.group().strip(' ,')!r}: {what}: give one or "
                "more values of letters, digits and -_./, comma-separated"
            )
        return Requirement(key, found["set"], frozenset(values))
    return Requirement(key, "exists")


def matcher(text: str) -> Callable[[Labels], bool]:
    """A predicate over labels for `text` (always true when `text` is empty)."""
    return parse(text) if text.strip() else lambda labels: True
