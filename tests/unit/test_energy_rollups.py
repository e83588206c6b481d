"""Buckets, rates, pricing and sessions: the pure functions behind the energy read model."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.calendar import boundaries, local_period
from domain.energy import EnergyRules, Interval, Reading, Sample, step
from domain.errors import InvalidRate, InvalidReadings
from domain.imports import DeviceShape, ImportedReading, check_readings, snapshots
from domain.pricing import PriceWalk, kwh_of, price_bucket, price_rows, round_parts
from domain.rates import align_up, cycle_start, in_force, parse_rate, tiered_cost, unit_price
from domain.rollups import (
    BUCKET, Bucket, ChannelReading, Folded, bucket_start, local_hour_start, refold, rollup, rollup_channel, split_buckets,
    state_after,
)
from domain.usage import Run, sessions

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
RULES = EnergyRules()
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
CH = "device"


def reading(minute: float, total: float | None, power: float | None = 60.0, meter: str = "AA") -> ChannelReading:
    return ChannelReading(at=T0 + timedelta(minutes=minute), meter=meter, power_w=power, total_wh=total)


def rate(body: dict[str, object], version: int = 1) -> object:
    return parse_rate(body, version=version, now=NOW, default_zone="UTC", actor="test")


readings_strategy = st.lists(
    st.tuples(st.integers(0, 600), st.floats(0, 50), st.booleans(), st.floats(0, 3000)),
    min_size=1, max_size=40, unique_by=lambda r: r[0],
)  # fmt: skip


def as_readings(raw: list[tuple[int, float, bool, float]]) -> list[ChannelReading]:
    """Minutes with counter steps (a fall when the flag is set) and a power each."""
    total = 1000.0
    out = []
    for minute, delta, fall, power in sorted(raw):
        total = total * 0.5 if fall else total + delta
        out.append(reading(minute, total, power))
    return out


@given(readings_strategy)
def test_counter_energy_is_never_negative(raw: list[tuple[int, float, bool, float]]) -> None:
    buckets = rollup_channel(as_readings(raw), RULES, CH)
    assert all(b.wh >= 0 for b in buckets.values())


@given(readings_strategy, st.randoms())
@settings(max_examples=60)
def test_the_same_readings_in_any_order_give_the_same_rollups(
    raw: list[tuple[int, float, bool, float]], rnd: object
) -> None:
    readings = as_readings(raw)
    shuffled = list(readings)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert rollup_channel(shuffled, RULES, CH) == rollup_channel(readings, RULES, CH)


@given(readings_strategy, st.integers(1, 39))
@settings(max_examples=60)
def test_refolding_from_a_stored_reading_gives_the_buckets_of_a_full_fold(
    raw: list[tuple[int, float, bool, float]], cut: int
) -> None:
    """What the read model does with late data: resume at the last reading before the first affected bucket."""
    readings = as_readings(raw)
    full = rollup_channel(readings, RULES, CH)
    folded, _ = refold(None, readings, RULES, CH)
    cut = min(cut, len(folded) - 1)
    since = bucket_start(folded[cut].reading.at)
    starts = [f for f in folded if f.reading.at <= since]
    start = starts[-1] if starts else None
    later = [f.reading for f in folded if start is None or f.reading.at > start.reading.at]
    refolded, intervals = refold(start, later, RULES, CH)
    partial = rollup(([start] if start else []) + refolded, intervals, RULES, since)
    assert partial == {k: v for k, v in full.items() if k >= since}


@given(
    st.integers(0, 10_000), st.integers(1, 20_000), st.floats(0, 5000, allow_subnormal=False),
)
def test_splitting_an_interval_into_buckets_never_changes_its_energy(offset_s: int, length_s: int, wh: float) -> None:
    start = T0 + timedelta(seconds=offset_s)
    interval = Interval(channel=CH, start=start, end=start + timedelta(seconds=length_s), wh=wh)
    shares = split_buckets(interval)
    assert math.isclose(sum(w for _, w in shares), wh, rel_tol=1e-9, abs_tol=1e-9)
    assert all(w >= 0 for _, w in shares)
    assert all(s == bucket_start(s) for s, _ in shares)


@given(st.integers(0, 10_000), st.integers(1, 20_000), st.floats(0, 5000, allow_subnormal=False))
def test_splitting_an_interval_never_changes_its_cost(offset_s: int, length_s: int, wh: float) -> None:
    start = T0 + timedelta(seconds=offset_s)
    simple = rate({"rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.12}, "effective_from": "2020-01-01T00:00Z"})
    shares = split_buckets(Interval(channel=CH, start=start, end=start + timedelta(seconds=length_s), wh=wh))
    rows = [(i, s, w) for i, (s, w) in enumerate(shares)]
    costs = price_rows(rows, [simple], lambda a, b: Decimal(0))  # type: ignore[list-item]
    whole = sum((kwh_of(w) for _, w in shares), Decimal(0)) * Decimal("0.12")
    assert sum(costs.values(), Decimal(0)) == whole


def test_a_counter_rise_across_a_gap_is_spread_evenly_over_the_gap() -> None:
    buckets = rollup_channel([reading(0, 100.0), reading(120, 220.0)], RULES, CH)
    spanned = [b for b in buckets.values() if b.start < T0 + timedelta(hours=2)]
    assert len(spanned) == 24
    assert all(math.isclose(b.wh, 5.0) and b.gap for b in spanned)


def test_a_counter_reset_counts_the_new_value() -> None:
    buckets = rollup_channel([reading(0, 500.0), reading(1, 501.0), reading(2, 3.0)], RULES, CH)
    assert math.isclose(sum(b.wh for b in buckets.values()), 4.0)


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("America/New_York", datetime(2026, 3, 8, 12), 23),
        ("America/New_York", datetime(2026, 11, 1, 12), 25),
        ("Europe/Berlin", datetime(2026, 3, 29, 12), 23),
        ("Europe/Berlin", datetime(2026, 10, 25, 12), 25),
        ("Asia/Kolkata", datetime(2026, 3, 8, 12), 24),
    ],
)
def test_dst_days_have_23_or_25_local_hours_of_whole_buckets(zone: str, day: datetime, hours: int) -> None:
    tz = ZoneInfo(zone)
    period = local_period(day.replace(tzinfo=tz), tz, "day")
    assert (period.end - period.start) == timedelta(hours=hours)
    assert bucket_start(period.start) == period.start
    starts = {local_hour_start(period.start + n * BUCKET, tz) for n in range(hours * 12)}
    assert len(starts) == hours


@given(st.lists(st.decimals(0, 1000, places=7, allow_nan=False), min_size=1, max_size=40))
def test_rounded_days_sum_to_the_rounded_total(parts: list[Decimal]) -> None:
    rounded = round_parts(parts, 4)
    assert sum(rounded, Decimal(0)) == sum(parts, Decimal(0)).quantize(Decimal("0.0001"))
    assert all(abs(r - p) < Decimal("0.0001") for r, p in zip(rounded, parts))


@given(st.lists(st.floats(0, 2000), min_size=1, max_size=60), st.integers(0, 59))
def test_daily_costs_sum_to_the_range_cost_under_tiers(whs: list[float], cut: int) -> None:
    """Pricing a range in two parts (the second continuing the cycle) gives the costs of pricing it whole."""
    tiered = rate({
        "rate_type": "tiered", "effective_from": "2020-01-01T00:00Z",
        "rate_structure": {"tier1_limit": 0.5, "tier1_rate": 0.10, "tier2_limit": 1.0, "tier2_rate": 0.2,
                           "tier3_rate": 0.3},
    })  # fmt: skip
    rows = [(i, T0 + i * BUCKET, wh) for i, wh in enumerate(whs)]
    whole = price_rows(rows, [tiered], lambda a, b: Decimal(0))  # type: ignore[list-item]
    cut = min(cut, len(rows))
    used = sum((kwh_of(wh) for _, _, wh in rows[:cut]), Decimal(0))
    first = price_rows(rows[:cut], [tiered], lambda a, b: Decimal(0))  # type: ignore[list-item]
    second = price_rows(rows[cut:], [tiered], lambda a, b: used)  # type: ignore[list-item]
    assert sum(first.values(), Decimal(0)) + sum(second.values(), Decimal(0)) == sum(whole.values(), Decimal(0))


def test_an_interval_crossing_a_tier_limit_is_priced_at_both_rates() -> None:
    tiered = rate({"rate_type": "tiered", "rate_structure": {
        "tier1_limit": 10, "tier1_rate": "0.10", "tier2_limit": 20, "tier2_rate": "0.20", "tier3_rate": "0.30"}})
    assert tiered_cost(tiered, Decimal(9), Decimal(2)) == Decimal("0.30")  # type: ignore[arg-type]
    assert tiered_cost(tiered, Decimal(19), Decimal(2)) == Decimal("0.50")  # type: ignore[arg-type]


def test_time_of_use_prices_by_the_local_hour_of_the_rate_zone() -> None:
    tou = rate({"rate_type": "time_of_use", "timezone": "America/New_York", "time_of_use_rates": [
        {"start_hour": 22, "end_hour": 6, "rate": 0.08, "label": "Off-Peak"},
        {"start_hour": 6, "end_hour": 22, "rate": 0.2, "label": "Peak"},
    ]})
    assert unit_price(tou, datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)) == Decimal("0.08")  # type: ignore[arg-type]
    assert unit_price(tou, datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)) == Decimal("0.2")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rate_type": "flat"}, "rate_type"),
        ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": -1}}, "rate_structure.rate_per_kwh"),
        ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.1}, "timezone": "Mars/Base"}, "timezone"),
        ({"rate_type": "tiered", "rate_structure": {"tier1_limit": 10, "tier1_rate": 1, "tier2_limit": 5,
                                                    "tier2_rate": 1, "tier3_rate": 1}}, "rate_structure.tier2_limit"),
        ({"rate_type": "time_of_use", "time_of_use_rates": [{"start_hour": 0, "end_hour": 12, "rate": 1}]},
         "time_of_use_rates"),
        ({"rate_type": "time_of_use", "time_of_use_rates": [{"start_hour": 0, "end_hour": 13, "rate": 1},
                                                            {"start_hour": 12, "end_hour": 24, "rate": 1}]},
         "time_of_use_rates[1]"),
        ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": 1}, "billing_cycle_day": 32}, "billing_cycle_day"),
    ],
)
def test_invalid_rate_structures_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRate) as raised:
        rate(body)
    assert raised.value.field == field


def test_a_billing_cycle_day_past_the_months_end_is_clamped() -> None:
    tiered = rate({"rate_type": "tiered", "billing_cycle_day": 31, "rate_structure": {
        "tier1_limit": 1, "tier1_rate": 1, "tier2_limit": 2, "tier2_rate": 1, "tier3_rate": 1}})
    assert cycle_start(tiered, datetime(2026, 3, 15, tzinfo=timezone.utc)) == datetime(  # type: ignore[arg-type]
        2026, 2, 28, tzinfo=timezone.utc
    )


def test_a_new_version_applies_from_its_effective_time_on() -> None:
    first = rate({"rate_type": "simple", "rate_structure": {"rate_per_kwh": 1}, "effective_from": "2026-01-01T00:00Z"})
    second = rate({"rate_type": "simple", "rate_structure": {"rate_per_kwh": 2},
                   "effective_from": "2026-02-01T00:02Z"}, version=2)  # fmt: skip
    versions = [first, second]
    assert second.effective_from == datetime(2026, 2, 1, 0, 5, tzinfo=timezone.utc)  # type: ignore[attr-defined]
    assert in_force(versions, datetime(2026, 2, 1, 0, 4, tzinfo=timezone.utc)) is first  # type: ignore[arg-type]
    assert in_force(versions, datetime(2026, 2, 1, 0, 5, tzinfo=timezone.utc)) is second  # type: ignore[arg-type]
    assert align_up(T0) == T0


SHAPE = DeviceShape(alias="p", model="HS110", device_type="plug", mac="AA")
STRIP = DeviceShape(alias="s", model="HS300", device_type="strip", mac="BB", outlets=("o0", "o1"))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (ImportedReading(timestamp="2026-03-01T00:00:00Z", power_w=float("inf")), "readings[1].power_w"),
        (ImportedReading(timestamp="2026-03-01T00:00:00Z", power_w=-1.0), "readings[1].power_w"),
        (ImportedReading(timestamp="1999-12-31T23:59:59Z"), "before 2000"),
        (ImportedReading(timestamp="2026-06-01T00:06:00Z"), "future"),
        (ImportedReading(timestamp="2026-03-01T00:00:00"), "offset"),
        (ImportedReading(timestamp="2026-03-01T00:00:00Z", outlet=0), "no outlets"),
    ],
)
def test_bad_readings_are_refused_naming_the_first_bad_item(item: ImportedReading, message: str) -> None:
    good = ImportedReading(timestamp="2026-03-01T00:00:00Z", power_w=1.0)
    with pytest.raises(InvalidReadings, match=message.replace("[", r"\[")):
        check_readings([good, item], SHAPE, NOW)


def test_more_than_ten_thousand_readings_are_refused() -> None:
    with pytest.raises(InvalidReadings, match="at most 10000"):
        check_readings([ImportedReading(timestamp="2026-03-01T00:00:00Z")] * 10_001, SHAPE, NOW)


def test_outlet_readings_at_one_timestamp_become_one_strip_reading() -> None:
    items = [
        ImportedReading(timestamp="2026-03-01T00:00:00Z", power_w=1.0, outlet=0),
        ImportedReading(timestamp="2026-03-01T00:00:00Z", power_w=2.0, outlet="o1"),
    ]
    [(at, snapshot)] = snapshots(check_readings(items, STRIP, NOW), STRIP)
    assert [o.outlet_id for o in snapshot.outlets] == ["o0", "o1"]
    assert snapshot.power_w == 3.0
    with pytest.raises(InvalidReadings, match="unknown outlet"):
        check_readings([ImportedReading(timestamp="2026-03-01T00:00:00Z", outlet=7)], STRIP, NOW)


def test_a_session_is_a_run_above_the_threshold_for_at_least_the_minimum_time() -> None:
    def run(minute: int, power: float) -> Run:
        return Run(at=T0 + timedelta(minutes=minute), power_w=power, wh=power / 60)

    runs = [run(0, 0), run(1, 100), run(2, 2000), run(3, 100), run(4, 1), run(5, 50), run(6, 0)]
    found = sessions(runs, threshold_w=5, min_duration=timedelta(minutes=2), max_gap=timedelta(minutes=3))
    assert len(found) == 1
    assert found[0].start == T0 + timedelta(minutes=1)
    assert found[0].end == T0 + timedelta(minutes=4)
    assert found[0].peak_w == 2000
    assert math.isclose(found[0].wh, (2000 + 100 + 1) / 60)


@pytest.mark.parametrize(
    ("zone", "start", "end", "unit", "count"),
    [
        ("America/New_York", "2026-03-08T05:00Z", "2026-03-09T04:00Z", "hour", 23),
        ("America/New_York", "2026-11-01T04:00Z", "2026-11-02T05:00Z", "hour", 25),
        ("Europe/Berlin", "2026-03-28T23:00Z", "2026-03-29T22:00Z", "hour", 23),
        ("Europe/Berlin", "2026-10-24T22:00Z", "2026-10-25T23:00Z", "hour", 25),
        ("Asia/Kathmandu", "2026-03-07T18:15Z", "2026-03-08T18:15Z", "hour", 24),
        ("Asia/Kolkata", "2026-03-01T18:30Z", "2026-03-31T18:30Z", "day", 30),
        ("America/New_York", "2026-03-02T05:00Z", "2026-03-30T04:00Z", "week", 4),
        ("Europe/Berlin", "2025-12-31T23:00Z", "2026-12-31T23:00Z", "month", 12),
    ],
)
def test_local_period_starts_follow_the_wall_clock(zone: str, start: str, end: str, unit: str, count: int) -> None:
    tz = ZoneInfo(zone)
    first, last = datetime.fromisoformat(start), datetime.fromisoformat(end)
    starts = boundaries(first, last, tz, unit)  # type: ignore[arg-type]
    assert starts[0] == first and len(starts) == count
    assert all(s.astimezone(tz).minute == 0 for s in starts)
    assert all(bucket_start(s) == s for s in starts)


def _rollup_by_shares(
    folded: list[Folded], intervals: list[Interval], rules: EnergyRules, since: datetime
) -> dict[datetime, Bucket]:
    """The buckets as `split_buckets` and timedelta seconds give them: the arithmetic `rollup` must equal."""
    buckets: dict[datetime, Bucket] = {}

    def at(start: datetime) -> Bucket:
        return buckets.setdefault(start, Bucket(start=start))

    for interval in intervals:
        for start, wh in split_buckets(interval):
            if start >= since:
                at(start).wh += wh
    for before, after in zip(folded, folded[1:]):
        gap = after.reading.at - before.reading.at > rules.max_gap
        bucket_at = bucket_start(before.reading.at)
        while bucket_at < after.reading.at:
            seconds = (min(after.reading.at, bucket_at + BUCKET) - max(before.reading.at, bucket_at)).total_seconds()
            if seconds > 0 and bucket_at >= since:
                bucket = at(bucket_at)
                bucket.gap = bucket.gap or gap
                if after.reading.is_on and not gap:
                    bucket.on_s += seconds
            bucket_at += BUCKET
    for item in folded:
        start = bucket_start(item.reading.at)
        if start < since:
            continue
        bucket = at(start)
        bucket.count += 1
        if (power := item.reading.power_w) is not None:
            bucket.power_sum += power
            bucket.power_min = power if bucket.power_min is None else min(bucket.power_min, power)
            bucket.power_max = power if bucket.power_max is None else max(bucket.power_max, power)
    return dict(sorted(buckets.items()))


@given(
    st.lists(
        st.tuples(st.integers(-10**9, 10**10), st.one_of(st.none(), st.floats(0, 1e7)), st.booleans(),
                  st.one_of(st.none(), st.floats(-10, 5000))),
        min_size=1, max_size=30, unique_by=lambda r: r[0],
    ),
    st.integers(0, 29), st.integers(-3, 3),
)  # fmt: skip
@settings(max_examples=300)
def test_rollup_on_microseconds_gives_every_bucket_bit_for_bit_as_timedelta_shares(
    raw: list[tuple[int, float | None, bool, float | None]], cut: int, shift: int
) -> None:
    """Readings microseconds to hours apart, counters and power alone, on and off: the same floats exactly."""
    readings = [
        ChannelReading(at=T0 + timedelta(microseconds=us), meter="AA", power_w=power, total_wh=total, is_on=on)
        for us, total, on, power in sorted(raw)
    ]
    folded, intervals = refold(None, readings, RULES, CH)
    since = bucket_start(folded[min(cut, len(folded) - 1)].reading.at) + shift * BUCKET
    got = rollup(folded, intervals, RULES, since)
    want = _rollup_by_shares(folded, intervals, RULES, since)
    assert list(got) == list(want)
    for start, bucket in got.items():
        assert msgspec.structs.astuple(bucket) == msgspec.structs.astuple(want[start])
        assert [math.copysign(1, v) for v in (bucket.wh, bucket.on_s)] == [
            math.copysign(1, v) for v in (want[start].wh, want[start].on_s)
        ]


@given(
    st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(["AA", "BB"]), st.one_of(st.none(), st.floats(-5, 1e6)),
                  st.one_of(st.none(), st.floats(-10, 5000))),
        min_size=1, max_size=30,
    ),
    st.integers(0, 29),
)  # fmt: skip
@settings(max_examples=200)
def test_refolding_one_channel_gives_what_the_meter_fold_gives(
    raw: list[tuple[int, str, float | None, float | None]], cut: int
) -> None:
    """`refold` folds one channel without building meter states; it must match `step`, from a stored reading
    or from nothing, through meter changes, repeats and readings out of order."""
    readings = [ChannelReading(at=T0 + timedelta(seconds=s), meter=m, power_w=p, total_wh=t) for s, m, t, p in raw]
    folded, intervals = refold(None, readings, RULES, CH)
    state = None
    want: list[tuple[datetime, float | None, float | None]] = []
    for r in readings:
        after, closed = step(state, Reading(meter=r.meter, at=r.at, samples=(Sample(channel=CH, power_w=r.power_w,
                                                                                     total_wh=r.total_wh),)), RULES)
        if after is not state:
            want.append((r.at, after.channels[CH].counted_wh, closed[0].wh if closed else None))
        state = after
    assert [(f.reading.at, f.counted_wh, f.wh) for f in folded] == want
    assert [i.wh for i in intervals] == [w for _, _, w in want if w is not None]
    if folded:
        start = folded[min(cut, len(folded) - 1)]
        later = readings[readings.index(start.reading) + 1:]
        resumed, _ = refold(start, later, RULES, CH)
        state = state_after(start, CH)
        expect = []
        for r in later:
            after, closed = step(state, Reading(meter=r.meter, at=r.at, samples=(Sample(
                channel=CH, power_w=r.power_w, total_wh=r.total_wh),)), RULES)  # fmt: skip
            if after is not state:
                expect.append((r.at, after.channels[CH].counted_wh, closed[0].wh if closed else None))
            state = after
        assert [(f.reading.at, f.counted_wh, f.wh) for f in resumed] == expect


@given(
    st.lists(st.decimals(0, 400, places=12), min_size=1, max_size=40),
    st.decimals("0.001", 600, places=6), st.decimals("0.001", 600, places=6), st.decimals(0, 500, places=3),
)  # fmt: skip
@settings(max_examples=200)
def test_a_walk_prices_each_tiered_bucket_as_price_bucket_does_after_the_cycles_kwh(
    kwhs: list[Decimal], limit1: Decimal, above: Decimal, before: Decimal
) -> None:
    """The walk keeps each tiered version's limits and prices at hand; what it charges must stay `price_bucket`'s."""
    tiered = rate({"rate_type": "tiered", "effective_from": "2026-01-01T00:00Z", "rate_structure": {
        "tier1_limit": str(limit1), "tier1_rate": "0.1", "tier2_limit": str(limit1 + above), "tier2_rate": "0.25",
        "tier3_rate": "0.4"}})  # fmt: skip
    walk = PriceWalk([tiered], lambda cycle, start: before)  # type: ignore[list-item]
    used = before
    for n, kwh in enumerate(kwhs):
        start = T0 + n * BUCKET
        assert walk.step(start, kwh) == price_bucket(tiered, start, used, kwh)  # type: ignore[arg-type]
        used += kwh
