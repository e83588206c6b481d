"""Pricing 5-minute energy buckets by the rate versions in force, and rounding money only at the edge.

Simple and time-of-use rates price each bucket alone. Tiered rates price by the
billing cycle's cumulative consumption over every device (all its kWh since the
cycle's start): the fleet's energy of each bucket is priced across the tier limits
it crosses. A bucket within one tier charges each device's kWh at that tier's price,
so it does not depend on the other devices; a bucket crossing a limit is priced at
both rates and each device gets its share of that cost in proportion to its energy.
So a late reading changes the cost of other buckets only where the tier they fall
in moves.

No stored value can make pricing or rounding raise. Pricing works in `PRICING`: Python's 28
digits, but amounts beyond what PostgreSQL's `numeric` stores become Infinity (or 0) instead of
an error, so an absurd price left by old data cannot stop the energy projector. Rounding works
in `STORED`, exact for any amount `numeric` holds: a stored cost of any size rounds.
"""

from __future__ import annotations

from bisect import bisect_right
from functools import lru_cache
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import NamedTuple, TypeVar

from domain.rates import RateVersion, cycle_start, tiered_cost, unit_price

K = TypeVar("K")
CYCLE_REACH = timedelta(days=32)
"""Past the longest billing cycle (31 days and a DST hour): a moment this far after a cycle's start lies in
the next cycle."""
KWH = Decimal(1000)
_ZERO = Decimal(0)
KWH_QUANTUM = Decimal("1e-12")
"""Energy is priced to the nanowatt-hour: finer digits are float noise, and bounding them keeps every
sum and product of money exact within Decimal's 28 digits."""


PRICING = Context(prec=28, rounding=ROUND_HALF_EVEN, Emax=131_000, Emin=-16_000, traps=[])
"""Money arithmetic: 28 digits like Python's default context, within the exponents PostgreSQL's
`numeric` stores (131,072 digits before the point, 16,383 after); what goes beyond becomes
Infinity, 0 or NaN rather than an error."""
STORED = Context(prec=200_000, rounding=ROUND_HALF_EVEN, traps=[])
"""Exact for any amount `numeric` holds, and never raising: rounding a stored amount cannot fail."""


@lru_cache(maxsize=65_536)
def kwh_of(wh: float) -> Decimal:
    """A bucket's energy in kWh as a Decimal (its shortest decimal spelling, to the nanowatt-hour)."""
    with localcontext(STORED):
        return Decimal(repr(wh)).scaleb(-3).quantize(KWH_QUANTUM)


def round_money(value: Decimal, places: int) -> Decimal:
    """`value` rounded half to even to `places` decimals, however large; NaN and infinities stay as they are."""
    if not value.is_finite():
        return value
    with localcontext(STORED):
        return value.quantize(Decimal(1).scaleb(-places))


def money(value: Decimal, places: int) -> float:
    """`value` rounded to `places`, as a float (an amount too large for a float is infinite; JSON shows null)."""
    return float(round_money(value, places))


class Priced(NamedTuple):
    """What one fleet bucket costs, and the one unit price every kWh in it is charged at: None where the
    bucket crosses a tier limit, and its cost is then shared in proportion to each channel's kWh."""

    cost: Decimal
    price: Decimal | None


def price_bucket(rate: RateVersion | None, start: datetime, used: Decimal, kwh: Decimal) -> Priced:
    """The fleet's `kwh` in the bucket at `start`, after `used` kWh of its billing cycle (tiers only), priced."""
    if rate is None:
        return Priced(Decimal(0), Decimal(0))
    if rate.rate_type != "tiered":
        price = unit_price(rate, start)
        return Priced(kwh * price, price)
    parts = tier_parts(rate, used, kwh)
    if len(parts) == 1:
        return Priced(kwh * parts[0][1], parts[0][1])
    if not parts:
        return Priced(Decimal(0), Decimal(0))
    return Priced(tiered_cost(rate, used, kwh), None)


def tier_parts(rate: RateVersion, used: Decimal, kwh: Decimal) -> list[tuple[Decimal, Decimal]]:
    """(kWh, price) of each tier that `kwh` used after `used` kWh of the cycle falls in, lowest first."""
    return _parts(_tiers(rate), used, kwh)


