"""Numbers beyond meaning: refused at the edge, and, when old data holds them anyway, never a failing query.

Old data is stored here as events directly, past every check of the edge, as a store written before the
checks would hold it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest

from domain.commands import PollResult
from domain.ports import Clock
from domain.rates import RateVersion, Tariff
from domain.readings import DeviceSnapshot
from infra.bootstrap import Runtime
from infra.settings import Settings
from tests.harness import background
from tests.kit import ManualClock, seed_device, seed_polls

Client = httpx.AsyncClient
T0 = datetime(2026, 3, 7, 0, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(days=1, hours=2)
PLUG = DeviceSnapshot(
    alias="dryer", model="HS110", device_type="plug", mac="AA:00", firmware="1", is_on=True, has_emeter=True,
    power_w=0.0, total_wh=0.0,
)  # fmt: skip
DAYS = {"start_date": "2026-03-07", "end_date": "2026-03-08"}
RANGE = {"start_time": "2026-03-06T00:00:00Z", "end_time": "2026-03-08T02:00:00Z"}


@pytest.fixture
def clock() -> Clock:
    return ManualClock(NOW)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, polling_interval=60.0)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def minutes(start: datetime, count: int, power: float, total0: float = 0.0) -> list[dict[str, Any]]:
    return [{"timestamp": iso(start + timedelta(minutes=n)), "power_w": power, "total_wh": total0 + power * n / 60}
            for n in range(count)]  # fmt: skip


async def store_rate(runtime: Runtime, **prices: Decimal) -> None:
    """A rate version stored as its event, past the edge's checks."""
    tariff = Tariff(actor="test")
    tariff.set_rate(RateVersion(version=1, rate_type="simple", currency="EUR", timezone="UTC",
                                effective_from=datetime(2026, 1, 1, tzinfo=timezone.utc), **prices),
                    actor="test")  # fmt: skip
    await asyncio.to_thread(runtime.app.save, tariff)


async def every_query(client: Client, device: UUID) -> dict[str, httpx.Response]:
    queries = {
        "costs": ("/api/costs", DAYS),
        "stats": (f"/api/device/{device}/stats", {}),
        "history 5min": (f"/api/device/{device}/history", {**RANGE, "aggregation": "5min"}),
        "history hourly": (f"/api/device/{device}/history", {**RANGE, "aggregation": "hourly"}),
        "history daily": (f"/api/device/{device}/history", {**RANGE, "aggregation": "daily"}),
        "history raw": (f"/api/device/{device}/history", {**RANGE, "aggregation": "raw"}),
        "sessions": (f"/api/device/{device}/sessions", RANGE),
        "devices": ("/api/devices", {}),
        "device": (f"/api/device/{device}", {}),
        "rate": ("/api/rates", {"as_of": "2026-03-07T12:00:00Z"}),
        "rates": ("/api/rates/history", {}),
    }
    return {name: await client.get(path, params=params) for name, (path, params) in queries.items()}


async def energy_projected(runtime: Runtime) -> None:
    """Wait until the energy read model holds everything stored (an import answers once its readings are
    stored, and may answer before they are projected)."""
    reads = runtime.services().reads
    assert await reads.wait_projected(await reads.newest(), projector="energy", timeout=60)


@pytest.mark.parametrize("price", [
    Decimal("1" + "0" * 5000),
    Decimal("1e200000"),
    Decimal("1e-20000"),
], ids=["5000 digits", "past numeric", "20000 places"])  # fmt: skip
async def test_a_stored_absurd_price_never_makes_a_query_fail(client: Client, runtime: Runtime, price: Decimal) -> None:
    device_id = seed_device(runtime.app, "10.9.0.1", PLUG, measured_at=T0 - timedelta(days=1))
    await store_rate(runtime, rate_per_kwh=price, daily_charge=price)
    async with background(runtime, poll=False):
        imported = await client.post(f"/api/devices/{device_id}/readings", json={"readings": minutes(T0, 61, 600.0)})
        assert imported.status_code == 200, imported.text
        await energy_projected(runtime)
        before = await every_query(client, device_id)
        sane = await client.post("/api/rates", json={
            "rate_type": "simple", "rate_structure": {"rate_per_kwh": "0.25"}, "effective_from": "2026-03-08T00:00:00Z",
        })  # fmt: skip
        assert sane.status_code == 201, sane.text
        readings = minutes(T0 + timedelta(days=1), 61, 600.0, total0=600.0)
        imported = await client.post(f"/api/devices/{device_id}/readings", json={"readings": readings})
        assert imported.status_code == 200, imported.text
        await energy_projected(runtime)
        after = await every_query(client, device_id)
    for name, response in [*before.items(), *after.items()]:
        assert response.status_code == 200, (name, response.text[:300])
    days = {d["date"]: d["cost"] for d in after["costs"].json()["daily_breakdown"]}
    assert days["2026-03-08"] == pytest.approx(0.15)
    hourly = after["history hourly"].json()["data"]
    assert [p["cost"] for p in hourly if p["timestamp"].startswith("2026-03-08T00")] == [pytest.approx(0.15)]


