"""Push devices over HTTP: a token shown once, 404 for a wrong or rotated-away token, readings in a push."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
import msgspec
import pytest

from adapters.ratelimits import MAX_WINDOW_S, Limit
from domain.device import Device
from domain.meter import MeterDay
from domain.ports import Clock
from infra.bootstrap import Runtime
from infra.settings import Settings
from tests.harness import HEATER, WAIT_S, background, error_of
from tests.kit import ManualClock, seed_device

ADDED_AT = datetime(2026, 5, 4, 10, tzinfo=timezone.utc)


@pytest.fixture
def clock() -> Clock:
    return ManualClock(ADDED_AT.replace(minute=5))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Rate limits on, with three failed attempts per address over a window no test outlives."""
    return msgspec.structs.replace(
        settings, rate_limits=True, rate_limit_ip=(Limit(1000, MAX_WINDOW_S),),
        rate_limit_user=(Limit(1000, MAX_WINDOW_S),), rate_limit_login_ip=(Limit(3, MAX_WINDOW_S),),
    )  # fmt: skip


async def test_a_push_device_takes_its_token_and_refuses_any_other(
    runtime: Runtime, client: httpx.AsyncClient, anonymous: httpx.AsyncClient, viewer: httpx.AsyncClient
) -> None:
    device = await asyncio.to_thread(seed_device, runtime.app, "10.4.1.1", HEATER,
                                     measured_at=ADDED_AT)  # fmt: skip
    newest = await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0
    async with background(runtime, poll=False):
        assert await runtime.services().reads.wait_projected(newest, timeout=WAIT_S)
        refused = await viewer.put(f"/api/device/{device}/push", json={"interval_s": 60})
        opened = await client.put(f"/api/device/{device}/push", json={"interval_s": 60, "grace_s": 30})
        assert opened.status_code == 200, opened.text
        first = opened.json()["token"]
        wrong = await anonymous.get("/api/push/not-a-token?status=up")
        down = await anonymous.get(f"/api/push/{first}?status=down&msg=OK&ping=50")
        now = runtime.clock.now().isoformat()
        with_reading = await anonymous.post(
            f"/api/push/{first}?status=up", json={"readings": [{"timestamp": now, "power_w": 321.5}]}
        )
        bad_status = await anonymous.get(f"/api/push/{first}?status=sideways")
        bad_ping = await anonymous.get(f"/api/push/{first}?status=up&ping=-1")
        long_msg = await anonymous.get(f"/api/push/{first}", params={"status": "up", "msg": "x" * 1001})
        rotated = await client.post(f"/api/device/{device}/push/token")
        old = await anonymous.get(f"/api/push/{first}")
        new = await anonymous.get(f"/api/push/{rotated.json()['token']}")

    assert error_of(refused, 403) == "INSUFFICIENT_PERMISSIONS"
    assert opened.json()["push_path"] == f"/api/push/{first}" and opened.json()["interval_s"] == 60
    assert error_of(wrong, 404) == "DEVICE_NOT_FOUND"
    assert down.status_code == 200 and down.json() == {"ok": True, "recorded": 0}
    assert with_reading.status_code == 200 and with_reading.json() == {"ok": True, "recorded": 1}
    assert bad_status.status_code in (400, 422)
    assert error_of(bad_ping, 422) == error_of(long_msg, 422) == "VALIDATION_ERROR"
    assert rotated.status_code == 200 and rotated.json()["token"] != first
    assert error_of(old, 404) == "DEVICE_NOT_FOUND"
    assert new.status_code == 200
    events = list(runtime.app.events.get(device))
    assert [type(e) for e in events if isinstance(e, (Device.WentOffline, Device.CameOnline))] == [
        Device.WentOffline, Device.CameOnline,
    ]
    readings = [
        e for e in runtime.app.events.get(MeterDay.create_id(device, now[:10]))
        if isinstance(e, MeterDay.ReadingRecorded) and e.power_w == 321.5
    ]
    assert len(readings) == 1


async def test_unknown_push_tokens_are_rate_limited_by_address(
    runtime: Runtime, anonymous: httpx.AsyncClient
) -> None:
    async with background(runtime, poll=False):
        misses = [await anonymous.get(f"/api/push/guess-{n}?status=up") for n in range(3)]
        refused = await anonymous.post("/api/push/guess-4?status=up")

    assert [error_of(r, 404) for r in misses] == ["DEVICE_NOT_FOUND"] * 3
    assert error_of(refused, 429) == "RATE_LIMIT_EXCEEDED"
    assert int(refused.headers["retry-after"]) >= 1
