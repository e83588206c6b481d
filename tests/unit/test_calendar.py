from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.calendar import Unit, local_day, local_month, local_period, local_periods
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


@pytest.mark.parametrize(
    ("zone", "day", "hours", "starts_at"),
    [
        # DST began at midnight: 00:00 did not exist, the day starts at the jump.
        (ZoneInfo("America/Sao_Paulo"), "2018-11-04", 23, datetime(2018, 11, 4, 3, tzinfo=timezone.utc)),
        # DST ended at 01:00 back to 00:00: the day starts at the first midnight.
        (ZoneInfo("America/Havana"), "2024-11-03", 25, datetime(2024, 11, 3, 4, tzinfo=timezone.utc)),
    ],
)
def test_days_whose_transition_falls_at_midnight(zone: ZoneInfo, day: str, hours: int, starts_at: datetime) -> None:
    period = local_period(starts_at + timedelta(hours=12), zone, "day")
    assert (period.label.isoformat(), period.start) == (day, starts_at)
    assert period.end - period.start == timedelta(hours=hours)


@given(
    st.datetimes(min_value=datetime(2018, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(timezone.utc)),
    st.integers(min_value=0, max_value=90 * 24 * 3600),
    st.sampled_from([BERLIN, NEW_YORK, ZoneInfo("America/Havana"), ZoneInfo("America/Sao_Paulo")]),
    st.sampled_from(["day", "month"]),
)
def test_periods_tile_the_time_line(start: datetime, seconds: int, zone: ZoneInfo, unit: Unit) -> None:
    end = start + timedelta(seconds=seconds)
    periods = list(local_periods(start, end, zone, unit))
    assert periods[0].start <= start < periods[0].end
    assert all(a.end == b.start and a.label < b.label for a, b in zip(periods, periods[1:]))
    assert periods[-1].end >= end
    assert all(p == local_period(p.start, zone, unit) for p in periods)
