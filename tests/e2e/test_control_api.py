"""Control over REST against emulated devices: recorded commands, executed once, confirmed by reading back."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import httpx

from adapters.emulator import EmulatorFleet
from adapters.executor import CommandExecutor
from domain.commands import MissedPolls, RecordPolls
from infra.bootstrap import Runtime
from tests.harness import add, emulated


async def control(client: httpx.AsyncClient, device: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await client.post(f"/api/device/{device}/control", params={"wait": "true"}, json=body, headers=headers)


async def test_a_plug_switches_on_off_and_toggles_with_the_state_confirmed_and_projected_at_once(
    client: httpx.AsyncClient, fleet: EmulatorFleet, running: CommandExecutor
) -> None:
    device, address = emulated(fleet, "HS110")
    device_id = await add(client, address)
    for action in ("on", "off", "toggle", "toggle"):
        before = device.is_on()
        response = await control(client, device_id, {"action": action})
        assert response.status_code == 200, response.text
        body = response.json()
        expected = {"on": True, "off": False}.get(action, not before)
        assert (body["status"], body["is_on"], body["action"]) == ("succeeded", expected, action)
        assert device.is_on() is expected
        shown = (await client.get(f"/api/device/{device_id}")).json()
        assert shown["is_on"] is expected
    assert len(device.relay_requests) == 4


async def test_each_hs300_outlet_switches_alone(
    client: httpx.AsyncClient, fleet: EmulatorFleet, running: CommandExecutor
) -> None:
    strip, address = emulated(fleet, "HS300")
    device_id = await add(client, address)
    outlets = len(strip.outlet_ids)
    for index in range(outlets):
        before = [strip.is_on(i) for i in range(outlets)]
        outlet: int | str = index if index % 2 else strip.outlet_ids[index]
        response = await control(client, address, {"action": "toggle", "outlet": outlet})
        assert response.status_code == 200, response.text
        after = [strip.is_on(i) for i in range(outlets)]
        assert after == [not s if i == index else s for i, s in enumerate(before)]
        assert [o["is_on"] for o in response.json()["outlets"]] == after
    assert strip.relay_requests == list(range(outlets))
    shown = (await client.get(f"/api/device/{device_id}")).json()
    assert [o["is_on"] for o in shown["outlets"]] == [strip.is_on(i) for i in range(outlets)]
    missing = await client.post(f"/api/device/{device_id}/control", json={"action": "on", "outlet": outlets})
    assert (missing.status_code, missing.json()["error_code"]) == (404, "OUTLET_NOT_FOUND")


async def test_two_toggles_at_once_are_both_recorded_and_run_in_order(
    client: httpx.AsyncClient, fleet: EmulatorFleet, running: CommandExecutor
) -> None:
    device, address = emulated(fleet, "HS100")
    device_id = await add(client, address)
    initial = device.is_on()
    first, second = await asyncio.gather(
        control(client, device_id, {"action": "toggle"}), control(client, device_id, {"action": "toggle"})
    )
    assert first.status_code == second.status_code == 200
    assert device.is_on() is initial and len(device.relay_requests) == 2
    history = (await client.get(f"/api/devices/{device_id}/commands")).json()
    assert history["total"] == 2
    ordered = sorted(history["commands"], key=lambda c: c["attempted_at"])
    assert [c["is_on"] for c in ordered] == [not initial, initial]


async def test_an_idempotency_key_returns_the_first_command_and_never_switches_twice(
    client: httpx.AsyncClient, fleet: EmulatorFleet, running: CommandExecutor
) -> None:
    device, address = emulated(fleet, "KP115")
    device_id = await add(client, address)
    first = await control(client, device_id, {"action": "toggle"}, **{"Idempotency-Key": "abc-1"})
    again = await control(client, device_id, {"action": "toggle"}, **{"Idempotency-Key": "abc-1"})
    assert first.status_code == again.status_code == 200
    assert first.json()["command_id"] == again.json()["command_id"]
    assert len(device.relay_requests) == 1
    other = await control(client, device_id, {"action": "on"}, **{"Idempotency-Key": "abc-1"})
    assert (other.status_code, other.json()["error_code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert len(device.relay_requests) == 1


async def test_commands_are_read_back_one_by_one_and_per_device_newest_first(
    client: httpx.AsyncClient, fleet: EmulatorFleet, running: CommandExecutor
) -> None:
    _, address = emulated(fleet, "HS110")
    device_id = await add(client, address)
    ids = []
    for action in ("on", "off", "on"):
        accepted = await client.post(f"/api/device/{device_id}/control", json={"action": action})
        assert accepted.status_code in (200, 202), accepted.text
        assert accepted.json()["status"] in ("requested", "executing", "succeeded")
        ids.append(accepted.json()["command_id"])
        await control(client, device_id, {"action": action}, **{"Idempotency-Key": f"wait-{len(ids)}"})
    one = await client.get(f"/api/commands/{ids[0]}")
    assert one.status_code == 200 and one.json()["device_id"] == device_id
    page = (await client.get(f"/api/devices/{address}/commands", params={"limit": 2, "offset": 0})).json()
    assert page["total"] == 6 and len(page["commands"]) == 2
    times = [c["requested_at"] for c in page["commands"]]
    assert times == sorted(times, reverse=True)
    unknown = await client.get("/api/commands/00000000-0000-0000-0000-000000000001")
    assert (unknown.status_code, unknown.json()["error_code"]) == (404, "COMMAND_NOT_FOUND")


async def test_an_offline_device_fails_at_once_with_device_offline(
    client: httpx.AsyncClient, runtime: Runtime, fleet: EmulatorFleet, running: CommandExecutor
) -> None:
    device, address = emulated(fleet, "HS100")
    device_id = await add(client, address)
    await runtime.handlers().record_polls(
        RecordPolls(offline=(MissedPolls(device_id=UUID(device_id), count=3),), actor="test")
    )
    response = await client.post(f"/api/device/{device_id}/control", json={"action": "on"})
    body = response.json()
    assert (response.status_code, body["status"], body["reason"]) == (200, "failed", "device_offline")
    assert device.relay_requests == []


async def test_control_needs_the_control_permission_and_stops_when_turned_off(
    client: httpx.AsyncClient, viewer: httpx.AsyncClient, read_key: httpx.AsyncClient,
    operator: httpx.AsyncClient, fleet: EmulatorFleet, running: CommandExecutor,
) -> None:  # fmt: skip
    device, address = emulated(fleet, "HS110")
    device_id = await add(client, address)
    for refused in (viewer, read_key):
        response = await refused.post(f"/api/device/{device_id}/control", json={"action": "on"})
        assert (response.status_code, response.json()["error_code"]) == (403, "INSUFFICIENT_PERMISSIONS")
    assert (await control(operator, device_id, {"action": "on"})).status_code == 200
    assert (await client.put("/api/system/config", json={"allow_device_control": False})).status_code == 200
    off = await operator.post(f"/api/device/{device_id}/control", json={"action": "off"})
    assert (off.status_code, off.json()["error_code"]) == (403, "DEVICE_CONTROL_DISABLED")
    relay = await client.post(
        f"/api/devices/{device_id}/command/", json={"payload": {"Output": "Relay", "Relays": [{"id": "0", "state": 0}]}}
    )
    assert (relay.status_code, relay.json()["error_code"]) == (403, "DEVICE_CONTROL_DISABLED")
    assert len(device.relay_requests) == 1 and device.is_on()
    bad = await client.post(f"/api/device/{device_id}/control", json={"action": "explode"})
    assert bad.status_code == 422


async def test_control_answers_the_outcome_by_default_and_202_when_the_client_prefers_async(
    client: httpx.AsyncClient, fleet: EmulatorFleet, running: CommandExecutor
) -> None:
    device, address = emulated(fleet, "HS110")
    device_id = await add(client, address)
    plain = await client.post(f"/api/device/{device_id}/control", json={"action": "off"})
    assert plain.status_code == 200, plain.text
    assert (plain.json()["status"], plain.json()["is_on"]) == ("succeeded", False)
    preferred = await client.post(
        f"/api/device/{device_id}/control", json={"action": "on"}, headers={"Prefer": "respond-async, wait=5"}
    )
    # Answered at once: 202 with the command still to run (200 only if it had already run by then).
    if preferred.json()["status"] in ("requested", "executing"):
        assert preferred.status_code == 202 and preferred.headers["preference-applied"] == "respond-async"
    else:
        assert preferred.status_code == 200 and preferred.json()["status"] == "succeeded"
    waited = await client.post(
        f"/api/device/{device_id}/control", params={"wait": "true"}, json={"action": "on"},
        headers={"Prefer": "respond-async"},
    )  # fmt: skip
    assert waited.status_code == 200 and "preference-applied" not in waited.headers
    assert device.is_on()
