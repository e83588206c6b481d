"""The event store: the eventsourcing library on PostgreSQL, and the application service over it."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Transcoding
from psycopg import sql

from domain.address import DeviceAddress
from domain.device import Device, device_id_for
from domain.errors import DeviceAlreadyExists, DeviceNotFound
from domain.meter import MeterDay, meter_day_id, utc_day
from domain.readings import DeviceSnapshot, OutletReading

EVENTS_SCHEMA = "wl_events"
POLLS_PER_SAVE = 100


class OutletReadingAsDict(Transcoding):
    type = OutletReading
    name = "outlet_reading"

    def encode(self, obj: OutletReading) -> dict[str, Any]:
        return msgspec.structs.asdict(obj)

    def decode(self, data: dict[str, Any]) -> OutletReading:
        return OutletReading(**data)


def store_env(database_url: str, *, pool_size: int = 5) -> dict[str, str]:
    """The eventsourcing settings for a libpq URL (host may be a socket directory)."""
    parts = psycopg.conninfo.conninfo_to_dict(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(parts.get("dbname") or "postgres"),
        "POSTGRES_HOST": str(parts.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(parts.get("port") or "5432"),
        "POSTGRES_USER": str(parts.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(parts.get("password") or ""),
        "POSTGRES_SCHEMA": EVENTS_SCHEMA,
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_LOCK_TIMEOUT": "10",
        "AGGREGATE_CACHE_MAXSIZE": "2000",
    }


def ensure_events_schema(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(EVENTS_SCHEMA)))


class PollResult(msgspec.Struct, frozen=True, kw_only=True):
    """A good poll of one known device."""

    device_id: UUID
    measured_at: datetime
    snapshot: DeviceSnapshot


class WattLedger(Application[UUID]):
    """Every state change of the system goes through here and lands in one event log."""

    name = "WattLedger"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(dict(env or {}))
        # The poll path keeps its aggregates between cycles instead of loading them each
        # time; a conflict with another writer drops them and the cycle is retried.
        self._meters: dict[UUID, MeterDay] = {}
        self._devices: dict[UUID, Device] = {}
        self._write_lock = threading.Lock()

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(OutletReadingAsDict())

    def get_device(self, device_id: UUID) -> Device:
        try:
            device: object = self.repository.get(device_id)
        except AggregateNotFoundError:
            raise DeviceNotFound(f"no device with id {device_id}") from None
        assert isinstance(device, Device)
        return device

    def add_device(
        self,
        address: DeviceAddress,
        snapshot: DeviceSnapshot,
        *,
        alias: str | None,
        actor: str,
        measured_at: datetime,
    ) -> int:
        """Add a device seen at `address`, with its first reading, in one transaction.

        Re-adding a removed device restores it (same id, history kept). Raises
        DeviceAlreadyExists if it is present, also when another writer added it
        first. Returns the notification id of the last event stored.
        """
        with self._write_lock:
            return self._add_device_locked(address, snapshot, alias=alias, actor=actor, measured_at=measured_at)

    def _add_device_locked(
        self, address: DeviceAddress, snapshot: DeviceSnapshot, *, alias: str | None, actor: str, measured_at: datetime
    ) -> int:
        canonical = str(address)
        self._devices.pop(device_id_for(canonical), None)
        try:
            device = self.get_device(device_id_for(canonical))
        except DeviceNotFound:
            device = Device.from_snapshot(canonical, snapshot, alias=alias, actor=actor)
        else:
            if not device.removed:
                raise DeviceAlreadyExists(f"device {canonical} is already added")
            device.restore(snapshot, alias=alias, actor=actor)
        meter = self._meter(device.id, measured_at)
        meter.record(measured_at, snapshot, actor=actor)
        try:
            return self._save(device, meter)
        except IntegrityError:
            self._forget()
            raise DeviceAlreadyExists(f"device {canonical} is already added") from None
        except BaseException:
            self._forget()
            raise

    def remove_device(self, device_id: UUID, *, actor: str) -> int:
        with self._write_lock:
            self._devices.pop(device_id, None)
            device = self.get_device(device_id)
            device.remove(actor=actor)
            return self._save(device)

    def rename_device(self, device_id: UUID, alias: str, *, actor: str) -> int:
        with self._write_lock:
            self._devices.pop(device_id, None)
            device = self.get_device(device_id)
            device.rename(alias, actor=actor)
            return self._save(device)

    def _save(self, *aggregates: Device | MeterDay) -> int:
        recordings = self.save(*aggregates)
        return max((r.notification.id for r in recordings), default=0)

    def record_polls(
        self, results: Iterable[PollResult], offline: Mapping[UUID, int], *, actor: str
    ) -> int:
        """Store one poll cycle: readings, relay changes, online/offline.

        `offline` maps devices that failed this cycle to their count of missed polls.
        Up to POLLS_PER_SAVE devices go into one transaction: the library pipelines a
        save's inserts, and a save of thousands of aggregates was seen to deadlock the
        connection (at 800 aggregates over a Unix socket, 8000 over TCP). A device's
        events always share a transaction. Returns the number of readings recorded.
        On a conflict with another writer the cached streams are dropped and that
        part is retried once from the store.
        """
        batch = list(results)
        failed = list(offline.items())
        recorded = 0
        for start in range(0, max(len(batch), len(failed)), POLLS_PER_SAVE):
            part = batch[start : start + POLLS_PER_SAVE]
            missed = dict(failed[start : start + POLLS_PER_SAVE])
            for attempt in (1, 2):
                try:
                    with self._write_lock:
                        recorded += self._record_polls(part, missed, actor=actor)
                    break
                except IntegrityError:
                    self._forget()
                    if attempt == 2:
                        raise
                except BaseException:
                    self._forget()
                    raise
        return recorded

    def _forget(self) -> None:
        self._meters.clear()
        self._devices.clear()

    def _polled_device(self, device_id: UUID) -> Device:
        device = self._devices.get(device_id)
        if device is None:
            device = self._devices[device_id] = self.get_device(device_id)
        return device

    def _record_polls(
        self, batch: list[PollResult], offline: Mapping[UUID, int], *, actor: str
    ) -> int:
        aggregates: list[Device | MeterDay] = []
        recorded = 0
        for result in batch:
            try:
                device = self._polled_device(result.device_id)
            except DeviceNotFound:
                continue
            if device.removed:
                continue
            device.came_online(actor=actor)
            device.observe_relays(result.snapshot, actor=actor)
            meter = self._meter(result.device_id, result.measured_at)
            recorded += meter.record(result.measured_at, result.snapshot, actor=actor)
            aggregates += [device, meter]
        for device_id, missed in offline.items():
            try:
                device = self._polled_device(device_id)
            except DeviceNotFound:
                continue
            device.went_offline(missed, actor=actor)
            aggregates.append(device)
        self.save(*aggregates)
        return recorded

    def _meter(self, device_id: UUID, measured_at: datetime) -> MeterDay:
        day = utc_day(measured_at)
        stream_id = meter_day_id(device_id, day)
        meter = self._meters.get(stream_id)
        if meter is None:
            try:
                loaded: object = self.repository.get(stream_id)
                assert isinstance(loaded, MeterDay)
                meter = loaded
            except AggregateNotFoundError:
                meter = MeterDay(device_id=device_id, day=day.isoformat())
            self._meters = {k: v for k, v in self._meters.items() if v.day >= meter.day}
            self._meters[stream_id] = meter
        return meter
