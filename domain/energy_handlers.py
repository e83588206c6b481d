"""Energy and money use cases: importing readings and setting rate versions, over the ports only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from functools import partial
from typing import Any
from uuid import UUID

import msgspec

from domain.commands import Command
from domain.errors import DeviceNotFound, InvalidRequest
from domain.imports import DeviceShape, ImportedReading, check_readings, snapshots
from domain.meter import MeterDay, utc_day
from domain.ports import Clock, EventStore
from domain.rates import TARIFF_ID, RateVersion, Tariff, parse_rate
from domain.readings import DeviceSnapshot
from domain.retry import retrying
from domain.text import check_text
from domain.usage import EnergySettings

class ImportReadings(Command, frozen=True, kw_only=True, tag="import_readings"):
    device_id: UUID
    readings: tuple[ImportedReading, ...]


class SetRate(Command, frozen=True, kw_only=True, tag="set_rate"):
    """A new rate version from a request body (Kasa Monitor shape); `default_zone` when it names none."""

    body: dict[str, Any]
    default_zone: str = "UTC"


class SetSessionThreshold(Command, frozen=True, kw_only=True, tag="set_session_threshold"):
    device_id: UUID
    threshold_w: float | None


class ReadingsImported(msgspec.Struct, frozen=True, kw_only=True):
    received: int
    recorded: int
    duplicates: int
    position: int


class RateStored(msgspec.Struct, frozen=True, kw_only=True):
    rate: RateVersion
    position: int


class EnergyHandlers:
    """The write side of readings import and rates."""

    def __init__(self, store: EventStore, clock: Clock, settings: EnergySettings | None = None) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings or EnergySettings()

    async def import_readings(self, command: ImportReadings) -> ReadingsImported:
        """Check every reading, then store them as `MeterDay.ReadingRecorded` events, in one transaction.

        Raises DeviceNotFound for an unknown or removed device and InvalidReadings
        (nothing stored) for a bad item. A reading whose device and timestamp are
        already recorded records nothing. The request's readings are stored whole or
        not at all (the store's inserts are bounded whatever their size); a save that
        clashes with another writer (the poller, on today's meter) is decided again once.
        """
        device = await self.store.device(command.device_id)
        if device is None or device.removed:
            raise DeviceNotFound(f"no device with id {command.device_id}")
        shape = DeviceShape(
            alias=device.alias, model=device.model, device_type=device.device_type, mac=device.mac,
            outlets=tuple(device.outlets),
        )  # fmt: skip
        checked = check_readings(
            command.readings, shape, self.clock.now(), max_power_w=self.settings.rules.max_power_w
        )
        by_day: dict[date, list[tuple[datetime, DeviceSnapshot]]] = {}
        for at, snapshot in snapshots(checked, shape):
            by_day.setdefault(utc_day(at), []).append((at, snapshot))
        recorded, position = await retrying(
            partial(self._store_days, command.device_id, list(by_day.items()), command.actor)
        )
        return ReadingsImported(
            received=len(command.readings), recorded=recorded, duplicates=len(command.readings) - recorded,
            position=position,
        )  # fmt: skip

    async def _store_days(
        self, device_id: UUID, days: Sequence[tuple[date, list[tuple[datetime, DeviceSnapshot]]]], actor: str
    ) -> tuple[int, int]:
        meters: list[MeterDay] = []
        recorded = 0
        for day, readings in days:
            meter = await self.store.meter_day(device_id, day)
            meter = meter if meter is not None else MeterDay(device_id=device_id, day=day.isoformat())
            for at, snapshot in readings:
                if meter.needs_history(at):
                    meter.recall(await self.store.recorded_times(meter.id))
                recorded += meter.record(at, snapshot, actor=actor)
            meters.append(meter)
        if not recorded:
            return 0, 0
        return recorded, await self.store.save(*meters)

    async def set_session_threshold(self, command: SetSessionThreshold) -> int:
        """Record a device's session threshold; returns its position. Raises DeviceNotFound, InvalidRequest
        for a threshold that is not a finite number from 0 to 1,000,000 W."""
        if command.threshold_w is not None and not 0 <= command.threshold_w <= 1e6:
            raise InvalidRequest("threshold_w must be a number from 0 to 1000000 W, or null for the default")

        async def attempt() -> int:
            device = await self.store.device(command.device_id)
            if device is None or device.removed:
                raise DeviceNotFound(f"no device with id {command.device_id}")
            device.set_session_threshold(command.threshold_w, actor=command.actor)
            return await self.store.save(device)

        return await retrying(attempt)

    async def set_rate(self, command: SetRate) -> RateStored:
        """Validate and store a new rate version. Raises InvalidRate naming the first bad field, InvalidText
        for a period label that holds a character text may not hold."""

        async def attempt() -> RateStored:
            tariff = await self.store.aggregate(TARIFF_ID, Tariff)
            if tariff is None:
                tariff = Tariff(actor=command.actor)
            rate = parse_rate(
                command.body, version=tariff.versions + 1, now=self.clock.now(), default_zone=command.default_zone,
                actor=command.actor,
            )  # fmt: skip
            _check_labels(rate)
            tariff.set_rate(rate, actor=command.actor)
            return RateStored(rate=rate, position=await self.store.save(tariff))

        return await retrying(attempt)


def _check_labels(rate: RateVersion) -> None:
    """Raises InvalidText for a time-of-use period label that breaks the rule for free text."""
    for field, periods in (
        ("time_of_use_rates", rate.time_of_use_rates), ("weekend_time_of_use_rates", rate.weekend_time_of_use_rates)
    ):
        for number, period in enumerate(periods):
            check_text(period.label, field=f"{field}[{number}].label")

