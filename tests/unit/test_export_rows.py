"""Export rows are shaped as the readings stream past: a long range holds a few buckets in memory, not the range."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest

from domain.energy import EnergyRules
from domain.exports import DeviceLabel, ExportSpec, bucket_rows
from domain.meter import MeterDay

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
DEVICE = uuid4()
LABEL = DeviceLabel(device_id=DEVICE, address="10.0.0.9:9999", name="Heater", mac="CC")
UTC = ZoneInfo("UTC")


def reading(at: datetime, total_wh: float | None) -> MeterDay.ReadingRecorded:
    return MeterDay.ReadingRecorded(  # type: ignore[call-arg]
        originator_id=uuid4(), originator_version=2, timestamp=at, device_id=DEVICE, measured_at=at, is_on=True,
        power_w=60.0, voltage_v=None, current_a=None, total_wh=total_wh, outlets=[], actor="test",
    )  # fmt: skip


class Counted:
    """Readings every 10 minutes (10 Wh each), counting how many were taken."""

    def __init__(self, days: int) -> None:
        self.days = days
        self.taken = 0

    def __iter__(self) -> Iterator[MeterDay.ReadingRecorded]:
        for n in range(self.days * 144 + 1):
            self.taken += 1
            yield reading(START + timedelta(minutes=10 * n), 10.0 * n)


def spec(aggregation: str, days: int, fields: tuple[str, ...] = ("timestamp", "energy_kwh")) -> ExportSpec:
    return ExportSpec(devices=(DEVICE,), start=START, end=START + timedelta(days=days), fields=fields,
                      aggregation=aggregation, timezone="UTC", format="csv")  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize(("aggregation", "per_row"), [("hourly", 6), ("daily", 144)])
def test_bucket_rows_come_out_while_the_readings_are_still_read(aggregation: str, per_row: int) -> None:
    readings = Counted(days=60)
    rows = bucket_rows(LABEL, readings, spec(aggregation, 60), UTC, EnergyRules())
    first = next(rows)
    assert first[0] == "2025-01-01T00:00:00+00:00"
    assert readings.taken <= per_row + 2
    rest = list(rows)
    assert readings.taken == 60 * 144 + 1
    assert len(rest) + 1 == (60 * 24 if aggregation == "hourly" else 60)
    assert sum(r[3] for r in [first, *rest]) == pytest.approx(60 * 144 * 10 / 1000)


def test_costs_are_read_along_with_the_rows_and_summed_per_bucket() -> None:
    taken: list[datetime] = []

    def priced() -> Iterator[tuple[datetime, Decimal]]:
        for n in range(3 * 24 * 12):
            at = START + timedelta(minutes=5 * n)
            taken.append(at)
            yield at, Decimal("0.001")

    readings = Counted(days=3)
    rows = bucket_rows(LABEL, readings, spec("hourly", 3, ("timestamp", "energy_kwh", "cost")), UTC, EnergyRules(),
                       priced=priced())  # fmt: skip
    first = next(rows)
    assert first[4] == pytest.approx(0.012) and len(taken) <= 13
    assert [r[4] for r in rows] == [pytest.approx(0.012)] * (3 * 24 - 1)


def test_priced_buckets_of_hours_without_a_row_are_passed_over() -> None:
    at = [START, START + timedelta(minutes=30), START + timedelta(hours=5), START + timedelta(hours=5, minutes=30)]
    gap = [reading(moment, None) for moment in at]
    priced = [(START + timedelta(minutes=5 * n), Decimal("0.5")) for n in range(12 * 6)]
    rules = EnergyRules(max_gap=timedelta(hours=1))  # no meter and a long gap: no energy in hours 1 to 4
    rows = list(bucket_rows(LABEL, gap, spec("hourly", 1, ("timestamp", "cost")), UTC, rules, priced=priced))
    assert [r[0][11:16] for r in rows] == ["00:00", "05:00"]
    assert [r[3] for r in rows] == [6.0, 6.0]
