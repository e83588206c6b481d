"""`GET /api/device/{device}/uptime`: a stored outage history read back exact, "now" from the injected clock."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from domain.device import Device
from infra.bootstrap import Runtime
from tests.harness import HEATER, WAIT_S, background, error_of
from tests.kit import ManualClock, seed_device


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 1, 1, tzinfo=timezone.utc))


def store_history(runtime: Runtime, steps: list[tuple[type, timedelta]]) -> tuple[object, datetime]:
    """A heater whose later events carry the given offsets from its add; returns its id and when it was added."""
    device_id = seed_device(runtime.app, "10.3.0.1", HEATER, measured_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    device = runtime.app.repository.get(device_id)
    assert isinstance(device, Device)
    added = device.created_on
    for kind, offset in steps:
        fields = {"missed_polls": 3} if kind is Device.WentOffline else {}
        device.trigger_event(kind, timestamp=added + offset, actor="system:poller", **fields)
    runtime.app.save(device)
    return device_id, added


async def test_uptime_of_a_known_outage_history_is_exact(
    runtime: Runtime, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    device, added = await asyncio.to_thread(store_history, runtime, [
        (Device.WentOffline, timedelta(hours=1)), (Device.CameOnline, timedelta(hours=1, seconds=90)),
        (Device.WentOffline, timedelta(hours=5)),
    ])  # fmt: skip
    clock.set(added + timedelta(hours=6))
    newest = await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0
    async with background(runtime, poll=False):
        assert await runtime.services().reads.wait_projected(newest, timeout=WAIT_S)
        day = (await client.get(f"/api/device/{device}/uptime", params={"period": "24h"})).json()
        default = (await client.get(f"/api/device/{device}/uptime")).json()
        hours = (await client.get(f"/api/device/{device}/uptime", params={"period": "3h"})).json()
        unknown = await client.get("/api/device/10.3.9.9/uptime")
        bad = await client.get(f"/api/device/{device}/uptime", params={"period": "soon"})
    assert day == default
    assert day["watched_seconds"] == 6 * 3600 and day["online_seconds"] == 6 * 3600 - 90 - 3600
    assert day["percentage"] == round(100 * (21600 - 3690) / 21600, 4)
    assert [(o["seconds"], o["end"] is None) for o in day["outages"]] == [(90.0, False), (3600.0, True)]
    assert datetime.fromisoformat(day["outages"][0]["start"]) == added + timedelta(hours=1)
    assert hours["watched_seconds"] == 3 * 3600 and hours["percentage"] == round(100 * 2 / 3, 4)
    assert error_of(unknown, 404) == "DEVICE_NOT_FOUND"
    assert error_of(bad, 422) == "INVALID_RANGE"
