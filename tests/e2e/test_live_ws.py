"""The WebSocket at /ws: the real app under uvicorn on loopback, real NATS, emulated devices polled.

Every client is a real WebSocket client (the `websockets` package) over TCP, so close codes,
backpressure and the handshake are the ones a browser sees.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from adapters.ratelimits import MAX_WINDOW_S, Limit
from domain.access import Principal, Scope
from domain.identity_requests import NewKey, StepUp
from domain.identity_rules import ACCESS_TOKEN_LIFETIME
from domain.ports import Clock
from infra.bootstrap import Runtime
from tests.harness import ADMIN_PASSWORD, WAIT_S, LiveServer, SignedIn, background, bearer, serve_live


@pytest.fixture
async def live(runtime: Runtime, devices: list[str]) -> AsyncIterator[LiveServer]:
    async with background(runtime, poll=True), serve_live(runtime, live_auth_timeout=0.5) as server:
        yield server


async def next_message(ws: ClientConnection, *, timeout: float = WAIT_S) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout=timeout)
    message: dict[str, Any] = msgspec.json.decode(raw)
    return message


async def until(ws: ClientConnection, accept: Callable[[dict[str, Any]], bool], *, seen: list[dict[str, Any]] | None = None,
                timeout: float = WAIT_S) -> dict[str, Any]:  # fmt: skip
    """Read messages until one satisfies `accept`; every message read is appended to `seen`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        message = await next_message(ws, timeout=max(deadline - asyncio.get_running_loop().time(), 0.01))
        if seen is not None:
            seen.append(message)
        if accept(message):
            return message


