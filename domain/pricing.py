"""Pricing 5-minute energy buckets by the rate versions in force, and rounding money only at the edge.

Simple and time-of-use rates price each bucket alone. Tiered rates price by the
billing cycle's cumulative consumption over every device: the fleet's energy of
each bucket is priced across the tier limits it crosses (a bucket crossing a
limit is priced at both rates), and each device's bucket gets its share of that
cost in proportion to its energy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TypeVar

from domain.rates import RateVersion, cycle_start, in_force, tiered_cost, unit_price

K = TypeVar("K")
KWH = Decimal(1000)
KWH_QUANTUM = Decimal("1e-12")
"""Energy is priced to the nanowatt-hour: finer digits are float noise, and bounding them keeps every
sum and product of money exact within Decimal's 28 digits."""


def kwh_of(wh: float) -> Decimal:
    """A bucket's energy in kWh as a Decimal (its shortest decimal spelling, to the nanowatt-hour)."""
    return (Decimal(repr(wh)) / KWH).quantize(KWH_QUANTUM)


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
    """Round each part to `places` so the rounded parts sum exactly to the rounded total (largest remainder)."""
    quantum = Decimal(1).scaleb(-places)
    total = sum(parts, Decimal(0)).quantize(quantum, rounding=ROUND_HALF_EVEN)
    floors = [p.quantize(quantum, rounding="ROUND_FLOOR") for p in parts]
    left = int(((total - sum(floors, Decimal(0))) / quantum).to_integral_value())
    order = sorted(range(len(parts)), key=lambda i: (floors[i] - parts[i], i))
    for i in order[: max(left, 0)]:
        floors[i] += quantum
    return floors
