"""Label selectors (the kubectl syntax) and the CLI's human units, without a cell."""

from __future__ import annotations

import pytest

from omega.selectors import SelectorError, matcher, parse
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
