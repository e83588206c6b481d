"""Push devices over HTTP: a token shown once, 404 for a wrong or rotated-away token, readings in a push,
and meters that only push: added without an address, never polled, never switched."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from uuid import UUID

import httpx
import msgspec
import pytest

from adapters.eventstore import StoreUnitOfWork
from adapters.identity import RandomSecrets
from adapters.poll_store import POLLER_ACTOR
from adapters.ratelimits import MAX_WINDOW_S, Limit
from domain.device import Device
from domain.energy_handlers import EnergyHandlers
from domain.meter import MeterDay
from domain.ports import Clock
from domain.push_handlers import PushHandlers
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


async def test_a_push_only_meter_is_added_without_an_address_and_no_poll_or_switch_ever_touches_it(
    runtime: Runtime, client: httpx.AsyncClient, anonymous: httpx.AsyncClient, viewer: httpx.AsyncClient,
    read_key: httpx.AsyncClient, clock: ManualClock,
) -> None:
    runtime.settings = msgspec.structs.replace(runtime.settings, polling_interval=1.0, offline_after=1)
    polled = await asyncio.to_thread(seed_device, runtime.app, "127.0.0.1:9", HEATER, measured_at=ADDED_AT)
    before = await asyncio.to_thread(runtime.app.recorder.max_notification_id)
    refused = [
        await client.post("/api/devices/push", json=body)
        for body in ({"alias": ""}, {"alias": "shed", "interval_s": 5}, {"alias": "shed", "grace_s": -1},
                     {"alias": "shed", "ip": "10.0.0.1"}, {"model": "esp32"})
    ]  # fmt: skip
    control_char = await client.post("/api/devices/push", json={"alias": "shed\u0007"})
    forbidden = await viewer.post("/api/devices/push", json={"alias": "shed"})
    assert await asyncio.to_thread(runtime.app.recorder.max_notification_id) == before

    poller = runtime.poller()
    async with background(runtime, poll=False):
        polling = asyncio.create_task(poller.run())
        added = await client.post(
            "/api/devices/push", json={"alias": "shed meter", "model": "esp32", "interval_s": 60, "grace_s": 30}
        )
        assert added.status_code == 201, added.text
        device, token = added.json()["device_id"], added.json()["token"]
        readings = [
            {"timestamp": ADDED_AT.isoformat(), "power_w": 120.0, "total_wh": 1000.0},
            {"timestamp": clock.now().isoformat(), "power_w": 240.5, "total_wh": 1100.0},
        ]
        pushed = await anonymous.post(f"/api/push/{token}?status=up", json={"readings": readings})
        switched = await client.post(f"/api/device/{device}/control", json={"action": "on"})
        renamed = await client.patch(f"/api/device/{device}", json={"alias": "garden meter"})
        reads = runtime.services().reads
        newest = await reads.newest()
        assert await reads.wait_projected(newest, timeout=WAIT_S)
        assert await reads.wait_projected(newest, projector="energy", timeout=WAIT_S)
        listed = {d["device_id"]: d for d in (await client.get("/api/devices")).json()}
        history = (await client.get(f"/api/device/{device}/history", params={
            "start_time": ADDED_AT.isoformat(), "end_time": (ADDED_AT + timedelta(hours=1)).isoformat(),
            "aggregation": "hourly",
        })).json()  # fmt: skip
        uptime = await client.get(f"/api/device/{device}/uptime", params={"period": "24h"})
        badge = await anonymous.get(f"/api/badge/{device}/status")
        metrics = await read_key.get("/metrics")
        async with asyncio.timeout(WAIT_S):
            while poller.stats().polls < 2:
                await asyncio.sleep(0.05)
        stats = poller.stats()
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        known = await runtime.known_devices()

    store = StoreUnitOfWork(runtime.app)
    sweeps = PushHandlers(store, clock, RandomSecrets(), EnergyHandlers(store, clock))
    clock.advance(seconds=91)
    assert await sweeps.mark_all_silent() > 0
    assert await sweeps.mark_all_silent() == 0
    back = await anonymous.get(f"/api/push/{token}?status=up")

    assert [error_of(r, 422) for r in refused] == ["VALIDATION_ERROR"] * 5
    assert error_of(control_char, 400) == "INVALID_TEXT"
    assert error_of(forbidden, 403) == "INSUFFICIENT_PERMISSIONS"
    assert added.json()["push_path"] == f"/api/push/{token}"
    assert (added.json()["interval_s"], added.json()["grace_s"]) == (60, 30)
    assert pushed.json() == {"ok": True, "recorded": 2}
    assert error_of(switched, 409) == "DEVICE_PUSH_ONLY"
    assert renamed.status_code == 200, renamed.text
    shown = listed[device]
    assert (shown["alias"], shown["model"], shown["device_type"]) == ("garden meter", "esp32", "push")
    assert shown["online"] is True and shown["current_power_w"] == 240.5 and shown["today_energy_kwh"] == 0.1
    assert [p["energy_kwh"] for p in history["data"]] == [0.1]
    assert uptime.status_code == 200 and uptime.json()["outages"] == []
    assert badge.status_code == 200 and "N/A" in badge.text
    power_lines = [line for line in metrics.text.splitlines() if line.startswith("wattledger_device_power_watts{")]
    assert any(device in line and line.endswith(" 240.5") for line in power_lines), power_lines
    assert stats.devices == 1 and [str(d) for d, _ in known] == [str(polled)]
    device_events = list(runtime.app.events.get(UUID(device)))
    assert [type(e).__name__ for e in device_events] == ["Added", "Renamed", "WentOffline", "CameOnline"]
    first = device_events[0]
    assert isinstance(first, Device.Added) and first.push_only and first.address.startswith("push:")
    assert not [e for e in device_events if getattr(e, "actor", None) == POLLER_ACTOR]
    assert back.status_code == 200
    assert any(
        isinstance(e, Device.WentOffline) and e.actor == POLLER_ACTOR for e in runtime.app.events.get(polled)
    )
