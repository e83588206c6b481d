"""Data export files: device readings from the event store written to CSV, JSON or Excel files.

The jobs and the retention sweep are the use case `domain.export_jobs.DataExportJobs`; it writes
through `ExportFileStore`, each file in a worker thread (reading the store and writing the file
block). The files are written by `adapters.export_files` (JSON through its JSON Lines writer,
then wrapped into one JSON array) under `<data dir>/exports/<export id>.<ext>`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import anyio.from_thread
import anyio.to_thread
import psycopg
from eventsourcing.utils import get_topic

from adapters.eventlog import EventLog
from adapters.eventstore import WattLedger
from adapters.export_files import open_writer, sha256_file
from domain.energy import EnergyRules
from domain.export_ports import ExportCatalog, WrittenExport
from domain.exports import DeviceLabel, ExportSpec, bucket_rows, raw_rows
from domain.meter import MeterDay, meter_day_id, utc_day

__all__ = ["EXTENSION", "ExportCatalog", "ExportFileStore", "blocking_prices", "device_readings", "export_rows",
           "readings_stored", "write_export"]

WRITER_FORMAT = {"csv": "csv", "json": "jsonl", "excel": "xlsx"}
EXTENSION = {"csv": ".csv", "json": ".json", "excel": ".xlsx"}
PRIMING = timedelta(days=1)
"""How far before an export's start readings are folded, so its first bucket has the counter to start from."""
READ_AHEAD = timedelta(days=1)
"""How far past now a reading can have been measured (imports take 5 minutes ahead): no later day is read."""
PROBE_DAYS = 366
"""Meter days looked up in one query: a range of years costs a query a year to find the days holding readings."""
PRICED_SPAN = timedelta(days=31)
"""Priced 5-minute buckets are read a month at a time (about 9,000 rows a device)."""
PricedBuckets = Callable[[UUID, datetime, datetime], Sequence[tuple[datetime, Decimal]]]
"""(start, cost) of a device's priced 5-minute buckets in [start, end), in time order; blocking."""


def _days(start: datetime, end: datetime) -> list[Any]:
    first, last = utc_day(start), utc_day(end)
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def device_readings(
    app: WattLedger, device_id: UUID, start: datetime, end: datetime,
    progress: Callable[[float], None] = lambda share: None,
) -> Iterator[MeterDay.ReadingRecorded]:
    """The device's readings measured in [start, end), in time order, from its meter-day streams.

    Reads one day at a time, and only the days that hold readings (found `PROBE_DAYS` at a time),
    so a range of years costs memory for a day and a query a year for the days without any.
    `progress` gets the share of the range's days looked at.
    """
    first, last = utc_day(start), utc_day(end)
    total = (last - first).days + 1
    day = first
    while day <= last:
        days = [day + timedelta(days=n) for n in range(min(PROBE_DAYS, (last - day).days + 1))]
        streams = [meter_day_id(device_id, d) for d in days]
        present = EventLog(app).streams_holding(streams)
        for stream_id in streams:
            if stream_id in present:
                readings = [
                    e for e in app.events.get(stream_id)
                    if isinstance(e, MeterDay.ReadingRecorded) and start <= e.measured_at < end
                ]  # fmt: skip
                readings.sort(key=lambda e: e.measured_at)
                yield from readings
        day = days[-1] + timedelta(days=1)
        progress(((day - first).days) / total)


def _priced_stream(priced: PricedBuckets, device_id: UUID, start: datetime, end: datetime) -> Iterator[tuple[datetime, Decimal]]:
    """The device's priced buckets in [start, end), in time order, read `PRICED_SPAN` at a time."""
    at = start
    while at < end:
        until = min(at + PRICED_SPAN, end)
        yield from priced(device_id, at, until)
        at = until


