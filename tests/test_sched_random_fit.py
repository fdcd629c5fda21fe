"""The random-fit policy (the Omega paper simulator's): a machine drawn at random among
those with room, per task, against a real CellState."""

from __future__ import annotations

import numpy as np
import pytest

from cellstate import SchedulerClass
from schedulers.select import random_fit
from tests.cellfixtures import GI, cell_with, commit, submit
from tests.schedfixtures import core, placements, step

BATCH = SchedulerClass.BATCH


def test_random_fit_never_exceeds_room_and_places_what_fits():
    rng = np.random.default_rng(3)
    rows = np.arange(10, 20)
    fit = np.array([0, 1, 0, 3, 0, 0, 2, 0, 0, 1])
    sel, counts = random_fit(rows, fit, 100, rng)
    assert dict(zip(sel.tolist(), counts.tolist(), strict=True)) == {11: 1, 13: 3, 16: 2, 19: 1}
    sel, counts = random_fit(rows, fit, 4, rng)
    assert counts.sum() == 4 and all(counts <= fit[sel - 10])


def test_random_fit_spreads_where_best_fit_packs():
    """Best fit puts 8 one-core tasks on 2 four-core machines; random fit, drawing each
    task's machine among the 200 with room, almost never puts two on one."""
    cell = cell_with(machines=200, cpu=4000, memory=16 * GI)
    submit(cell, "job", tasks=8, cpu=1000)
    _, result = step(core(BATCH, policy="random-fit"), cell)
    assert result.accepted == 8 and not result.rejected
    assert len(placements(cell, "job")) >= 6
    cell = cell_with(machines=200, cpu=4000, memory=16 * GI)
    submit(cell, "job", tasks=8, cpu=1000)
    step(core(BATCH, sampling=False), cell)
    assert sorted(placements(cell, "job").values()) == [4, 4]


def test_random_fit_only_uses_machines_with_room_and_is_seeded():
    def run(seed: int) -> dict:
        cell = cell_with(machines=6, cpu=4000, memory=16 * GI)
        submit(cell, "filler", tasks=4, cpu=4000)
        commit(cell, *((f"filler.{i}", f"m{i}") for i in range(4)))
        submit(cell, "job", tasks=7, cpu=1000)
        _, result = step(core(BATCH, policy="random-fit", seed=seed), cell)
        assert result.accepted == 7
        return dict(placements(cell, "job"))

    first = run(1)
    assert set(first) <= {"m4", "m5"} and sum(first.values()) == 7
    assert run(1) == first


def test_an_unknown_policy_is_refused_by_name():
    with pytest.raises(ValueError, match="policy 'best': one of real, random-fit"):
        core(BATCH, policy="best")
