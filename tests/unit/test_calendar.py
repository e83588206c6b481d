from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.calendar import local_day, local_month
from domain.energy import share_within

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("moment", "hours"),
    [
        (datetime(2026, 3, 29, 12, tzinfo=timezone.utc), 23),
        (datetime(2026, 10, 25, 12, tzinfo=timezone.utc), 25),
        (datetime(2026, 11, 22, 12, tzinfo=timezone.utc), 24),
    ],
)
def test_dst_days_have_23_or_25_hours(moment: datetime, hours: int) -> None:
    _, start, end = local_day(moment, BERLIN)
    assert end - start == timedelta(hours=hours)


def test_evening_in_new_york_belongs_to_the_local_day_not_the_utc_one() -> None:
    day, start, _ = local_day(datetime(2026, 11, 23, 3, tzinfo=timezone.utc), NEW_YORK)
    assert day.isoformat() == "2026-11-22" and start == datetime(2026, 11, 22, 5, tzinfo=timezone.utc)


def test_local_month_starts_at_local_midnight_of_the_first() -> None:
    first, start, end = local_month(datetime(2026, 11, 1, 0, 30, tzinfo=timezone.utc), NEW_YORK)
    assert first.isoformat() == "2026-10-01"
    assert (start, end) == (
        datetime(2026, 10, 1, 4, tzinfo=timezone.utc), datetime(2026, 11, 1, 4, tzinfo=timezone.utc)
    )


@given(
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(timezone.utc)),
    st.integers(min_value=1, max_value=4 * 24 * 3600),
    st.floats(min_value=0, max_value=1e5, allow_nan=False),
)
def test_energy_spread_over_local_days_sums_to_the_whole(start: datetime, seconds: int, wh: float) -> None:
    end = start + timedelta(seconds=seconds)
    total, moment = 0.0, start
    while moment < end:
        _, day_start, day_end = local_day(moment, BERLIN)
        total += share_within(start, end, wh, day_start, day_end)
        moment = day_end
    assert total == pytest.approx(wh, rel=1e-9, abs=1e-9)
