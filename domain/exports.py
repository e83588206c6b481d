"""Data exports of device readings: the export's lifecycle as an aggregate, and the pure shaping of its rows.

An export is requested by a user (who owns it), written by a background job,
downloaded any number of times, and deleted by its owner, an admin, or the
retention sweep (`expired`). Every one of these is an event with its actor.

Rows are either raw readings or hourly / daily buckets in the export's time
zone. Bucket energy comes from the energy fold (`domain.energy.step`), spread
over the buckets it touches in proportion to time (`share_within` for local
hours, `split` for local days), so a bucket holds exactly the energy used
within it, whatever the polling rhythm.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final, Literal
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import msgspec
from eventsourcing.domain import Aggregate, event

from domain.energy import EnergyRules, Interval, MeterState, reading_of, share_within, split, step
from domain.errors import DataExportGone
from domain.meter import MeterDay
from domain.pricing import STORED

Aggregation = Literal["raw", "hourly", "daily"]
Format = Literal["csv", "json", "excel"]
Status = Literal["queued", "processing", "completed", "failed", "deleted", "expired"]


class FormatInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    description: str
    mime_type: str
    extension: str


FORMATS: Final[tuple[FormatInfo, ...]] = (
    FormatInfo(id="csv", name="CSV", description="Comma-separated values", mime_type="text/csv",
               extension=".csv"),
    FormatInfo(id="json", name="JSON", description="JavaScript Object Notation", mime_type="application/json",
               extension=".json"),
    FormatInfo(id="excel", name="Excel", description="Microsoft Excel workbook",
               mime_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", extension=".xlsx"),
)
FORMAT_BY_ID: Final = {f.id: f for f in FORMATS}


class MetricInfo(msgspec.Struct, frozen=True, kw_only=True):
    field: str
    name: str
    description: str
    data_type: str
    unit: str


METRICS: Final[tuple[MetricInfo, ...]] = (
    MetricInfo(field="power_w", name="Power (Watts)", description="Instantaneous power (raw); mean power (buckets)",
               data_type="float", unit="W"),
    MetricInfo(field="energy_kwh", name="Energy (kWh)",
               description="Cumulative counter (raw); energy used within the bucket (hourly, daily)",
               data_type="float", unit="kWh"),
    MetricInfo(field="voltage", name="Voltage (Volts)", description="Voltage at the reading (raw only)",
               data_type="float", unit="V"),
    MetricInfo(field="current", name="Current (Amps)", description="Current at the reading (raw only)",
               data_type="float", unit="A"),
    MetricInfo(field="is_on", name="Relay state", description="Whether the relay was on (raw only)",
               data_type="boolean", unit=""),
    MetricInfo(field="max_power_w", name="Peak power (Watts)", description="Highest power read in the bucket",
               data_type="float", unit="W"),
    MetricInfo(field="readings", name="Readings", description="Readings in the bucket (1 for raw)",
               data_type="integer", unit=""),
    MetricInfo(field="cost", name="Cost", data_type="float", unit="currency",
               description="Cost of the energy used within the bucket, priced by the rate in force (hourly, "
               "daily; empty for raw rows)"),
)
METRIC_FIELDS: Final = frozenset(m.field for m in METRICS)
DEFAULT_FIELDS: Final = ("timestamp", "power_w", "energy_kwh", "cost")
IDENTITY_COLUMNS: Final = ("timestamp", "device_ip", "device_name")


class ExportSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What an export holds: device readings of `devices` in [start, end), shaped by `aggregation`."""

    devices: tuple[UUID, ...]
    start: datetime
    end: datetime
    fields: tuple[str, ...]
    aggregation: Aggregation
    timezone: str
    format: Format
    include_headers: bool = True

    def columns(self) -> tuple[str, ...]:
        """The file's columns: when, which device, then the metrics asked for, in the order asked."""
        return IDENTITY_COLUMNS + tuple(f for f in self.fields if f in METRIC_FIELDS)


