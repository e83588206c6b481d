"""Readings: one stream per device per UTC day, so no aggregate grows without bound."""

from __future__ import annotations

from datetime import date, datetime, timezone
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.readings import DeviceSnapshot, OutletReading


def meter_day_id(device_id: UUID, day: date) -> UUID:
    """Id of the readings stream of one device for one UTC day."""
    return uuid5(device_id, day.isoformat())


def utc_day(moment: datetime) -> date:
    return moment.astimezone(timezone.utc).date()


class MeterDay(Aggregate):
    """The readings of one device during one UTC day. A timestamp is recorded at most once."""

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
        self.seen: set[datetime] = set()

    def record(self, measured_at: datetime, snapshot: DeviceSnapshot, *, actor: str) -> bool:
        """Record one reading; a second reading with the same timestamp changes nothing."""
        if utc_day(measured_at).isoformat() != self.day:
            raise ValueError(f"reading at {measured_at.isoformat()} is not in day {self.day}")
        if measured_at in self.seen:
            return False
        self._recorded(
            device_id=self.device_id,
            measured_at=measured_at,
            is_on=snapshot.is_on,
            power_w=snapshot.power_w,
            voltage_v=snapshot.voltage_v,
            current_a=snapshot.current_a,
            total_wh=snapshot.total_wh,
            outlets=list(snapshot.outlets),
            actor=actor,
            rssi=snapshot.rssi,
        )
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
        self.seen.add(measured_at)
