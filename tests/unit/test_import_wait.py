"""An import waits for the energy read model only while the projector's pace can bring it there in time."""

from __future__ import annotations

from api.controllers.energy import IMPORT_PACE_AFTER_S, IMPORT_PROJECTION_WAIT_S, GaveUp, out_of_reach

DEADLINE = 100.0 + IMPORT_PROJECTION_WAIT_S


def test_a_projector_that_keeps_a_pace_reaching_the_position_in_time_is_waited_for() -> None:
    # 2,000 events in half a second: 8,000 more take a further 2 s, beyond the 1.5 s left.
    assert out_of_reach(12_000, (100.0, 0), (100.5, 2_000), DEADLINE)
    # 4,000 events in half a second: the 6,000 left take 0.75 s, within the 1.5 s left.
    assert not out_of_reach(10_000, (100.0, 0), (100.5, 4_000), DEADLINE)


def test_a_backlog_far_ahead_of_the_projector_is_out_of_reach_as_soon_as_its_pace_is_known() -> None:
    assert out_of_reach(500_000, (100.0, 1_000), (100.0 + IMPORT_PACE_AFTER_S, 3_000), DEADLINE)


def test_no_judgement_before_the_pace_is_watched_long_enough_or_while_nothing_moved() -> None:
    assert not out_of_reach(500_000, (100.0, 1_000), (100.0 + IMPORT_PACE_AFTER_S / 2, 3_000), DEADLINE)
    assert not out_of_reach(500_000, (100.0, 1_000), (101.5, 1_000), DEADLINE)


def test_an_import_behind_one_that_ran_out_of_its_wait_does_not_wait_until_the_projector_passes_it() -> None:
    gave_up = GaveUp()
    assert not gave_up.behind(0)
    gave_up.note(5_000)
    gave_up.note(3_000)
    assert gave_up.behind(4_999)
    assert not gave_up.behind(5_000)