async def test_a_stored_reading_no_meter_measures_is_unknown_to_statistics(client: Client, runtime: Runtime) -> None:
    device_id = seed_device(runtime.app, "10.9.0.2", PLUG, measured_at=T0 - timedelta(days=1))
    absurd = msgspec.structs.replace(PLUG, power_w=1e300, total_wh=1e300, voltage_v=1e300, current_a=-1e300)
    seed_polls(runtime.app, [
        PollResult(device_id=device_id, measured_at=T0 + timedelta(seconds=30 * n), snapshot=absurd)
        for n in range(1, 40)
    ])  # fmt: skip
    async with background(runtime, poll=False):
        readings = minutes(T0 + timedelta(days=1), 61, 600.0)
        imported = await client.post(f"/api/devices/{device_id}/readings", json={"readings": readings})
        assert imported.status_code == 200, imported.text
        await energy_projected(runtime)
        answers = await every_query(client, device_id)
    for name, response in answers.items():
        assert response.status_code == 200, (name, response.text[:300])
    stats = answers["stats"].json()
    assert stats["peak_power_w"] == 600.0 and stats["daily_usage_kwh"] == pytest.approx(0.6)
    assert max(p["max_power_w"] or 0 for p in answers["history 5min"].json()["data"]) == 600.0


async def stored(runtime: Runtime) -> int:
    return await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0


@pytest.mark.parametrize(("body", "field"), [
    ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": "1" + "0" * 5000}}, "rate_structure.rate_per_kwh"),
    ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": "1000000"}}, "rate_structure.rate_per_kwh"),
    ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.1234567}}, "rate_structure.rate_per_kwh"),
    ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": "1e-7"}}, "rate_structure.rate_per_kwh"),
    ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.1}, "daily_charge": "9" * 7}, "daily_charge"),
    ({"rate_type": "tiered", "rate_structure": {"tier1_limit": "1e10", "tier1_rate": 1, "tier2_limit": "2e10",
                                                "tier2_rate": 1, "tier3_rate": 1}}, "rate_structure.tier1_limit"),
    ({"rate_type": "time_of_use", "time_of_use_rates": [{"start_hour": 0, "end_hour": 24, "rate": "1e6"}]},
     "time_of_use_rates[0].rate"),
])  # fmt: skip
async def test_prices_beyond_six_digits_either_side_of_the_point_are_refused(
    client: Client, runtime: Runtime, body: dict[str, Any], field: str
) -> None:
    before = await stored(runtime)
    response = await client.post("/api/rates", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error_code"] == "INVALID_RATE" and field in response.json()["detail"]
    assert await stored(runtime) == before


@pytest.mark.parametrize("body", [
    {"rate_type": "simple", "rate_per_kwh": 1e7},
    {"rate_type": "simple", "rate_per_kwh": "1" + "0" * 5000},
    {"rate_type": "simple", "rate_per_kwh": 0.1, "daily_charge": -1},
    {"rate_type": "tiered", "tier1_limit": 0, "tier1_rate": 1, "tier2_limit": 2, "tier2_rate": 1, "tier3_rate": 1},
])  # fmt: skip
async def test_top_level_prices_are_bounded_by_the_request_schema(
    client: Client, runtime: Runtime, body: dict[str, Any]
) -> None:
    before = await stored(runtime)
    response = await client.post("/api/rates", json=body)
    assert response.status_code in (400, 422) and response.json()["error_code"] == "VALIDATION_ERROR", response.text
    assert await stored(runtime) == before


@pytest.mark.parametrize(("reading", "field"), [
    ({"power_w": 3700.5}, "readings[0].power_w"),
    ({"power_w": 1e300}, "power_w"),
    ({"total_wh": 1e9}, "total_wh"),
    ({"voltage": 5000.0}, "voltage"),
    ({"current": 2000.0}, "current"),
])  # fmt: skip
async def test_imported_numbers_no_meter_measures_are_refused(
    client: Client, runtime: Runtime, reading: dict[str, Any], field: str
) -> None:
    device_id = seed_device(runtime.app, "10.9.0.3", PLUG, measured_at=T0)
    before = await stored(runtime)
    response = await client.post(f"/api/devices/{device_id}/readings",
                                 json={"readings": [{"timestamp": iso(T0 + timedelta(minutes=1)), **reading}]})
    assert response.status_code in (400, 422), response.text
    assert field in response.text
    assert await stored(runtime) == before
