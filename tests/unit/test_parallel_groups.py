"""The read models are dealt to processes by their estimated replay cost, counting the readings' decoding
once per group that needs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from domain.meter import MeterDay
from infra.read_models import all_projectors
from infra.settings import Settings
from projections.parallel import (
    DECODE_COST,
    PARALLEL_FROM,
    SPAWNED_FROM,
    READ_COST,
    REPLAY_COST,
    default_jobs_for,
    group_cost,
    groups,
)
from projections.quarantine import EVERY_EVENT


class Fake:
    def __init__(self, name: str, ignores: Any = ()) -> None:
        self.name, self.ignores, self.version, self.tables = name, ignores, 1, ()

    def apply_batch(self, cur: Any, events: Sequence[object]) -> None:
        pass


def names(dealt: list[list[Any]]) -> list[list[str]]:
    return [[p.name for p in group] for group in dealt]


def test_a_group_pays_the_readings_decoding_once_and_only_if_a_member_needs_them() -> None:
    chain, devices, energy = Fake("chain", EVERY_EVENT), Fake("devices"), Fake("energy")

    assert group_cost([chain]) == READ_COST + REPLAY_COST["chain"]
    assert group_cost([devices, energy]) == READ_COST + DECODE_COST + REPLAY_COST["devices"] + REPLAY_COST["energy"]
    assert group_cost([Fake("skips readings", (MeterDay.ReadingRecorded,))]) == READ_COST + 1.0
    assert group_cost([]) == 0.0


def test_the_registered_read_models_in_two_groups_are_within_a_tenth_of_each_other() -> None:
    dealt = groups(all_projectors(Settings()), 2)

    assert names(dealt) == [["devices", "identity", "commands", "chain", "audit", "exports", "alerts"], ["energy"]]
    costs = [group_cost(g) for g in dealt]
    assert max(costs) - min(costs) < 0.1 * max(costs)


def test_read_models_that_need_no_readings_gather_in_a_group_that_decodes_none() -> None:
    light = [Fake(f"light{i}", EVERY_EVENT) for i in range(3)]
    dealt = groups([Fake("energy"), Fake("alerts"), *light, Fake("devices")], 4)

    assert names(dealt) == [["energy"], ["alerts"], ["light0", "light1", "light2"], ["devices"]]


@pytest.mark.parametrize("jobs", [1, 2, 3, 8, 20])
def test_every_read_model_is_dealt_once_in_registration_order(jobs: int) -> None:
    projectors = all_projectors(Settings())
    dealt = groups(projectors, jobs)

    assert sorted(p.name for g in dealt for p in g) == sorted(p.name for p in projectors)
    assert len(dealt) == min(jobs, len(projectors))
    order = [p.name for p in projectors]
    assert all([order.index(p.name) for p in g] == sorted(order.index(p.name) for p in g) for g in dealt)
    with pytest.raises(ValueError):
        groups(projectors, 0)


def test_forked_processes_are_taken_from_the_threshold_one_per_core() -> None:
    projectors = all_projectors(Settings())

    assert default_jobs_for(projectors, PARALLEL_FROM - 1, 8, forks=True) == 1
    assert default_jobs_for(projectors, PARALLEL_FROM, 1, forks=True) == 1
    assert default_jobs_for(projectors, PARALLEL_FROM, 2, forks=True) == 2, "energy | the other seven"
    assert default_jobs_for(projectors, PARALLEL_FROM, 16, forks=True) == 2, "a third cannot speed energy's group"


def test_fresh_interpreters_are_taken_from_a_longer_log_one_per_two_cores() -> None:
    projectors = all_projectors(Settings())

    assert default_jobs_for(projectors, SPAWNED_FROM - 1, 8, forks=False) == 1
    assert default_jobs_for(projectors, 10 * SPAWNED_FROM, 3, forks=False) == 1
    assert default_jobs_for(projectors, SPAWNED_FROM, 4, forks=False) == 2
    assert default_jobs_for(projectors, SPAWNED_FROM, 16, forks=False) == 2


def test_another_process_is_taken_only_where_it_cuts_the_slowest_group(monkeypatch: pytest.MonkeyPatch) -> None:
    light = [Fake(name, EVERY_EVENT) for name in "abcd"]
    for projector in light:
        monkeypatch.setitem(REPLAY_COST, projector.name, 10.0)

    assert [default_jobs_for(light, SPAWNED_FROM, cores, forks=False) for cores in (2, 4, 6, 8, 16)] == [1, 2, 2, 4, 4]
    assert [default_jobs_for(light, PARALLEL_FROM, cores, forks=True) for cores in (1, 2, 3, 4, 16)] == [1, 2, 2, 4, 4]
    assert default_jobs_for(light[:1], PARALLEL_FROM, 16) == 1
    big, tiny = Fake("big", EVERY_EVENT), Fake("tiny", EVERY_EVENT)
    monkeypatch.setitem(REPLAY_COST, "big", 10.0)
    monkeypatch.setitem(REPLAY_COST, "tiny", 0.5)
    assert default_jobs_for([big, tiny], PARALLEL_FROM, 16) == 1, "a second process would gain under a tenth"
