"""A device as it was at a past moment, folded from the event store rather than read from a table.

The fold is the devices read model's own (`DeviceRow`), over the events stored
up to that moment: the Device stream up to the last version whose timestamp is
not later, and the readings of the local month up to that moment (with the day
before, so the energy fold has the counter it starts from). So the answer is
what the live read model would have shown then, with today's and this month's
energy as of that moment in the configured zone.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from uuid import UUID
from zoneinfo import ZoneInfo

from adapters.eventstore import WattLedger
from domain.calendar import LocalCalendar
from domain.device import Device
from domain.energy import EnergyRules
from domain.meter import MeterDay, meter_day_id, utc_day
from projections.devices import DeviceRow, DeviceView, _view


def _timestamp(event: object) -> datetime:
    moment: datetime = getattr(event, "timestamp")
    return moment


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def device_events_until(app: WattLedger, device_id: UUID, at: datetime) -> list[Device.Event]:
    """The Device stream's events with timestamps not after `at`: the aggregate at that version."""
    events: list[Device.Event] = []
    for event in app.events.get(device_id):
        if _timestamp(event) > at:
            break
        if isinstance(event, Device.Event):
            events.append(event)
    return events


def readings_until(app: WattLedger, device_id: UUID, first: date, at: datetime) -> list[MeterDay.ReadingRecorded]:
    """The device's readings measured and stored by `at`, from UTC day `first` on."""
    found: list[MeterDay.ReadingRecorded] = []
    for day in _days(first, utc_day(at)):
        for event in app.events.get(meter_day_id(device_id, day)):
            if isinstance(event, MeterDay.ReadingRecorded) and _timestamp(event) <= at and event.measured_at <= at:
                found.append(event)
    return found


def device_as_of(
    app: WattLedger, device_id: UUID, at: datetime, zone: ZoneInfo, rules: EnergyRules
) -> DeviceView | None:
    """The device as the read model showed it at `at`, or None if it had not been added yet or was removed then.

    Blocking (it reads the event store): call it from a worker thread.
    """
    device_events = device_events_until(app, device_id, at)
    if not device_events or not isinstance(device_events[0], Device.Added):
        return None
    month_start = datetime.combine(at.astimezone(zone).date().replace(day=1), time(), zone)
    first = utc_day(month_start.astimezone(timezone.utc)) - timedelta(days=1)
    history: list[object] = [*device_events[1:], *readings_until(app, device_id, first, at)]
    history.sort(key=_timestamp)
    row = DeviceRow.added(device_events[0])
    calendar = LocalCalendar(zone)
    for event in history:
        row.apply(event, calendar, rules)
    if row.removed:
        return None
    return _view(row, at, zone)
