"""A month of one-minute readings of three devices, checked against figures computed here independently.

Device A draws 100 W and its counter resets on the 10th; on the 20th it draws
300 W from noon to one, and that day's readings arrive last (late). Device B
draws 50 W and is silent for two hours on the 15th, its counter rising across
the gap. Device C draws 1 kW from 18:00 to 18:30 every day: one session a day.
The month holds the US spring-forward day (8 March, 23 local hours). Rates: a
simple price, then time-of-use from the 16th, then tiers (billing cycle day 24)
from the 24th. The read model is then rebuilt from zero and must answer the same.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import httpx
import msgspec
import pytest

from domain.readings import DeviceSnapshot
from infra.bootstrap import Runtime
from infra.settings import Settings
from tests.harness import background
from tests.kit import seed_device

Client = httpx.AsyncClient
NY = ZoneInfo("America/New_York")
START = datetime(2026, 3, 1, 5, 0, tzinfo=timezone.utc)
DAYS = 31
MINUTE = timedelta(minutes=1)
RESET_AT = datetime(2026, 3, 10, 15, 0, tzinfo=timezone.utc)
GAP = (datetime(2026, 3, 15, 10, 0, tzinfo=timezone.utc), datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc))
LATE_DAY = date(2026, 3, 20)
TOU_FROM = datetime(2026, 3, 16, 4, 0, tzinfo=timezone.utc)
TIERS_FROM = datetime(2026, 3, 24, 4, 0, tzinfo=timezone.utc)
RATES = [
    {"rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.10}, "effective_from": "2026-02-01T00:00:00Z"},
    {"rate_type": "time_of_use", "timezone": "America/New_York", "effective_from": TOU_FROM.isoformat(),
     "time_of_use_rates": [{"start_hour": 23, "end_hour": 7, "rate": 0.05, "label": "night"},
                           {"start_hour": 7, "end_hour": 23, "rate": 0.20, "label": "day"}]},
    {"rate_type": "tiered", "timezone": "America/New_York", "effective_from": TIERS_FROM.isoformat(),
     "billing_cycle_day": 24,
     "rate_structure": {"tier1_limit": 10, "tier1_rate": 0.1, "tier2_limit": 20, "tier2_rate": 0.2,
                        "tier3_rate": 0.4}},
]  # fmt: skip


def snapshot(name: str) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias=name, model="HS110", device_type="plug", mac=f"{name}:MAC", firmware="1", is_on=True, has_emeter=True,
        power_w=0.0, total_wh=0.0,
    )  # fmt: skip


def power_a(at: datetime) -> float:
    local = at.astimezone(NY)
    return 300.0 if local.date() == LATE_DAY and local.hour == 12 else 100.0


def power_b(at: datetime) -> float:
    return 50.0


def power_c(at: datetime) -> float:
    local = at.astimezone(NY)
    return 1000.0 if local.hour == 18 and local.minute < 30 else 0.0


POWER: dict[str, Callable[[datetime], float]] = {"A": power_a, "B": power_b, "C": power_c}


def minutes() -> Iterator[datetime]:
    for n in range(DAYS * 1440):
        yield START + n * MINUTE


def readings(name: str) -> list[dict[str, Any]]:
    """The device's readings: `power_w` is what it draws for the minute that follows; the counter is cumulative."""
    out = []
    total = 0.0
    for at in minutes():
        if name == "A" and at == RESET_AT:
            total = POWER[name](at - MINUTE) / 60  # rebooted: counted from 0 during the last minute
        if not (name == "B" and GAP[0] < at < GAP[1]):
            out.append({"timestamp": at.isoformat(), "power_w": POWER[name](at), "total_wh": round(total, 6)})
        total += POWER[name](at) / 60
    return out


def expected_energy() -> dict[tuple[str, date], float]:
    """Wh per device per local day, from what each device really drew minute by minute."""
    energy: dict[tuple[str, date], float] = defaultdict(float)
    for at in list(minutes())[:-1]:
        for name, power in POWER.items():
            energy[(name, at.astimezone(NY).date())] += power(at) / 60
    return energy


def price(at: datetime) -> tuple[str, Decimal]:
    local = at.astimezone(NY)
    if at < TOU_FROM:
        return "simple", Decimal("0.10")
    if at < TIERS_FROM:
        return "tou", Decimal("0.20") if 7 <= local.hour < 23 else Decimal("0.05")
    return "tiered", Decimal(0)


def expected_costs() -> dict[date, Decimal]:
    """Cost per local day, priced minute by minute; tiers by the fleet's kWh since the 24th (the cycle start)."""
    costs: dict[date, Decimal] = defaultdict(Decimal)
    used = Decimal(0)
    limits = [(Decimal(10), Decimal("0.1")), (Decimal(20), Decimal("0.2")), (None, Decimal("0.4"))]
    for at in list(minutes())[:-1]:
        kwh = sum((Decimal(repr(p(at) / 60)) / 1000 for p in POWER.values()), Decimal(0))
        kind, unit = price(at)
        day = at.astimezone(NY).date()
        if kind != "tiered":
            costs[day] += kwh * unit
            continue
        low, high, floor, cost = used, used + kwh, Decimal(0), Decimal(0)
        for ceiling, rate in limits:
            top = high if ceiling is None else min(high, ceiling)
            if top > max(low, floor):
                cost += (top - max(low, floor)) * rate
            floor = ceiling if ceiling is not None else floor
        costs[day] += cost
        used = high
    return costs


