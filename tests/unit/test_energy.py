from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.calendar import local_period
from domain.energy import (
    DEVICE_CHANNEL,
    EnergyRules,
    Interval,
    Reading,
    Sample,
    fold,
    share_within,
    split,
    step,
)

T0 = datetime(2026, 3, 1, 23, 0, tzinfo=timezone.utc)
MIDNIGHT = datetime(2026, 3, 2, tzinfo=timezone.utc)
UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
RULES = EnergyRules()
MINUTE = timedelta(minutes=1)


def counter(at: datetime, total_wh: float | None, *, power_w: float | None = None, meter: str = "AA") -> Reading:
    return Reading(meter=meter, at=at, samples=(Sample(channel=DEVICE_CHANNEL, power_w=power_w, total_wh=total_wh),))


def energy(readings: list[Reading], rules: EnergyRules = RULES) -> float:
    return sum(i.wh for i in fold(readings, rules)[1])


def every_minute(*totals: float | None) -> list[Reading]:
    return [counter(T0 + n * MINUTE, total) for n, total in enumerate(totals)]


counter_values = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
powers = st.none() | st.floats(min_value=-10, max_value=5000, allow_nan=False, allow_infinity=False)
gaps = st.integers(min_value=1, max_value=6 * 3600)


@st.composite
def histories(draw: st.DrawFn) -> list[Reading]:
    """Readings of one meter, in time order, with any counters and powers (some missing)."""
    at, readings = T0, []
    for _ in range(draw(st.integers(min_value=1, max_value=30))):
        at += timedelta(seconds=draw(gaps))
        readings.append(counter(at, draw(st.none() | counter_values), power_w=draw(powers)))
    return readings


@given(histories())
def test_energy_is_never_negative(readings: list[Reading]) -> None:
    assert all(interval.wh >= 0 for interval in fold(readings, RULES)[1])


@given(histories())
def test_energy_counted_never_exceeds_what_the_power_limit_allows(readings: list[Reading]) -> None:
    span_h = (readings[-1].at - readings[0].at).total_seconds() / 3600
    assert energy(readings) <= RULES.max_power_w * span_h + RULES.resolution_wh * len(readings) + 1e-6


@st.composite
def counters_without_resets(draw: st.DrawFn) -> list[float]:
    """A counter that only rises plausibly within a minute, or dips by less than 10 % of its high."""
    value = draw(st.floats(min_value=0, max_value=1e6, allow_nan=False))
    values, high = [value], value
    for _ in range(draw(st.integers(min_value=1, max_value=40))):
        if draw(st.booleans()):
            value = high + draw(st.floats(min_value=0, max_value=60))
        else:
            value = high * (1 - draw(st.floats(min_value=0, max_value=0.0999)))
        values.append(value)
        high = max(high, value)
    return values


@given(counters_without_resets())
def test_jitter_never_counts_energy_twice(values: list[float]) -> None:
    assert energy(every_minute(*values)) == pytest.approx(max(values) - values[0], rel=1e-9, abs=1e-6)


@given(histories(), st.data())
def test_a_late_or_duplicate_reading_changes_nothing(readings: list[Reading], data: st.DataObject) -> None:
    late = data.draw(st.sampled_from(readings))
    position = data.draw(st.integers(min_value=readings.index(late) + 1, max_value=len(readings)))
    replayed = readings[:position] + [late] + readings[position:]
    assert fold(replayed, RULES) == fold(readings, RULES)


def test_a_rising_counter_gives_its_rise() -> None:
    intervals = fold(every_minute(1000.0, 1002.5, 1010.0), RULES)[1]
    assert [(i.start, i.end, i.wh) for i in intervals] == [
        (T0, T0 + MINUTE, 2.5), (T0 + MINUTE, T0 + 2 * MINUTE, 7.5)
    ]


def test_a_counter_reset_counts_from_the_new_value() -> None:
    assert energy(every_minute(5000.0, 12.5)) == 12.5


def test_a_counter_that_falls_more_than_ten_percent_is_a_reset() -> None:
    assert energy(every_minute(1000.0, 880.0, 890.0)) == 0.0 + 10.0
    assert energy(every_minute(100.0, 20.0, 25.0)) == 20.0 + 5.0


def test_a_small_dip_counts_nothing_until_the_counter_passes_its_previous_high() -> None:
    intervals = fold(every_minute(1000.0, 995.0, 998.0, 1003.0), RULES)[1]
    assert [i.wh for i in intervals] == [0.0, 0.0, 3.0]


def test_a_reset_value_too_large_for_the_interval_is_not_counted() -> None:
    assert energy(every_minute(5000.0, 500.0, 501.0)) == 0.0 + 1.0


def test_a_rise_across_a_gap_is_counted_and_spread_over_the_gap() -> None:
    readings = [counter(T0, 100.0), counter(T0 + timedelta(hours=10), 10_100.0)]
    [interval] = fold(readings, RULES)[1]
    assert (interval.start, interval.end, interval.wh) == (T0, T0 + timedelta(hours=10), 10_000.0)
    shares = split(interval, UTC, "day")
    assert [s.wh for s in shares] == pytest.approx([1_000.0, 9_000.0])


def test_an_implausible_rise_is_a_reset_and_counts_from_the_new_value() -> None:
    rules = EnergyRules(max_power_w=3000)
    assert energy(every_minute(100.0, 200.0), rules) == 0.0
    assert energy(every_minute(100.0, 200.0, 210.0), rules) == 10.0
    assert energy(every_minute(100.0, 140.0), rules) == 40.0