class DataExport(Aggregate):
    """One data export. Its owner sees, downloads and deletes it (admins any)."""

    class Requested(Aggregate.Created):
        owner_id: UUID
        owner: str
        export_type: str
        format: str
        devices: list[UUID]
        start: datetime
        end: datetime
        fields: list[str]
        aggregation: str
        timezone: str
        include_headers: bool
        actor: str

    class Completed(Aggregate.Event):
        file_name: str
        file_size: int
        record_count: int
        sha256: str
        expires_at: datetime
        actor: str

    class Failed(Aggregate.Event):
        error: str
        actor: str

    class Downloaded(Aggregate.Event):
        actor: str

    class Deleted(Aggregate.Event):
        reason: str
        actor: str

    @staticmethod
    def create_id(**_: object) -> UUID:
        return uuid4()

    @event(Requested)
    def __init__(
        self, *, owner_id: UUID, owner: str, export_type: str, format: str, devices: list[UUID], start: datetime,
        end: datetime, fields: list[str], aggregation: str, timezone: str, include_headers: bool, actor: str,
    ) -> None:
        self.owner_id = owner_id
        self.owner = owner
        self.spec = ExportSpec(
            devices=tuple(devices), start=start, end=end, fields=tuple(fields),
            aggregation=msgspec.convert(aggregation, Aggregation), timezone=timezone,
            format=msgspec.convert(format, Format), include_headers=include_headers,
        )
        self.status: Status = "queued"
        self.file_name: str | None = None

    @classmethod
    def request(cls, spec: ExportSpec, *, owner_id: UUID, owner: str, actor: str) -> DataExport:
        return cls(
            owner_id=owner_id, owner=owner, export_type="device_data", format=spec.format,
            devices=list(spec.devices), start=spec.start, end=spec.end, fields=list(spec.fields),
            aggregation=spec.aggregation, timezone=spec.timezone, include_headers=spec.include_headers, actor=actor,
        )

    def check_present(self) -> None:
        """Raises DataExportGone once the export was deleted or expired."""
        if self.status in ("deleted", "expired"):
            raise DataExportGone(f"export {self.id} was {self.status}")

    def complete(
        self, *, file_name: str, file_size: int, record_count: int, sha256: str, expires_at: datetime, actor: str
    ) -> None:
        """Record the written file; nothing changes if the export was settled (or deleted) meanwhile."""
        if self.status == "queued":
            self._completed(file_name=file_name, file_size=file_size, record_count=record_count, sha256=sha256,
                            expires_at=expires_at, actor=actor)  # fmt: skip

    @event(Completed)
    def _completed(
        self, file_name: str, file_size: int, record_count: int, sha256: str, expires_at: datetime, actor: str
    ) -> None:
        self.status = "completed"
        self.file_name = file_name

    def fail(self, error: str, *, actor: str) -> None:
        if self.status == "queued":
            self._failed(error=error[:500], actor=actor)

    @event(Failed)
    def _failed(self, error: str, actor: str) -> None:
        self.status = "failed"

    def downloaded(self, *, actor: str) -> None:
        self.check_present()
        self._downloaded(actor=actor)

    @event(Downloaded)
    def _downloaded(self, actor: str) -> None:
        pass

    def delete(self, *, reason: Literal["deleted", "expired"], actor: str) -> None:
        self.check_present()
        self._deleted(reason=reason, actor=actor)

    @event(Deleted)
    def _deleted(self, reason: str, actor: str) -> None:
        self.status = "expired" if reason == "expired" else "deleted"


# ---- shaping rows (pure) ----


