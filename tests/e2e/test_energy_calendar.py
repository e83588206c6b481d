"""Device stats by the calendar: today, this week (from Monday) and this month, read from an injected
clock, so the figures are the same whatever day the suite runs on."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import msgspec
import pytest

from domain.readings import DeviceSnapshot
from infra.bootstrap import Runtime
from infra.settings import Settings
from tests.harness import background
from tests.kit import ManualClock, seed_device

PLUG = DeviceSnapshot(
    alias="kettle", model="HS110", device_type="plug", mac="AC:00", firmware="1", is_on=True, has_emeter=True,
    power_w=0.0, total_wh=0.0,
)  # fmt: skip


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def run(start: datetime, end: datetime, power: float, *, total0: float) -> list[dict[str, Any]]:
    """One reading a minute in [start, end] at a steady `power`, the counter rising with it from `total0`."""
    count = int((end - start).total_seconds() // 60) + 1
    return [
        {
            "timestamp": (start + timedelta(minutes=n)).isoformat().replace("+00:00", "Z"),
            "power_w": power,
            "total_wh": total0 + power * n / 60,
        }
        for n in range(count)
    ]


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    zone = getattr(request, "param", "UTC")
    return msgspec.structs.replace(settings, polling_interval=60.0, timezone=zone)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(at("2026-06-01T01:30:00"))


async def import_run(client: httpx.AsyncClient, device: object, readings: list[dict[str, Any]]) -> None:
    response = await client.post(f"/api/devices/{device}/readings", json={"readings": readings})
    assert response.status_code == 200, response.text


async def stats_at(client: httpx.AsyncClient, clock: ManualClock, device: object, moment: datetime) -> dict[str, Any]:
    clock.set(moment)
    response = await client.get(f"/api/device/{device}/stats")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_stats_start_the_day_week_and_month_at_their_local_boundaries(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock
) -> None:
    # A Sunday evening in May at 600 W, then the first Monday of June, which starts a day, a week and a month.
    device = seed_device(runtime.app, "10.9.1.1", PLUG, measured_at=at("2026-05-29T00:00:00"))
    sunday = run(at("2026-05-31T22:00:00"), at("2026-05-31T23:00:00"), 600.0, total0=0.0)
    monday = run(at("2026-06-01T00:00:00"), at("2026-06-01T01:30:00"), 600.0, total0=600.0)
    async with background(runtime, poll=False):
        assert (await client.post("/api/rates", json={
            "rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.5}, "effective_from": "2026-05-01T00:00:00Z",
        })).status_code == 201  # fmt: skip
        await import_run(client, device, sunday + monday)
        first = await stats_at(client, clock, device, at("2026-06-01T01:30:00"))
        last_of_week = await stats_at(client, clock, device, at("2026-06-07T23:59:00"))
        next_week = await stats_at(client, clock, device, at("2026-06-08T00:00:00"))
        next_month = await stats_at(client, clock, device, at("2026-07-01T00:00:00"))
    assert first["daily_usage_kwh"] == first["weekly_usage_kwh"] == first["monthly_usage_kwh"] == pytest.approx(0.9)
    assert first["daily_cost"] == pytest.approx(0.45)
    # May's readings are outside June: the average and the peak are June's alone.
    assert first["average_power_w"] == 600.0 and first["peak_power_w"] == 600.0
    assert first["timezone"] == "UTC"
    assert last_of_week["daily_usage_kwh"] == 0.0
    assert last_of_week["weekly_usage_kwh"] == last_of_week["monthly_usage_kwh"] == pytest.approx(0.9)
    assert next_week["weekly_usage_kwh"] == 0.0 and next_week["monthly_usage_kwh"] == pytest.approx(0.9)
    assert next_month["monthly_usage_kwh"] == 0.0 and next_month["peak_power_w"] == 0.0


@pytest.mark.parametrize(
    ("settings", "begin", "now", "today_hours", "week_hours"),
    [
        # Europe/Berlin springs forward on Sunday 2026-03-29: that local day is 23 hours long.
        ("Europe/Berlin", "2026-03-28T22:00:00", "2026-03-29T21:00:00", 22, 23),
        # ... and falls back on Sunday 2026-10-25, a day of 25 hours.
        ("Europe/Berlin", "2026-10-24T21:00:00", "2026-10-25T22:30:00", 24.5, 25.5),
    ],
    indirect=["settings"],
)
async def test_stats_follow_the_local_day_across_daylight_saving_changes(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, begin: str, now: str, today_hours: float,
    week_hours: float,
) -> None:
    start, moment = at(begin), at(now)
    clock.set(moment)
    device = seed_device(runtime.app, "10.9.1.2", PLUG, measured_at=start - timedelta(minutes=1))
    async with background(runtime, poll=False):
        await import_run(client, device, run(start, moment, 100.0, total0=0.0))
        stats = await stats_at(client, clock, device, moment)
    assert stats["timezone"] == "Europe/Berlin"
    assert stats["daily_usage_kwh"] == pytest.approx(today_hours * 0.1)
    assert stats["weekly_usage_kwh"] == pytest.approx(week_hours * 0.1)
    assert stats["monthly_usage_kwh"] == pytest.approx(week_hours * 0.1)
