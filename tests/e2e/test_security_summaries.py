"""Failed sign-ins and refused permissions reach the audit trail as summaries, a bounded event a window."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from adapters.eventstore import StoreUnitOfWork
from api.security import summarise_every
from domain.security import SecurityHandlers
from infra.bootstrap import Runtime
from tests.harness import ADMIN, background


async def summaries(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/api/events", params={"event_type": "Summarised", "aggregate": "securityactivity"})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def test_refusals_are_recorded_as_one_summary_with_their_sources(
    client: httpx.AsyncClient, viewer: httpx.AsyncClient, anonymous: httpx.AsyncClient, runtime: Runtime
) -> None:
    for _ in range(3):
        wrong = await anonymous.post("/api/auth/login", json={"username": ADMIN, "password": "not-the-password-1"})
        assert wrong.status_code == 401
    for _ in range(2):
        assert (await viewer.get("/api/users")).status_code == 403
    handlers = SecurityHandlers(StoreUnitOfWork(runtime.app))
    async with background(runtime, poll=False):
        summarising = asyncio.create_task(summarise_every(runtime.refusal_tally(), handlers, interval=0.05))
        try:
            for _ in range(400):
                if found := await summaries(client):
                    break
                await asyncio.sleep(0.05)
        finally:
            summarising.cancel()
        for _ in range(400):
            audit = (await client.get("/api/audit", params={"event_type": "Summarised"})).json()["entries"]
            if audit:
                break
            await asyncio.sleep(0.05)
    [summary] = found
    counts = {(c["kind"], c["source"]): c["count"] for c in summary["data"]["counts"]}
    assert counts == {("failed_sign_in", "127.0.0.1"): 3, ("permission_refused", "127.0.0.1"): 2}
    assert summary["actor"] == "system:security" and summary["data"]["others"] == 0
    assert any("failed_sign_in 3" in e["action"] and "permission_refused 2" in e["action"] for e in audit), audit