def export_rows(
    app: WattLedger, spec: ExportSpec, labels: dict[UUID, DeviceLabel], rules: EnergyRules, *, now: datetime,
    progress: Callable[[float], None] = lambda share: None, priced: PricedBuckets | None = None,
) -> Iterator[list[Any]]:
    """Every row of an export, device by device in the order asked, each in time order, in constant memory.

    Readings are read up to `now` (and `READ_AHEAD`), whatever later end the range names. `priced`
    reads a device's priced 5-minute buckets (the energy read model) when the export asks for
    `cost`; hourly and daily rows then carry the cost of their energy.
    """
    zone = ZoneInfo(spec.timezone)
    end = min(spec.end, now + READ_AHEAD)
    count = len(spec.devices)
    for done, device_id in enumerate(spec.devices):
        label = labels[device_id]

        def note(share: float, done: int = done) -> None:
            progress((done + share) / count)

        if spec.aggregation == "raw":
            yield from raw_rows(label, device_readings(app, device_id, spec.start, end, note), spec, zone)
        else:
            readings = device_readings(app, device_id, spec.start - PRIMING, end, note)
            costs = None if priced is None else _priced_stream(priced, device_id, spec.start, end)
            yield from bucket_rows(label, readings, spec, zone, rules, priced=costs)
        progress((done + 1) / count)


def _json_array(lines: Path, target: Path) -> None:
    """Wrap a JSON Lines file into one JSON array, line by line, then remove it."""
    part = target.with_name(target.name + ".part")
    with lines.open("rb") as source, part.open("wb") as out:
        out.write(b"[")
        for index, line in enumerate(source):
            out.write(b"\n" if index == 0 else b",\n")
            out.write(line.rstrip(b"\r\n"))
        out.write(b"\n]\n")
    os.replace(part, target)
    lines.unlink()


def _drop_header(path: Path) -> None:
    part = path.with_name(path.name + ".part")
    with path.open("rb") as source, part.open("wb") as out:
        source.readline()
        while chunk := source.read(1 << 20):
            out.write(chunk)
    os.replace(part, path)


def write_export(
    app: WattLedger, export_id: UUID, spec: ExportSpec, labels: dict[UUID, DeviceLabel], directory: Path,
    rules: EnergyRules, *, now: datetime, progress: Callable[[float], None] = lambda share: None,
    priced: PricedBuckets | None = None,
) -> WrittenExport:
    """Write an export's file under `directory`; blocking. Raises OSError if the disk refuses (nothing is left)."""
    with open_writer(WRITER_FORMAT[spec.format], directory, str(export_id), spec.columns()) as writer:
        for row in export_rows(app, spec, labels, rules, now=now, progress=progress, priced=priced):
            writer.write(row)
        [path] = writer.close()
    if spec.format == "json":
        target = directory / f"{export_id}{EXTENSION['json']}"
        _json_array(path, target)
        path = target
    elif spec.format == "csv" and not spec.include_headers:
        _drop_header(path)
    return WrittenExport(file_name=path.name, file_size=path.stat().st_size, record_count=writer.rows,
                         sha256=sha256_file(path))  # fmt: skip


async def readings_stored(
    conn: psycopg.AsyncConnection[Any], app: WattLedger, device_id: UUID, since: datetime, until: datetime
) -> int:
    """How many readings of the device the event store holds, counted over its meter days from `since` to `until`."""
    days = _days(since, until)
    cur = await conn.execute(
        f"SELECT count(*) FROM {EventLog(app).table} WHERE originator_id = ANY(%s) AND topic = %s",
        ([meter_day_id(device_id, day) for day in days], get_topic(MeterDay.ReadingRecorded)),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def blocking_prices(catalog: ExportCatalog) -> PricedBuckets:
    """The catalog's priced buckets for a worker thread started by anyio, read on the event loop."""

    def priced(device_id: UUID, start: datetime, end: datetime) -> list[tuple[datetime, Decimal]]:
        return anyio.from_thread.run(catalog.priced_buckets, device_id, start, end)

    return priced


class ExportFileStore:
    """The data export files under `directory`: written in a worker thread, found and removed by name."""

    def __init__(self, app: WattLedger, catalog: ExportCatalog, directory: Path, rules: EnergyRules) -> None:
        self.app = app
        self.catalog = catalog
        self.directory = directory
        self.rules = rules

    async def write(
        self, export_id: UUID, spec: ExportSpec, labels: dict[UUID, DeviceLabel], *, now: datetime, priced: bool,
        progress: Callable[[float], None],
    ) -> WrittenExport:
        return await anyio.to_thread.run_sync(functools.partial(
            write_export, self.app, export_id, spec, labels, self.directory, self.rules, now=now,
            progress=progress, priced=blocking_prices(self.catalog) if priced else None,
        ))  # fmt: skip

    def path_of(self, file_name: str) -> Path:
        return self.directory / file_name

    def remove(self, file_name: str) -> None:
        self.path_of(file_name).unlink(missing_ok=True)
