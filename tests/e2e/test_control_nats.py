"""Control over NATS request/reply: `<prefix>.cmd.device.<device id>.control`, authorised by an X-API-Key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.client import Client

from adapters.bus import connect_nats
from adapters.emulator import EmulatorFleet
from adapters.executor import CommandExecutor
from domain.access import Principal, Scope
from domain.identity_requests import NewKey, StepUp
from infra.bootstrap import Runtime
from tests.harness import ADMIN_PASSWORD, add, emulated


@pytest.fixture
async def requester(runtime: Runtime, nats_url: str) -> AsyncIterator[Client]:
    responder = runtime.responder()
    await responder.start()
    client = await connect_nats(nats_url, name="wl-test-control")
    await runtime.nc.flush()
    try:
        yield client
    finally:
        await client.close()
        await responder.stop()


async def ask(runtime: Runtime, client: Client, device: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    subject = f"{runtime.stream.subject_prefix}.cmd.device.{device}.control"
    reply = await client.request(subject, msgspec.json.encode(body), timeout=20, headers=headers)
    return msgspec.json.decode(reply.data)


async def test_control_over_nats_needs_a_key_with_control_and_replies_with_the_outcome(
    runtime: Runtime, requester: Client, client: httpx.AsyncClient, admin_principal: Principal,
    fleet: EmulatorFleet, running: CommandExecutor,
) -> None:  # fmt: skip
    device, address = emulated(fleet, "HS110")
    device_id = await add(client, address)
    keys = {
        scope: (await runtime.identity.issue_key(admin_principal, NewKey(name=scope.value, scope=scope),
                                                 StepUp(current_password=ADMIN_PASSWORD))).key
        for scope in (Scope.READ, Scope.READ_WRITE, Scope.ADMIN)
    }
    before = device.is_on()
    refused = {
        "no key": ({}, 401, "AUTHENTICATION_REQUIRED"),
        "bearer only": ({"Authorization": client.headers["Authorization"]}, 401, "AUTHENTICATION_REQUIRED"),
        "bad key": ({"X-API-Key": "wl_nope"}, 401, "INVALID_API_KEY"),
        "read key": ({"X-API-Key": keys[Scope.READ]}, 403, "INSUFFICIENT_PERMISSIONS"),
    }
    for case, (headers, status, code) in refused.items():
        reply = await ask(runtime, requester, device_id, {"action": "toggle", "wait": True}, headers)
        assert reply["ok"] is False, case
        assert (reply["error"]["status_code"], reply["error"]["error_code"]) == (status, code), (case, reply)
    assert device.relay_requests == []
    for scope in (Scope.READ_WRITE, Scope.ADMIN):
        reply = await ask(runtime, requester, device_id, {"action": "toggle", "wait": True}, {"X-API-Key": keys[scope]})
        assert reply["ok"] is True, reply
        assert reply["result"]["status"] == "succeeded" and reply["result"]["command_id"]
    assert device.is_on() is before and len(device.relay_requests) == 2
    queued = await ask(runtime, requester, device_id, {"action": "on"}, {"X-API-Key": keys[Scope.READ_WRITE],
                                                                            "Idempotency-Key": "n1"})  # fmt: skip
    again = await ask(runtime, requester, device_id, {"action": "on", "wait": True},
                      {"X-API-Key": keys[Scope.READ_WRITE], "Idempotency-Key": "n1"})  # fmt: skip
    assert queued["result"]["command_id"] == again["result"]["command_id"] and again["result"]["created"] is False
    bad = await ask(runtime, requester, device_id, {"action": "explode"}, {"X-API-Key": keys[Scope.ADMIN]})
    assert (bad["error"]["status_code"], bad["error"]["error_code"]) == (422, "VALIDATION_ERROR")


async def test_every_command_event_is_published_for_subscribers(
    runtime: Runtime, client: httpx.AsyncClient, fleet: EmulatorFleet, running: CommandExecutor, nats_url: str
) -> None:
    _, address = emulated(fleet, "HS100")
    device_id = await add(client, address)
    subscriber = await connect_nats(nats_url, name="wl-test-subscriber")
    seen: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def collect(msg: Any) -> None:
        seen.append(msgspec.json.decode(msg.data))
        if msg.subject.endswith((".ControlSucceeded", ".ControlFailed")):
            done.set()

    await subscriber.subscribe(f"{runtime.stream.subject_prefix}.events.command.>", cb=collect)
    await subscriber.flush()
    try:
        response = await client.post(f"/api/device/{device_id}/control", json={"action": "on"})
        await asyncio.wait_for(done.wait(), 15)
    finally:
        await subscriber.close()
    command_id = response.json()["command_id"]
    assert [m["event"] for m in seen] == ["ControlRequested", "ControlAttempted", "ControlSucceeded"]
    assert {m["originator_id"] for m in seen} == {command_id} and {m["aggregate"] for m in seen} == {"command"}
    assert all(m["data"]["device_id"] == device_id and m["data"]["action"] == "on" for m in seen)
    assert seen[-1]["data"]["is_on"] is True and seen[0]["actor"].startswith("user:")
