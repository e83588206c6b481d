"""A price walk charges each fleet bucket what `price_bucket` charges it after the same kWh of its cycle."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, localcontext
from itertools import product

import pytest

from domain.pricing import PRICING, PriceWalk, price_bucket
from domain.rates import RateVersion

START = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
LIMITS = [("0.5", "1.0"), ("1.0", "0.5"), ("0", "0"), ("0.5", "0.5"), ("-1", "0.25")]
AMOUNTS = ["-0.5", "0", "0E-12", "0.25", "0.5", "0.500000000001", "0.75", "1.0", "3"]


def tiered(first: str, second: str) -> RateVersion:
    return RateVersion(
        version=1, rate_type="tiered", currency="EUR", timezone="UTC", effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        tier1_limit=Decimal(first), tier1_rate=Decimal("0.1"), tier2_limit=Decimal(second),
        tier2_rate=Decimal("0.2"), tier3_rate=Decimal("0.35"), billing_cycle_day=1,
    )  # fmt: skip


@pytest.mark.parametrize(("first", "second"), LIMITS)
def test_each_step_charges_what_price_bucket_charges_at_limits_zero_and_limits_out_of_order(
    first: str, second: str
) -> None:
    """Buckets starting before, at, between and past the limits (limits equal, zero, negative or out of
    order), of zero or negative kWh: the same cost, of the same digits, and the same one price or None."""
    rate = tiered(first, second)
    with localcontext(PRICING):
        for used, kwh in product(AMOUNTS, AMOUNTS):
            walk = PriceWalk([rate], lambda cycle, start, used=used: Decimal(used))  # type: ignore[misc]
            got = walk.step(START, Decimal(kwh))
            expected = price_bucket(rate, START, Decimal(used), Decimal(kwh))
            assert (str(got.cost), str(got.price)) == (str(expected.cost), str(expected.price)), (used, kwh)
