from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from domain.energy import counter_delta_wh, share_within

T0 = datetime(2026, 3, 1, 23, 0, tzinfo=timezone.utc)
counters = st.floats(min_value=0, max_value=1e7, allow_nan=False)


@given(counters, counters)
def test_counter_reset_never_yields_negative_energy(before: float, after: float) -> None:
    assert counter_delta_wh(before, after) >= 0


def test_counter_that_went_down_counts_from_the_new_value() -> None:
    assert counter_delta_wh(5000.0, 12.5) == 12.5


def test_missing_counter_invents_no_energy() -> None:
    assert counter_delta_wh(None, 10.0) == 0.0
    assert counter_delta_wh(10.0, None) == 0.0


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.integers(min_value=1, max_value=10_000))
def test_energy_split_across_a_boundary_sums_to_the_whole(wh: float, seconds: int) -> None:
    start = T0 - timedelta(seconds=seconds)
    end = T0 + timedelta(seconds=seconds * 2)
    midnight = T0
    before = share_within(start, end, wh, start - timedelta(days=1), midnight)
    after = share_within(start, end, wh, midnight, end + timedelta(days=1))
    assert abs(before + after - wh) <= 1e-9 * max(wh, 1)
    assert abs(before - wh / 3) <= 1e-9 * max(wh, 1)


def test_ranges_are_start_inclusive_end_exclusive_for_instant_readings() -> None:
    assert share_within(T0, T0, 5.0, T0, T0 + timedelta(hours=1)) == 5.0
    assert share_within(T0, T0, 5.0, T0 - timedelta(hours=1), T0) == 0.0