READ_MODELS = ("devices", "identity", "energy")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, polling_interval=60.0)


async def import_all(client: Client, runtime: Runtime, device_id: UUID, items: list[dict[str, Any]]) -> None:
    """Import in requests of 10,000; each answers once stored, and the read model is waited for at the end."""
    for first in range(0, len(items), 10_000):
        response = await client.post(f"/api/devices/{device_id}/readings", json={"readings": items[first : first + 10_000]})
        assert response.status_code == 200, response.text
        assert isinstance(response.json()["projected"], bool)
    reads = runtime.services().reads
    assert await reads.wait_projected(await reads.newest(), projector="energy", timeout=120)


async def answers(client: Client, ids: dict[str, UUID]) -> dict[str, Any]:
    """Everything the test checks, as the API answers it (timings left out)."""
    result: dict[str, Any] = {}
    window = {"start_time": START.isoformat(), "end_time": (START + timedelta(days=DAYS)).isoformat()}
    for name, device_id in ids.items():
        daily = (await client.get(f"/api/device/{device_id}/history", params={
            **window, "aggregation": "daily", "timezone": "America/New_York"})).json()  # fmt: skip
        hourly = (await client.get(f"/api/device/{device_id}/history", params={
            "start_time": "2026-03-08T05:00:00Z", "end_time": "2026-03-09T04:00:00Z", "aggregation": "hourly",
            "timezone": "America/New_York"})).json()  # fmt: skip
        sessions = (await client.get(f"/api/device/{device_id}/sessions", params=window)).json()
        for body in (daily, hourly):
            body["metadata"].pop("query_time_ms")
        result[name] = {"daily": daily, "hourly": hourly, "sessions": sessions}
    result["costs"] = (await client.get("/api/costs", params={
        "start_date": "2026-03-01", "end_date": "2026-03-31", "timezone": "America/New_York"})).json()  # fmt: skip
    return result


async def test_a_month_of_three_devices_matches_independent_figures_and_a_rebuild(
    client: Client, runtime: Runtime
) -> None:
    # Only the read models this test reads: the others would replay the same 134,000 readings beside it.
    runtime.engine.projectors = {n: p for n, p in runtime.engine.projectors.items() if n in READ_MODELS}
    ids = {name: seed_device(runtime.app, f"10.8.0.{n}", snapshot(name), measured_at=START - timedelta(days=30))
           for n, name in enumerate("ABC", start=1)}  # fmt: skip
    async with background(runtime, poll=False):
        for body in RATES:
            assert (await client.post("/api/rates", json=body)).status_code == 201
        a = readings("A")
        late = [r for r in a if datetime.fromisoformat(r["timestamp"]).astimezone(NY).date() == LATE_DAY]
        await asyncio.gather(
            import_all(client, runtime, ids["A"], [r for r in a if r not in late]),
            import_all(client, runtime, ids["B"], readings("B")),
            import_all(client, runtime, ids["C"], readings("C")),
        )
        await import_all(client, runtime, ids["A"], late)
        first = await answers(client, ids)
        await asyncio.to_thread(runtime.engine.rebuild, "energy")
        rebuilt = await answers(client, ids)

    energy = expected_energy()
    for name in "ABC":
        days = {date.fromisoformat(p["timestamp"][:10]): p for p in first[name]["daily"]["data"]}
        for day in (date(2026, 3, 2), date(2026, 3, 8), date(2026, 3, 10), date(2026, 3, 15), LATE_DAY):
            point = next(p for p in first[name]["daily"]["data"]
                         if datetime.fromisoformat(p["timestamp"]).astimezone(NY).date() == day)  # fmt: skip
            assert point["energy_kwh"] == pytest.approx(energy[(name, day)] / 1000, abs=1e-6), (name, day)
        assert len(days) >= 30
        assert len(first[name]["hourly"]["data"]) == 23
    assert first["B"]["daily"]["data"][14]["energy_kwh"] == pytest.approx(1.2, abs=1e-6)

    c_sessions = first["C"]["sessions"]["sessions"]
    assert len(c_sessions) == DAYS
    assert all(s["duration_s"] == 1800 and s["energy_kwh"] == pytest.approx(0.5) for s in c_sessions)
    assert len(first["B"]["sessions"]["sessions"]) == 2

    costs = first["costs"]
    expected = expected_costs()
    for item in costs["daily_breakdown"]:
        day = date.fromisoformat(item["date"])
        assert item["cost"] == pytest.approx(float(expected[day]), abs=2e-4), day
    assert sum(Decimal(str(d["cost"])) for d in costs["daily_breakdown"]) == Decimal(str(costs["total_cost"]))
    march = [d for d in expected if d.month == 3]
    assert costs["total_cost"] == pytest.approx(float(sum(expected[d] for d in march)), abs=5e-3)
    assert costs["total_kwh"] == pytest.approx(sum(wh for (_, d), wh in energy.items() if d.month == 3) / 1000, abs=1e-4)
    assert sorted(d["device_name"] for d in costs["devices"]) == ["A", "B", "C"]
    assert first == rebuilt
