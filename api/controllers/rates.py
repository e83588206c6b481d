"""Electricity rates (versioned) and cost analysis."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody

from api.deps import EnergyDeps
from api.time_ranges import parse_time, parse_zone
from domain.energy_handlers import SetRate
from domain.errors import InvalidRange, InvalidRate
from domain.access import Permission, Principal
from domain.rates import MAX_NUMBER_TEXT, MAX_PRICE, MAX_TIER_KWH
from domain.rates import RATE_TYPES, RateVersion, TouPeriod, align_up, in_force
from projections.costs import cost_report
from projections.energy_queries import rate_versions

MAX_COST_DAYS = 3 * 366
Price = (
    Annotated[float, msgspec.Meta(ge=0, le=float(MAX_PRICE), description="at most 6 decimal places")]
    | Annotated[str, msgspec.Meta(max_length=MAX_NUMBER_TEXT, description="a decimal number, as for a number")]
)
TierLimit = (
    Annotated[float, msgspec.Meta(gt=0, le=float(MAX_TIER_KWH), description="kWh per billing cycle")]
    | Annotated[str, msgspec.Meta(max_length=MAX_NUMBER_TEXT, description="a decimal number, as for a number")]
)
Periods = Annotated[list[Any], msgspec.Meta(max_length=24)]
PRICES_OF = {
    "simple": ("rate_per_kwh",),
    "tiered": ("tier1_limit", "tier1_rate", "tier2_limit", "tier2_rate", "tier3_rate"),
    "time_of_use": (),
}
"""The prices each rate type reads from `rate_structure` (or the top level); any other price is refused."""
PERIOD_LISTS = ("time_of_use_rates", "weekend_time_of_use_rates")


class RateRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new rate version, in the Kasa Monitor shape; tier and flat prices may also sit at the top level."""

    rate_type: str
    currency: str | None = None
    rate_structure: Annotated[dict[str, Any], msgspec.Meta(max_length=16)] | None = None
    time_of_use_rates: Periods | None = None
    weekend_time_of_use_rates: Periods | None = None
    billing_cycle_day: int | None = None
    daily_charge: Price | None = None
    timezone: str | None = None
    effective_from: str | None = None
    rate_per_kwh: Price | None = None
    tier1_limit: TierLimit | None = None
    tier1_rate: Price | None = None
    tier2_limit: TierLimit | None = None
    tier2_rate: Price | None = None
    tier3_rate: Price | None = None


class TouView(msgspec.Struct, frozen=True, kw_only=True):
    start_hour: int
    end_hour: int
    rate: float
    label: str


class RateView(msgspec.Struct, frozen=True, kw_only=True):
    """A rate version; before any is set (`configured` false) `rate_type` is `none`, version 0 and
    `effective_from` null."""

    version: int
    rate_type: str
    currency: str
    timezone: str
    effective_from: datetime | None
    rate_structure: dict[str, float]
    time_of_use_rates: list[TouView]
    weekend_time_of_use_rates: list[TouView]
    billing_cycle_day: int
    daily_charge: float
    recorded_at: datetime | None
    actor: str
    configured: bool = True


def no_rate(zone: str) -> RateView:
    """The answer when no rate is in force: the seed's shape, priced at nothing."""
    return RateView(
        version=0, rate_type="none", currency="USD", timezone=zone, effective_from=None, rate_structure={},
        time_of_use_rates=[], weekend_time_of_use_rates=[], billing_cycle_day=1, daily_charge=0.0,
        recorded_at=None, actor="", configured=False,
    )  # fmt: skip


class RateHistoryView(msgspec.Struct, frozen=True, kw_only=True):
    versions: list[RateView]
    count: int


