"""Numbers by meaning: what the edge refuses, and rounding and pricing that no stored value can make fail."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal, localcontext

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidRate, InvalidReadings
from domain.imports import DeviceShape, ImportedReading, check_readings
from domain.pricing import STORED, kwh_of, money, price_rows, round_money, round_parts
from domain.rates import RateVersion, decimal_places, parse_rate
from domain.readings import MAX_CHANNEL_POWER_W, MAX_COUNTER_WH, bounded

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
SHAPE = DeviceShape(alias="p", model="HS110", device_type="plug", mac="AA")
# Any amount PostgreSQL's numeric holds: up to 131,072 digits before the point and 16,383 after.
STORED_AMOUNTS = st.builds(lambda digits, exponent: Decimal(digits).scaleb(exponent, context=STORED),
                           st.integers(-(10**30), 10**30), st.integers(-16_000, 130_000))


def simple(price: str) -> dict[str, object]:
    return {"rate_type": "simple", "rate_structure": {"rate_per_kwh": price}}


@pytest.mark.parametrize("price", ["0", "0.000001", "999999.999999", "1.500000000", "1E+2", 0.25, 7])
def test_prices_of_six_digits_either_side_of_the_point_are_taken(price: object) -> None:
    rate = parse_rate(simple(price), version=1, now=NOW, default_zone="UTC", actor="t")  # type: ignore[arg-type]
    assert rate.rate_per_kwh == Decimal(str(price))


@pytest.mark.parametrize("price", ["1000000", "0.0000001", "1e-7", 0.1234567, "-0.1", "1" + "0" * 5000, "NaN",
                                   "Infinity", "1e999999", True, [1]])  # fmt: skip
def test_other_prices_are_refused_naming_the_field(price: object) -> None:
    with pytest.raises(InvalidRate, match=r"rate_structure\.rate_per_kwh"):
        parse_rate(simple(price), version=1, now=NOW, default_zone="UTC", actor="t")  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "places"), [("1.500", 1), ("100", 0), ("1E+2", 0), ("0.000000", 0), ("1E-7", 7),
                                              ("0E-10", 0), ("10.10", 1)])  # fmt: skip
def test_decimal_places_leave_out_trailing_zeros(text: str, places: int) -> None:
    assert decimal_places(Decimal(text)) == places


@pytest.mark.parametrize(("reading", "field"), [
    (ImportedReading(timestamp="2026-03-01T00:00:00Z", power_w=3700.5), "power_w must be at most 3700"),
    (ImportedReading(timestamp="2026-03-01T00:00:00Z", total_wh=MAX_COUNTER_WH), "total_wh must be at most"),
    (ImportedReading(timestamp="2026-03-01T00:00:00Z", voltage=-1000.5), "voltage must be at most 1000"),
    (ImportedReading(timestamp="2026-03-01T00:00:00Z", current=1000.5), "current must be at most 1000"),
])  # fmt: skip
def test_imported_readings_no_meter_measures_are_refused(reading: ImportedReading, field: str) -> None:
    with pytest.raises(InvalidReadings, match=field):
        check_readings([reading], SHAPE, NOW, max_power_w=3700.0)
    check_readings([msgspec.structs.replace(reading, power_w=3700.0, total_wh=1e9 - 1, voltage=230.0, current=16.0)],
                   SHAPE, NOW, max_power_w=3700.0)  # fmt: skip


def test_the_request_schema_bounds_readings_too() -> None:
    with pytest.raises(msgspec.ValidationError, match="power_w"):
        msgspec.json.decode(b'{"timestamp": "2026-03-01T00:00:00Z", "power_w": 1e300}', type=ImportedReading)
    with pytest.raises(msgspec.ValidationError, match="total_wh"):
        msgspec.json.decode(b'{"timestamp": "2026-03-01T00:00:00Z", "total_wh": 1e9}', type=ImportedReading)


@pytest.mark.parametrize(("value", "kept"), [(600.0, 600.0), (-3.0, -3.0), (1e300, None), (float("inf"), None),
                                             (float("nan"), None), (None, None)])  # fmt: skip
def test_the_read_side_takes_a_reading_beyond_any_meter_as_unknown(value: float | None, kept: float | None) -> None:
    assert bounded(value, MAX_CHANNEL_POWER_W) == kept


@settings(deadline=None)
@given(st.lists(STORED_AMOUNTS, min_size=1, max_size=8), st.integers(0, 6))
def test_rounded_parts_of_any_stored_amounts_sum_to_the_rounded_total(parts: list[Decimal], places: int) -> None:
    rounded = round_parts(parts, places)
    with localcontext(STORED):
        assert sum(rounded, Decimal(0)) == round_money(sum(parts, Decimal(0)), places)
    assert all(abs(r - p) < Decimal(1).scaleb(-places) for r, p in zip(rounded, parts, strict=True))


@settings(deadline=None)
@given(STORED_AMOUNTS, st.integers(0, 6))
def test_any_stored_amount_rounds(value: Decimal, places: int) -> None:
    rounded = round_money(value, places)
    assert rounded.is_finite() and abs(rounded - value) <= Decimal(1).scaleb(-places) / 2
    money(value, places)


def test_amounts_beyond_everything_round_to_what_json_shows_as_null() -> None:
    assert [str(r) for r in round_parts([Decimal("NaN"), Decimal("Infinity"), Decimal("0.33335")], 4)] == [
        "NaN", "Infinity", "0.3334",
    ]  # fmt: skip
    assert money(Decimal("2.9E+4999"), 4) == float("inf")
    assert kwh_of(1e300) == Decimal("1e297") and kwh_of(1234.5) == Decimal("1.2345")


@pytest.mark.parametrize("price", [Decimal("1" + "0" * 5000), Decimal("1e200000"), Decimal("1e-20000")])
def test_pricing_with_an_absurd_stored_price_gives_amounts_the_store_holds(price: Decimal) -> None:
    rate = RateVersion(version=1, rate_type="simple", currency="EUR", timezone="UTC",
                       effective_from=datetime(2026, 1, 1, tzinfo=timezone.utc), rate_per_kwh=price)  # fmt: skip
    start = datetime(2026, 3, 1, tzinfo=timezone.utc)
    rows = [(i, start + timedelta(minutes=5 * i), 50.0) for i in range(3)]
    costs = price_rows(rows, [rate], lambda a, b: Decimal(0))
    for cost in costs.values():
        assert cost.is_infinite() or (cost.is_finite() and cost.adjusted() <= 131_000 and cost.as_tuple().exponent
                                      >= -16_383)  # type: ignore[operator]
