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
from math import isfinite
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec

from domain.energy import Channel, EnergyRules, Interval, MeterState, channel_step, measured, share_within

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
    meter: str | None = None
    last: Channel | None = None
    if start is not None:
        meter = start.reading.meter
        last = Channel(at=start.reading.at, power_w=start.reading.power_w, counted_wh=start.counted_wh)
    folded: list[Folded] = []
    intervals: list[Interval] = []
    for reading in readings:
        before = last if meter == reading.meter else None
        if before is not None and reading.at <= before.at:
            continue
        last, closed = channel_step(before, channel, reading.power_w, reading.total_wh, reading.at, rules)
        meter = reading.meter
        if closed is None:
            folded.append(Folded(reading=reading, counted_wh=last.counted_wh, wh=None))
        else:
            folded.append(Folded(reading=reading, counted_wh=last.counted_wh, wh=closed.wh))
            intervals.append(closed)
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


_MICROSECOND = timedelta(microseconds=1)
_STEP = BUCKET // _MICROSECOND
"""A bucket in microseconds: `rollup` works in whole microseconds since EPOCH, where a timedelta's
`total_seconds()` is the same count divided by 10**6, so every share and second is the same float."""


def rollup(
    folded: Sequence[Folded], intervals: Iterable[Interval], rules: EnergyRules, since: datetime
) -> dict[datetime, Bucket]:
    """The buckets from `since` on (a bucket start), from readings in order and the intervals between them.

    `folded` starts with the reading the intervals start from (it may lie before
    `since`); buckets before `since` are left out, so the caller keeps its stored ones.
    Each bucket gets the same sums, added in the same order, as `split_buckets` and
    `share_within` would give it, computed on microseconds since EPOCH.
    """
    step = _STEP
    first_index = -((EPOCH - since) // BUCKET)
    buckets: dict[int, Bucket] = {}
    found = buckets.get
    moments: dict[datetime, int] = {}
    max_gap = rules.max_gap // _MICROSECOND
    low: int | None = None
    # One pass over the readings: each one's bucket counts it and its power, and the time since the reading
    # before is the on-time (and the gap) of the buckets in between. Each sum is added in reading order.
    for item in folded:
        reading = item.reading
        high = moments[reading.at] = (reading.at - EPOCH) // _MICROSECOND
        if low is not None:
            gap = high - low > max_gap
            on = reading.is_on and not gap
            index = low // step
            edge = index * step
            while edge < high:
                index_end = edge + step
                if index >= first_index:
                    seconds = (min(high, index_end) - max(low, edge)) / 1_000_000
                    if seconds > 0:
                        if (bucket := found(index)) is None:
                            bucket = buckets[index] = Bucket(start=EPOCH + index * BUCKET)
                        bucket.gap = bucket.gap or gap
                        if on:
                            bucket.on_s += seconds
                index += 1
                edge = index_end
        low = high
        index = high // step
        if index < first_index:
            continue
        if (bucket := found(index)) is None:
            bucket = buckets[index] = Bucket(start=EPOCH + index * BUCKET)
        bucket.count += 1
        if (power := reading.power_w) is not None:
            bucket.power_sum += power
            bucket.power_min = power if bucket.power_min is None else min(bucket.power_min, power)
            bucket.power_max = power if bucket.power_max is None else max(bucket.power_max, power)
    # Then each interval's energy, split over the buckets it spans in proportion to time.
    for interval in intervals:
        if (begin := moments.get(interval.start)) is None:
            begin = moments[interval.start] = (interval.start - EPOCH) // _MICROSECOND
        if (end := moments.get(interval.end)) is None:
            end = moments[interval.end] = (interval.end - EPOCH) // _MICROSECOND
        wh = interval.wh
        index = begin // step
        edge = (index + 1) * step
        if edge >= end:
            if index >= first_index:
                if (bucket := found(index)) is None:
                    bucket = buckets[index] = Bucket(start=EPOCH + index * BUCKET)
                bucket.wh += wh
            continue
        left = wh
        length = (end - begin) / 1_000_000
        while edge < end:
            overlap = (min(end, edge) - max(begin, edge - step)) / 1_000_000
            part = wh * overlap / length if overlap > 0 else 0.0
            if index >= first_index:
                if (bucket := found(index)) is None:
                    bucket = buckets[index] = Bucket(start=EPOCH + index * BUCKET)
                bucket.wh += part
            left -= part
            index += 1
            edge += step
        if index >= first_index:
            if (bucket := found(index)) is None:
                bucket = buckets[index] = Bucket(start=EPOCH + index * BUCKET)
            bucket.wh += max(left, 0.0)
    return {buckets[i].start: buckets[i] for i in sorted(buckets)}


Measured = tuple[datetime, str, float | None, float | None, bool]
"""One reading of a channel as plain values: at, meter, power_w, total_wh, is_on."""
Kept = tuple[datetime, str, float | None, float | None, bool, float | None, float | None]
"""A folded reading as a read model keeps it: at, meter, power_w, total_wh, is_on, counted_wh, wh."""
Row = tuple[UUID, str, datetime, str, float | None, float | None, bool, float | None, float | None]
"""A folded reading of a device's channel, as a read model stores it: device, channel, then as `Kept`."""


_STARTS: dict[int, datetime] = {}
"""Bucket starts by index since EPOCH: the same few are met in every channel, each made once."""
_MICROS: dict[datetime, int] = {}
"""Moments met by `fold_buckets`, in microseconds since EPOCH: the channels of a fleet are read at the same
few moments, each of which is converted once."""


def fold_buckets(
    start: Kept | None, readings: Iterable[Measured], rules: EnergyRules, since: datetime, device: UUID,
    channel: str,
) -> tuple[list[Row], list[Bucket]]:
    """`refold` from `start` over `readings` (sorted, all after it) of `device`'s `channel`, then `rollup` of
    `start` and them from `since`, in one pass.

    Returns the readings folded, as rows (without `start`), and the buckets from `since`
    on in start order: the values `refold` and `rollup` give, every sum added in the same
    order (a bucket's on-time and power in reading order, its energy in interval order),
    with no reading, interval or meter state built between.
    """
    step = _STEP
    first_index = -((EPOCH - since) // BUCKET)
    max_gap = rules.max_gap // _MICROSECOND
    max_power_w, resolution_wh = rules.max_power_w, rules.resolution_wh
    buckets: dict[int, Bucket] = {}
    found = buckets.get
    folded: list[Row] = []
    micros = _MICROS
    if len(micros) > 65_536:
        micros.clear()
    meter: str | None = None
    last_at = EPOCH
    last_power: float | None = None
    last_counted: float | None = None
    low = 0
    low_index: int | None = None
    """The bucket of the reading before (None: none yet); `low`, its moment in microseconds since EPOCH."""
    bucket: Bucket | None
    if start is not None:
        last_at, meter, last_power, last_counted = start[0], start[1], start[2], start[5]
        low = (last_at - EPOCH) // _MICROSECOND
        low_index = low // step
        if low_index >= first_index:
            bucket = buckets[low_index] = _bucket(low_index)
            bucket.count += 1
            if last_power is not None:
                bucket.power_sum += last_power
                bucket.power_min = bucket.power_max = last_power
    for at, reading_meter, power_w, total_wh, is_on in readings:
        same = meter is not None and meter == reading_meter
        if same and at <= last_at:
            continue
        # The fold: `channel_step`, a rising counter's case (nearly every reading) written out.
        if (high := micros.get(at)) is None:
            high = micros[at] = (at - EPOCH) // _MICROSECOND
        counter = total_wh if total_wh is not None and isfinite(total_wh) and total_wh >= 0 else None
        power = power_w if power_w is not None and isfinite(power_w) else None
        wh: float | None = None
        if not same:
            counted = counter
        elif counter is not None and last_counted is not None and counter >= last_counted:
            rise = counter - last_counted
            plausible = max_power_w * ((high - low) / 1_000_000) / 3600 + resolution_wh
            counted, wh = counter, rise if rise <= plausible else 0.0
        else:
            counted, wh = measured(last_at, last_power, last_counted, at, power, counter, rules)
        folded.append((device, channel, at, reading_meter, power_w, total_wh, is_on, counted, wh))
        meter, last_at, last_power, last_counted = reading_meter, at, power, counted
        # The rollup: the on-time (and gap) since the reading before, this reading's count and power, and the
        # energy of the interval it closes, split over the buckets it spans in proportion to time.
        index = high // step
        if index == low_index:  # within the bucket of the reading before: all of it goes to that bucket
            if index >= first_index:
                if (bucket := found(index)) is None:
                    bucket = buckets[index] = _bucket(index)
                if high > low:
                    gap = high - low > max_gap
                    bucket.gap = bucket.gap or gap
                    if is_on and not gap:
                        bucket.on_s += (high - low) / 1_000_000
                bucket.count += 1
                if power_w is not None:
                    _add_power(bucket, power_w)
                if wh is not None:
                    bucket.wh += wh
            low = high
            continue
        if low_index is not None:
            gap = high - low > max_gap
            on = is_on and not gap
            edge_index = low_index
            edge = edge_index * step
            while edge < high:
                edge_end = edge + step
                if edge_index >= first_index:
                    seconds = ((high if high < edge_end else edge_end) - (low if low > edge else edge)) / 1_000_000
                    if seconds > 0:
                        if (bucket := found(edge_index)) is None:
                            bucket = buckets[edge_index] = _bucket(edge_index)
                        bucket.gap = bucket.gap or gap
                        if on:
                            bucket.on_s += seconds
                edge_index += 1
                edge = edge_end
        if index >= first_index:
            if (bucket := found(index)) is None:
                bucket = buckets[index] = _bucket(index)
            bucket.count += 1
            if power_w is not None:
                _add_power(bucket, power_w)
        if wh is not None:
            _split(buckets, first_index, low, high, wh)
        low, low_index = high, index
    return folded, [buckets[i] for i in sorted(buckets)]


def _bucket(index: int) -> Bucket:
    """A new bucket, the `index`th since EPOCH."""
    if (start := _STARTS.get(index)) is None:
        if len(_STARTS) > 65_536:
            _STARTS.clear()
        start = _STARTS[index] = EPOCH + index * BUCKET
    return Bucket(start=start)


def _add_power(bucket: Bucket, power_w: float) -> None:
    """Count a reading's power in its bucket; `min` and `max` as the builtins keep them (the first of equals)."""
    bucket.power_sum += power_w
    if (power_min := bucket.power_min) is None or power_w < power_min:
        bucket.power_min = power_w
    if (power_max := bucket.power_max) is None or power_w > power_max:
        bucket.power_max = power_w


def _split(buckets: dict[int, Bucket], first_index: int, begin: int, end: int, wh: float) -> None:
    """Add the energy of the interval [begin, end) (microseconds since EPOCH) to the buckets from `first_index`
    on, as `rollup` splits it."""
    step = _STEP
    index = begin // step
    edge = (index + 1) * step
    if edge >= end:
        if index >= first_index:
            if (bucket := buckets.get(index)) is None:
                bucket = buckets[index] = _bucket(index)
            bucket.wh += wh
        return
    left = wh
    length = (end - begin) / 1_000_000
    while edge < end:
        overlap = ((end if end < edge else edge) - (begin if begin > edge - step else edge - step)) / 1_000_000
        part = wh * overlap / length if overlap > 0 else 0.0
        if index >= first_index:
            if (bucket := buckets.get(index)) is None:
                bucket = buckets[index] = _bucket(index)
            bucket.wh += part
        left -= part
        index += 1
        edge += step
    if index >= first_index:
        if (bucket := buckets.get(index)) is None:
            bucket = buckets[index] = _bucket(index)
        bucket.wh += max(left, 0.0)


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
