"""`GET /api/device/{device}?as_of=`: the device as it was then, from the events stored up to that time."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from uuid import UUID

import httpx

from adapters.emulator import EmulatorFleet
from domain.address import parse_address
from domain.commands import PollResult, RecordPolls, RemoveDevice, RenameDevice
from infra.bootstrap import Runtime
from tests.harness import background


async def moment() -> str:
    """Now, as a query value, with the clock moved on so events stored next are strictly later."""
    await asyncio.sleep(0.01)
    at = datetime.now(timezone.utc).isoformat()
    await asyncio.sleep(0.01)
    return at


async def test_a_device_answers_as_it_was_at_each_moment_of_its_history(
    client: httpx.AsyncClient, viewer: httpx.AsyncClient, runtime: Runtime, fleet: EmulatorFleet
) -> None:
    before_add = await moment()
    async with background(runtime, poll=False):
        added = await client.post("/api/devices/manual", json={"ip": fleet.addresses[0], "alias": "Desk"})
        assert added.status_code == 201, added.text
        device = added.json()
        after_add = await moment()
        handlers = runtime.handlers()
        await handlers.rename_device(RenameDevice(device_id=UUID(device["device_id"]), alias="Office", actor="test"))
        after_rename = await moment()
        await handlers.remove_device(RemoveDevice(device_id=UUID(device["device_id"]), actor="test"))
        after_remove = await moment()

    path = f"/api/device/{device['device_id']}"
    first = await client.get(path, params={"as_of": after_add})
    assert first.status_code == 200, first.text
    then = first.json()
    assert (then["alias"], then["device_ip"], then["model"]) == ("Desk", fleet.addresses[0], "HS110")
    assert then["last_seen"] == device["last_seen"] and then["current_power_w"] == device["current_power_w"]

    renamed = await viewer.get(f"/api/device/{fleet.addresses[0]}", params={"as_of": after_rename})
    assert renamed.status_code == 200 and renamed.json()["alias"] == "Office"

    for at in (before_add, after_remove):
        gone = await client.get(path, params={"as_of": at})
        assert gone.status_code == 404 and gone.json()["error_code"] == "DEVICE_NOT_FOUND", at


async def test_the_reading_shown_is_the_latest_at_or_before_the_moment(
    client: httpx.AsyncClient, runtime: Runtime, fleet: EmulatorFleet
) -> None:
    async with background(runtime, poll=False):
        added = await client.post("/api/devices/manual", json={"ip": fleet.addresses[1]})
        assert added.status_code == 201, added.text
        device_id = UUID(added.json()["device_id"])
        after_add = await moment()
        snapshot = await runtime.driver.poll(parse_address(fleet.addresses[1]))
        measured = datetime.now(timezone.utc)
        await runtime.handlers().record_polls(RecordPolls(
            results=(PollResult(device_id=device_id, measured_at=measured, snapshot=snapshot),), actor="test",
        ))
        after_poll = await moment()

    path = f"/api/device/{device_id}"
    earlier = (await client.get(path, params={"as_of": after_add})).json()
    later = (await client.get(path, params={"as_of": after_poll})).json()
    assert earlier["last_seen"] == added.json()["last_seen"]
    assert datetime.fromisoformat(later["last_seen"]) == measured
    assert later["current_power_w"] == snapshot.power_w


async def test_a_time_that_is_not_iso_8601_with_an_offset_is_refused(client: httpx.AsyncClient) -> None:
    for bad in ("yesterday", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00", "", "0001-01-01T00:00:00+05:00"):
        response = await client.get("/api/device/127.0.0.1:9999", params={"as_of": bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error_code"] == "INVALID_RANGE"


async def test_as_of_needs_the_same_permission_as_the_device_itself(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/api/device/127.0.0.1:9999", params={"as_of": "2026-01-01T00:00:00Z"})
    assert response.status_code == 401
