"""CORS: only for the origins listed in WATTLEDGER_CORS_ORIGINS, and none at all by default."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import msgspec
import pytest

from adapters.ratelimits import MAX_WINDOW_S, Limit
from api.app import create_app
from infra.bootstrap import Runtime
from infra.settings import Settings, SettingsError, load_settings

ALLOWED = "https://app.example.com"
PUBLIC_PATH = "/api/auth/setup-required"
STRANGER = "https://evil.example.net"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, cors_origins=(ALLOWED,), rate_limits=True, rate_limit_ip=(Limit(5, MAX_WINDOW_S),)
    )


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, x-api-key",
    }


def listed(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


async def test_an_allowed_origin_may_read_the_answer_and_its_limit_headers(anonymous: httpx.AsyncClient) -> None:
    answer = await anonymous.get(PUBLIC_PATH, headers={"Origin": ALLOWED})
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "origin" in listed(answer.headers.get("Vary"))
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"} <= listed(
        answer.headers.get("Access-Control-Expose-Headers")
    )
    assert "Access-Control-Allow-Credentials" not in answer.headers


async def test_another_origin_gets_no_allow_origin(anonymous: httpx.AsyncClient) -> None:
    for origin in (STRANGER, "null", ALLOWED + ".evil.example.net", "http://app.example.com"):
        answer = await anonymous.get(PUBLIC_PATH, headers={"Origin": origin})
        assert answer.status_code == 200 and "Access-Control-Allow-Origin" not in answer.headers, origin


async def test_a_preflight_from_an_allowed_origin_is_answered_and_not_counted(anonymous: httpx.AsyncClient) -> None:
    answer = await anonymous.options("/api/devices/manual", headers=preflight(ALLOWED))
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "post" in listed(answer.headers["Access-Control-Allow-Methods"])
    assert {"authorization", "content-type", "x-api-key"} <= listed(answer.headers["Access-Control-Allow-Headers"])
    for _ in range(5):
        await anonymous.options("/api/devices", headers=preflight(ALLOWED, "GET"))
    after = await anonymous.get("/api/devices", headers={"Origin": ALLOWED})
    assert after.status_code == 401 and after.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert after.headers["X-RateLimit-Remaining"] == "4"


async def test_a_preflight_from_another_origin_is_not_allowed(anonymous: httpx.AsyncClient) -> None:
    answer = await anonymous.options("/api/devices/manual", headers=preflight(STRANGER))
    assert answer.status_code >= 400
    assert "Access-Control-Allow-Origin" not in answer.headers


async def test_a_refusal_is_readable_by_an_allowed_origin_only(anonymous: httpx.AsyncClient) -> None:
    for _ in range(5):
        await anonymous.get("/api/devices", headers={"Origin": ALLOWED})
    refused = await anonymous.get("/api/devices", headers={"Origin": ALLOWED})
    stranger = await anonymous.get("/api/devices", headers={"Origin": STRANGER})
    assert (refused.status_code, stranger.status_code) == (429, 429)
    assert refused.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "retry-after" in listed(refused.headers.get("Access-Control-Expose-Headers"))
    assert "Access-Control-Allow-Origin" not in stranger.headers


@asynccontextmanager
async def without_origins(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    runtime.settings = msgspec.structs.replace(runtime.settings, cors_origins=())
    transport = httpx.ASGITransport(app=create_app(runtime.services()), client=("127.0.0.1", 50003))
    async with httpx.AsyncClient(transport=transport, base_url="http://wattledger.test") as client:
        yield client


async def test_by_default_no_answer_carries_cors_headers(runtime: Runtime) -> None:
    async with without_origins(runtime) as client:
        answers = [
            await client.get(PUBLIC_PATH, headers={"Origin": ALLOWED}),
            await client.options("/api/devices/manual", headers=preflight(ALLOWED)),
        ]
    for answer in answers:
        assert not [name for name in answer.headers if name.lower().startswith("access-control-")], answer.headers


@pytest.mark.parametrize("text", ["*", "https://*.example.com", "app.example.com", "https://app.example.com/ui"])
def test_a_wildcard_or_malformed_origin_is_refused_at_start_up(text: str) -> None:
    with pytest.raises(SettingsError, match="^invalid WATTLEDGER_CORS_ORIGINS="):
        load_settings({"WATTLEDGER_CORS_ORIGINS": text})


def test_origins_are_read_as_browsers_send_them() -> None:
    settings = load_settings({"WATTLEDGER_CORS_ORIGINS": "https://App.Example.com:443/, http://localhost:3000"})
    assert settings.cors_origins == ("https://app.example.com", "http://localhost:3000")
