"""The energy and money REST surface: readings import, history, stats, sessions, rates and costs."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import msgspec
import pytest

from domain.readings import DeviceSnapshot, OutletReading
from infra.bootstrap import Runtime
from infra.settings import Settings
from tests.harness import background
from tests.kit import eventually, seed_device

Client = httpx.AsyncClient
T0 = datetime(2026, 3, 7, 0, 0, tzinfo=timezone.utc)
PLUG = DeviceSnapshot(
    alias="dryer", model="HS110", device_type="plug", mac="AA:00", firmware="1", is_on=True, has_emeter=True,
    power_w=0.0, total_wh=0.0,
)  # fmt: skip
STRIP = DeviceSnapshot(
    alias="strip", model="HS300", device_type="strip", mac="BB:00", firmware="1", is_on=True, has_emeter=True,
    outlets=tuple(
        OutletReading(outlet_id=f"BB00{i}", index=i, alias=f"o{i}", is_on=True, power_w=0.0, total_wh=0.0)
        for i in range(2)
    ),
)  # fmt: skip


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Polled every minute, as the imported readings are spaced."""
    return msgspec.structs.replace(settings, polling_interval=60.0)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def minutes(start: datetime, count: int, power: float, *, total0: float = 0.0, **extra: Any) -> list[dict[str, Any]]:
    """`count` one-minute readings at a steady `power`, the counter rising with it."""
    return [
        {"timestamp": iso(start + timedelta(minutes=n)), "power_w": power, "total_wh": total0 + power * n / 60, **extra}
        for n in range(count)
    ]


async def stored(runtime: Runtime) -> int:
    return await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0


async def visible(client: Client, device: object) -> None:
    """Wait until the devices read model shows the device seeded before the projectors ran."""

    async def shown() -> bool:
        return (await client.get(f"/api/device/{device}")).status_code == 200

    await eventually(shown, every=0.02, what=f"device {device} shown")


async def energy_projected(runtime: Runtime) -> None:
    """Wait until the energy read model holds everything stored (an import answers once its readings are
    stored, and may answer before they are projected)."""
    reads = runtime.services().reads
    assert await reads.wait_projected(await reads.newest(), projector="energy", timeout=60)


