"""Label selectors (the kubectl syntax) and the CLI's human units, without a cell."""

from __future__ import annotations

import re

import pytest

from cellstate.selectors import SelectorError, matcher, parse
from omega.units import human, human_bytes, human_cpu, used_of

LABELS = {"team": "ml", "env": "dev", "zone": "a"}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("", True),
        ("team=ml", True),
        ("team==ml", True),
        ("team=web", False),
        ("team=ml,env!=prod", True),
        ("team=ml,env!=dev", False),
        ("zone in (a, b)", True),
        ("zone notin (a,b)", False),
        ("region notin (x)", True),  # an absent key is not in any set
        ("gpu", False),
        ("!gpu", True),
        ("team,!gpu,zone in (a)", True),
        ("env!=prod", True),
        ("region!=x", True),
    ],
)
def test_selectors_match_as_kubectl_does(text, matches):
    assert matcher(text)(LABELS) is matches


@pytest.mark.parametrize("text", ["=x", "team=ml,,", "team in a,b", "team=(x)", "!"])
def test_a_bad_selector_names_the_part_it_cannot_read(text):
    with pytest.raises(SelectorError, match="cannot read"):
        parse(text)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("team in ()", "the set after in is empty"),
        ("team notin ( )", "the set after notin is empty"),
        ("team in (a b)", "'a b' cannot be a label value"),
        ("env=dev,team notin (ml,,web)", "'' cannot be a label value"),
        ("team in (!ml)", "'!ml' cannot be a label value"),
    ],
)
def test_a_set_with_nothing_a_label_can_hold_is_refused(text, says):
    # Such a set matched nothing (after `in`) or everything (after `notin`), and
    # `omega kill -l` acts on what matches.
    with pytest.raises(SelectorError, match=re.escape(says)):
        parse(text)


def test_quantities_read_as_people_write_them():
    assert human_bytes(6171023 * 1024) == "5.9Gi"  # was shown as 6171023Ki
    assert human_bytes(64 << 20) == "64Mi"
    assert human_bytes(512) == "512"
    assert human_cpu(1500) == "1.5" and human_cpu(500) == "500m" and human_cpu(4000) == "4"
    used = {"cpu": "500m", "cpu_milli": 500, "memory": "64Mi", "memory_bytes": 64 << 20}
    capacity = {"cpu_milli": 2000, "memory_bytes": 6171023 * 1024, "gpu": 2}
    assert used_of(used, capacity, "memory") == "64Mi/5.9Gi"
    assert used_of(used, capacity, "cpu") == "500m/2"
    assert human(capacity, "gpu") == "2"