def test_a_new_mac_is_a_new_meter_whose_counter_is_not_compared() -> None:
    readings = [counter(T0, 1000.0), counter(T0 + MINUTE, 20.0, meter="BB"), counter(T0 + 2 * MINUTE, 25.0, meter="BB")]
    state, intervals = fold(readings, RULES)
    assert [i.wh for i in intervals] == [5.0]
    assert state is not None and state.meter == "BB"


def test_without_a_counter_power_is_integrated_across_short_intervals_only() -> None:
    rules = EnergyRules.for_polling_interval(60)
    short = [counter(T0, None, power_w=100.0), counter(T0 + 2 * MINUTE, None, power_w=200.0)]
    assert energy(short, rules) == pytest.approx(150.0 * 2 / 60)
    long = [counter(T0, None, power_w=100.0), counter(T0 + 3 * MINUTE, None, power_w=100.0)]
    assert energy(long, rules) == 0.0
    assert fold(long, rules)[1] == []


def test_a_counter_reading_after_power_only_readings_starts_a_new_count() -> None:
    readings = every_minute(None, 500.0, 501.0)
    assert energy(readings) == 1.0


def test_outlets_of_a_strip_are_folded_apart() -> None:
    def reading(at: datetime, a: float, b: float) -> Reading:
        return Reading(meter="S", at=at, samples=(Sample(channel="a", total_wh=a), Sample(channel="b", total_wh=b)))

    readings = [reading(T0, 100, 200), reading(T0 + MINUTE, 101, 20), reading(T0 + 2 * MINUTE, 103, 23)]
    intervals = fold(readings, RULES)[1]
    by_channel = {c: [i.wh for i in intervals if i.channel == c] for c in "ab"}
    assert by_channel == {"a": [1.0, 2.0], "b": [20.0, 3.0]}


def test_a_reading_of_an_outlet_missing_before_starts_its_count() -> None:
    first = Reading(meter="S", at=T0, samples=(Sample(channel="a", total_wh=1.0),))
    state, intervals = step(None, first, RULES)
    both = (Sample(channel="a", total_wh=2.0), Sample(channel="b", total_wh=9.0))
    second = Reading(meter="S", at=T0 + MINUTE, samples=both)
    state, intervals = step(state, second, RULES)
    assert [(i.channel, i.wh) for i in intervals] == [("a", 1.0)]
    assert set(state.channels) == {"a", "b"}


@given(
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(timezone.utc)),
    st.integers(min_value=0, max_value=70 * 24 * 3600),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.sampled_from(["day", "month"]),
    st.sampled_from([BERLIN, ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe"), UTC]),
)
def test_splitting_conserves_energy(start: datetime, seconds: int, wh: float, unit: str, zone: ZoneInfo) -> None:
    interval = Interval(channel="x", start=start, end=start + timedelta(seconds=seconds), wh=wh)
    shares = split(interval, zone, unit)  # type: ignore[arg-type]
    assert sum(s.wh for s in shares) == pytest.approx(wh, rel=1e-9, abs=1e-9)
    assert all(s.wh >= 0 for s in shares)
    assert shares[0].period.start <= interval.start < shares[0].period.end
    assert all(a.period.end == b.period.start for a, b in zip(shares, shares[1:]))
    if seconds:
        assert shares[-1].period.start < interval.end <= shares[-1].period.end


@pytest.mark.parametrize(("day", "hours"), [("2026-03-29", 23), ("2026-10-25", 25), ("2026-11-22", 24)])
def test_a_steady_load_over_a_dst_day_gives_that_days_hours(day: str, hours: int) -> None:
    period = local_period(datetime.fromisoformat(f"{day}T12:00:00+00:00"), BERLIN, "day")
    readings = [
        counter(period.start - timedelta(hours=1), 0.0),
        counter(period.end + timedelta(hours=1), (hours + 2) * 1000.0),
    ]
    [interval] = fold(readings, RULES)[1]
    in_day = [s.wh for s in split(interval, BERLIN, "day") if s.period.label == period.label]
    assert in_day == pytest.approx([hours * 1000.0])


def test_energy_split_in_proportion_to_the_time_on_each_side_of_midnight() -> None:
    interval = Interval(channel="x", start=MIDNIGHT - timedelta(minutes=30), end=MIDNIGHT + timedelta(hours=1), wh=90.0)
    shares = split(interval, UTC, "day")
    assert [(s.period.label.isoformat(), s.wh) for s in shares] == [("2026-03-01", 30.0), ("2026-03-02", 60.0)]


def test_ranges_are_start_inclusive_end_exclusive_for_instant_readings() -> None:
    assert share_within(T0, T0, 5.0, T0, T0 + timedelta(hours=1)) == 5.0
    assert share_within(T0, T0, 5.0, T0 - timedelta(hours=1), T0) == 0.0
    [share] = split(Interval(channel="x", start=T0, end=T0, wh=5.0), UTC, "day")
    assert share.period.start == datetime(2026, 3, 1, tzinfo=timezone.utc)


def test_an_interval_ending_at_midnight_belongs_to_the_day_before() -> None:
    [share] = split(Interval(channel="x", start=MIDNIGHT - timedelta(hours=1), end=MIDNIGHT, wh=5.0), UTC, "day")
    assert share.period.label.isoformat() == "2026-03-01"