def assert_error(response: httpx.Response, status: int, code: str, text: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code and text in body["detail"], body


async def test_imported_readings_give_history_stats_sessions_and_costs(client: Client, runtime: Runtime) -> None:
    device_id = seed_device(runtime.app, "10.9.0.1", PLUG, measured_at=T0 - timedelta(days=1))
    async with background(runtime, poll=False):
        rate = await client.post("/api/rates", json={
            "rate_type": "simple", "currency": "EUR", "rate_structure": {"rate_per_kwh": 0.25},
            "effective_from": "2026-01-01T00:00:00Z",
        })  # fmt: skip
        assert rate.status_code == 201, rate.text
        readings = minutes(T0, 60, 0.0) + minutes(T0 + timedelta(hours=1), 61, 600.0)
        readings += minutes(T0 + timedelta(hours=2, minutes=1), 59, 0.0, total0=600.0)
        imported = await client.post(f"/api/devices/{device_id}/readings", json={"readings": readings})
        assert imported.status_code == 200, imported.text
        body = imported.json()
        assert body == {"received": 180, "recorded": 180, "duplicates": 0, "projected": body["projected"]}
        assert isinstance(body["projected"], bool)
        await energy_projected(runtime)
        again = await client.post(f"/api/devices/{device_id}/readings", json={"readings": readings[:10]})
        assert again.json()["recorded"] == 0 and again.json()["duplicates"] == 10

        hourly = (await client.get(f"/api/device/{device_id}/history", params={
            "start_time": iso(T0), "end_time": iso(T0 + timedelta(hours=3)), "aggregation": "hourly",
        })).json()  # fmt: skip
        assert [p["energy_kwh"] for p in hourly["data"]] == [0.0, 0.6, 0.0]
        assert [p["cost"] for p in hourly["data"]] == [0.0, 0.15, 0.0]
        assert hourly["metadata"]["aggregation"] == "1h" and hourly["metadata"]["count"] == 3
        five = (await client.get(f"/api/device/{device_id}/history", params={
            "start_time": iso(T0 + timedelta(hours=1)), "end_time": iso(T0 + timedelta(hours=2)), "aggregation": "5min",
        })).json()  # fmt: skip
        assert len(five["data"]) == 12 and all(p["max_power_w"] == 600.0 for p in five["data"])
        raw = (await client.get(f"/api/device/{device_id}/history", params={
            "start_time": iso(T0), "end_time": iso(T0 + timedelta(minutes=5)), "aggregation": "raw",
        })).json()  # fmt: skip
        assert len(raw["data"]) == 5
        # The seed's deprecated `interval`, and times without an offset read in the request's zone.
        seed_style = (await client.get(f"/api/device/{device_id}/history", params={
            "start_time": "2026-03-06T19:00:00", "end_time": "2026-03-06T22:00:00", "interval": "1h",
            "timezone": "America/New_York",
        })).json()  # fmt: skip
        assert [p["energy_kwh"] for p in seed_style["data"]] == [0.0, 0.6, 0.0]
        assert seed_style["metadata"]["aggregation"] == "1h" and seed_style["metadata"]["cached"] is False
        assert seed_style["metadata"]["start_time"] == iso(T0)
        by_seed_name = await client.get(f"/api/device/{device_id}/history", params={
            "start_time": iso(T0), "end_time": iso(T0 + timedelta(hours=3)), "aggregation": "1h",
        })  # fmt: skip
        assert by_seed_name.json()["data"] == hourly["data"]
        bad = await client.get(f"/api/device/{device_id}/history", params={"interval": "2h"})
        assert bad.status_code == 422 and "5m, 1h, 6h, 1d, 1w" in bad.json()["detail"]

        sessions = (await client.get(f"/api/device/{device_id}/sessions", params={
            "start_time": iso(T0), "end_time": iso(T0 + timedelta(hours=3)),
        })).json()  # fmt: skip
        assert sessions["count"] == 1
        [run] = sessions["sessions"]
        assert run["start"].startswith("2026-03-07T01:00") and run["duration_s"] == 3660.0
        assert run["energy_kwh"] == pytest.approx(0.6) and run["cost"] == pytest.approx(0.15)
        assert run["peak_power_w"] == 600.0

        costs = (await client.get("/api/costs", params={"start_date": "2026-03-06", "end_date": "2026-03-07"})).json()
        assert costs["total_cost"] == 0.15 and costs["total_kwh"] == 0.6 and costs["currency"] == "EUR"
        assert [d["cost"] for d in costs["daily_breakdown"]] == [0.0, 0.15]
        assert costs["devices"][0]["percentage"] == 100.0

        stats = await client.get(f"/api/device/{device_id}/stats")
        assert stats.status_code == 200 and set(stats.json()) >= {"daily_usage_kwh", "monthly_cost", "peak_power_w"}


async def test_late_readings_correct_the_rollups(client: Client, runtime: Runtime) -> None:
    device_id = seed_device(runtime.app, "10.9.0.2", PLUG, measured_at=T0 - timedelta(days=1))
    async with background(runtime, poll=False):
        first = [r for r in minutes(T0, 120, 120.0) if not 30 <= int(r["timestamp"][14:16]) < 40]
        late = [r for r in minutes(T0, 120, 120.0) if 30 <= int(r["timestamp"][14:16]) < 40]
        for batch in (first, late):
            response = await client.post(f"/api/devices/{device_id}/readings", json={"readings": batch})
            assert response.status_code == 200, response.text
        await energy_projected(runtime)
        points = (await client.get(f"/api/device/{device_id}/history", params={
            "start_time": iso(T0), "end_time": iso(T0 + timedelta(hours=2)), "aggregation": "5min",
        })).json()["data"]  # fmt: skip
    assert len(points) == 24
    assert all(p["energy_kwh"] == pytest.approx(0.01) for p in points[:-1])
    assert points[6]["avg_power_w"] == 120.0 and points[6]["min_power_w"] == 120.0


async def test_strip_readings_map_outlets_by_index_or_id(client: Client, runtime: Runtime) -> None:
    device_id = seed_device(runtime.app, "10.9.0.3", STRIP, measured_at=T0 - timedelta(days=1))
    async with background(runtime, poll=False):
        readings = minutes(T0, 11, 60.0, outlet=0) + minutes(T0, 11, 120.0, outlet="BB001")
        response = await client.post(f"/api/devices/{device_id}/readings", json={"readings": readings})
        assert response.status_code == 200, response.text
        assert response.json()["recorded"] == 11
        points = (await client.get(f"/api/device/{device_id}/history", params={
            "start_time": iso(T0), "end_time": iso(T0 + timedelta(minutes=10)), "aggregation": "5min",
        })).json()["data"]  # fmt: skip
        assert [p["energy_kwh"] for p in points] == [0.015, 0.015]
        before = await stored(runtime)
        unknown = await client.post(f"/api/devices/{device_id}/readings", json={"readings": [
            {"timestamp": iso(T0), "power_w": 1.0, "outlet": 5}]})  # fmt: skip
        assert_error(unknown, 422, "INVALID_READINGS", "unknown outlet")
        missing = await client.post(f"/api/devices/{device_id}/readings", json={"readings": [
            {"timestamp": iso(T0), "power_w": 1.0}]})  # fmt: skip
        assert_error(missing, 422, "INVALID_READINGS", "outlet is required")
        assert await stored(runtime) == before


async def test_bad_input_is_refused_and_stores_nothing(client: Client, runtime: Runtime) -> None:
    device_id = seed_device(runtime.app, "10.9.0.4", PLUG, measured_at=T0)
    async with background(runtime, poll=False):
        before = await stored(runtime)
        now = datetime.now(timezone.utc)
        cases = [
            ([{"timestamp": iso(T0), "power_w": -5}], "readings[0].power_w"),
            ([{"timestamp": iso(T0)}, {"timestamp": iso(now + timedelta(minutes=6))}], "readings[1].timestamp"),
            ([{"timestamp": "1999-01-01T00:00:00Z"}], "before 2000"),
            ([{"timestamp": "yesterday"}], "readings[0].timestamp"),
            ([{"timestamp": iso(T0)}] * 10_001, "at most 10000"),
        ]
        for readings, text in cases:
            response = await client.post(f"/api/devices/{device_id}/readings", json={"readings": readings})
            assert_error(response, 422, "INVALID_READINGS", text)
        huge = await client.post(
            f"/api/devices/{device_id}/readings",
            content=b'{"readings": [{"timestamp": "2026-03-07T00:00:00Z", "power_w": 1e999}]}',
            headers={"content-type": "application/json"},
        )
        assert huge.status_code in (400, 422), huge.text
        assert await stored(runtime) == before
        assert_error(await client.post("/api/devices/10.9.9.9/readings", json={"readings": [{"timestamp": iso(T0)}]}),
                     404, "DEVICE_NOT_FOUND")  # fmt: skip
        history = f"/api/device/{device_id}/history"
        assert_error(await client.get(history, params={"timezone": "Mars/Olympus"}), 422, "INVALID_RANGE")
        assert_error(await client.get(history, params={"period": "2w"}), 422, "INVALID_RANGE")
        assert_error(await client.get(history, params={"start_time": iso(T0), "end_time": iso(T0)}), 422,
                     "INVALID_RANGE")  # fmt: skip
        assert_error(await client.get("/api/costs", params={"start_date": "2026-03-02", "end_date": "2026-03-01"}),
                     422, "INVALID_RANGE")  # fmt: skip
        for body, field in [
            ({"rate_type": "tiered", "rate_structure": {"tier1_limit": 5, "tier1_rate": 1, "tier2_limit": 2,
                                                        "tier2_rate": 1, "tier3_rate": 1}}, "tier2_limit"),
            ({"rate_type": "time_of_use", "time_of_use_rates": [{"start_hour": 0, "end_hour": 20, "rate": 1}]},
             "time_of_use_rates"),
            ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": -0.1}}, "rate_per_kwh"),
            ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.1}, "timezone": "Nowhere/City"}, "timezone"),
        ]:
            assert_error(await client.post("/api/rates", json=body), 422, "INVALID_RATE", field)
        assert await stored(runtime) == before


