"""Pricing 5-minute energy buckets by the rate versions in force, and rounding money only at the edge.

Simple and time-of-use rates price each bucket alone. Tiered rates price by the
billing cycle's cumulative consumption over every device: the fleet's energy of
each bucket is priced across the tier limits it crosses (a bucket crossing a
limit is priced at both rates), and each device's bucket gets its share of that
cost in proportion to its energy.

No stored value can make pricing or rounding raise. Pricing works in `PRICING`: Python's 28
digits, but amounts beyond what PostgreSQL's `numeric` stores become Infinity (or 0) instead of
an error, so an absurd price left by old data cannot stop the energy projector. Rounding works
in `STORED`, exact for any amount `numeric` holds: a stored cost of any size rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import TypeVar

from domain.rates import RateVersion, cycle_start, in_force, tiered_cost, unit_price

K = TypeVar("K")
KWH = Decimal(1000)
KWH_QUANTUM = Decimal("1e-12")
"""Energy is priced to the nanowatt-hour: finer digits are float noise, and bounding them keeps every
sum and product of money exact within Decimal's 28 digits."""


PRICING = Context(prec=28, rounding=ROUND_HALF_EVEN, Emax=131_000, Emin=-16_000, traps=[])
"""Money arithmetic: 28 digits like Python's default context, within the exponents PostgreSQL's
`numeric` stores (131,072 digits before the point, 16,383 after); what goes beyond becomes
Infinity, 0 or NaN rather than an error."""
STORED = Context(prec=200_000, rounding=ROUND_HALF_EVEN, traps=[])
"""Exact for any amount `numeric` holds, and never raising: rounding a stored amount cannot fail."""


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


def price_rows(
    rows: Sequence[tuple[K, datetime, float]],
    versions: list[RateVersion],
    used_before: Callable[[datetime, datetime], Decimal],
) -> dict[K, Decimal]:
    """The cost of each row (key, bucket start, Wh); rows sorted by bucket start.

    `used_before(cycle_start, first)` is the fleet's kWh from a cycle's start to
    the first bucket priced here: a tiered cycle already under way continues
    from it. Rows with no rate in force cost 0.
    """
    with localcontext(PRICING):
        return _price_rows(rows, versions, used_before)


def _price_rows(
    rows: Sequence[tuple[K, datetime, float]],
    versions: list[RateVersion],
    used_before: Callable[[datetime, datetime], Decimal],
) -> dict[K, Decimal]:
    costs: dict[K, Decimal] = {}
    cycle: datetime | None = None
    used = Decimal(0)
    index = 0
    while index < len(rows):
        start = rows[index][1]
        group = []
        while index < len(rows) and rows[index][1] == start:
            group.append(rows[index])
            index += 1
        rate = in_force(versions, start)
        if rate is None:
            costs.update((key, Decimal(0)) for key, _, _ in group)
            continue
        if rate.rate_type != "tiered":
            price = unit_price(rate, start)
            costs.update((key, kwh_of(wh) * price) for key, _, wh in group)
            continue
        this_cycle = cycle_start(rate, start)
        if this_cycle != cycle:
            used = used_before(this_cycle, start) if cycle is None else Decimal(0)
            cycle = this_cycle
        parts = [(key, kwh_of(wh)) for key, _, wh in group]
        fleet = sum((kwh for _, kwh in parts), Decimal(0))
        cost = tiered_cost(rate, used, fleet)
        used += fleet
        costs.update(_shares(parts, cost, fleet))
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