Tiers = tuple[tuple[Decimal | None, ...], tuple[Decimal, ...]]


def _tiers(rate: RateVersion) -> Tiers:
    """A tiered rate's limits (None: no limit above the last tier) and prices."""
    limits = (rate.tier1_limit or Decimal(0), rate.tier2_limit or Decimal(0), None)
    prices = (rate.tier1_rate or Decimal(0), rate.tier2_rate or Decimal(0), rate.tier3_rate or Decimal(0))
    return limits, prices


def _parts(tiers: Tiers, used: Decimal, kwh: Decimal) -> list[tuple[Decimal, Decimal]]:
    limits, prices = tiers
    parts: list[tuple[Decimal, Decimal]] = []
    floor, high = Decimal(0), used + kwh
    for ceiling, price in zip(limits, prices, strict=True):
        part_low = max(used, floor)
        part_high = high if ceiling is None else min(high, ceiling)
        if part_high > part_low:
            parts.append((part_high - part_low, price))
        if ceiling is not None:
            floor = ceiling
    return parts


def bucket_costs(parts: Sequence[tuple[K, Decimal]], priced: Priced) -> list[tuple[K, Decimal]]:
    """Each channel's cost in a priced fleet bucket, `parts` being every channel's kWh in it (sorted the
    same way every time): its kWh at the bucket's one price, or its share of a bucket crossing a tier limit."""
    if priced.price is not None:
        return [(key, kwh * priced.price) for key, kwh in parts]
    return _shares(parts, priced.cost, sum((kwh for _, kwh in parts), Decimal(0)))


def tier_reach(versions: Sequence[RateVersion], start: datetime) -> tuple[datetime | None, datetime]:
    """The end of the buckets whose tiered price depends on the fleet's kWh at `start`: those after it, up to
    the end of each billing cycle containing it, where a tiered version is in force (None: no such bucket);
    and the moment before which every later start has the same reach."""
    ordered = sorted(versions, key=lambda v: (v.effective_from, v.version))
    reach: datetime | None = None
    same_until = datetime.max.replace(tzinfo=start.tzinfo)
    for index, version in enumerate(ordered):
        if version.effective_from > start:
            same_until = min(same_until, version.effective_from)
        if version.rate_type != "tiered":
            continue
        cycle = cycle_start(version, start)
        end = cycle_start(version, cycle + CYCLE_REACH)
        same_until = min(same_until, end)
        if index + 1 < len(ordered):
            end = min(end, ordered[index + 1].effective_from)
        if max(version.effective_from, start) < end:
            reach = end if reach is None else max(reach, end)
    return reach, same_until


class PriceWalk:
    """Prices consecutive fleet buckets in time order, keeping each billing cycle's running total.

    A tiered bucket is priced after every kWh the fleet used from its cycle's start
    (whatever rate priced those kWh). `used_before(cycle_start, start)` gives that
    total for the first bucket of a cycle the walk meets; from there on the walk adds
    each bucket it is given, so every fleet bucket from that point on must pass
    through `step`, in order.
    """

    def __init__(self, versions: Sequence[RateVersion], used_before: Callable[[datetime, datetime], Decimal]) -> None:
        self.versions = sorted(versions, key=lambda v: (v.effective_from, v.version))
        self._from = [v.effective_from for v in self.versions]
        self._used_before = used_before
        self._used: dict[datetime, Decimal] = {}
        self._cycles: dict[int, tuple[datetime, datetime]] = {}
        self._tiers: dict[int, Tiers] = {}

    def rate(self, start: datetime) -> RateVersion | None:
        """The version in force at `start` (as `in_force` chooses it)."""
        index = bisect_right(self._from, start)
        return self.versions[index - 1] if index else None

    def cycle(self, rate: RateVersion, start: datetime) -> datetime:
        """The start of `rate`'s billing cycle containing `start`, remembered while the walk stays in it."""
        known = self._cycles.get(rate.version)
        if known is None or not known[0] <= start < known[1]:
            first = cycle_start(rate, start)
            known = self._cycles[rate.version] = (first, cycle_start(rate, first + CYCLE_REACH))
        return known[0]

    def step(self, start: datetime, kwh: Decimal) -> Priced:
        """Price the fleet's `kwh` in the bucket at `start` (later than every bucket walked before)."""
        rate = self.rate(start)
        used = Decimal(0)
        if rate is not None and rate.rate_type == "tiered":
            cycle = self.cycle(rate, start)
            if cycle not in self._used:
                self._used[cycle] = self._used_before(cycle, start)
            used = self._used[cycle]
        for cycle in self._used:
            self._used[cycle] += kwh
        if rate is None or rate.rate_type != "tiered":
            return price_bucket(rate, start, used, kwh)
        tiers = self._tiers.get(rate.version)
        if tiers is None:
            tiers = self._tiers[rate.version] = _tiers(rate)
        # The tiers `_parts` would give a part of [used, used + kwh], found by comparisons alone: one such
        # tier prices every kWh at its price, more share the cost.
        (first, second, _), (low, middle, top) = tiers
        assert first is not None and second is not None
        high = used + kwh
        count, price = 0, low
        if min(high, first) > max(used, _ZERO):
            count = 1
        if min(high, second) > max(used, first):
            count, price = count + 1, middle
        if high > max(used, second):
            count, price = count + 1, top
        if count == 1:
            return Priced(kwh * price, price)
        if not count:
            return Priced(Decimal(0), Decimal(0))
        return Priced(tiered_cost(rate, used, kwh), None)