SEED_TIERS = {"tier1_limit": 500, "tier1_rate": 0.10, "tier2_limit": 1000, "tier2_rate": 0.12, "tier3_rate": 0.15}
SEED_PERIODS = [{"start_hour": 0, "end_hour": 6, "rate": 0.08, "label": "Off-Peak"},
                {"start_hour": 6, "end_hour": 22, "rate": 0.12, "label": "Peak"},
                {"start_hour": 22, "end_hour": 24, "rate": 0.08, "label": "Late"}]  # fmt: skip


async def test_a_rate_never_drops_what_its_type_would_not_use(client: Client, runtime: Runtime) -> None:
    """Tiers and time-of-use periods together (the shape of the seed's GET example), or prices of another
    type, are refused naming the field rather than stored with a part left out."""
    before = await stored(runtime)
    for body, field in [
        ({"rate_type": "tiered", "currency": "USD", "rate_structure": SEED_TIERS, "time_of_use_rates": SEED_PERIODS},
         "time_of_use_rates"),
        ({"rate_type": "tiered", "rate_structure": SEED_TIERS, "weekend_time_of_use_rates": SEED_PERIODS},
         "weekend_time_of_use_rates"),
        ({"rate_type": "time_of_use", "rate_structure": {"rate_per_kwh": 0.1}, "time_of_use_rates": SEED_PERIODS},
         "rate_structure.rate_per_kwh"),
        ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.1}, "tier1_rate": 0.2}, "tier1_rate"),
        ({"rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.1, "peak_rate": 0.2}}, "rate_structure.peak_rate"),
    ]:
        assert_error(await client.post("/api/rates", json=body), 422, "INVALID_RATE", field)
    assert await stored(runtime) == before
    async with background(runtime, poll=False):
        empty_periods = await client.post("/api/rates", json={"rate_type": "tiered", "rate_structure": SEED_TIERS,
                                                               "time_of_use_rates": []})  # fmt: skip
    assert empty_periods.status_code == 201, empty_periods.text
    assert empty_periods.json()["rate_structure"] == SEED_TIERS


async def test_rates_are_versioned_with_their_actor(client: Client, runtime: Runtime) -> None:
    async with background(runtime, poll=False):
        unset = await client.get("/api/rates")
        assert unset.status_code == 200 and unset.json()["configured"] is False
        assert (unset.json()["rate_type"], unset.json()["rate_structure"]) == ("none", {})
        first = await client.post("/api/rates", json={
            "rate_type": "time_of_use", "timezone": "Europe/Berlin", "effective_from": "2026-01-01T00:00:00Z",
            "time_of_use_rates": [{"start_hour": 0, "end_hour": 6, "rate": 0.08, "label": "Off-Peak"},
                                  {"start_hour": 6, "end_hour": 24, "rate": 0.12, "label": "Peak"}],
        })  # fmt: skip
        second = await client.post("/api/rates", json={
            "rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.3}, "effective_from": "2026-02-01T00:00:00Z",
        })  # fmt: skip
        assert first.status_code == second.status_code == 201
        current = (await client.get("/api/rates")).json()
        assert current["version"] == 2 and current["rate_structure"] == {"rate_per_kwh": 0.3}
        assert current["actor"].startswith("user:")
        then = (await client.get("/api/rates", params={"as_of": "2026-01-15T00:00:00Z"})).json()
        assert then["version"] == 1 and then["time_of_use_rates"][0]["label"] == "Off-Peak"
        history = (await client.get("/api/rates/history")).json()
        assert [v["version"] for v in history["versions"]] == [1, 2]
        # A rate set now takes effect at the next 5-minute boundary, and reads back at once.
        third = await client.post("/api/rates", json={"rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.25}})
        assert third.status_code == 201, third.text
        now = (await client.get("/api/rates")).json()
        assert (now["version"], now["configured"]) == (3, True)
        assert now["effective_from"] == third.json()["effective_from"]


async def test_permissions_of_energy_routes(
    viewer: Client, read_key: Client, operator: Client, runtime: Runtime
) -> None:
    device_id = seed_device(runtime.app, "10.9.0.5", PLUG, measured_at=T0)
    async with background(runtime, poll=False):
        body = {"readings": [{"timestamp": iso(T0 + timedelta(minutes=1)), "power_w": 1.0}]}
        rate = {"rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.1}}
        await visible(viewer, device_id)
        for who in (viewer, read_key):
            assert (await who.post(f"/api/devices/{device_id}/readings", json=body)).status_code == 403
            assert (await who.post("/api/rates", json=rate)).status_code == 403
            assert (await who.get(f"/api/device/{device_id}/history")).status_code == 200
            assert (await who.get("/api/costs")).status_code == 200
        assert (await operator.post(f"/api/devices/{device_id}/readings", json=body)).status_code == 200
        assert (await operator.post("/api/rates", json=rate)).status_code == 201


async def test_local_hours_and_days_follow_the_zone(client: Client, runtime: Runtime) -> None:
    """A fall-back day in New York has 25 hourly points; Kolkata's days (+05:30) come whole from 5-minute buckets."""
    device_id = seed_device(runtime.app, "10.9.0.6", PLUG, measured_at=datetime(2026, 10, 30, tzinfo=timezone.utc))
    start = datetime(2026, 10, 31, 12, 0, tzinfo=timezone.utc)
    readings = [
        {"timestamp": iso(start + timedelta(minutes=5 * n)), "power_w": 120.0, "total_wh": 10.0 * n}
        for n in range(12 * 48)
    ]
    async with background(runtime, poll=False):
        assert (await client.post(f"/api/devices/{device_id}/readings", json={"readings": readings})).status_code == 200
        new_york = (await client.get(f"/api/device/{device_id}/history", params={
            "start_time": "2026-11-01T04:00:00Z", "end_time": "2026-11-02T05:00:00Z", "aggregation": "hourly",
            "timezone": "America/New_York",
        })).json()  # fmt: skip
        kolkata = (await client.get(f"/api/device/{device_id}/history", params={
            "start_time": "2026-10-31T18:30:00Z", "end_time": "2026-11-01T18:30:00Z", "aggregation": "daily",
            "timezone": "Asia/Kolkata",
        })).json()  # fmt: skip
    assert len(new_york["data"]) == 25
    assert all(p["energy_kwh"] == pytest.approx(0.12) for p in new_york["data"])
    [day] = kolkata["data"]
    assert day["timestamp"] == "2026-10-31T18:30:00Z" and day["energy_kwh"] == pytest.approx(2.88)


async def test_a_device_threshold_shapes_its_sessions(client: Client, viewer: Client, runtime: Runtime) -> None:
    device_id = seed_device(runtime.app, "10.9.0.8", PLUG, measured_at=T0 - timedelta(days=1))
    readings = minutes(T0, 10, 50.0) + minutes(T0 + timedelta(minutes=10), 10, 500.0, total0=50 * 10 / 60)
    readings += minutes(T0 + timedelta(minutes=20), 5, 0.0, total0=550 * 10 / 60)
    window = {"start_time": iso(T0), "end_time": iso(T0 + timedelta(hours=1))}
    async with background(runtime, poll=False):
        assert (await client.post(f"/api/devices/{device_id}/readings", json={"readings": readings})).status_code == 200
        default = (await client.get(f"/api/device/{device_id}/sessions", params=window)).json()
        put = await client.put(f"/api/device/{device_id}/session-threshold", json={"threshold_w": 100})
        assert put.status_code == 200, put.text
        own = (await client.get(f"/api/device/{device_id}/sessions", params=window)).json()
        refused = await viewer.put(f"/api/device/{device_id}/session-threshold", json={"threshold_w": 1})
        bad = await client.put(f"/api/device/{device_id}/session-threshold", json={"threshold_w": -1})
    assert [s["duration_s"] for s in default["sessions"]] == [1200.0]
    assert own["threshold_w"] == 100 and [s["duration_s"] for s in own["sessions"]] == [600.0]
    assert own["sessions"][0]["start"].startswith("2026-03-07T00:10")
    assert refused.status_code == 403 and bad.status_code == 422
