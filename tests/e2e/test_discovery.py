"""POST /api/discover over loopback: each emulated device on its own 127.0.0.x, answering UDP discovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from adapters.emulator import EmulatorFleet, loopback_hosts
from api.app import create_app
from infra.bootstrap import Runtime
from tests.harness import background, http_client, set_up_and_log_in


@pytest.fixture
async def discoverable() -> AsyncIterator[EmulatorFleet]:
    profiles = ["HS110", "HS300", "KP303"]
    async with EmulatorFleet(profiles, host=loopback_hosts(3, first=201), discovery_port=0, seed=3) as fleet:
        yield fleet


async def test_discovery_adds_new_devices_once(runtime: Runtime, discoverable: EmulatorFleet) -> None:
    runtime.settings = msgspec.structs.replace(
        runtime.settings, discovery_target="127.255.255.255", discovery_port=discoverable.discovery_port
    )
    async with background(runtime, poll=False), http_client(create_app(runtime.services())) as client:
        admin = await set_up_and_log_in(client)
        cloud = await client.post("/api/discover", json={"username": "me@example.com", "password": "tplink"})
        assert (cloud.status_code, cloud.json()["error_code"]) == (422, "VALIDATION_ERROR"), cloud.text
        assert cloud.json()["detail"].startswith("username, password: cloud credentials are not used")
        first = (await client.post("/api/discover", json={})).json()
        assert first["discovered"] == 3
        assert sorted(first["added"]) == sorted(discoverable.addresses)
        listed = (await client.get("/api/devices")).json()
        assert sorted(d["model"] for d in listed) == ["HS110", "HS300", "KP303"]
        again = (await client.post("/api/discover")).json()
        assert again["added"] == [] and sorted(again["already_known"]) == sorted(discoverable.addresses)
    notifications = await asyncio.to_thread(runtime.app.recorder.select_notifications, start=1, limit=10_000)
    added = [runtime.app.mapper.to_domain_event(n) for n in notifications if n.topic.endswith("Device.Added")]
    assert len(added) == 3 and {e.actor for e in added} == {f"user:{admin.user_id}"}
