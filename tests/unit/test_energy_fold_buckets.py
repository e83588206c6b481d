"""`fold_buckets`, the energy read model's one-pass refold, against `refold` then `rollup`: the same floats exactly."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import astuple

from domain.energy import EnergyRules
from domain.rollups import BUCKET, ChannelReading, Folded, Kept, bucket_start, fold_buckets, refold, rollup

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
RULES = EnergyRules()
CH = "device"
DEVICE = UUID(int=7)

measurement = st.one_of(
    st.none(), st.floats(-10, 5000), st.floats(0, 1e7), st.sampled_from([math.inf, -math.inf, math.nan, -0.0, 0.0])
)
raw_readings = st.lists(
    st.tuples(st.integers(-10**9, 4 * 10**9), st.sampled_from(["AA", "AA", "AA", "BB"]), measurement, measurement,
              st.booleans()),
    min_size=1, max_size=40,
)  # fmt: skip


def kept(item: Folded) -> Kept:
    r = item.reading
    return (r.at, r.meter, r.power_w, r.total_wh, r.is_on, item.counted_wh, item.wh)


def signed(values: tuple[object, ...]) -> list[object]:
    """Values with each float's sign, so that 0.0 and -0.0 differ (and a NaN equals a NaN)."""
    return [("nan" if math.isnan(v) else v, math.copysign(1, v)) if isinstance(v, float) else v for v in values]


@given(raw_readings, st.integers(-1, 39), st.integers(-2, 3), st.booleans())
@settings(max_examples=400)
def test_folding_a_channel_in_one_pass_gives_every_reading_and_bucket_of_refold_and_rollup(
    raw: list[tuple[int, str, float | None, float | None, bool]], cut: int, shift: int, in_order: bool
) -> None:
    """From a stored reading or from nothing, through gaps, resets, meter changes, repeats and readings out of
    order: each reading's counted value and energy, and each bucket's sums, bit for bit."""
    if in_order:
        raw = sorted(raw, key=lambda r: r[0])
    readings = [ChannelReading(at=T0 + timedelta(microseconds=us), meter=m, power_w=p, total_wh=t, is_on=o)
                for us, m, p, t, o in raw]  # fmt: skip
    whole, _ = refold(None, readings, RULES, CH)
    start = whole[cut] if 0 <= cut < len(whole) else None
    later = readings[readings.index(start.reading) + 1 :] if start is not None else readings
    since = bucket_start(start.reading.at if start is not None else readings[0].at) + shift * BUCKET
    folded, intervals = refold(start, later, RULES, CH)
    want = rollup(([start] if start is not None else []) + folded, intervals, RULES, since)

    got_folded, got_buckets = fold_buckets(
        kept(start) if start is not None else None, [astuple(r) for r in later], RULES, since, DEVICE, CH
    )

    assert [row[:2] for row in got_folded] == [(DEVICE, CH)] * len(folded)
    assert [signed(row[2:]) for row in got_folded] == [signed(kept(f)) for f in folded]
    assert [b.start for b in got_buckets] == list(want)
    assert [signed(astuple(b)) for b in got_buckets] == [signed(astuple(b)) for b in want.values()]
