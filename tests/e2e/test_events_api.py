"""GET /api/events: the stored history in the contract's form, filtered, in keyset pages."""

from __future__ import annotations

import asyncio

import httpx
import msgspec

from adapters.contract import decode_envelope, encode_envelope
from infra.bootstrap import Runtime
from tests.harness import SignedIn, all_pages, seed_heater

Client = httpx.AsyncClient


async def test_pages_cover_the_log_once_in_order_with_the_contracts_data(
    client: Client, runtime: Runtime, admin: tuple[SignedIn, Client]
) -> None:
    await seed_heater(runtime, f"user:{admin[0].user_id}")
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
    device = await seed_heater(runtime, actor)
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
    await seed_heater(runtime, "system:demo")
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
