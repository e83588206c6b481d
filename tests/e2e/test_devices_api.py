"""The devices REST surface: shapes, and every bad input answered with a 4xx JSON error that stores nothing."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import httpx
from structlog.testing import capture_logs

from adapters.emulator import EmulatorFleet
from infra.bootstrap import Runtime
from tests.harness import background, free_port

Client = httpx.AsyncClient


async def events_stored(runtime: Runtime) -> int:
    return await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status_code"] == status and body["error_code"] == code and body["detail"]


async def test_health_and_status_answer(client: Client) -> None:
    health = await client.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    status = (await client.get("/api/system/status")).json()
    assert status["devices_connected"] == 0 and status["version"]


async def test_status_reports_each_read_model_with_its_lag(
    client: Client, runtime: Runtime, fleet: EmulatorFleet
) -> None:
    async with background(runtime, poll=False):
        added = await client.post("/api/devices/manual", json={"ip": fleet.addresses[0]})
        assert added.status_code == 201, added.text
        status = (await client.get("/api/system/status")).json()
    projectors = {p["name"]: p for p in status["projectors"]}
    assert set(projectors) == set(runtime.engine.projectors)
    assert projectors["devices"]["lag"] == 0 and projectors["devices"]["last_error"] is None
    assert projectors["devices"]["position"] == status["events_stored"]


async def test_openapi_schema_documents_every_operation(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    operations = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {"listDevices", "addDevice", "getDevice", "removeDevice", "discoverDevices", "getHealth"} <= operations


@pytest.mark.parametrize("ip", ["not an address", "127.0.0.1:0", "127.0.0.1:99999", "999.1.1.1", "[::1"])
async def test_malformed_address_is_refused_and_stores_nothing(client: Client, runtime: Runtime, ip: str) -> None:
    before = await events_stored(runtime)
    assert_error(await client.post("/api/devices/manual", json={"ip": ip}), 400, "INVALID_ADDRESS")
    assert await events_stored(runtime) == before


@pytest.mark.parametrize(
    "body",
    [{"ip": "127.0.0.1", "extra": 1}, {"alias": "x"}, {"ip": 5}, {"ip": "127.0.0.1", "alias": ""}],
)
async def test_invalid_body_is_a_validation_error(client: Client, body: dict[str, Any]) -> None:
    assert_error(await client.post("/api/devices/manual", json=body), 422, "VALIDATION_ERROR")


async def test_body_that_is_not_json_is_refused(client: Client) -> None:
    response = await client.post(
        "/api/devices/manual", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["status_code"] == 400


async def test_unreachable_device_is_refused_and_stores_nothing(client: Client, runtime: Runtime) -> None:
    before = await events_stored(runtime)
    response = await client.post("/api/devices/manual", json={"ip": f"127.0.0.1:{free_port()}"})
    assert_error(response, 422, "DEVICE_UNREACHABLE")
    assert await events_stored(runtime) == before


Service = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _xor(data: bytes) -> bytes:
    key, out = 171, bytearray()
    for byte in data:
        key ^= byte
        out.append(key)
    return bytes(out)


async def _banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
    await writer.drain()
    writer.close()


async def _web_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(4096)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nServer: nginx/1.25\r\n\r\n")
    await writer.drain()
    writer.close()


async def _not_a_plug(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(4096)
    answer = _xor(b'{"hello": "world"}')
    writer.write(struct.pack(">I", len(answer)) + answer)
    await writer.drain()
    writer.close()


async def _hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1 << 20)


@asynccontextmanager
async def listening(service: Service | None) -> AsyncIterator[str]:
    """`host:port` of a loopback TCP service behaving as `service`, or of a closed port for None."""
    if service is None:
        yield f"127.0.0.1:{free_port()}"
        return
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await service(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), timeout=5)
        await server.wait_closed()


@pytest.mark.parametrize("service", [None, _banner, _web_server, _not_a_plug, _hangs_up, _silent],
                         ids=["closed", "banner", "web server", "json not kasa", "hangs up", "silent"])  # fmt: skip
async def test_adding_a_device_cannot_probe_the_network(
    client: Client, runtime: Runtime, service: Service | None
) -> None:
    """Whatever keeps an address from being a Kasa device, the answer is the same and shows nothing of what
    answered there; the reason is logged on the server."""
    before = await events_stored(runtime)
    async with listening(service) as address:
        with capture_logs() as logs:
            response = await client.post("/api/devices/manual", json={"ip": address})
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": "no Kasa device answered at this address", "status_code": 422,
                               "error_code": "DEVICE_UNREACHABLE"}  # fmt: skip
    [logged] = [e for e in logs if e["event"] == "devices.add_unreachable"]
    assert logged["log_level"] == "warning" and logged["address"] == address and logged["reason"]
    assert await events_stored(runtime) == before


async def test_duplicate_add_is_a_conflict_and_stores_nothing(
    client: Client, runtime: Runtime, fleet: EmulatorFleet
) -> None:
    address = fleet.addresses[0]
    async with background(runtime, poll=False):
        assert (await client.post("/api/devices/manual", json={"ip": address})).status_code == 201
        before = await events_stored(runtime)
        assert_error(await client.post("/api/devices/manual", json={"ip": address}), 409, "DEVICE_EXISTS")
        assert await events_stored(runtime) == before


async def test_device_is_found_by_id_and_by_address_and_removed(
    client: Client, runtime: Runtime, fleet: EmulatorFleet
) -> None:
    address = fleet.addresses[3]
    async with background(runtime, poll=False):
        added = (await client.post("/api/devices/manual", json={"ip": address})).json()
        by_id = (await client.get(f"/api/device/{added['device_id']}")).json()
        by_address = (await client.get(f"/api/device/{address}")).json()
        assert by_id == by_address and by_id["device_type"] == "strip" and len(by_id["outlets"]) == 6
        removed = await client.delete(f"/api/devices/{address}")
        assert removed.status_code == 200 and removed.json()["device_id"] == added["device_id"]
        assert (await client.get("/api/devices")).json() == []
        assert_error(await client.get(f"/api/device/{address}"), 404, "DEVICE_NOT_FOUND")
        assert_error(await client.delete(f"/api/devices/{address}"), 404, "DEVICE_NOT_FOUND")
        again = await client.post("/api/devices/manual", json={"ip": address})
        assert again.status_code == 201 and again.json()["device_id"] == added["device_id"]


async def test_unknown_device_and_route_are_json_404s(client: Client) -> None:
    assert_error(await client.get("/api/device/127.0.0.1:1"), 404, "DEVICE_NOT_FOUND")
    assert_error(await client.get("/api/device/3f2504e0-4f89-11d3-9a0c-0305e82c3301"), 404, "DEVICE_NOT_FOUND")
    assert_error(await client.delete("/api/devices/nope"), 404, "DEVICE_NOT_FOUND")
    assert_error(await client.get("/api/nothing-here"), 404, "NOT_FOUND")
    assert_error(await client.put("/api/devices"), 405, "METHOD_NOT_ALLOWED")


async def test_the_device_list_pages_and_follows_every_change(
    client: Client, runtime: Runtime, fleet: EmulatorFleet
) -> None:
    async with background(runtime, poll=False):
        for address in fleet.addresses[:3]:
            assert (await client.post("/api/devices/manual", json={"ip": address})).status_code == 201
        whole = await client.get("/api/devices")
        assert whole.headers["x-total-count"] == "3"
        listed = whole.json()
        assert [d["device_ip"] for d in listed] == list(fleet.addresses[:3])
        for limit, offset in [(1, 0), (2, 1), (5, 2), (2, 3)]:
            page = await client.get("/api/devices", params={"limit": limit, "offset": offset})
            assert page.status_code == 200 and page.headers["x-total-count"] == "3"
            assert page.json() == listed[offset : offset + limit]
        for bad in [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"offset": 1_000_001}, {"limit": "x"}]:
            assert_error(await client.get("/api/devices", params=bad), 422, "VALIDATION_ERROR")
        # A change answered by the API is in the next list at once, whichever answer was kept before.
        renamed = await client.patch(f"/api/device/{fleet.addresses[1]}", json={"alias": "Renamed"})
        assert renamed.status_code == 200, renamed.text
        assert [d["alias"] for d in (await client.get("/api/devices")).json()][1] == "Renamed"
        assert (await client.delete(f"/api/devices/{fleet.addresses[0]}")).status_code == 200
        after = await client.get("/api/devices")
        assert [d["device_ip"] for d in after.json()] == list(fleet.addresses[1:3])
        assert after.headers["x-total-count"] == "2"
