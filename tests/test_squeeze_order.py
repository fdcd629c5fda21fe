"""Best-effort victims are chosen in an order every copy of the cell must agree on, across
releases too: the task-id tie-break `_Descending` must order ids exactly as the tuple of
negated code points that earlier releases used."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cellstate.state import _Descending

ids = st.text(alphabet="ab.-19é", min_size=1, max_size=8)


def _old_key(text: str) -> tuple[int, ...]:
    return tuple(-ord(ch) for ch in text)


@given(ids, ids)
def test_the_tie_break_orders_two_ids_as_before(a: str, b: str) -> None:
    assert (_Descending(a) < _Descending(b)) == (_old_key(a) < _old_key(b))


@given(st.lists(ids, unique=True, max_size=30))
def test_the_tie_break_sorts_ids_as_before(texts: list[str]) -> None:
    assert sorted(texts, key=_Descending) == sorted(texts, key=_old_key)
