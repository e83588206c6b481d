"""Energy: readings import, history with rollups, statistics, usage sessions."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Annotated
from uuid import UUID
from weakref import WeakKeyDictionary
from zoneinfo import ZoneInfo

import msgspec
from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from api.controllers.devices import resolve_device
from api.deps import EnergyDeps
from api.pending import note_pending
from api.read_side import ReadSide
from api.time_ranges import INTERVAL_OF, chosen_aggregation, history_range, parse_time, parse_zone
from domain.calendar import local_period
from domain.commands import device_key
from domain.energy import DEVICE_CHANNEL, Interval
from domain.energy_handlers import ImportReadings, SetSessionThreshold
from domain.errors import InvalidRange
from domain.access import Permission, Principal
from domain.imports import ImportedReading
from domain.pricing import PRICING, money
from domain.rollups import BUCKET, split_buckets
from domain.usage import sessions as find_sessions
from projections.energy_queries import (
    Point,
    bucket_prices,
    channel_runs,
    history,
    power_summary,
    present_device_history,
    session_threshold,
    totals,
)
from projections.tracking import projector_position

MAX_SESSION_SPAN = timedelta(days=92)
IMPORT_PROJECTION_WAIT_S = 2.0
"""How long an import waits for the energy read model before answering `projected: false`."""
IMPORT_PACE_AFTER_S = 0.25
"""How long an import watches the energy projector before judging from its pace whether to wait on."""


def out_of_reach(position: int, first: tuple[float, int], latest: tuple[float, int], deadline: float) -> bool:
    """Whether the energy projector, seen at `first` and `latest` (monotonic seconds, position), cannot
    apply `position` by `deadline` at the pace it kept between them. No progress seen yet says nothing
    (a projector applies a section at once), so that is never out of reach."""
    (began, start), (now, at) = first, latest
    if now - began < IMPORT_PACE_AFTER_S or at <= start:
        return False
    return (position - at) / ((at - start) / (now - began)) > deadline - now


class GaveUp:
    """The highest position an import of this process stopped waiting for. While the energy projector has
    not applied it, a newer import (behind it in the log) does not wait: the projector is working through a
    backlog that already outlasted one whole wait."""

    def __init__(self) -> None:
        self.position = 0

    def behind(self, projected: int) -> bool:
        return projected < self.position

    def note(self, position: int) -> None:
        self.position = max(self.position, position)


_GAVE_UP: WeakKeyDictionary[object, GaveUp] = WeakKeyDictionary()
"""One `GaveUp` per read side's pool: per process and database."""


async def wait_for_import(reads: ReadSide, position: int, *, timeout: float = IMPORT_PROJECTION_WAIT_S) -> bool:
    """Wait until the energy read model holds `position`, for at most `timeout`, and no longer once it is
    clear the projector cannot get there in time, as in a backfill of many imports at once, where each
    answer would otherwise wait the whole time for nothing: when it has not yet applied an import that
    already ran out of its wait (`GaveUp`), or when its pace, taken from the first step it is seen to take
    (a step is a section of the log, applied at once), cannot bring it there by the deadline. A projector
    only starting, or applying this import in one step, is waited for. False names the read model as pending.
    """
    reads.on_saved()
    gave_up = _GAVE_UP.setdefault(reads.pool, GaveUp())
    deadline = time.monotonic() + timeout
    seen: int | None = None
    first: tuple[float, int] | None = None
    delay = 0.01
    while True:
        async with reads.pool.connection() as conn:
            at = await projector_position(conn, "energy") or 0
        now = time.monotonic()
        if at >= position:
            return True
        if seen is None:
            seen = at
            if gave_up.behind(at):
                note_pending("energy", position)
                return False
        elif first is None and at > seen:
            first = (now, at)
        if now >= deadline or (first is not None and out_of_reach(position, first, (now, at), deadline)):
            gave_up.note(position)
            note_pending("energy", position)
            return False
        await asyncio.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.2)


class ImportRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Readings of one device: up to 10,000, checked as a whole."""

    readings: list[ImportedReading]


class ImportResult(msgspec.Struct, frozen=True, kw_only=True):
    received: int
    recorded: int
    duplicates: int
    projected: bool


class ThresholdRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The device's usage-session threshold in W; null returns it to the setting's default."""

    threshold_w: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)] | None


class ThresholdView(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    threshold_w: float | None


class HistoryMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """`aggregation` in the seed's interval names (`raw`, `5m`, `1h`, `6h`, `1d`, `1w`, `1mo`);
    `cached` is always false: every answer is read from the read model as it is."""

    count: int
    period: str | None
    aggregation: str
    timezone: str
    start_time: datetime
    end_time: datetime
    query_time_ms: float
    cached: bool = False


class HistoryView(msgspec.Struct, frozen=True, kw_only=True):
    data: list[Point]
    metadata: HistoryMetadata


class StatsView(msgspec.Struct, frozen=True, kw_only=True):
    daily_usage_kwh: float
    weekly_usage_kwh: float
    monthly_usage_kwh: float
    daily_cost: float
    weekly_cost: float
    monthly_cost: float
    average_power_w: float
    peak_power_w: float
    total_on_time_hours: float
    timezone: str


class SessionView(msgspec.Struct, frozen=True, kw_only=True):
    outlet: str | None
    start: datetime
    end: datetime
    duration_s: float
    energy_kwh: float
    cost: float
    peak_power_w: float


class SessionsView(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    sessions: list[SessionView]
    count: int
    threshold_w: float
    min_duration_s: float
    start_time: datetime
    end_time: datetime


class EnergyController(Controller):
    path = "/api"
    tags = ["energy"]

    @post(
        "/devices/{device:str}/readings", operation_id="importReadings", status_code=200,
        opt={"permission": Permission.DEVICES_MANAGE},
    )  # fmt: skip
    async def import_readings(
        self,
        device: FromPath[str],
        data: JSONBody[ImportRequest],
        principal: NamedDependency[Principal],
        energy_deps: NamedDependency[EnergyDeps],
    ) -> ImportResult:
        """Import up to 10,000 readings of a device (late, in any order); the same events as polled readings.

        Answers once the readings are stored: `projected` says whether the energy read model already holds
        them (it is waited for only briefly; history and costs show them a moment later otherwise).
        422 `INVALID_READINGS` names the first bad item and nothing is stored; 404 for an unknown or removed
        device, 400 for an address that is not one.
        A reading whose timestamp is already recorded changes nothing."""
        result = await energy_deps.energy.import_readings(
            ImportReadings(device_id=device_key(device), readings=tuple(data.readings), actor=principal.actor)
        )
        projected = True
        if result.position:
            projected = await wait_for_import(energy_deps.reads, result.position)
        return ImportResult(
            received=result.received, recorded=result.recorded, duplicates=result.duplicates, projected=projected
        )

    @put(
        "/device/{device:str}/session-threshold", operation_id="setSessionThreshold",
        opt={"permission": Permission.DEVICES_MANAGE},
    )  # fmt: skip
    async def set_threshold(
        self,
        device: FromPath[str],
        data: JSONBody[ThresholdRequest],
        principal: NamedDependency[Principal],
        energy_deps: NamedDependency[EnergyDeps],
    ) -> ThresholdView:
        """Set the power at or above which this device (or an outlet of it) is in a usage session; recorded
        as a device event with its actor. 404 for an unknown device."""
        device_id = device_key(device)
        position = await energy_deps.energy.set_session_threshold(
            SetSessionThreshold(device_id=device_id, threshold_w=data.threshold_w, actor=principal.actor)
        )
        await energy_deps.reads.wait_projected(position, projector="energy")
        return ThresholdView(device_id=device_id, threshold_w=data.threshold_w)

    @get("/device/{device:str}/history", operation_id="getDeviceHistory", opt={"permission": Permission.DEVICES_VIEW})
    async def history(
        self,
        device: FromPath[str],
        energy_deps: NamedDependency[EnergyDeps],
        period: FromQuery[str | None] = None,
        start_time: FromQuery[str | None] = None,
        end_time: FromQuery[str | None] = None,
        aggregation: FromQuery[str] = "auto",
        timezone: FromQuery[str | None] = None,
        interval: Annotated[str | None, QueryParameter(description="deprecated: use aggregation")] = None,
    ) -> HistoryView:
        """Energy, cost and power of a device over a period (24h, 7d, 30d, 3m, 6m, 1y) or
        [start_time, end_time) (a time without an offset is read in `timezone`), by raw reading, 5 minutes,
        or local hour, 6 hours, day, week or month of `timezone`. `aggregation` takes these names or the
        seed's intervals (5m, 1h, 6h, 1d, 1w); the deprecated `interval` is honoured when `aggregation` is
        auto. 422 `INVALID_RANGE` for a bad period, range, aggregation or zone."""
        began = time.perf_counter()
        zone = parse_zone(timezone, energy_deps.reads.zone)
        start, end, chosen = history_range(
            period, start_time, end_time, chosen_aggregation(aggregation, interval), energy_deps.clock.now(), zone
        )
        points = await _present_history(energy_deps.reads, device, start, end, chosen, zone)
        return HistoryView(
            data=points,
            metadata=HistoryMetadata(
                count=len(points), period=period, aggregation=INTERVAL_OF[chosen], timezone=zone.key, start_time=start,
                end_time=end, query_time_ms=round((time.perf_counter() - began) * 1000, 3),
            ),
        )  # fmt: skip

    @get("/device/{device:str}/stats", operation_id="getDeviceStats", opt={"permission": Permission.DEVICES_VIEW})
    async def stats(self, device: FromPath[str], energy_deps: NamedDependency[EnergyDeps]) -> StatsView:
        """Today's, this week's (from Monday) and this month's kWh and cost in the configured zone; average
        and peak power and on-time this month."""
        view = await resolve_device(energy_deps.reads, device)
        zone = energy_deps.reads.zone
        now = energy_deps.clock.now()
        day = local_period(now, zone, "day")
        month = local_period(now, zone, "month")
        monday = local_period(day.start - timedelta(days=now.astimezone(zone).weekday()) + timedelta(hours=12),
                              zone, "day")  # fmt: skip
        async with energy_deps.reads.pool.connection() as conn:
            today, week, this_month = await totals(
                conn, view.device_id, [(day.start, day.end), (monday.start, day.end), (month.start, month.end)]
            )
            power = await power_summary(conn, view.device_id, month.start, month.end)
        return StatsView(
            daily_usage_kwh=round(today.wh / 1000, 6), weekly_usage_kwh=round(week.wh / 1000, 6),
            monthly_usage_kwh=round(this_month.wh / 1000, 6), daily_cost=_round(today.cost),
            weekly_cost=_round(week.cost), monthly_cost=_round(this_month.cost),
            average_power_w=power.average_power_w, peak_power_w=power.peak_power_w,
            total_on_time_hours=power.on_time_hours, timezone=zone.key,
        )  # fmt: skip

    @get(
        "/device/{device:str}/sessions", operation_id="getDeviceSessions", opt={"permission": Permission.DEVICES_VIEW}
    )
    async def sessions(
        self,
        device: FromPath[str],
        energy_deps: NamedDependency[EnergyDeps],
        start_time: FromQuery[str | None] = None,
        end_time: FromQuery[str | None] = None,
        threshold_w: FromQuery[float | None] = None,
        min_duration_s: FromQuery[float | None] = None,
    ) -> SessionsView:
        """Usage sessions of a device or its outlets in [start_time, end_time) (default: the last 24 hours):
        each run above `threshold_w` (default: the device's own threshold, else the setting, 5 W) lasting
        `min_duration_s` or longer, with its
        energy, cost and peak power. 422 `INVALID_RANGE` for a bad range or limit."""
        settings = energy_deps.energy.settings
        end = parse_time(end_time, "end_time", energy_deps.reads.zone) or energy_deps.clock.now()
        start = parse_time(start_time, "start_time", energy_deps.reads.zone) or end - timedelta(days=1)
        if start >= end or end - start > MAX_SESSION_SPAN:
            raise InvalidRange("start_time must be before end_time, at most 92 days apart")
        if (threshold_w is not None and not 0 <= threshold_w < 1e6) or (
            min_duration_s is not None and not 0 <= min_duration_s <= 92 * 86400
        ):
            raise InvalidRange("threshold_w must be from 0 to 1e6 W and min_duration_s from 0 s to 92 days")
        minimum = settings.session_min_duration if min_duration_s is None else timedelta(seconds=min_duration_s)
        view = await resolve_device(energy_deps.reads, device)
        found: list[SessionView] = []
        async with energy_deps.reads.pool.connection() as conn:
            own = await session_threshold(conn, view.device_id)
            threshold = threshold_w if threshold_w is not None else settings.session_threshold_w if own is None else own
            for channel, runs in sorted((await channel_runs(conn, view.device_id, start, end)).items()):
                spans = find_sessions(runs, threshold_w=threshold, min_duration=minimum, max_gap=settings.rules.max_gap)
                if not spans:
                    continue
                prices = await bucket_prices(conn, view.device_id, channel, start - BUCKET, end + BUCKET)
                for span in spans:
                    found.append(SessionView(
                        outlet=None if channel == DEVICE_CHANNEL else channel, start=span.start, end=span.end,
                        duration_s=(span.end - span.start).total_seconds(), energy_kwh=round(span.wh / 1000, 6),
                        cost=_round(_session_cost(span.intervals, channel, prices)), peak_power_w=span.peak_w,
                    ))  # fmt: skip
        found.sort(key=lambda s: (s.start, s.outlet or ""))
        return SessionsView(
            device_id=view.device_id, sessions=found, count=len(found), threshold_w=threshold,
            min_duration_s=minimum.total_seconds(), start_time=start, end_time=end,
        )  # fmt: skip


async def _present_history(
    reads: ReadSide, device: str, start: datetime, end: datetime, aggregation: str, zone: ZoneInfo
) -> list[Point]:
    """The history points of a present device named by `device` (its id, or else its address): a
    device named by its id is checked and read in one statement."""
    try:
        device_id: UUID | None = UUID(device)
    except ValueError:
        device_id = None
    async with reads.reading() as conn:
        if device_id is not None:
            points = await present_device_history(conn, device_id, start, end, aggregation, zone)
            if points is not None:
                return points
    view = await resolve_device(reads, device)
    async with reads.reading() as conn:
        return await history(conn, view.device_id, start, end, aggregation, zone)


def _round(value: Decimal, places: int = 4) -> float:
    return money(value, places)


def _session_cost(
    intervals: tuple[tuple[datetime, datetime, float], ...], channel: str, prices: dict[datetime, tuple[float, Decimal]]
) -> Decimal:
    """A session's energy charged at the average price of each 5-minute bucket it falls in (in PRICING: a
    stored cost of any size gives an answer, never an error)."""
    cost = Decimal(0)
    with localcontext(PRICING):
        for start, end, wh in intervals:
            if wh <= 0:
                continue
            for bucket, part in split_buckets(Interval(channel=channel, start=start, end=end, wh=wh)):
                bucket_wh, bucket_cost = prices.get(bucket, (0.0, Decimal(0)))
                if bucket_wh > 0:
                    cost += bucket_cost * Decimal(repr(part)) / Decimal(repr(bucket_wh))
    return cost
