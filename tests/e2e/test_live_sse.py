"""Server-Sent Events at /api/events/stream over real HTTP: filters, heartbeats, and resuming from the log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec

from adapters.contract import decode_envelope, encode_envelope
from infra.bootstrap import Runtime
from tests.harness import WAIT_S, SignedIn, background, serve_live
from tests.kit import eventually


class Message(msgspec.Struct, kw_only=True):
    id: int | None = None
    data: dict[str, Any] | None = None
    comment: str | None = None


@asynccontextmanager
async def sse(url: str, headers: dict[str, str], **params: Any) -> AsyncIterator[AsyncIterator[Message]]:
    """The stream's messages as they arrive, parsed (comments included)."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT_S)) as http, \
            http.stream("GET", f"{url}/api/events/stream", headers=headers, params=params) as response:  # fmt: skip
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")

        async def messages() -> AsyncIterator[Message]:
            current = Message()
            async for line in response.aiter_lines():
                if line == "":
                    if current.id is not None or current.data is not None or current.comment is not None:
                        yield current
                    current = Message()
                elif line.startswith(":"):
                    current.comment = line[1:].strip()
                elif line.startswith("id:"):
                    current.id = int(line[3:].strip())
                elif line.startswith("data:"):
                    current.data = msgspec.json.decode(line[5:].strip())

        yield messages()


def stored_readings(runtime: Runtime, device_id: str, after: int) -> list[int]:
    """Ids of the readings of one device stored after `after`, from the event store."""
    app = runtime.app
    ids = []
    for n in app.recorder.select_notifications(start=after, limit=100_000, inclusive_of_start=False):
        envelope = decode_envelope(encode_envelope(n.id, app.mapper.to_domain_event(n)))
        if envelope.event == "ReadingRecorded" and envelope.data["device_id"] == device_id:
            ids.append(n.id)
    return ids


async def test_a_client_that_reconnects_gets_every_reading_it_missed_then_live_ones_without_duplicates(
    runtime: Runtime, devices: list[str], admin: tuple[SignedIn, httpx.AsyncClient]  # noqa: F811
) -> None:
    plug, strip = devices
    headers = {"Authorization": f"Bearer {admin[0].access_token}"}
    async with background(runtime, poll=True), serve_live(runtime, live_heartbeat=0.3) as live:
        plug_id = (await admin[1].get(f"/api/device/{plug}")).json()["device_id"]
        first: list[Message] = []
        async with sse(live.http_url, headers, device=plug) as stream:
            async for message in stream:
                if message.data is not None:
                    first.append(message)
                    assert message.data["data"].get("device_id", message.data["originator_id"]) == plug_id
                if sum(1 for m in first if m.data and m.data["event"] == "ReadingRecorded") >= 2:
                    break
        last_id = first[-1].id
        assert last_id is not None
        # Away: wait until three more readings of the plug are stored.

        async def three_more() -> bool:
            return len(await asyncio.to_thread(stored_readings, runtime, plug_id, last_id)) >= 3

        await eventually(three_more, every=0.2, what="three more readings of the plug stored")
        missed = await asyncio.to_thread(stored_readings, runtime, plug_id, last_id)
        resumed: list[Message] = []
        pinged = False
        async with sse(live.http_url, {**headers, "Last-Event-ID": str(last_id)}, device=plug) as stream:
            async for message in stream:
                pinged = pinged or message.comment == "ping"
                if message.data is not None:
                    resumed.append(message)
                if pinged and resumed and resumed[-1].id is not None and resumed[-1].id > missed[-1] + 4:
                    break
        ids = [m.id for m in resumed]
        assert ids == sorted(ids) and len(ids) == len(set(ids)), ids
        assert all(i is not None and i > last_id for i in ids)
        readings = [m.id for m in resumed if m.data and m.data["event"] == "ReadingRecorded"]
        stored = await asyncio.to_thread(stored_readings, runtime, plug_id, last_id)
        assert readings == [i for i in stored if i <= (ids[-1] or 0)]
        assert set(missed) <= set(readings)


async def test_the_stream_needs_credentials_and_known_devices(
    runtime: Runtime, devices: list[str], admin: tuple[SignedIn, httpx.AsyncClient]  # noqa: F811
) -> None:
    async with background(runtime, poll=False), serve_live(runtime) as live, httpx.AsyncClient() as http:
        response = await http.get(f"{live.http_url}/api/events/stream")
        assert response.status_code == 401 and response.json()["error_code"] == "AUTHENTICATION_REQUIRED"
        response = await http.get(f"{live.http_url}/api/events/stream", params={"device": "127.0.0.1:1"},
                                  headers={"Authorization": f"Bearer {admin[0].access_token}"})  # fmt: skip
        assert response.status_code == 404 and response.json()["error_code"] == "DEVICE_NOT_FOUND"
        health = (await http.get(f"{live.http_url}/api/health")).json()
        assert health["live"]["running"] and health["live"]["connected"] and health["live"]["pending"] == 0


async def test_a_stream_ends_when_its_session_ends(
    runtime: Runtime, devices: list[str], viewer: httpx.AsyncClient  # noqa: F811
) -> None:
    async with background(runtime, poll=False), serve_live(runtime, live_heartbeat=0.2) as live:
        headers = {"Authorization": viewer.headers["Authorization"]}
        comments: list[str] = []
        async with sse(live.http_url, headers) as stream:
            async for message in stream:
                if message.comment == "live":
                    assert (await viewer.post("/api/auth/logout")).status_code == 200
                elif message.comment is not None and message.comment != "ping":
                    comments.append(message.comment)
        assert len(comments) == 1 and comments[0].startswith("ended:") and "SESSION_ENDED" in comments[0], comments
