"""Energy from a meter's readings: a fold giving intervals, and their split across local periods.

`step` folds one reading into a meter's state and returns the intervals it
closes: the energy measured between the channel's previous reading and this
one. A plug has one channel (`DEVICE_CHANNEL`); a strip has one per outlet.

The rules, per channel:

- With a cumulative counter (`total_wh`) on both readings, energy is the
  counter's rise. A counter that falls by more than `reset_drop` of its high is
  a reset: the energy since it is the new value. A smaller dip is jitter: nothing
  is counted until the counter passes its previous high, so no energy is counted
  twice. A rise that would need more than `max_power_w` over the interval is a
  reset to an unrelated value: counting starts from it.
- Without a counter, power (at most `max_power_w`) is integrated, trapezoid
  rule, only across intervals shorter than `max_gap`: across a longer gap
  nothing is known, and nothing is invented.
- A reading of another meter (a new MAC) starts a new state: counters are never
  compared across meters. A reading not newer than the meter's latest changes
  nothing, so late and duplicate readings are never counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from math import isfinite
from zoneinfo import ZoneInfo

import msgspec

from domain.calendar import Period, Unit, local_periods
from domain.meter import MeterDay

DEVICE_CHANNEL = "device"


class EnergyRules(msgspec.Struct, frozen=True, kw_only=True):
    """Limits that tell measured energy from glitches.

    `resolution_wh` is the counter's step: a rise of one step is plausible over
    any interval, however short.
    """

    max_power_w: float = 3700.0
    max_gap: timedelta = timedelta(minutes=3)
    reset_drop: float = 0.10
    resolution_wh: float = 1.0

    @classmethod
    def for_polling_interval(cls, seconds: float, *, max_power_w: float = 3700.0) -> EnergyRules:
        """Rules for a meter polled every `seconds`: power is integrated across at most three polls."""
        return cls(max_power_w=max_power_w, max_gap=timedelta(seconds=3 * seconds))


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """What one channel of a meter measured."""

    channel: str
    power_w: float | None = None
    total_wh: float | None = None


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """One reading of a meter (`meter` tells meters apart: a device's MAC)."""

    meter: str
    at: datetime
    samples: tuple[Sample, ...]


class Channel(msgspec.Struct, frozen=True, kw_only=True):
    """A channel's last reading; `counted_wh` is the counter value up to which energy is counted."""

    at: datetime
    power_w: float | None = None
    counted_wh: float | None = None


class MeterState(msgspec.Struct, frozen=True, kw_only=True):
    """The fold's state for one meter; plain data, so read models can store it with their rows."""

    meter: str
    at: datetime
    channels: dict[str, Channel]


class Interval(msgspec.Struct, frozen=True, kw_only=True):
    """`wh` used on `channel` during [start, end), spread evenly over it."""

    channel: str
    start: datetime
    end: datetime
    wh: float


class Share(msgspec.Struct, frozen=True, kw_only=True):
    """The part of an interval's energy that falls in one period."""

    period: Period
    wh: float


def reading_of(event: MeterDay.ReadingRecorded, meter: str) -> Reading:
    """The meter reading a recorded event carries: one sample per outlet for a strip, else one."""
    if event.outlets:
        samples = tuple(Sample(channel=o.outlet_id, power_w=o.power_w, total_wh=o.total_wh) for o in event.outlets)
    else:
        samples = (Sample(channel=DEVICE_CHANNEL, power_w=event.power_w, total_wh=event.total_wh),)
    return Reading(meter=meter, at=event.measured_at, samples=samples)


def step(state: MeterState | None, reading: Reading, rules: EnergyRules) -> tuple[MeterState, list[Interval]]:
    """Fold one reading into a meter's state; returns the new state and the intervals it closes."""
    if state is not None and state.meter == reading.meter and reading.at <= state.at:
        return state, []
    previous = state.channels if state is not None and state.meter == reading.meter else {}
    channels = dict(previous)
    intervals: list[Interval] = []
    for sample in reading.samples:
        channels[sample.channel], interval = _channel_step(previous.get(sample.channel), sample, reading.at, rules)
        if interval is not None:
            intervals.append(interval)
    return MeterState(meter=reading.meter, at=reading.at, channels=channels), intervals


def fold(
    readings: Iterable[Reading], rules: EnergyRules, state: MeterState | None = None
) -> tuple[MeterState | None, list[Interval]]:
    """Fold readings in the order given; returns the final state and every interval closed."""
    intervals: list[Interval] = []
    for reading in readings:
        state, closed = step(state, reading, rules)
        intervals += closed
    return state, intervals


def _channel_step(
    before: Channel | None, sample: Sample, at: datetime, rules: EnergyRules
) -> tuple[Channel, Interval | None]:
    return channel_step(before, sample.channel, sample.power_w, sample.total_wh, at, rules)


def channel_step(
    before: Channel | None, channel: str, power_w: float | None, total_wh: float | None, at: datetime,
    rules: EnergyRules,
) -> tuple[Channel, Interval | None]:
    """Fold one channel's measurement at `at` into its last reading (`before`, None: the meter's first or
    another meter's); `step` does this for each sample of a reading."""
    # Only finite measurements count (and no negative counter).
    counter = total_wh if total_wh is not None and isfinite(total_wh) and total_wh >= 0 else None
    power = power_w if power_w is not None and isfinite(power_w) else None
    if before is None:
        return Channel(at=at, power_w=power, counted_wh=counter), None
    counted, wh = measured(before.at, before.power_w, before.counted_wh, at, power, counter, rules)
    after = Channel(at=at, power_w=power, counted_wh=counted)
    return after, None if wh is None else Interval(channel=channel, start=before.at, end=at, wh=wh)


def measured(
    since: datetime, power_before: float | None, counted_before: float | None, at: datetime, power: float | None,
    counter: float | None, rules: EnergyRules,
) -> tuple[float | None, float | None]:
    """(counter value counted up to, energy used over [since, at) or None) for a channel last read at `since`
    and read again at `at`; `power` finite, `counter` finite and not negative, or None."""
    seconds = (at - since).total_seconds()
    if counter is not None and counted_before is not None:
        # The counter's rise since its high, all of it counted if plausible; a fall by more than
        # `reset_drop` is a reset (the new value is what was used since); a smaller dip is jitter.
        high = counted_before
        plausible = rules.max_power_w * seconds / 3600 + rules.resolution_wh
        if counter >= high:
            rise = counter - high
            return counter, rise if rise <= plausible else 0.0
        if counter < high * (1 - rules.reset_drop):
            return counter, counter if counter <= plausible else 0.0
        return high, 0.0
    if seconds >= rules.max_gap.total_seconds():
        return counter, None
    known = [p for p in (power_before, power) if p is not None]
    if not known:
        return counter, None
    watts = min(max(sum(known) / len(known), 0.0), rules.max_power_w)
    return counter, watts * seconds / 3600


class DeviceFold:
    """`step` over one meter's plug readings (one sample each, on `DEVICE_CHANNEL`) in turn, the state
    kept in plain attributes between them.

    A replay folds a plug's readings one after another; building a `Reading`, a
    `MeterState`, its channels and an `Interval` for each costs more than the
    arithmetic. This gives, reading by reading, the energy `step` would close, and at
    the end (`state`) the state it would leave: the same values, computed alike.
    """

    __slots__ = ("meter", "at", "_state", "_channels", "_since", "_power_w", "_counted_wh", "_rules", "_moved")

    def __init__(self, state: MeterState | None, meter: str, rules: EnergyRules) -> None:
        self.meter = meter
        self._state, self._rules, self._moved = state, rules, False
        same = state is not None and state.meter == meter
        self.at: datetime | None = state.at if state is not None and same else None
        """The meter's latest reading folded: a reading not newer changes nothing."""
        self._channels = state.channels if state is not None and same else {}
        last = self._channels.get(DEVICE_CHANNEL)
        self._since = None if last is None else last.at
        self._power_w = None if last is None else last.power_w
        self._counted_wh = None if last is None else last.counted_wh

    def add(self, at: datetime, power_w: float | None, total_wh: float | None) -> tuple[datetime, float] | None:
        """Fold one reading; the (start, energy) of the interval it closes (it ends at `at`) as `step` gives it,
        or None where `step` closes none."""
        if self.at is not None and at <= self.at:
            return None
        self.at, self._moved = at, True
        # Only finite measurements count (and no negative counter), as in `channel_step`.
        counter = total_wh if total_wh is not None and isfinite(total_wh) and total_wh >= 0 else None
        power = power_w if power_w is not None and isfinite(power_w) else None
        since, high = self._since, self._counted_wh
        if since is None:
            self._since, self._power_w, self._counted_wh = at, power, counter
            return None
        if counter is not None and high is not None and counter >= high:
            # A counter that rose (nearly every reading): `measured`'s first case, written out.
            rules = self._rules
            rise = counter - high
            plausible = rules.max_power_w * (at - since).total_seconds() / 3600 + rules.resolution_wh
            self._since, self._power_w, self._counted_wh = at, power, counter
            return since, rise if rise <= plausible else 0.0
        self._counted_wh, wh = measured(since, self._power_w, high, at, power, counter, self._rules)
        self._since, self._power_w = at, power
        return None if wh is None else (since, wh)

    def state(self) -> MeterState | None:
        """The state the readings folded so far leave (the one given, unchanged, if they changed nothing)."""
        if not self._moved:
            return self._state
        assert self.at is not None and self._since is not None  # set by the first reading folded
        channels = dict(self._channels)
        channels[DEVICE_CHANNEL] = Channel(at=self._since, power_w=self._power_w, counted_wh=self._counted_wh)
        return MeterState(meter=self.meter, at=self.at, channels=channels)


def share_within(start: datetime, end: datetime, wh: float, window_start: datetime, window_end: datetime) -> float:
    """The part of `wh`, used evenly over [start, end), that falls in [window_start, window_end)."""
    if end <= start:
        return wh if window_start <= start < window_end else 0.0
    overlap = (min(end, window_end) - max(start, window_start)).total_seconds()
    if overlap <= 0:
        return 0.0
    return wh * overlap / (end - start).total_seconds()


def split(interval: Interval, zone: ZoneInfo, unit: Unit) -> list[Share]:
    """An interval's energy by local day or month of `zone`, in order; the shares sum to the whole.

    An interval inside one period (the usual case) gives one share. The last
    share takes what the others leave, so rounding never loses or adds energy.
    """
    periods = list(local_periods(interval.start, interval.end, zone, unit))
    if len(periods) == 1:
        return [Share(period=periods[0], wh=interval.wh)]
    shares: list[Share] = []
    left = interval.wh
    for period in periods[:-1]:
        part = share_within(interval.start, interval.end, interval.wh, period.start, period.end)
        shares.append(Share(period=period, wh=part))
        left -= part
    shares.append(Share(period=periods[-1], wh=max(left, 0.0)))
    return shares
