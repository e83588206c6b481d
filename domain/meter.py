"""Readings: one stream per device per UTC day, so no aggregate grows without bound.

A meter day keeps what deciding a duplicate needs in a state of bounded size: the
newest RECENT_READINGS timestamps and the newest timestamp dropped from them. A
reading after that one is decided from the recent timestamps alone, which covers
polling and the retry of a save. An older reading (an import, a late retry) is
decided against the day's whole history, which the caller recalls from the store
first (`needs_history`, `recall`). So loading a meter day needs its latest snapshot
and the few events after it, never the whole day, and a timestamp is still
recorded at most once.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Any, Self
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.domain import Snapshot as AggregateSnapshot

from domain.readings import DeviceSnapshot, OutletReading

RECENT_READINGS = 16
"""Timestamps a meter day keeps in its state; older ones are looked up in the store when needed."""


@lru_cache(maxsize=256)
def _day_span(day: str) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day named by its ISO date."""
    start = datetime.combine(date.fromisoformat(day), time(), timezone.utc)
    return start, start + timedelta(days=1)


class HistoryNotRecalled(LookupError):
    """A reading older than the meter day's recent timestamps was decided before its history was recalled."""


def meter_day_id(device_id: UUID, day: date) -> UUID:
    """Id of the readings stream of one device for one UTC day."""
    return uuid5(device_id, day.isoformat())


def utc_day(moment: datetime) -> date:
    return moment.astimezone(timezone.utc).date()


class MeterDay(Aggregate):
    """The readings of one device during one UTC day. A timestamp is recorded at most once.

    State: `recent`, the newest recorded timestamps in order (at most RECENT_READINGS),
    `forgotten`, the newest timestamp dropped from them (None while none was), and
    `count`, the readings recorded. Every recorded timestamp after `forgotten` is in
    `recent`. `_recalled` is not state: the day's timestamps read from the store by
    `recall`, kept up to date while this instance records.
    """

    class Snapshot(AggregateSnapshot):
        """The state of a meter day at a version; the recalled history is not state and is left out."""

        @classmethod
        def take(cls, aggregate: Any) -> Self:
            snapshot = super().take(aggregate)
            snapshot.state["_recalled"] = None
            return snapshot

    class Opened(Aggregate.Created):
        device_id: UUID
        day: str

    class ReadingRecorded(Aggregate.Event):
        device_id: UUID
        measured_at: datetime
        is_on: bool
        power_w: float | None
        voltage_v: float | None
        current_a: float | None
        total_wh: float | None
        outlets: list[OutletReading]
        actor: str
        rssi: int | None = None

    @staticmethod
    def create_id(device_id: UUID, day: str) -> UUID:
        return meter_day_id(device_id, date.fromisoformat(day))

    @event(Opened)
    def __init__(self, *, device_id: UUID, day: str) -> None:
        self.device_id = device_id
        self.day = day
        self.recent: list[datetime] = []
        self.forgotten: datetime | None = None
        self.count = 0
        self._recalled: set[datetime] | None = None

    def needs_history(self, measured_at: datetime) -> bool:
        """Whether deciding a reading at `measured_at` needs the day's timestamps from the store first."""
        return self._recalled is None and self.forgotten is not None and measured_at <= self.forgotten

    def recall(self, stored: Iterable[datetime]) -> None:
        """Take the timestamps of the readings the store holds for this day (and keep the ones decided here)."""
        recalled = set(stored)
        recalled.update(e.measured_at for e in self.pending_events if isinstance(e, MeterDay.ReadingRecorded))
        recalled.update(self.recent)
        self._recalled = recalled

    def has(self, measured_at: datetime) -> bool:
        """Whether a reading at `measured_at` is recorded. Raises HistoryNotRecalled when `needs_history`."""
        if self._recalled is not None:
            return measured_at in self._recalled
        if self.forgotten is not None and measured_at <= self.forgotten:
            raise HistoryNotRecalled(f"{measured_at.isoformat()} is older than the recent readings of {self.day}")
        at = bisect_left(self.recent, measured_at)
        return at < len(self.recent) and self.recent[at] == measured_at

    def record(self, measured_at: datetime, snapshot: DeviceSnapshot, *, actor: str) -> bool:
        """Record one reading; a second reading with the same timestamp changes nothing.

        Raises ValueError for a timestamp outside the day, HistoryNotRecalled for one
        that `needs_history` before `recall`."""
        start, end = _day_span(self.day)
        if measured_at.tzinfo is None or not start <= measured_at < end:
            raise ValueError(f"reading at {measured_at.isoformat()} is not in day {self.day}")
        if self.has(measured_at):
            return False
        # The event `_recorded` would trigger, made directly: the library's trigger spends most of a
        # reading's time matching arguments to parameters. Same class, fields, version and timestamp.
        timestamp = MeterDay.ReadingRecorded.create_timestamp()
        version = self.version + 1
        make: Callable[..., MeterDay.ReadingRecorded] = MeterDay.ReadingRecorded
        recorded = make(
            originator_id=self.id, originator_version=version, timestamp=timestamp, device_id=self.device_id,
            measured_at=measured_at, is_on=snapshot.is_on, power_w=snapshot.power_w, voltage_v=snapshot.voltage_v,
            current_a=snapshot.current_a, total_wh=snapshot.total_wh, outlets=list(snapshot.outlets), actor=actor,
            rssi=snapshot.rssi,
        )  # fmt: skip
        self._took(measured_at)
        self.version = version
        self.modified_on = timestamp
        self.pending_events.append(recorded)
        return True

    @event(ReadingRecorded)
    def _recorded(
        self,
        device_id: UUID,
        measured_at: datetime,
        is_on: bool,
        power_w: float | None,
        voltage_v: float | None,
        current_a: float | None,
        total_wh: float | None,
        outlets: list[OutletReading],
        actor: str,
        rssi: int | None = None,
    ) -> None:
        self._took(measured_at)

    def _took(self, measured_at: datetime) -> None:
        """The state change of one recorded reading."""
        self.count += 1
        if self._recalled is not None:
            self._recalled.add(measured_at)
        if self.forgotten is not None and measured_at <= self.forgotten:
            return
        insort(self.recent, measured_at)
        if len(self.recent) > RECENT_READINGS:
            self.forgotten = self.recent.pop(0)