async def close_code(ws: ClientConnection, *, timeout: float = WAIT_S, received: list[Any] | None = None
                     ) -> tuple[int, str]:  # fmt: skip
    """Read until the server closes; (code, reason). Frames read before are appended to `received`."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                frame = await ws.recv()
                if received is not None:
                    received.append(frame)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def is_update_of(address: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("event") == "device_update" and m.get("device_ip") == address


async def test_a_subscriber_gets_its_device_only_and_unsubscribing_stops_it(
    live: LiveServer, devices: list[str], admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    plug, strip = devices
    async with connect(live.ws_url, additional_headers=bearer(admin[0])) as ws, \
            connect(live.ws_url, additional_headers=bearer(admin[0])) as witness:  # fmt: skip
        hello = await next_message(ws)
        assert hello["event"] == "authenticated" and "DEVICES_VIEW" in hello["permissions"]
        await next_message(witness)
        await ws.send(msgspec.json.encode({"event": "subscribe_device", "device_ip": plug}).decode())
        seen: list[dict[str, Any]] = []
        subscribed = await until(ws, lambda m: m["event"] == "subscribed", seen=seen)
        assert subscribed["device_ip"] == plug
        status = await until(ws, lambda m: m["event"] == "device_status", seen=seen)
        assert status["status"] == "online" and status["device_ip"] == plug
        current = await until(ws, is_update_of(plug), seen=seen)
        assert set(current["data"]) >= {"is_on", "current_power_w", "timestamp"}
        first_live = await until(ws, lambda m: is_update_of(plug)(m) and m["data"]["timestamp"] != current["data"]["timestamp"],
                                 seen=seen)  # fmt: skip
        assert isinstance(first_live["data"]["current_power_w"], float) and "total_wh" in first_live["data"]
        await until(ws, is_update_of(plug), seen=seen)
        assert all(m.get("device_ip") in (plug, None) for m in seen), seen

        await witness.send(msgspec.json.encode({"event": "subscribe_device", "device_ip": strip}).decode())
        strip_update = await until(witness, lambda m: is_update_of(strip)(m) and "outlets" in m["data"])
        assert len(strip_update["data"]["outlets"]) >= 2
        assert set(strip_update["data"]["outlets"][0]) >= {"index", "is_on", "current_power_w"}

        await ws.send(msgspec.json.encode({"event": "unsubscribe_device", "device_ip": plug}).decode())
        await until(ws, lambda m: m["event"] == "unsubscribed")
        await witness.send(msgspec.json.encode({"event": "subscribe_device", "device_ip": plug}).decode())
        await until(witness, is_update_of(plug))
        # Two fresh readings of the plug reach the witness; none reaches the unsubscribed socket.
        await until(witness, is_update_of(plug))
        await until(witness, is_update_of(plug))
        with pytest.raises(TimeoutError):
            await next_message(ws, timeout=0.2)

        await ws.send(msgspec.json.encode({"event": "subscribe_device", "device_ip": "127.0.0.1:1"}).decode())
        refused = await next_message(ws)
        assert (refused["event"], refused["error_code"]) == ("error", "DEVICE_NOT_FOUND")
        await ws.send("not json")
        assert (await next_message(ws))["error_code"] == "INVALID_MESSAGE"
        await ws.send(msgspec.json.encode({"event": "ping"}).decode())
        assert (await next_message(ws))["event"] == "pong"


async def test_without_credentials_a_socket_is_closed_and_never_gets_data(
    live: LiveServer, devices: list[str], admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    received: list[Any] = []
    async with connect(live.ws_url) as ws:
        await ws.send(msgspec.json.encode({"event": "subscribe_device", "device_ip": devices[0]}).decode())
        code, reason = await close_code(ws, received=received)
        assert code == 4401 and "AUTHENTICATION_REQUIRED" in reason
    async with connect(live.ws_url) as ws:
        code, reason = await close_code(ws, received=received)
        assert code == 4408 and "AUTHENTICATION_TIMEOUT" in reason
    async with connect(live.ws_url, additional_headers={"Authorization": "Bearer not-a-token"}) as ws:
        code, reason = await close_code(ws, received=received)
        assert code == 4401 and "TOKEN_INVALID" in reason
    async with connect(live.ws_url, additional_headers={"X-API-Key": f"wl_{uuid.uuid4().hex}_guessed"}) as ws:
        code, reason = await close_code(ws, received=received)
        assert code == 4401 and "INVALID_API_KEY" in reason
    assert received == []
    async with connect(live.ws_url) as ws:
        await ws.send(msgspec.json.encode({"event": "auth", "token": admin[0].access_token}).decode())
        assert (await next_message(ws))["event"] == "authenticated"
        await ws.send(msgspec.json.encode({"event": "subscribe_all"}).decode())
        await until(ws, is_update_of(devices[0]))


async def test_a_revoked_session_or_key_ends_the_stream(
    live: LiveServer, runtime: Runtime, devices: list[str], viewer: httpx.AsyncClient, admin_principal: Principal,
    admin: tuple[SignedIn, httpx.AsyncClient],
) -> None:
    token = viewer.headers["Authorization"].partition(" ")[2]
    issued = await runtime.identity.issue_key(admin_principal, NewKey(name="board", scope=Scope.READ),
                                              StepUp(current_password=ADMIN_PASSWORD))  # fmt: skip
    async with connect(live.ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as as_viewer, \
            connect(live.ws_url) as with_key:  # fmt: skip
        await with_key.send(msgspec.json.encode({"event": "auth", "token": issued.key}).decode())
        for ws in (as_viewer, with_key):
            assert (await next_message(ws))["event"] == "authenticated"
            await ws.send(msgspec.json.encode({"event": "subscribe_all"}).decode())
            await until(ws, is_update_of(devices[0]))
        assert (await viewer.post("/api/auth/logout")).status_code == 200
        code, reason = await close_code(as_viewer)
        assert code == 4001 and "SESSION_ENDED" in reason
        assert (await admin[1].delete(f"/api/keys/{issued.key_id}")).status_code == 200
        code, reason = await close_code(with_key)
        assert code == 4001 and "INVALID_API_KEY" in reason


async def test_a_forged_ending_event_changes_nothing_and_a_demotion_ends_the_stream(
    live: LiveServer, runtime: Runtime, devices: list[str], operator: httpx.AsyncClient,
    admin: tuple[SignedIn, httpx.AsyncClient],
) -> None:
    token = operator.headers["Authorization"].partition(" ")[2]
    user_id = (await operator.get("/api/auth/me")).json()["id"]
    async with connect(live.ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert (await next_message(ws))["event"] == "authenticated"
        await ws.send(msgspec.json.encode({"event": "subscribe_all"}).decode())
        await until(ws, is_update_of(devices[0]))
        # Anyone who can publish on NATS could send this; the socket must ask the store instead.
        forged = msgspec.json.encode({
            "notification_id": 10_000_000, "originator_id": user_id, "version": 9, "aggregate": "user",
            "event": "Deactivated", "timestamp": datetime.now(timezone.utc).isoformat(), "actor": "forged", "data": {},
        })  # fmt: skip
        subject = f"{runtime.stream.subject_prefix}.events.user.{user_id}.Deactivated"
        await runtime.js.publish(subject, forged, stream=runtime.stream.name)
        for _ in range(3):
            await until(ws, is_update_of(devices[0]))
        demoted = await admin[1].patch(f"/api/users/{user_id}", json={"role": "viewer"})
        assert demoted.status_code == 200, demoted.text
        code, reason = await close_code(ws)
        assert code == 4001 and "PERMISSIONS_CHANGED" in reason


async def test_handshakes_count_against_their_address_and_are_refused_over_its_limit(
    runtime: Runtime, devices: list[str], admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    limit = (Limit(3, MAX_WINDOW_S),)
    async with background(runtime, poll=False), serve_live(runtime, rate_limits=True, rate_limit_ip=limit) as live:
        for _ in range(3):
            async with connect(live.ws_url, additional_headers=bearer(admin[0])) as ws:
                assert (await next_message(ws))["event"] == "authenticated"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(live.ws_url, additional_headers=bearer(admin[0])):
                pass
    assert refused.value.response.status_code == 403


def _command_envelope(runtime: Runtime, device_id: uuid.UUID, event: str, **data: Any) -> bytes:
    return msgspec.json.encode({
        "notification_id": 10_000_000 + int(uuid.uuid4().int % 1_000_000_000), "originator_id": str(uuid.uuid4()),
        "version": 2, "aggregate": "command", "event": event, "timestamp": datetime.now(timezone.utc).isoformat(),
        "actor": "test", "data": {"device_id": str(device_id), "outlet": None, "action": "on", **data},
    })  # fmt: skip


async def _publish_command(runtime: Runtime, device_id: uuid.UUID, event: str, **data: Any) -> None:
    subject = f"{runtime.stream.subject_prefix}.events.command.{uuid.uuid4()}.{event}"
    await runtime.js.publish(subject, _command_envelope(runtime, device_id, event, **data), stream=runtime.stream.name)


async def test_command_updates_reach_the_clients_of_that_device(
    live: LiveServer, runtime: Runtime, devices: list[str], admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    plug, strip = devices
    ids = {a: (await admin[1].get(f"/api/device/{a}")).json()["device_id"] for a in devices}
    async with connect(live.ws_url, additional_headers=bearer(admin[0])) as of_plug, \
            connect(live.ws_url, additional_headers=bearer(admin[0])) as of_strip:  # fmt: skip
        for ws, address in ((of_plug, plug), (of_strip, strip)):
            await next_message(ws)
            await ws.send(msgspec.json.encode({"event": "subscribe_device", "device_ip": ids[address]}).decode())
            await until(ws, lambda m: m["event"] == "subscribed")
        await _publish_command(runtime, uuid.UUID(ids[plug]), "ControlSucceeded", is_on=True, outlets=[])
        update = await until(of_plug, lambda m: m["event"] == "command_update")
        assert (update["device_ip"], update["status"], update["is_on"], update["action"]) == (plug, "succeeded", True, "on")
        await _publish_command(runtime, uuid.UUID(ids[strip]), "ControlFailed", reason="timeout", detail="")
        failed = await until(of_strip, lambda m: m["event"] == "command_update")
        assert (failed["device_ip"], failed["status"], failed["reason"]) == (strip, "failed", "timeout")
        seen: list[dict[str, Any]] = []
        await until(of_plug, is_update_of(plug), seen=seen)
        assert not [m for m in seen if m["event"] == "command_update"]


class SilentClient:
    """A WebSocket client over a bare socket with a tiny receive buffer that reads nothing until asked."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET /ws HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
                 *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(1024)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, message: dict[str, Any]) -> None:
        payload, mask = msgspec.json.encode(message), b"\x01\x02\x03\x04"
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("closed without a close frame")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def close_frame(self) -> tuple[int, str]:
        """Read every frame up to the server's close frame; (code, reason)."""
        self.sock.settimeout(WAIT_S)
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(self._read(2), "big")
            elif length == 127:
                length = int.from_bytes(self._read(8), "big")
            payload = self._read(length)
            if first & 0x0F == 0x8:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()


