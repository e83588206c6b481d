"""5-minute UTC buckets of one channel's energy, from the energy fold's intervals and readings.

Five minutes divides every UTC offset in use (Asia/Kolkata +05:30, Asia/Kathmandu
+05:45), so local hours, days, weeks and months of any zone are unions of whole
buckets. A bucket holds exactly the energy used within it: an interval's energy
is split over the buckets it touches in proportion to time.

Everything here is a function of the channel's readings sorted by time, so the
same readings in any arrival order give the same buckets; `refold` resumes the
fold from a stored state, which lets a read model recompute only the buckets
that a late reading touches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import msgspec

from domain.energy import Channel, EnergyRules, Interval, MeterState, Reading, Sample, share_within, step

BUCKET = timedelta(minutes=5)
EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


def bucket_start(moment: datetime) -> datetime:
    """The start of the 5-minute UTC bucket containing `moment`."""
    return EPOCH + ((moment - EPOCH) // BUCKET) * BUCKET


def local_hour_start(moment: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant the local hour of `moment` in `zone` began: a fall-back day's repeated hour stays two hours."""
    local = moment.astimezone(zone)
    return moment - timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)


class ChannelReading(msgspec.Struct, frozen=True, kw_only=True):
    """One reading of one channel (a plug's meter or one outlet); `meter` names the physical meter (MAC)."""

    at: datetime
    meter: str
    power_w: float | None = None
    total_wh: float | None = None
    is_on: bool = True


class Folded(msgspec.Struct, frozen=True, kw_only=True):
    """A reading with the fold's result: the counter value counted up to, and the energy of the interval ending at it."""

    reading: ChannelReading
    counted_wh: float | None
    wh: float | None


class Bucket(msgspec.Struct, kw_only=True):
    """One 5-minute bucket of one channel: energy, on-time, power statistics, readings, and whether a gap spans it."""

    start: datetime
    wh: float = 0.0
    on_s: float = 0.0
    power_min: float | None = None
    power_max: float | None = None
    power_sum: float = 0.0
    count: int = 0
    gap: bool = False


def state_after(folded: Folded, channel: str) -> MeterState:
    """The fold's state right after a stored reading, rebuilt from what the reading row keeps."""
    reading = folded.reading
    return MeterState(
        meter=reading.meter,
        at=reading.at,
        channels={channel: Channel(at=reading.at, power_w=reading.power_w, counted_wh=folded.counted_wh)},
    )


def refold(
    start: Folded | None, readings: Sequence[ChannelReading], rules: EnergyRules, channel: str
) -> tuple[list[Folded], list[Interval]]:
    """Fold `readings` (sorted, all after `start`) on from the state after `start`.

    Returns every reading with its counted value and interval energy, and the
    intervals closed. A reading not newer than the one before is dropped.
    """
    state = state_after(start, channel) if start is not None else None
    folded: list[Folded] = []
    intervals: list[Interval] = []
    for reading in readings:
        if state is not None and state.meter == reading.meter and reading.at <= state.at:
            continue
        sample = Sample(channel=channel, power_w=reading.power_w, total_wh=reading.total_wh)
        state, closed = step(state, Reading(meter=reading.meter, at=reading.at, samples=(sample,)), rules)
        counted = state.channels[channel].counted_wh
        folded.append(Folded(reading=reading, counted_wh=counted, wh=closed[0].wh if closed else None))
        intervals += closed
    return folded, intervals


def split_buckets(interval: Interval) -> list[tuple[datetime, float]]:
    """An interval's energy by 5-minute bucket, in order; the last share takes what the others leave."""
    first = bucket_start(interval.start)
    if first + BUCKET >= interval.end:
        return [(first, interval.wh)]
    shares: list[tuple[datetime, float]] = []
    left = interval.wh
    start = first
    while start + BUCKET < interval.end:
        part = share_within(interval.start, interval.end, interval.wh, start, start + BUCKET)
        shares.append((start, part))
        left -= part
        start += BUCKET
    shares.append((start, max(left, 0.0)))
    return shares


def _overlaps(start: datetime, end: datetime) -> Iterable[tuple[datetime, float]]:
    """(bucket, seconds of [start, end) within it) for every bucket the span touches."""
    bucket = bucket_start(start)
    while bucket < end:
        seconds = (min(end, bucket + BUCKET) - max(start, bucket)).total_seconds()
        if seconds > 0:
            yield bucket, seconds
        bucket += BUCKET


def rollup(
    folded: Sequence[Folded], intervals: Iterable[Interval], rules: EnergyRules, since: datetime
) -> dict[datetime, Bucket]:
    """The buckets from `since` on (a bucket start), from readings in order and the intervals between them.

    `folded` starts with the reading the intervals start from (it may lie before
    `since`); buckets before `since` are left out, so the caller keeps its stored ones.
    """
    buckets: dict[datetime, Bucket] = {}

    def at(start: datetime) -> Bucket:
        bucket = buckets.get(start)
        if bucket is None:
            bucket = buckets[start] = Bucket(start=start)
        return bucket

    for interval in intervals:
        for start, wh in split_buckets(interval):
            if start >= since:
                at(start).wh += wh
    for before, after in zip(folded, folded[1:]):
        span_start, span_end = before.reading.at, after.reading.at
        gap = span_end - span_start > rules.max_gap
        for start, seconds in _overlaps(span_start, span_end):
            if start < since:
                continue
            bucket = at(start)
            bucket.gap = bucket.gap or gap
            if after.reading.is_on and not gap:
                bucket.on_s += seconds
    for item in folded:
        reading = item.reading
        start = bucket_start(reading.at)
        if start < since:
            continue
        bucket = at(start)
        bucket.count += 1
        if reading.power_w is not None:
            power = reading.power_w
            bucket.power_sum += power
            bucket.power_min = power if bucket.power_min is None else min(bucket.power_min, power)
            bucket.power_max = power if bucket.power_max is None else max(bucket.power_max, power)
    return dict(sorted(buckets.items()))


def rollup_channel(readings: Iterable[ChannelReading], rules: EnergyRules, channel: str) -> dict[datetime, Bucket]:
    """Every bucket of one channel from its readings in any order (the first of equal timestamps wins)."""
    unique: dict[datetime, ChannelReading] = {}
    for reading in readings:
        unique.setdefault(reading.at, reading)
    ordered = [unique[at] for at in sorted(unique)]
    if not ordered:
        return {}
    folded, intervals = refold(None, ordered, rules, channel)
    return rollup(folded, intervals, rules, bucket_start(ordered[0].at))
