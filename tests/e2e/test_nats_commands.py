"""Commands over NATS request/reply reach the same handlers as REST, with the same error codes."""

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
from domain.device import device_id_for
from infra.bootstrap import Runtime
from tests.harness import SignedIn, bearer


@pytest.fixture
async def requester(runtime: Runtime, nats_url: str) -> AsyncIterator[Client]:
    stop = asyncio.Event()
    serving = asyncio.create_task(runtime.responder().run(stop))
    client = await connect_nats(nats_url, name="wl-test-requester")
    await asyncio.sleep(0)
    await runtime.nc.flush()
    try:
        yield client
    finally:
        await client.close()
        stop.set()
        await serving


async def ask(
    runtime: Runtime, client: Client, verb: str, body: bytes, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    subject = f"{runtime.stream.subject_prefix}.cmd.device.{verb}"
    msg = await client.request(subject, body, timeout=10, headers=headers)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    return reply


async def test_add_rename_remove_over_nats_store_events_with_the_requesting_user(
    runtime: Runtime, requester: Client, fleet: EmulatorFleet, admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    signed_in = admin[0]
    creds = bearer(signed_in)
    address = fleet.addresses[0]
    added = await ask(runtime, requester, "add", msgspec.json.encode({"ip": address, "alias": "Fridge"}), creds)
    assert added["ok"] is True, added
    device_id = added["result"]["device_id"]
    assert device_id == str(device_id_for(address))
    renamed = await ask(runtime, requester, "rename", msgspec.json.encode({"device": address, "alias": "Freezer"}),
                        creds)
    removed = await ask(runtime, requester, "remove", msgspec.json.encode({"device": device_id}), creds)
    assert renamed["ok"] and removed["ok"]
    events = [runtime.app.mapper.to_domain_event(n)
              for n in runtime.app.recorder.select_notifications(1, 100)]
    device_events = [e for e in events if str(e.originator_id) == device_id]
    assert [type(e).__name__ for e in device_events][0] == "Added"
    assert {type(e).__name__ for e in device_events} >= {"Added", "Renamed", "Removed"}
    assert {getattr(e, "actor") for e in device_events} == {f"user:{signed_in.user_id}"}


async def test_requests_without_credentials_or_permission_are_refused(
    runtime: Runtime, requester: Client, fleet: EmulatorFleet, viewer: httpx.AsyncClient
) -> None:
    before = runtime.app.recorder.max_notification_id()
    body = msgspec.json.encode({"ip": fleet.addresses[0]})
    anonymous = await ask(runtime, requester, "add", body)
    forged = await ask(runtime, requester, "add", body, {"Authorization": "Bearer not-a-token"})
    as_viewer = await ask(runtime, requester, "add", body, {"Authorization": viewer.headers["Authorization"]})
    assert (anonymous["error"]["status_code"], anonymous["error"]["error_code"]) == (401, "AUTHENTICATION_REQUIRED")
    assert forged["error"]["status_code"] == 401
    assert (as_viewer["error"]["status_code"], as_viewer["error"]["error_code"]) == (403, "INSUFFICIENT_PERMISSIONS")
    assert runtime.app.recorder.max_notification_id() == before


async def test_bad_requests_over_nats_get_error_replies_and_store_nothing(
    runtime: Runtime, requester: Client, fleet: EmulatorFleet, admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    creds = bearer(admin[0])
    before = runtime.app.recorder.max_notification_id()
    cases = {
        ("add", b"not json"): (400, "INVALID_REQUEST"),
        ("add", b'{"ip": "10.0.0.1", "extra": 1}'): (422, "VALIDATION_ERROR"),
        ("add", b'{"ip": "10.0.0.1:70000"}'): (400, "INVALID_ADDRESS"),
        ("add", msgspec.json.encode({"ip": "127.0.0.1:1"})): (422, "DEVICE_UNREACHABLE"),
        ("remove", b'{"device": "127.0.0.9"}'): (404, "DEVICE_NOT_FOUND"),
        ("explode", b"{}"): (404, "NOT_FOUND"),
    }
    for (verb, body), (status, code) in cases.items():
        reply = await ask(runtime, requester, verb, body, creds)
        assert reply["ok"] is False, (verb, body, reply)
        assert (reply["error"]["status_code"], reply["error"]["error_code"]) == (status, code), (verb, body, reply)
        if code == "DEVICE_UNREACHABLE":
            assert reply["error"]["detail"] == "no Kasa device answered at this address"
    assert runtime.app.recorder.max_notification_id() == before
    address = fleet.addresses[1]
    assert (await ask(runtime, requester, "add", msgspec.json.encode({"ip": address}), creds))["ok"]
    again = await ask(runtime, requester, "add", msgspec.json.encode({"ip": address}), creds)
    assert again["error"]["error_code"] == "DEVICE_EXISTS"
