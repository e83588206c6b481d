"""System configuration as events taken up without a restart, network settings, and renaming on the device."""

from __future__ import annotations

import asyncio

import httpx

from adapters.emulator import EmulatorFleet
from adapters.executor import CommandExecutor
from domain.config import SystemConfig
from domain.device import Device
from infra.bootstrap import Runtime
from tests.harness import add, emulated
from tests.kit import eventually


def events_of(runtime: Runtime, kind: type) -> list[object]:
    events = [runtime.app.mapper.to_domain_event(n) for n in runtime.app.recorder.select_notifications(1, 1000)]
    return [e for e in events if isinstance(e, kind)]


async def test_the_configuration_is_admin_only_validated_and_each_change_is_an_event(
    client: httpx.AsyncClient, operator: httpx.AsyncClient, runtime: Runtime
) -> None:
    shown = (await client.get("/api/system/config")).json()
    assert shown == {
        "polling_interval": 1.0, "data_retention_days": 365, "allow_device_control": True, "require_https": False,
        "offline_after": 2, "poll_timeout": 2.0, "poll_concurrency": 64,
    }  # fmt: skip
    for refused in (await operator.get("/api/system/config"), await operator.put("/api/system/config", json={})):
        assert refused.status_code == 403
    for body, status, field in (
        ({"polling_interval": 0}, 422, "polling_interval"), ({"poll_concurrency": 5000}, 422, "poll_concurrency"),
        ({"data_retention_days": "a year"}, 422, "data_retention_days"), ({"colour": "red"}, 422, "colour"),
    ):
        response = await client.put("/api/system/config", json=body)
        assert response.status_code == status, (body, response.text)
        assert field in response.text
    assert events_of(runtime, SystemConfig.ConfigChanged) == []
    changed = await client.put("/api/system/config", json={"data_retention_days": 30, "require_https": True})
    assert changed.status_code == 200 and changed.json()["data_retention_days"] == 30
    assert (await client.get("/api/system/config")).json()["require_https"] is True
    [event] = events_of(runtime, SystemConfig.ConfigChanged)
    assert isinstance(event, SystemConfig.ConfigChanged)
    assert (event.data_retention_days, event.require_https, event.polling_interval) == (30, True, None)
    network = await client.get("/api/settings/network")
    assert set(network.json()) >= {"network_mode", "discovery_enabled", "manual_devices_enabled", "host_ip"}
    assert (await operator.get("/api/settings/network")).status_code == 403


async def test_the_poller_takes_up_a_new_interval_without_a_restart(client: httpx.AsyncClient, runtime: Runtime) -> None:
    poller = runtime.poller()
    following = asyncio.create_task(poller.follow_config(runtime.config().current, every=0.05))
    try:
        for interval in (30.0, 2.0):
            assert (await client.put("/api/system/config", json={"polling_interval": interval})).status_code == 200
            await eventually(lambda: poller.interval == interval, every=0.02, what=f"the interval {interval} taken up")
        await client.put("/api/system/config", json={"poll_timeout": 3, "offline_after": 5})
        await eventually(lambda: poller.offline_after == 5, every=0.02, what="offline_after 5 taken up")
        assert (poller.offline_after, poller.timeout) == (5, 4.0)
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


async def test_renaming_stores_the_name_on_the_device_and_a_removed_device_is_not_controllable(
    client: httpx.AsyncClient, operator: httpx.AsyncClient, viewer: httpx.AsyncClient, runtime: Runtime,
    fleet: EmulatorFleet, running: CommandExecutor,
) -> None:  # fmt: skip
    device, address = emulated(fleet, "HS300")
    device_id = await add(client, address)
    assert (await viewer.patch(f"/api/device/{device_id}", json={"alias": "Desk"})).status_code == 403
    renamed = await operator.patch(f"/api/device/{address}", json={"alias": "Desk strip"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["alias"] == "Desk strip" == device.alias
    assert [getattr(e, "alias") for e in events_of(runtime, Device.Renamed)] == ["Desk strip"]
    bad = await operator.patch(f"/api/device/{device_id}", json={"alias": ""})
    assert bad.status_code == 422 and device.alias == "Desk strip"
    assert (await client.delete(f"/api/devices/{device_id}")).status_code == 200
    gone = await client.post(f"/api/device/{device_id}/control", json={"action": "on"})
    assert (gone.status_code, gone.json()["error_code"]) == (404, "DEVICE_NOT_FOUND")
    assert (await operator.patch(f"/api/device/{device_id}", json={"alias": "x"})).status_code == 404
    assert device.relay_requests == [] and len(events_of(runtime, Device.Added)) == 1