def price_rows(
    rows: Sequence[tuple[K, datetime, float]],
    versions: list[RateVersion],
    used_before: Callable[[datetime, datetime], Decimal],
) -> dict[K, Decimal]:
    """The cost of each row (key, bucket start, Wh); rows sorted by bucket start, every fleet bucket of the
    span present (the rows of one start are the fleet's whole bucket).

    `used_before(cycle_start, first)` is the fleet's kWh from a cycle's start to
    the first bucket priced here: a tiered cycle already under way continues
    from it. Rows with no rate in force cost 0.
    """
    with localcontext(PRICING):
        walk = PriceWalk(versions, used_before)
        costs: dict[K, Decimal] = {}
        index = 0
        while index < len(rows):
            start = rows[index][1]
            parts: list[tuple[K, Decimal]] = []
            while index < len(rows) and rows[index][1] == start:
                parts.append((rows[index][0], kwh_of(rows[index][2])))
                index += 1
            priced = walk.step(start, sum((kwh for _, kwh in parts), Decimal(0)))
            costs.update(bucket_costs(parts, priced))
        return costs


def _shares(parts: Sequence[tuple[K, Decimal]], cost: Decimal, fleet: Decimal) -> list[tuple[K, Decimal]]:
    """`cost` split over the parts in proportion to their kWh; the last part takes the remainder, so the
    shares sum to `cost` exactly (a division alone may round at Decimal's precision)."""
    if not fleet:
        return [(key, Decimal(0)) for key, _ in parts]
    shares = [(key, cost * kwh / fleet) for key, kwh in parts[:-1]]
    shares.append((parts[-1][0], cost - sum((share for _, share in shares), Decimal(0))))
    return shares


def round_parts(parts: Sequence[Decimal], places: int) -> list[Decimal]:
    """Round each part to `places` so the rounded parts sum exactly to the rounded total (largest remainder).

    Exact for any parts `numeric` holds; parts that are NaN or infinite are returned as they are."""
    if not all(p.is_finite() for p in parts):
        return [round_money(p, places) for p in parts]
    with localcontext(STORED):
        quantum = Decimal(1).scaleb(-places)
        total = sum(parts, Decimal(0)).quantize(quantum, rounding=ROUND_HALF_EVEN)
        floors = [p.quantize(quantum, rounding=ROUND_FLOOR) for p in parts]
        if not (total.is_finite() and all(f.is_finite() for f in floors)):
            return floors  # beyond even STORED's digits: NaN, shown as null
        left = int((total - sum(floors, Decimal(0))).scaleb(places))
        order = sorted(range(len(parts)), key=lambda i: (floors[i] - parts[i], i))
        for i in order[: max(left, 0)]:
            floors[i] += quantum
    return floors