class DeviceCost(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    device_ip: str
    device_name: str
    total_kwh: float
    total_cost: float
    percentage: float


class DayCostView(msgspec.Struct, frozen=True, kw_only=True):
    date: date
    kwh: float
    cost: float


class CostsView(msgspec.Struct, frozen=True, kw_only=True):
    start_date: date
    end_date: date
    timezone: str
    currency: str
    total_cost: float
    total_kwh: float
    average_daily_cost: float
    fixed_charges: float
    devices: list[DeviceCost]
    daily_breakdown: list[DayCostView]


def _periods(periods: tuple[TouPeriod, ...]) -> list[TouView]:
    return [TouView(start_hour=p.start_hour, end_hour=p.end_hour, rate=float(p.rate), label=p.label) for p in periods]


def rate_view(rate: RateVersion) -> RateView:
    names = ("rate_per_kwh", "tier1_limit", "tier1_rate", "tier2_limit", "tier2_rate", "tier3_rate")
    structure = {n: float(v) for n in names if (v := getattr(rate, n)) is not None}
    return RateView(
        version=rate.version, rate_type=rate.rate_type, currency=rate.currency, timezone=rate.timezone,
        effective_from=rate.effective_from, rate_structure=structure,
        time_of_use_rates=_periods(rate.time_of_use_rates),
        weekend_time_of_use_rates=_periods(rate.weekend_time_of_use_rates),
        billing_cycle_day=rate.billing_cycle_day, daily_charge=float(rate.daily_charge),
        recorded_at=rate.recorded_at, actor=rate.actor,
    )  # fmt: skip


def check_all_used(data: RateRequest) -> None:
    """Raises InvalidRate naming the first field the rate type would not use, so nothing sent is dropped
    in silence: prices of another type (in `rate_structure` or at the top level), unknown names in
    `rate_structure`, time-of-use periods on a simple or tiered rate. One rate has one type."""
    if data.rate_type not in RATE_TYPES:
        return
    used = PRICES_OF[data.rate_type]
    reads = f"a {data.rate_type} rate reads " + (", ".join(used) if used else "only time_of_use_rates")
    known = {name for names in PRICES_OF.values() for name in names}
    given = [(f"rate_structure.{k}", k, v) for k, v in (data.rate_structure or {}).items()]
    given += [(k, k, getattr(data, k)) for k in sorted(known)]
    for field, name, value in given:
        if name not in known:
            raise InvalidRate(f"{field} is not a price a rate has; {reads}", field=field)
        if value is not None and name not in used:
            raise InvalidRate(f"{field} does not apply: {reads}", field=field)
    if data.rate_type != "time_of_use":
        for field in PERIOD_LISTS:
            if getattr(data, field):
                raise InvalidRate(f"{field} does not apply: it is read only by rate_type time_of_use, and "
                                  f"{reads}", field=field)  # fmt: skip


def _date(text: str | None, field: str) -> date | None:
    """A local date (YYYY-MM-DD) from 2000 on; raises InvalidRange naming `field` otherwise."""
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise InvalidRange(f"{field} must be a date (YYYY-MM-DD)") from None
    if not 2000 <= day.year <= 9000:
        raise InvalidRange(f"{field} must be from the year 2000 on")
    return day


class RatesController(Controller):
    path = "/api"
    tags = ["rates"]

    @get("/rates", operation_id="getRates", opt={"permission": Permission.DEVICES_VIEW})
    async def current(self, energy_deps: NamedDependency[EnergyDeps], as_of: FromQuery[str | None] = None) -> RateView:
        """The rate version in force at `as_of` (ISO 8601), or, without it, the one in force from the current
        5-minute bucket's end: a rate just set (which takes effect at the next 5-minute boundary) shows
        at once. With none in force, `configured` is false and `rate_type` is `none`."""
        given = parse_time(as_of, "as_of", energy_deps.reads.zone)
        moment = given or align_up(energy_deps.clock.now())
        async with energy_deps.reads.pool.connection() as conn:
            rate = in_force(await rate_versions(conn), moment)
        return rate_view(rate) if rate is not None else no_rate(energy_deps.reads.zone.key)

    @get("/rates/history", operation_id="getRateHistory", opt={"permission": Permission.DEVICES_VIEW})
    async def history(self, energy_deps: NamedDependency[EnergyDeps]) -> RateHistoryView:
        """Every rate version, oldest first, with who set it and when it took effect."""
        async with energy_deps.reads.pool.connection() as conn:
            versions = [rate_view(r) for r in await rate_versions(conn)]
        return RateHistoryView(versions=versions, count=len(versions))

    @post("/rates", operation_id="setRates", status_code=201, opt={"permission": Permission.RATES_EDIT})
    async def set_rates(
        self, data: JSONBody[RateRequest], principal: NamedDependency[Principal], energy_deps: NamedDependency[EnergyDeps]
    ) -> RateView:
        """A new rate version (`simple`, `tiered` or `time_of_use`), in force from `effective_from` (default now,
        moved up to the next 5-minute boundary); energy used before it keeps its cost. 422 `INVALID_RATE`
        names the first bad field, or a field the rate type would not use (time-of-use periods on a tiered
        rate, say): nothing sent is dropped."""
        check_all_used(data)
        body = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
        stored = await energy_deps.energy.set_rate(
            SetRate(body=body, default_zone=energy_deps.reads.zone.key, actor=principal.actor)
        )
        await energy_deps.reads.wait_projected(stored.position, projector="energy", timeout=30.0)
        return rate_view(stored.rate)

    @get("/costs", operation_id="getCosts", opt={"permission": Permission.DEVICES_VIEW})
    async def costs(
        self,
        energy_deps: NamedDependency[EnergyDeps],
        start_date: FromQuery[str | None] = None,
        end_date: FromQuery[str | None] = None,
        timezone: FromQuery[str | None] = None,
    ) -> CostsView:
        """Energy and cost from `start_date` to `end_date` (local dates of `timezone`, both inclusive; default
        this month so far): per device with its share of the energy, and per day, fixed daily charges
        included in the days. Each figure is rounded once, so the days sum to the total exactly.
        422 `INVALID_RANGE` for a bad range or zone."""
        zone = parse_zone(timezone, energy_deps.reads.zone)
        today = energy_deps.clock.now().astimezone(zone).date()
        first = _date(start_date, "start_date") or today.replace(day=1)
        last = _date(end_date, "end_date") or today
        if last < first or (last - first).days >= MAX_COST_DAYS:
            raise InvalidRange("end_date must be on or after start_date, at most three years later")
        async with energy_deps.reads.pool.connection() as conn:
            report = await cost_report(conn, first, last, zone)
        return CostsView(
            start_date=first, end_date=last, timezone=zone.key, currency=report.currency,
            total_cost=float(report.total_cost), total_kwh=round(report.total_wh / 1000, 6),
            average_daily_cost=float(report.average_daily_cost), fixed_charges=float(report.fixed_charges),
            devices=[
                DeviceCost(
                    device_id=d.device_id, device_ip=d.address, device_name=d.alias, total_kwh=round(d.wh / 1000, 6),
                    total_cost=float(d.cost), percentage=d.percentage,
                )
                for d in report.devices
            ],
            daily_breakdown=[DayCostView(date=d.day, kwh=round(d.wh / 1000, 6), cost=float(d.cost)) for d in report.days],
        )  # fmt: skip
