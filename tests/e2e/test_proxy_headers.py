"""X-Forwarded-For and X-Forwarded-Proto are believed only from the proxies WATTLEDGER_TRUSTED_PROXIES names.

The app is served here exactly as `serve_api` hands it to uvicorn: wrapped by uvicorn's own
`Config.load()` with the settings' proxy options, so the client address the limiter and the
sign-in see is the one uvicorn would give them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn

from adapters.ratelimits import MAX_WINDOW_S, Limit
from api.app import create_app
from infra.bootstrap import Runtime
from infra.settings import Settings
from tests.harness import ADMIN, ADMIN_PASSWORD, SignedIn, log_in

PROXY = "127.0.0.1"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shipped limits, over windows no test outlives."""
    return msgspec.structs.replace(
        settings, rate_limits=True, rate_limit_ip=(Limit(100, MAX_WINDOW_S),),
        rate_limit_login=(Limit(5, MAX_WINDOW_S),), rate_limit_login_ip=(Limit(20, MAX_WINDOW_S),),
    )  # fmt: skip


@asynccontextmanager
async def served(runtime: Runtime, peer: str = PROXY) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app as uvicorn serves it with the runtime's settings, connecting from `peer`."""
    config = uvicorn.Config(create_app(runtime.services()), log_config=None, **runtime.settings.proxy_options())
    config.load()
    transport = httpx.ASGITransport(app=config.loaded_app, client=(peer, 50002))
    async with httpx.AsyncClient(transport=transport, base_url="http://wattledger.test") as client:
        yield client


async def sign_in_forwarded(client: httpx.AsyncClient, forwarded_for: str) -> SignedIn:
    response = await client.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD},
                                 headers={"X-Forwarded-For": forwarded_for})  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    return msgspec.convert({**body, "user_id": body["user"]["id"], "session_id": body["session"]["session_id"]},
                           SignedIn, strict=False)  # fmt: skip


async def session_addresses(client: httpx.AsyncClient, runtime: Runtime, signed_in: SignedIn) -> list[str]:
    await asyncio.to_thread(runtime.engine.catch_up_all)
    sessions = await client.get("/api/auth/sessions", headers={"Authorization": f"Bearer {signed_in.access_token}"})
    return sorted(s["ip_address"] for s in sessions.json()["sessions"])


async def sign_in_sources(client: httpx.AsyncClient, runtime: Runtime, signed_in: SignedIn) -> list[Any]:
    await asyncio.to_thread(runtime.engine.catch_up_all)
    audit = await client.get("/api/audit", params={"event_type": "Started", "limit": 100},
                             headers={"Authorization": f"Bearer {signed_in.access_token}"})  # fmt: skip
    assert audit.status_code == 200, audit.text
    return sorted(e["source"] for e in audit.json()["entries"] if e["aggregate"] == "session")


async def test_by_default_forwarded_headers_are_not_believed(
    runtime: Runtime, admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    async with served(runtime) as client:
        signed_in = await sign_in_forwarded(client, "203.0.113.9")
        guesses = [
            await client.post("/api/auth/login", json={"username": f"nobody{i}", "password": "a guess"},
                              headers={"X-Forwarded-For": f"198.51.100.{i}"})
            for i in range(25)
        ]  # fmt: skip
        assert await session_addresses(client, runtime, signed_in) == ["127.0.0.1", "127.0.0.1"]
        assert await sign_in_sources(client, runtime, signed_in) == ["127.0.0.1", "127.0.0.1"]
    assert [g.status_code for g in guesses] == [401] * 20 + [429] * 5
    assert guesses[-1].json()["detail"] == "Too many failed sign-in attempts from this address: 20 per 30 days"


async def test_a_named_proxy_is_believed_and_no_one_else(
    runtime: Runtime, admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    runtime.settings = msgspec.structs.replace(runtime.settings, trusted_proxies=(PROXY,))
    async with served(runtime) as client:
        signed_in = await sign_in_forwarded(client, "203.0.113.9")
        guesses = [
            await client.post("/api/auth/login", json={"username": f"nobody{i}", "password": "a guess"},
                              headers={"X-Forwarded-For": f"198.51.100.{i}"})
            for i in range(25)
        ]  # fmt: skip
        addresses = await session_addresses(client, runtime, signed_in)
    async with served(runtime, peer="192.0.2.77") as stranger:
        await sign_in_forwarded(stranger, "203.0.113.10")
    assert [g.status_code for g in guesses] == [401] * 25
    assert addresses == ["127.0.0.1", "203.0.113.9"]
    async with served(runtime) as client:
        assert "192.0.2.77" in await session_addresses(client, runtime, signed_in)
