"""Electricity rates: versioned tariffs (simple, tiered, time-of-use) and the Tariff aggregate.

A rate version applies from its `effective_from` on and never reprices energy
used before it. `effective_from` is moved up to the next 5-minute boundary, so a
5-minute energy bucket is always priced by one version alone. Prices are
`Decimal` and travel in events as strings, so no binary rounding ever touches money.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from uuid import NAMESPACE_URL, UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidRate
from domain.rollups import BUCKET, EPOCH

RateType = Literal["simple", "tiered", "time_of_use"]
TARIFF_ID = uuid5(NAMESPACE_URL, "https://wattledger.invalid/tariff")
RATE_TYPES = ("simple", "tiered", "time_of_use")
PLACES = 6
"""Decimal places a price or a tier limit may have."""
MAX_PRICE = Decimal("999999.999999")
"""The most a kWh, or a day's fixed charge, may cost: six digits before the point and six after."""
MAX_TIER_KWH = Decimal("999999999.999999")
"""The highest tier limit, in kWh of a billing cycle."""
MAX_NUMBER_TEXT = 32
"""Characters a price or limit given as text may have."""


class TouPeriod(msgspec.Struct, frozen=True, kw_only=True):
    """Hours [start_hour, end_hour) of the rate's local day at `rate`; end_hour <= start_hour wraps past midnight."""

    start_hour: int
    end_hour: int
    rate: Decimal
    label: str = ""


class RateVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One version of the tariff, as stored in events and read models."""

    version: int
    rate_type: RateType
    currency: str
    timezone: str
    effective_from: datetime
    rate_per_kwh: Decimal | None = None
    tier1_limit: Decimal | None = None
    tier1_rate: Decimal | None = None
    tier2_limit: Decimal | None = None
    tier2_rate: Decimal | None = None
    tier3_rate: Decimal | None = None
    billing_cycle_day: int = 1
    time_of_use_rates: tuple[TouPeriod, ...] = ()
    weekend_time_of_use_rates: tuple[TouPeriod, ...] = ()
    daily_charge: Decimal = Decimal(0)
    recorded_at: datetime | None = None
    actor: str = ""

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def align_up(moment: datetime) -> datetime:
    """The first 5-minute UTC boundary at or after `moment`."""
    steps = -((EPOCH - moment) // BUCKET)
    return EPOCH + steps * BUCKET


def decimal_places(number: Decimal) -> int:
    """How many decimal places a finite Decimal needs (trailing zeros do not count)."""
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    significant = "".join(map(str, digits)).rstrip("0")
    if not significant:
        return 0
    return max(0, -(exponent + len(digits) - len(significant)))


def _price(value: Any, field: str, *, required: bool = True, most: Decimal = MAX_PRICE) -> Decimal | None:
    """A Decimal from 0 to `most` with at most six decimal places, from a JSON number or string; raises
    InvalidRate naming `field`."""
    if value is None:
        if required:
            raise InvalidRate(f"{field} is required", field=field)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise InvalidRate(f"{field} must be a number", field=field)
    text = str(value).strip()
    if len(text) > MAX_NUMBER_TEXT:
        raise InvalidRate(f"{field} must be a number of at most {MAX_NUMBER_TEXT} characters", field=field)
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise InvalidRate(f"{field} must be a number", field=field) from None
    if not number.is_finite() or not 0 <= number <= most:
        raise InvalidRate(f"{field} must be a number from 0 to {most}", field=field)
    if decimal_places(number) > PLACES:
        raise InvalidRate(f"{field} must have at most {PLACES} decimal places", field=field)
    return number


def _periods(items: Any, field: str) -> tuple[TouPeriod, ...]:
    """Time-of-use periods covering the 24 hours exactly once each; raises InvalidRate naming the field."""
    if not isinstance(items, list) or not items:
        raise InvalidRate(f"{field} must list periods covering 24 hours", field=field)
    covered: dict[int, int] = {}
    periods: list[TouPeriod] = []
    for number, item in enumerate(items):
        where = f"{field}[{number}]"
        if not isinstance(item, dict):
            raise InvalidRate(f"{where} must be an object", field=where)
        start, end = item.get("start_hour"), item.get("end_hour")
        if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= 23:
            raise InvalidRate(f"{where}.start_hour must be an hour from 0 to 23", field=f"{where}.start_hour")
        if not isinstance(end, int) or isinstance(end, bool) or not 0 <= end <= 24:
            raise InvalidRate(f"{where}.end_hour must be an hour from 0 to 24", field=f"{where}.end_hour")
        rate = _price(item.get("rate"), f"{where}.rate")
        label = item.get("label", "")
        if not isinstance(label, str) or len(label) > 64:
            raise InvalidRate(f"{where}.label must be text of at most 64 characters", field=f"{where}.label")
        hours = range(start, end) if end > start else [*range(start, 24), *range(0, end)]
        for hour in hours:
            if hour in covered:
                raise InvalidRate(f"{where} overlaps {field}[{covered[hour]}] at hour {hour}", field=where)
            covered[hour] = number
        assert rate is not None
        periods.append(TouPeriod(start_hour=start, end_hour=end, rate=rate, label=label))
    missing = [h for h in range(24) if h not in covered]
    if missing:
        raise InvalidRate(f"{field} leaves hours {missing} without a rate", field=field)
    return tuple(periods)


def parse_rate(
    body: dict[str, Any], *, version: int, now: datetime, default_zone: str, actor: str
) -> RateVersion:
    """A validated rate version from a request body in the Kasa Monitor shape.

    Raises InvalidRate (422) naming the first bad field: unknown rate type,
    missing or negative prices, tiers out of order, time-of-use hours that overlap
    or leave gaps, an unknown zone, a billing cycle day outside 1-31.
    """
    rate_type = body.get("rate_type")
    if rate_type not in RATE_TYPES:
        raise InvalidRate(f"rate_type must be one of {', '.join(RATE_TYPES)}", field="rate_type")
    currency = body.get("currency") or "USD"
    if not isinstance(currency, str) or not currency.isalpha() or len(currency) != 3:
        raise InvalidRate("currency must be a three-letter code such as USD", field="currency")
    zone = body.get("timezone") or default_zone
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidRate("timezone must be an IANA time zone such as Europe/Berlin", field="timezone") from None
    structure = body.get("rate_structure") or {}
    if not isinstance(structure, dict):
        raise InvalidRate("rate_structure must be an object", field="rate_structure")
    merged = {**structure, **{k: v for k, v in body.items() if k.startswith(("tier", "rate_per_kwh"))}}
    fields: dict[str, Any] = {}
    if rate_type == "simple":
        fields["rate_per_kwh"] = _price(merged.get("rate_per_kwh"), "rate_structure.rate_per_kwh")
    elif rate_type == "tiered":
        for name in ("tier1_limit", "tier1_rate", "tier2_limit", "tier2_rate", "tier3_rate"):
            most = MAX_TIER_KWH if name.endswith("_limit") else MAX_PRICE
            fields[name] = _price(merged.get(name), f"rate_structure.{name}", most=most)
        if fields["tier1_limit"] <= 0:
            raise InvalidRate("rate_structure.tier1_limit must be above 0", field="rate_structure.tier1_limit")
        if fields["tier2_limit"] <= fields["tier1_limit"]:
            raise InvalidRate(
                "rate_structure.tier2_limit must be above tier1_limit", field="rate_structure.tier2_limit"
            )
    else:
        fields["time_of_use_rates"] = _periods(body.get("time_of_use_rates"), "time_of_use_rates")
        weekend = body.get("weekend_time_of_use_rates")
        if weekend is not None:
            fields["weekend_time_of_use_rates"] = _periods(weekend, "weekend_time_of_use_rates")
    cycle_day = body.get("billing_cycle_day", 1)
    if not isinstance(cycle_day, int) or isinstance(cycle_day, bool) or not 1 <= cycle_day <= 31:
        raise InvalidRate("billing_cycle_day must be a day from 1 to 31", field="billing_cycle_day")
    daily = _price(body.get("daily_charge", 0), "daily_charge")
    effective = body.get("effective_from")
    if effective is None:
        effective_from = now
    else:
        try:
            effective_from = datetime.fromisoformat(str(effective))
        except ValueError:
            raise InvalidRate("effective_from must be an ISO 8601 time", field="effective_from") from None
        if effective_from.tzinfo is None:
            raise InvalidRate("effective_from must name its UTC offset", field="effective_from")
        if not 2000 <= effective_from.year <= 9000:
            raise InvalidRate("effective_from must be from the year 2000 to 9000", field="effective_from")
    return RateVersion(
        version=version,
        rate_type=rate_type,
        currency=currency.upper(),
        timezone=zone,
        effective_from=align_up(effective_from.astimezone(timezone.utc)),
        billing_cycle_day=cycle_day,
        daily_charge=daily or Decimal(0),
        recorded_at=now,
        actor=actor,
        **fields,
    )


def _period_of(periods: tuple[TouPeriod, ...], hour: int) -> TouPeriod:
    for period in periods:
        if period.end_hour > period.start_hour:
            if period.start_hour <= hour < period.end_hour:
                return period
        elif hour >= period.start_hour or hour < period.end_hour:
            return period
    raise ValueError(f"no period covers hour {hour}")


def unit_price(rate: RateVersion, moment: datetime) -> Decimal:
    """The price of a kWh used at `moment` under a simple or time-of-use rate (local hour of the rate's zone)."""
    if rate.rate_type == "simple":
        return rate.rate_per_kwh or Decimal(0)
    local = moment.astimezone(rate.zone)
    periods = rate.time_of_use_rates
    if rate.weekend_time_of_use_rates and local.weekday() >= 5:
        periods = rate.weekend_time_of_use_rates
    return _period_of(periods, local.hour).rate


def _cycle_date(year: int, month: int, day: int) -> date:
    """`day` of the month, clamped to the month's last day."""
    following = date(year + month // 12, month % 12 + 1, 1)
    return date(year, month, min(day, (following - timedelta(days=1)).day))


def cycle_start(rate: RateVersion, moment: datetime) -> datetime:
    """The start (local midnight of the billing cycle day, in the rate's zone) of the cycle containing `moment`."""
    zone = rate.zone
    local = moment.astimezone(zone)
    start = _cycle_date(local.year, local.month, rate.billing_cycle_day)
    if local.date() < start:
        month, year = (local.month - 1, local.year) if local.month > 1 else (12, local.year - 1)
        start = _cycle_date(year, month, rate.billing_cycle_day)
    midnight = datetime.combine(start, time(0), tzinfo=zone).astimezone(timezone.utc)
    if midnight > moment:  # a cycle day whose midnight a DST change moved
        return cycle_start(rate, midnight - timedelta(seconds=1))
    return midnight


def tiered_cost(rate: RateVersion, used_before: Decimal, kwh: Decimal) -> Decimal:
    """The cost of `kwh` used after `used_before` kWh of the cycle: each part priced by the tier it falls in."""
    limits = [rate.tier1_limit or Decimal(0), rate.tier2_limit or Decimal(0)]
    prices = [rate.tier1_rate or Decimal(0), rate.tier2_rate or Decimal(0), rate.tier3_rate or Decimal(0)]
    cost = Decimal(0)
    low = used_before
    high = used_before + kwh
    floor = Decimal(0)
    for index, price in enumerate(prices):
        ceiling = limits[index] if index < len(limits) else None
        part_low = max(low, floor)
        part_high = high if ceiling is None else min(high, ceiling)
        if part_high > part_low:
            cost += (part_high - part_low) * price
        if ceiling is not None:
            floor = ceiling
    return cost


def in_force(versions: list[RateVersion], moment: datetime) -> RateVersion | None:
    """The version in force at `moment`: the latest effective one; of equal ones the later recorded."""
    chosen: RateVersion | None = None
    for version in versions:
        if version.effective_from <= moment and (
            chosen is None or (version.effective_from, version.version) >= (chosen.effective_from, chosen.version)
        ):
            chosen = version
    return chosen


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _periods_out(periods: tuple[TouPeriod, ...]) -> list[dict[str, Any]]:
    return [{"start_hour": p.start_hour, "end_hour": p.end_hour, "rate": str(p.rate), "label": p.label} for p in periods]


class Tariff(Aggregate):
    """The one tariff of the installation; each rate version is an event with its actor."""

    class Opened(Aggregate.Created):
        actor: str

    class RateSet(Aggregate.Event):
        version_number: int
        rate_type: str
        currency: str
        timezone: str
        effective_from: datetime
        rate_structure: dict[str, str | None]
        time_of_use_rates: list[dict[str, Any]]
        weekend_time_of_use_rates: list[dict[str, Any]]
        billing_cycle_day: int
        daily_charge: str
        actor: str

    @staticmethod
    def create_id(**_: object) -> UUID:
        return TARIFF_ID

    @event(Opened)
    def __init__(self, *, actor: str) -> None:
        self.versions = 0

    def set_rate(self, rate: RateVersion, *, actor: str) -> None:
        """Record a new version (numbered after the last)."""
        self._rate_set(
            version_number=self.versions + 1,
            rate_type=rate.rate_type,
            currency=rate.currency,
            timezone=rate.timezone,
            effective_from=rate.effective_from,
            rate_structure={
                "rate_per_kwh": _text(rate.rate_per_kwh),
                "tier1_limit": _text(rate.tier1_limit),
                "tier1_rate": _text(rate.tier1_rate),
                "tier2_limit": _text(rate.tier2_limit),
                "tier2_rate": _text(rate.tier2_rate),
                "tier3_rate": _text(rate.tier3_rate),
            },
            time_of_use_rates=_periods_out(rate.time_of_use_rates),
            weekend_time_of_use_rates=_periods_out(rate.weekend_time_of_use_rates),
            billing_cycle_day=rate.billing_cycle_day,
            daily_charge=str(rate.daily_charge),
            actor=actor,
        )

    @event(RateSet)
    def _rate_set(
        self,
        version_number: int,
        rate_type: str,
        currency: str,
        timezone: str,
        effective_from: datetime,
        rate_structure: dict[str, str | None],
        time_of_use_rates: list[dict[str, Any]],
        weekend_time_of_use_rates: list[dict[str, Any]],
        billing_cycle_day: int,
        daily_charge: str,
        actor: str,
    ) -> None:
        self.versions = version_number


def version_of(event: Tariff.RateSet) -> RateVersion:
    """The rate version a stored event describes."""

    def number(value: str | None) -> Decimal | None:
        return None if value is None else Decimal(value)

    def periods(items: list[dict[str, Any]]) -> tuple[TouPeriod, ...]:
        return tuple(
            TouPeriod(start_hour=i["start_hour"], end_hour=i["end_hour"], rate=Decimal(i["rate"]), label=i["label"])
            for i in items
        )

    s = event.rate_structure
    return RateVersion(
        version=event.version_number,
        rate_type=event.rate_type,  # type: ignore[arg-type]
        currency=event.currency,
        timezone=event.timezone,
        effective_from=event.effective_from,
        rate_per_kwh=number(s.get("rate_per_kwh")),
        tier1_limit=number(s.get("tier1_limit")),
        tier1_rate=number(s.get("tier1_rate")),
        tier2_limit=number(s.get("tier2_limit")),
        tier2_rate=number(s.get("tier2_rate")),
        tier3_rate=number(s.get("tier3_rate")),
        billing_cycle_day=event.billing_cycle_day,
        time_of_use_rates=periods(event.time_of_use_rates),
        weekend_time_of_use_rates=periods(event.weekend_time_of_use_rates),
        daily_charge=Decimal(event.daily_charge),
        recorded_at=event.timestamp,
        actor=event.actor,
    )
