"""The relay command and data API (uHaveControl shape) over emulated Kasa plugs and strips."""

from __future__ import annotations

from uuid import UUID

import httpx

from adapters.emulator import EmulatorFleet
from adapters.executor import CommandExecutor
from infra.bootstrap import Runtime
from projections.commands import device_commands
from tests.harness import add, emulated
from tests.kit import eventually


async def settled(runtime: Runtime, device_id: str, count: int) -> None:
    """Wait until the device's last `count` commands have their outcome."""
    control = runtime.control()
    async with runtime.read_pool.connection() as conn:

        async def outcomes_known() -> bool:
            page, _ = await device_commands(conn, UUID(device_id), limit=count, offset=0)
            if len(page) == count and all(c.status in ("succeeded", "failed") for c in page):
                return True
            for view in page:
                await control.wait_outcome(view.command_id, 2)
            return False

        await eventually(outcomes_known, within=30, every=0.05, what=f"the last {count} commands settled")


async def test_relays_of_a_strip_are_listed_and_set_by_id_or_name(
    client: httpx.AsyncClient, runtime: Runtime, fleet: EmulatorFleet, running: CommandExecutor
) -> None:
    strip, address = emulated(fleet, "KP303")
    device_id = await add(client, address)
    data = (await client.get(f"/api/devices/{device_id}/data/", params={"type": "all"})).json()
    assert data["status"] == "online" and data["GPIOs"] == [] == data["ADCs"] == data["GPIO_Cs"] == data["ADC_Cs"]
    relays = data["Relays"]
    assert [r["id"] for r in relays] == strip.outlet_ids
    assert {"id", "name", "state", "text", "stateTime", "mode", "color"} <= set(relays[0])
    assert [r["color"] for r in relays] == [{"1": "Green", "0": "Red"}[r["state"]] for r in relays]
    assert [r["state"] for r in relays] == [str(int(strip.is_on(i))) for i in range(len(relays))]
    first, second = relays[0], relays[1]
    payload = {"payload": {"Output": "Relay", "Relays": [
        {"id": first["id"], "relay": second["name"], "state": 0 if first["state"] == "1" else 1},
        {"relay": second["name"], "state": 0 if second["state"] == "1" else 1},
    ]}}  # fmt: skip
    sent = await client.post(f"/api/devices/{device_id}/command/", json=payload)
    assert (sent.status_code, sent.json()) == (200, {"status": "Command sent successfully"})
    await settled(runtime, device_id, 2)
    assert strip.is_on(0) is (first["state"] == "0") and strip.is_on(1) is (second["state"] == "0")
    assert sorted(r for r in strip.relay_requests if r is not None) == [0, 1]
    relay_only = (await client.get(f"/api/devices/{device_id}/data/", params={"type": "relay"})).json()
    assert set(relay_only) == {"s_time", "status", "Relays"}
    assert relay_only["Relays"][0]["state"] == str(int(strip.is_on(0)))
    config = (await client.get(f"/api/devices/{device_id}/data/", params={"type": "relay_c"})).json()
    assert [c["id"] for c in config["Relay_Cs"]] == strip.outlet_ids
    # The relay API's own id form: 255.<n> is relay n, counted from 0 (the seed's "255.1" is the second).
    before = strip.is_on(2)
    seed_form = {"payload": {"Output": "Relay", "Relays": [{"relay": "SecurityAlarm", "id": "255.2",
                                                            "state": 0 if before else 1}]}}  # fmt: skip
    sent = await client.post(f"/api/devices/{device_id}/command/", json=seed_form)
    assert (sent.status_code, sent.json()) == (200, {"status": "Command sent successfully"})
    await settled(runtime, device_id, 3)
    assert strip.is_on(2) is not before and strip.is_on(1) is (second["state"] == "0")


async def test_a_plug_has_one_relay_and_bad_commands_are_refused_changing_nothing(
    client: httpx.AsyncClient, read_key: httpx.AsyncClient, fleet: EmulatorFleet, running: CommandExecutor
) -> None:
    plug, address = emulated(fleet, "HS110")
    device_id = await add(client, address)
    relays = (await client.get(f"/api/devices/{device_id}/data/")).json()["Relays"]
    assert [r["id"] for r in relays] == ["0"]
    bad = {
        "wrong output": {"payload": {"Output": "GPIO", "Relays": [{"id": "0", "state": 1}]}},
        "unknown relay": {"payload": {"Output": "Relay", "Relays": [{"id": "0"}, {"id": "9", "state": 1}]}},
        "no relay named": {"payload": {"Output": "Relay", "Relays": [{"state": 1}]}},
        "bad state": {"payload": {"Output": "Relay", "Relays": [{"id": "0", "state": 2}]}},
        "empty": {"payload": {"Output": "Relay", "Relays": []}},
        "no payload": {},
    }
    for case, body in bad.items():
        response = await client.post(f"/api/devices/{device_id}/command/", json=body)
        assert response.status_code == 400, (case, response.text)
        assert {"detail", "status_code", "error_code"} <= set(response.json()), case
    assert plug.relay_requests == []
    beyond = await client.post(f"/api/devices/{device_id}/command/", json={"payload": {"Output": "Relay", "Relays": [
        {"id": "255.1", "state": 1}]}})  # fmt: skip
    assert (beyond.status_code, beyond.json()["error_code"]) == (400, "INVALID_PAYLOAD")
    assert '"0" for a plug' in beyond.json()["detail"] and '"255.<n>" for relay n' in beyond.json()["detail"]
    missing = await client.post("/api/devices/127.0.0.9/command/", json={"payload": {"Output": "Relay", "Relays": [
        {"id": "0", "state": 1}]}})  # fmt: skip
    assert missing.status_code == 404
    scope = await read_key.post(f"/api/devices/{device_id}/command/", json={"payload": {"Output": "Relay", "Relays": [
        {"id": "0", "state": 1}]}})  # fmt: skip
    assert scope.status_code == 403
    assert (await read_key.get(f"/api/devices/{device_id}/data/?type=gpio")).json()["GPIOs"] == []
    wrong_type = await read_key.get(f"/api/devices/{device_id}/data/?type=colour")
    assert (wrong_type.status_code, wrong_type.json()["error_code"]) == (400, "INVALID_TYPE")
    anonymous = await client.get(f"/api/devices/{device_id}/data/", headers={"Authorization": ""})
    assert anonymous.status_code == 401