class DeviceLabel(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    address: str
    name: str
    mac: str


def _local(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).isoformat()


def _value(field: str, values: dict[str, Any]) -> Any:
    return values.get(field)


def raw_rows(
    device: DeviceLabel, readings: Iterable[MeterDay.ReadingRecorded], spec: ExportSpec, zone: ZoneInfo
) -> Iterator[list[Any]]:
    """One row per reading measured in [start, end), in time order of the readings given."""
    metrics = spec.columns()[len(IDENTITY_COLUMNS):]
    for reading in readings:
        if not spec.start <= reading.measured_at < spec.end:
            continue
        values = {
            "power_w": reading.power_w,
            "energy_kwh": None if reading.total_wh is None else round(reading.total_wh / 1000, 6),
            "voltage": reading.voltage_v,
            "current": reading.current_a,
            "is_on": reading.is_on,
            "max_power_w": reading.power_w,
            "readings": 1,
            "cost": None,
        }
        yield [_local(reading.measured_at, zone), device.address, device.name, *(values[m] for m in metrics)]


COST_QUANTUM = Decimal("0.000001")


class _Bucket:
    __slots__ = ("wh", "power_sum", "power_max", "count")

    def __init__(self) -> None:
        self.wh = 0.0
        self.power_sum = 0.0
        self.power_max: float | None = None
        self.count = 0


def local_hour_start(moment: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant at which the local hour of `moment` began (a repeated fall-back hour stays two hours)."""
    local = moment.astimezone(zone)
    return moment - timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)


def _hour_shares(interval: Interval, zone: ZoneInfo) -> Iterator[tuple[datetime, float]]:
    """An interval's energy by local hour: (UTC start of the hour, its share)."""
    hour = local_hour_start(interval.start, zone)
    if interval.end <= interval.start:
        yield hour, interval.wh
        return
    while hour < interval.end:
        part = share_within(interval.start, interval.end, interval.wh, hour, hour + timedelta(hours=1))
        if part:
            yield hour, part
        hour += timedelta(hours=1)


def _clipped(interval: Interval, start: datetime, end: datetime) -> Interval | None:
    """The part of an interval (and of its energy) inside [start, end), or None if none is."""
    if interval.end <= interval.start:
        return interval if start <= interval.start < end else None
    if interval.end <= start or interval.start >= end:
        return None
    wh = share_within(interval.start, interval.end, interval.wh, start, end)
    return Interval(channel=interval.channel, start=max(interval.start, start), end=min(interval.end, end), wh=wh)


def _bucket_of(moment: datetime, zone: ZoneInfo, aggregation: Aggregation) -> datetime:
    if aggregation == "hourly":
        return local_hour_start(moment, zone)
    local = moment.astimezone(zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
    return midnight.astimezone(timezone.utc)


def bucket_rows(
    device: DeviceLabel,
    readings: Iterable[MeterDay.ReadingRecorded],
    spec: ExportSpec,
    zone: ZoneInfo,
    rules: EnergyRules,
    state: MeterState | None = None,
    priced: Iterable[tuple[datetime, Decimal]] | None = None,
) -> Iterator[list[Any]]:
    """Hourly or daily rows of one device over [start, end): the energy used within both the bucket and
    the range, and mean and peak power of the readings in both.

    `readings` are in time order; those before `start` only prime the energy
    fold (`state` may carry it in), so the first bucket counts the energy since
    the reading before it. A bucket is labelled by its local start, which may
    lie before `start` when the range does not begin on a bucket boundary.
    Buckets with neither readings nor energy are left out. `priced` holds the
    energy read model's priced 5-minute buckets (start, cost) in time order; a
    row's cost is the sum of those in its bucket and the range (five minutes
    divides every zone offset, so each lies in exactly one local hour and day);
    without it the cost column stays empty.

    Rows come in time order as soon as no later reading can change them (every
    channel has read past the bucket), so memory holds a few buckets, not the range.
    """
    buckets: dict[datetime, _Bucket] = {}
    metrics = spec.columns()[len(IDENTITY_COLUMNS):]
    costs = _CostMerge(priced, spec, zone) if priced is not None else None
    settled: datetime | None = None

    def rows_before(bound: datetime | None) -> Iterator[list[Any]]:
        for start in sorted(b for b in buckets if bound is None or b < bound):
            bucket = buckets.pop(start)
            values = {
                "power_w": round(bucket.power_sum / bucket.count, 3) if bucket.count else None,
                "energy_kwh": round(bucket.wh / 1000, 6),
                "voltage": None,
                "current": None,
                "is_on": None,
                "max_power_w": bucket.power_max,
                "readings": bucket.count,
                "cost": None if costs is None else float(costs.cost_of(start).quantize(COST_QUANTUM, context=STORED)),
            }
            yield [_local(start, zone), device.address, device.name, *(_value(m, values) for m in metrics)]

    for reading in readings:
        state, intervals = step(state, reading_of(reading, device.mac), rules)
        for interval in map(lambda i: _clipped(i, spec.start, spec.end), intervals):
            if interval is None:
                continue
            shares: Iterable[tuple[datetime, float]]
            if spec.aggregation == "hourly":
                shares = _hour_shares(interval, zone)
            else:
                shares = ((s.period.start, s.wh) for s in split(interval, zone, "day"))
            for start, wh in shares:
                buckets.setdefault(start, _Bucket()).wh += wh
        if spec.start <= reading.measured_at < spec.end and reading.power_w is not None:
            bucket = buckets.setdefault(_bucket_of(reading.measured_at, zone, spec.aggregation), _Bucket())
            bucket.power_sum += reading.power_w
            bucket.count += 1
            bucket.power_max = reading.power_w if bucket.power_max is None else max(bucket.power_max,
                                                                                      reading.power_w)
        # The next intervals start where each channel last read, so earlier buckets are final.
        oldest = min((c.at for c in state.channels.values()), default=state.at)
        bound = _bucket_of(oldest, zone, spec.aggregation)
        if settled is None or bound > settled:
            settled = bound
            yield from rows_before(bound)
    yield from rows_before(None)


class _CostMerge:
    """Sums priced 5-minute buckets, read once in time order, into the export's buckets asked for in order."""

    def __init__(self, priced: Iterable[tuple[datetime, Decimal]], spec: ExportSpec, zone: ZoneInfo) -> None:
        self.priced = iter(priced)
        self.spec = spec
        self.zone = zone
        self.pending = next(self.priced, None)

    def cost_of(self, bucket: datetime) -> Decimal:
        """The cost of `bucket`; priced buckets of earlier export buckets (with no row) are passed over."""
        cost = Decimal(0)
        while self.pending is not None:
            start, price = self.pending
            key = _bucket_of(start, self.zone, self.spec.aggregation)
            if key > bucket:
                break
            if key == bucket and self.spec.start <= start < self.spec.end:
                cost += price
            self.pending = next(self.priced, None)
        return cost
