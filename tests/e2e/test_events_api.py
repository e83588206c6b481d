"""GET /api/events: the stored history in the contract's form, filtered, in keyset pages."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from adapters.contract import decode_envelope, encode_envelope
from adapters.eventstore import PollResult
from domain.readings import DeviceSnapshot
from infra.bootstrap import Runtime
from tests.e2e.conftest import SignedIn
from tests.kit import seed_device, seed_polls

Client = httpx.AsyncClient
T0 = datetime(2026, 5, 4, 10, 0, tzinfo=timezone.utc)
PLUG = DeviceSnapshot(
    alias="Heater", model="HS110", device_type="plug", mac="AA:01", firmware="1", is_on=True, has_emeter=True,
    power_w=900.0, voltage_v=231.0, current_a=3.9, total_wh=50.0, rssi=-45,
)


async def seed(runtime: Runtime, actor: str, readings: int = 5) -> Any:
    device = await asyncio.to_thread(seed_device, runtime.app, "10.2.0.1", PLUG, measured_at=T0, actor=actor)
    for i in range(readings):
        await asyncio.to_thread(seed_polls, runtime.app, [
            PollResult(device_id=device, measured_at=T0 + timedelta(minutes=i + 1), snapshot=PLUG)
        ], actor="system:poller")  # fmt: skip
    return device


async def all_pages(client: Client, url: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Follow `Link: rel="next"` to the end; every page must also carry `next_cursor`."""
    items: list[dict[str, Any]] = []
    response = await client.get(url, params=params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["events"]
        if body["next_cursor"] is None:
            assert "link" not in response.headers
            return items
        link = response.headers["link"]
        assert link.endswith('>; rel="next"') and body["next_cursor"] in link
        target = urlsplit(link[1 : link.index(">")])
        response = await client.get(f"{target.path}?{target.query}")


async def test_pages_cover_the_log_once_in_order_with_the_contracts_data(
    client: Client, runtime: Runtime, admin: tuple[SignedIn, Client]
) -> None:
    await seed(runtime, f"user:{admin[0].user_id}")
    newest = await asyncio.to_thread(runtime.app.recorder.max_notification_id)
    items = await all_pages(client, "/api/events", {"limit": 3})
    assert [i["position"] for i in items] == sorted({i["position"] for i in items})
    assert items[-1]["position"] == newest and len(items) >= 12
    notifications = runtime.app.recorder.select_notifications(start=1, limit=1000)
    for item, notification in zip(items, notifications, strict=True):
        envelope = decode_envelope(encode_envelope(notification.id, runtime.app.mapper.to_domain_event(notification)))
        assert item == {
            "position": envelope.notification_id, "originator_id": str(envelope.originator_id),
            "version": envelope.version, "aggregate": envelope.aggregate, "type": envelope.event,
            "timestamp": msgspec.json.decode(msgspec.json.encode(envelope.timestamp)), "actor": envelope.actor,
            "data": envelope.data,
        }  # fmt: skip
    assert not any("password_hash" in i["data"] for i in items)


async def test_filters_by_aggregate_type_originator_actor_and_time(
    client: Client, runtime: Runtime, admin: tuple[SignedIn, Client]
) -> None:
    actor = f"user:{admin[0].user_id}"
    device = await seed(runtime, actor)
    readings = await all_pages(client, "/api/events", {"aggregate": "meter", "event_type": "ReadingRecorded"})
    assert len(readings) == 6 and {r["type"] for r in readings} == {"ReadingRecorded"}
    mine = await all_pages(client, "/api/events", {"aggregate": "device", "actor": actor})
    assert mine[0]["type"] == "Added" and mine[0]["originator_id"] == str(device)
    assert {m["actor"] for m in mine} == {actor} and {m["aggregate"] for m in mine} == {"device"}
    by_id = await all_pages(client, "/api/events", {"originator_id": str(device)})
    assert {e["originator_id"] for e in by_id} == {str(device)} and by_id[0]["version"] == 1
    since, until = readings[2]["timestamp"], readings[4]["timestamp"].removesuffix("Z")
    window = await all_pages(client, "/api/events", {"aggregate": "meter", "since": since, "until": until})
    assert [w["position"] for w in window] == [r["position"] for r in readings[2:4]]
    start = readings[2]["position"]
    later = await all_pages(client, "/api/events", {"event_type": "ReadingRecorded", "from_position": start})
    assert [r["position"] for r in later] == [r["position"] for r in readings[2:]]
    assert await all_pages(client, "/api/events", {"aggregate": "nothing-like-it"}) == []


async def test_a_cursor_only_continues_the_filters_it_was_made_for(client: Client, runtime: Runtime) -> None:
    await seed(runtime, "system:demo")
    first = (await client.get("/api/events", params={"limit": 2, "aggregate": "meter"})).json()
    assert first["next_cursor"]
    same = await client.get("/api/events", params={"limit": 2, "aggregate": "meter", "cursor": first["next_cursor"]})
    assert same.status_code == 200 and same.json()["events"][0]["position"] > first["events"][-1]["position"]
    other = await client.get("/api/events", params={"aggregate": "device", "cursor": first["next_cursor"]})
    assert other.status_code == 400 and other.json()["error_code"] == "INVALID_CURSOR"
    forged = await client.get("/api/events", params={"cursor": "not-a-cursor"})
    assert forged.status_code == 400 and forged.json()["error_code"] == "INVALID_CURSOR"


async def test_page_limits_and_permission(client: Client, viewer: Client) -> None:
    assert (await client.get("/api/events", params={"limit": 1000})).status_code == 200
    too_many = await client.get("/api/events", params={"limit": 1001})
    assert too_many.status_code == 422 and too_many.json()["error_code"] == "LIMIT_TOO_LARGE"
    assert (await client.get("/api/events", params={"limit": 0})).status_code == 422
    refused = await viewer.get("/api/events")
    assert refused.status_code == 403 and refused.json()["required_permission"] == "AUDIT_VIEW"