async def test_a_client_that_never_reads_is_dropped_while_another_keeps_receiving(
    runtime: Runtime, devices: list[str], admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    plug = devices[0]
    async with background(runtime, poll=True), serve_live(runtime, live_queue=8) as live:
        device_id = uuid.UUID((await admin[1].get(f"/api/device/{plug}")).json()["device_id"])
        slow = await asyncio.to_thread(SilentClient, live.port, bearer(admin[0]))
        slow.send({"event": "subscribe_device", "device_ip": plug})
        async with connect(live.ws_url, additional_headers=bearer(admin[0])) as fast:
            await next_message(fast)
            await fast.send(msgspec.json.encode({"event": "subscribe_device", "device_ip": plug}).decode())
            await until(fast, lambda m: m["event"] == "subscribed")
            fanout = runtime.fanout
            assert fanout is not None
            bulky = "x" * 60_000
            bursts = 0
            while fanout.dropped == 0 and bursts < 200:
                for _ in range(5):
                    await _publish_command(runtime, device_id, "ControlFailed", reason=bulky, detail="")
                for _ in range(5):
                    await until(fast, lambda m: m["event"] == "command_update")
                bursts += 1
            assert fanout.dropped == 1
            await until(fast, is_update_of(plug))
            code, reason = await asyncio.to_thread(slow.close_frame)
            assert code == 4429 and "too slow" in reason
            assert (await fanout.status()).subscribers == 1
        slow.sock.close()


class _Earlier(Clock):
    def __init__(self, by: timedelta) -> None:
        self.by = by

    def now(self) -> datetime:
        return datetime.now(timezone.utc) - self.by


async def test_an_access_token_that_expires_ends_the_stream_at_its_expiry(
    live: LiveServer, runtime: Runtime, devices: list[str], admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    signed_in = admin[0]
    tokens = runtime.tokens
    real_clock = tokens._clock
    tokens._clock = _Earlier(ACCESS_TOKEN_LIFETIME - timedelta(seconds=2))
    try:
        short_lived = tokens.access_token(signed_in.user_id, signed_in.session_id)
    finally:
        tokens._clock = real_clock
    async with connect(live.ws_url, additional_headers={"Authorization": f"Bearer {short_lived}"}) as ws:
        assert (await next_message(ws))["event"] == "authenticated"
        await ws.send(msgspec.json.encode({"event": "subscribe_all"}).decode())
        code, reason = await close_code(ws)
        assert code == 4001 and "TOKEN_EXPIRED" in reason
