"""Data export jobs: device readings from the event store written to CSV, JSON or Excel files, and retention.

Jobs run in the API process that accepted the request, a few at a time, each
in a worker thread (reading the store and writing the file block). The files
are written by `adapters.export_files` (JSON through its JSON Lines writer,
then wrapped into one JSON array) under `<data dir>/exports/<export id>.<ext>`.
A sweep, run every minute by the API process, resumes the exports left queued
for long (an API process stopped mid-job) and deletes the files whose
retention ended, recording each as expired.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID
from zoneinfo import ZoneInfo

import anyio.from_thread
import anyio.to_thread
import msgspec
import psycopg
import structlog
from eventsourcing.utils import get_topic

from adapters.eventlog import EventLog
from adapters.eventstore import WattLedger
from adapters.faults import DATABASE_FAULTS, report
from adapters.export_files import open_writer, sha256_file
from domain.energy import EnergyRules
from domain.export_handlers import ExportHandlers
from domain.exports import DataExport, DeviceLabel, ExportSpec, bucket_rows, raw_rows
from domain.meter import MeterDay, meter_day_id, utc_day

log = structlog.get_logger(__name__)

WRITER_FORMAT = {"csv": "csv", "json": "jsonl", "excel": "xlsx"}
EXTENSION = {"csv": ".csv", "json": ".json", "excel": ".xlsx"}
STALE = timedelta(minutes=15)
"""A queued export older than this is taken to be abandoned by the process that accepted it, and resumed."""
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


class WrittenExport(msgspec.Struct, frozen=True, kw_only=True):
    file_name: str
    file_size: int
    record_count: int
    sha256: str


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


async def readings_stored(conn: psycopg.AsyncConnection[Any], app: WattLedger, device_id: UUID, since: datetime) -> int:
    """How many readings of the device the event store holds, counted over its meter days from `since` to today."""
    days = _days(since, datetime.now(timezone.utc))
    cur = await conn.execute(
        f"SELECT count(*) FROM {EventLog(app).table} WHERE originator_id = ANY(%s) AND topic = %s",
        ([meter_day_id(device_id, day) for day in days], get_topic(MeterDay.ReadingRecorded)),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


class ExportCatalog(Protocol):
    """What the jobs read from the read models."""

    async def labels(self, device_ids: list[UUID]) -> dict[UUID, DeviceLabel]:
        """Address, name and MAC of each device known (removed ones too)."""
        ...

    async def due(self, now: datetime, queued_before: datetime) -> tuple[list[UUID], list[UUID]]:
        """(exports queued before `queued_before`, oldest first; completed exports whose retention ended by `now`)."""
        ...

    async def priced_buckets(self, device_id: UUID, start: datetime, end: datetime) -> list[tuple[datetime, Decimal]]:
        """(start, cost) of the device's priced 5-minute buckets in [start, end), all its channels together."""
        ...


def blocking_prices(catalog: ExportCatalog) -> PricedBuckets:
    """The catalog's priced buckets for a worker thread started by anyio, read on the event loop."""

    def priced(device_id: UUID, start: datetime, end: datetime) -> list[tuple[datetime, Decimal]]:
        return anyio.from_thread.run(catalog.priced_buckets, device_id, start, end)

    return priced


class DataExportJobs:
    """Runs data export jobs in this process and sweeps expired files.

    `progress` holds the share done (0 to 1) of the jobs running here. An
    export whose devices are gone from the read model, or whose writing
    fails, is recorded as failed with the reason.
    """

    def __init__(
        self,
        app: WattLedger,
        handlers: ExportHandlers,
        catalog: ExportCatalog,
        directory: Path,
        *,
        retention: timedelta,
        rules: EnergyRules,
        on_saved: Callable[[], None] = lambda: None,
        concurrency: int = 2,
    ) -> None:
        self.app = app
        self.handlers = handlers
        self.catalog = catalog
        self.directory = directory
        self.retention = retention
        self.rules = rules
        self.on_saved = on_saved
        self.progress: dict[UUID, float] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[UUID, asyncio.Task[None]] = {}

    def path_of(self, file_name: str) -> Path:
        return self.directory / file_name

    def start(self, export_id: UUID) -> None:
        """Start the export's job unless it already runs here."""
        if export_id in self._tasks:
            return
        self.progress[export_id] = 0.0
        task = asyncio.get_running_loop().create_task(self._run(export_id))
        self._tasks[export_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(export_id, None))

    async def wait(self, export_id: UUID) -> None:
        """Until the export's job (if it runs here) has finished."""
        task = self._tasks.get(export_id)
        if task is not None:
            await asyncio.shield(task)

    async def _run(self, export_id: UUID) -> None:
        try:
            async with self._slots:
                export = await anyio.to_thread.run_sync(self.app.load, export_id)
                assert isinstance(export, DataExport)
                if export.status != "queued":
                    return
                labels = await self.catalog.labels(list(export.spec.devices))
                missing = [str(d) for d in export.spec.devices if d not in labels]
                if missing:
                    await self.handlers.settle(export_id, outcome="failed", error=f"unknown devices {missing}")
                    return

                def note(share: float) -> None:
                    self.progress[export_id] = share

                spec = export.spec
                priced = blocking_prices(self.catalog) if "cost" in spec.fields and spec.aggregation != "raw" else None
                now = self.handlers.clock.now()
                written = await anyio.to_thread.run_sync(functools.partial(
                    write_export, self.app, export_id, spec, labels, self.directory, self.rules, now=now,
                    progress=note, priced=priced,
                ))  # fmt: skip
                stored = await self.handlers.settle(
                    export_id, outcome="completed", file_name=written.file_name, file_size=written.file_size,
                    record_count=written.record_count, sha256=written.sha256, retention=self.retention,
                )
                if not stored.position:
                    self.path_of(written.file_name).unlink(missing_ok=True)
                log.info("export.completed", export_id=str(export_id), rows=written.record_count,
                         bytes=written.file_size)  # fmt: skip
        except asyncio.CancelledError:
            raise
        except DATABASE_FAULTS as exc:
            # The export stays queued: the sweep writes it again once the database answers.
            report("exports", exc, export_id=str(export_id))
        except Exception as exc:
            log.exception("export.failed", export_id=str(export_id))
            await self.handlers.settle(export_id, outcome="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.progress.pop(export_id, None)
            self.on_saved()

    def remove_file(self, file_name: str | None) -> None:
        if file_name:
            self.path_of(file_name).unlink(missing_ok=True)

    async def sweep(self, now: datetime | None = None) -> int:
        """Resume exports queued for longer than `STALE` (their process stopped); delete files past retention,
        each recorded expired. Returns the exports expired."""
        moment = now or datetime.now(timezone.utc)
        queued, expired = await self.catalog.due(moment, moment - STALE)
        for export_id in queued:
            self.start(export_id)
        for export_id in expired:
            export = await anyio.to_thread.run_sync(self.app.load, export_id)
            assert isinstance(export, DataExport)
            self.remove_file(export.file_name)
            await self.handlers.expire(export_id)
            log.info("export.expired", export_id=str(export_id))
        if expired:
            self.on_saved()
        return len(expired)

    async def run(self, *, interval: float = 60.0) -> None:
        """Sweep every `interval` seconds until cancelled. A database fault is one warning line and the
        sweep runs again at the next interval; anything else is a bug and reaches the supervisor."""
        while True:
            try:
                await self.sweep()
            except DATABASE_FAULTS as exc:
                report("exports", exc)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Cancel the jobs running here (they stay queued and are resumed by the next sweep)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
