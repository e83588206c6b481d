"""socket.io at /socket.io/ with python-socketio's own client, as the seed's clients use it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import socketio  # type: ignore[import-untyped]

from infra.bootstrap import Runtime
from tests.harness import WAIT_S, SignedIn, background, serve_live


async def test_a_socketio_client_subscribes_by_address_and_gets_device_updates(
    runtime: Runtime, devices: list[str], admin: tuple[SignedIn, httpx.AsyncClient]  # noqa: F811
) -> None:
    plug, strip = devices
    async with background(runtime, poll=True), serve_live(runtime) as live:
        client = socketio.AsyncClient(reconnection=False)
        updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        statuses: list[dict[str, Any]] = []
        client.on("device_update", updates.put_nowait)
        client.on("device_status", statuses.append)
        await client.connect(live.http_url, auth={"token": admin[0].access_token}, transports=["websocket"],
                             wait_timeout=WAIT_S)  # fmt: skip
        try:
            ack = await client.call("subscribe_device", {"device_ip": plug}, timeout=WAIT_S)
            assert ack["event"] == "subscribed" and ack["device_ip"] == plug
            for _ in range(3):
                update = await asyncio.wait_for(updates.get(), timeout=WAIT_S)
                assert update["device_ip"] == plug and {"is_on", "current_power_w", "timestamp"} <= set(update["data"])
            assert statuses and statuses[0]["status"] == "online"
            missing = await client.call("subscribe_device", {"device_ip": "127.0.0.1:1"}, timeout=WAIT_S)
            assert missing["error_code"] == "DEVICE_NOT_FOUND"
        finally:
            await client.disconnect()


async def test_a_socketio_client_without_valid_credentials_is_refused(
    runtime: Runtime, devices: list[str]  # noqa: F811
) -> None:
    async with background(runtime, poll=False), serve_live(runtime) as live:
        for auth, code in ((None, "AUTHENTICATION_REQUIRED"), ({"token": "not-a-token"}, "TOKEN_INVALID")):
            client = socketio.AsyncClient(reconnection=False)
            errors: list[Any] = []
            client.on("connect_error", errors.append)
            with pytest.raises(socketio.exceptions.ConnectionError):
                await client.connect(live.http_url, auth=auth, transports=["websocket"], wait_timeout=WAIT_S)
            assert errors and code in str(errors[0]), errors
            await client.disconnect()
