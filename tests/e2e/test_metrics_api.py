"""`GET /metrics`: Prometheus' own parser reads it, and its numbers are the API's for the same devices."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from datetime import datetime, timezone
from typing import Any

import argon2
import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.metrics import BasicCredentials
from infra.bootstrap import Runtime
from domain.commands import PollResult
from tests.harness import HEATER, WAIT_S, background, error_of, http_client, seed_heater, strip
from tests.kit import ManualClock, seed_device, seed_polls

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=timezone.utc)
Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


def parsed(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    found = [v for have, v in samples[name] if all(have.get(k) == want for k, want in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


async def settled(runtime: Runtime) -> None:
    newest = await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0
    for projector in ("devices", "energy", "identity"):
        assert await runtime.services().reads.wait_projected(newest, projector=projector, timeout=WAIT_S)


async def scrape(http: httpx.AsyncClient, **options: Any) -> Samples:
    response = await http.get("/metrics", **options)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parsed(response.text)


async def test_metrics_parse_and_match_the_api_for_the_same_devices(
    runtime: Runtime, client: httpx.AsyncClient, read_key: httpx.AsyncClient
) -> None:
    heater = await asyncio.to_thread(seed_device, runtime.app, "10.2.0.1", HEATER, measured_at=NOW.replace(hour=10))
    for minute in range(1, 6):  # 900 W for five minutes, the counter rising with it
        reading = msgspec.structs.replace(HEATER, total_wh=50.0 + 15.0 * minute)
        at = NOW.replace(hour=10, minute=minute)
        await asyncio.to_thread(seed_polls, runtime.app, [PollResult(device_id=heater, measured_at=at, snapshot=reading)])
    power_strip = await asyncio.to_thread(
        seed_device, runtime.app, "10.2.0.2", strip([10.0, 20.0]), measured_at=NOW.replace(hour=9)
    )
    await asyncio.to_thread(seed_polls, runtime.app, [], {power_strip: 3})
    async with background(runtime, poll=False):
        assert (await client.post("/api/rates", json={
            "rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.5}, "effective_from": "2026-05-01T00:00:00Z",
        })).status_code == 201  # fmt: skip
        await settled(runtime)
        listed = {d["device_id"]: d for d in (await client.get("/api/devices")).json()}
        stats = (await client.get(f"/api/device/{heater}/stats")).json()
        status = (await client.get("/api/system/status")).json()
        samples = await scrape(read_key)

    assert set(listed) == {str(heater), str(power_strip)}
    for device_id, shown in listed.items():
        names = {"device_id": device_id, "alias": shown["alias"], "model": shown["model"]}
        assert value(samples, "wattledger_device_up", **names) == (1.0 if shown["online"] else 0.0)
        assert value(samples, "wattledger_device_power_watts", **names, outlet="") == shown["current_power_w"]
        assert value(samples, "wattledger_device_relay_on", **names, outlet="") == float(shown["is_on"])
        for outlet in shown["outlets"]:
            labels = {**names, "outlet": outlet["outlet_id"]}
            assert value(samples, "wattledger_device_power_watts", **labels) == outlet["current_power_w"]
            assert value(samples, "wattledger_device_relay_on", **labels) == float(outlet["is_on"])
    heater_labels = {"device_id": str(heater), "alias": "Heater", "model": "HS110"}
    assert value(samples, "wattledger_device_voltage_volts", **heater_labels, outlet="") == listed[str(heater)]["voltage"]
    assert value(samples, "wattledger_device_current_amperes", **heater_labels, outlet="") == listed[str(heater)]["current"]
    assert value(samples, "wattledger_device_energy_watt_hours", **heater_labels, outlet="") == 125.0
    assert value(samples, "wattledger_device_up", device_id=str(power_strip)) == 0.0
    # Today by the injected clock, as the stats route counts it.
    today = value(samples, "wattledger_device_energy_today_kwh", device_id=str(heater))
    assert today == pytest.approx(stats["daily_usage_kwh"]) == pytest.approx(0.075)
    assert value(samples, "wattledger_device_cost_today", device_id=str(heater)) == pytest.approx(stats["daily_cost"])
    assert stats["daily_cost"] > 0

    assert value(samples, "wattledger_events_stored") == status["events_stored"]
    assert value(samples, "wattledger_relay_lag_events") >= 0
    lags = {labels["projector"]: v for labels, v in samples["wattledger_projector_lag_events"]}
    assert set(lags) == {p["name"] for p in status["projectors"]}
    assert value(samples, "wattledger_live_clients") == 0
    assert value(samples, "wattledger_poller_in_process") == 0
    assert value(samples, "wattledger_poll_duration_seconds_count") == 0


async def test_request_latency_is_labelled_by_route_template_never_by_raw_path(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    device = await seed_heater(runtime, "test", readings=0)
    async with background(runtime, poll=False):
        await settled(runtime)
        for _ in range(2):
            assert (await client.get(f"/api/device/{device}")).status_code == 200
        assert (await client.get("/api/device/10.99.0.1:9999")).status_code == 404
        samples = await scrape(client)
    counts = {(labels["route"], labels["status"]): v for labels, v in
              samples["wattledger_http_request_duration_seconds_count"]}  # fmt: skip
    assert counts[("/api/device/{device}", "200")] == 2
    assert counts[("/api/device/{device}", "404")] == 1
    routes = {route for route, _ in counts}
    assert not any(str(device) in route or "10.99.0.1" in route for route in routes), routes


async def test_metrics_take_an_api_key_in_either_header_and_nothing_less(
    runtime: Runtime, client: httpx.AsyncClient, read_key: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    key = read_key.headers["X-API-Key"]
    samples = await scrape(anonymous, headers={"Authorization": f"Bearer {key}"})
    assert "wattledger_events_stored" in samples
    assert (await anonymous.get("/metrics")).status_code == 401
    assert (await anonymous.get("/metrics", headers={"Authorization": f"Bearer {key}x"})).status_code == 401
    assert (await anonymous.get("/metrics", headers={"Authorization": "Basic cm9vdDpyb290"})).status_code == 401


async def test_metrics_take_the_configured_basic_auth_and_no_other_route_does(runtime: Runtime) -> None:
    hashed = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("scrape-password-1")
    app = create_app(dataclasses.replace(runtime.services(), metrics_basic=BasicCredentials(f"prom:{hashed}")))

    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    async with http_client(app) as http:
        scraped = await http.get("/metrics", headers=basic("prom", "scrape-password-1"))
        wrong = await http.get("/metrics", headers=basic("prom", "scrape-password-2"))
        other_user = await http.get("/metrics", headers=basic("root", "scrape-password-1"))
        elsewhere = await http.get("/api/devices", headers=basic("prom", "scrape-password-1"))
    assert scraped.status_code == 200 and "wattledger_events_stored" in scraped.text
    assert parsed(scraped.text)
    assert error_of(wrong, 401) == error_of(other_user, 401) == error_of(elsewhere, 401) == "TOKEN_INVALID"
