"""GET /api/audit and /api/audit/head: who did what to what, when and from where; the chain's head."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from infra.bootstrap import Runtime
from tests.harness import ADMIN, SignedIn, all_pages, seed_heater

Client = httpx.AsyncClient


async def projected(runtime: Runtime) -> None:
    await asyncio.to_thread(runtime.engine.catch_up_all)


async def pages(client: Client, params: dict[str, Any]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = await client.get("/api/audit", params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        entries += body["entries"]
        if (cursor := body["next_cursor"]) is None:
            return entries
        assert 'rel="next"' in response.headers["link"]


async def test_the_log_says_who_did_what_to_what_and_from_where(
    client: Client, runtime: Runtime, admin: tuple[SignedIn, Client]
) -> None:
    actor = f"user:{admin[0].user_id}"
    device = await seed_heater(runtime, actor, readings=3)
    await projected(runtime)
    entries = await pages(client, {"limit": 2})
    assert [e["position"] for e in entries] == sorted((e["position"] for e in entries), reverse=True)
    assert all(e["aggregate"] != "meter" for e in entries)
    added = next(e for e in entries if e["event"] == "Added")
    assert added["summary"] == f"user {ADMIN} added device Heater (10.2.0.1, HS110)"
    assert (added["actor"], added["actor_kind"], added["originator_id"]) == (actor, "user", str(device))
    assert added["target"] == "device Heater"
    signed_in = next(e for e in entries if e["event"] == "Started")
    assert signed_in["source"] == "127.0.0.1" and signed_in["actor_name"] == f"user {ADMIN}"
    assert any(e["summary"] == f"user {ADMIN} created user {ADMIN} with role admin" for e in entries)
    # Readings are no one's action: they stay in the event log, with no audit row.
    assert await pages(client, {"aggregate": "meter", "event_type": "ReadingRecorded"}) == []
    assert all(e["event"] != "ReadingRecorded" for e in await pages(client, {"readings": "true"}))
    logged = await all_pages(client, "/api/events", {"aggregate": "meter", "event_type": "ReadingRecorded"})
    assert len(logged) == 4 and logged[0]["actor"] == actor, "the first reading is stored with the add, by its actor"
    assert await pages(client, {"actor": "system:nobody"}) == []
    mine = await pages(client, {"actor": actor, "originator_id": str(device)})
    assert mine and {e["originator_id"] for e in mine} == {str(device)}


async def test_the_head_is_the_newest_link_and_names_its_algorithm(client: Client, runtime: Runtime) -> None:
    await seed_heater(runtime, "system:demo", readings=2)
    before = (await client.get("/api/audit/head")).json()
    assert before["unchained"] == before["events_stored"] - before["position"] > 0
    await projected(runtime)
    head = (await client.get("/api/audit/head")).json()
    assert head["position"] == head["events_stored"] and head["unchained"] == 0
    assert len(head["hash"]) == 64 and head["algorithm"].startswith("sha256")


async def test_audit_needs_audit_view_and_bounds_its_pages(client: Client, operator: Client) -> None:
    for path in ("/api/audit", "/api/audit/head"):
        refused = await operator.get(path)
        assert refused.status_code == 403 and refused.json()["required_permission"] == "AUDIT_VIEW"
    assert (await client.get("/api/audit", params={"limit": 1001})).status_code == 422
    wrong = await client.get("/api/audit", params={"cursor": "eyJwIjoxLCJmIjoieCJ9"})
    assert wrong.status_code == 400 and wrong.json()["error_code"] == "INVALID_CURSOR"
