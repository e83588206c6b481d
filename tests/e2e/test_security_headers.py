"""Every HTTP answer carries the security headers; account answers are never stored; the schema pages' policy
lets them load what they load."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from adapters.ratelimits import MAX_WINDOW_S, Limit
from api.app import create_app
from infra.bootstrap import Runtime
from infra.settings import Settings
from tests.harness import ADMIN, ADMIN_PASSWORD, SignedIn, bearer

SCHEMA_PAGES = ["/schema", "/schema/redoc", "/schema/swagger", "/schema/elements", "/schema/rapidoc",
                "/schema/oauth2-redirect.html"]  # fmt: skip


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, rate_limits=True, rate_limit_ip=(Limit(40, MAX_WINDOW_S),))


def assert_secured(response: httpx.Response) -> None:
    assert response.headers["X-Content-Type-Options"] == "nosniff", response.request.url
    assert response.headers["X-Frame-Options"] == "DENY", response.request.url
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"], response.request.url


async def test_every_answer_carries_the_security_headers(
    runtime: Runtime, admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    transport = httpx.ASGITransport(app=create_app(runtime.services()), client=("127.0.0.30", 50003))
    async with httpx.AsyncClient(transport=transport, base_url="http://wattledger.test") as client:
        answers = [
            await client.get("/api/health"),
            await client.get("/api/devices"),
            await client.get("/api/devices", headers=bearer(admin[0])),
            await client.get("/no/such/path"),
            await client.post("/api/auth/login", json={"username": ADMIN, "password": "wrong"}),
            await client.put("/api/auth/setup-required"),
            await client.get("/schema/openapi.json"),
        ]
        while (refused := await client.get("/api/auth/setup-required")).status_code != 429:
            pass
    assert [a.status_code for a in answers] == [200, 401, 200, 404, 401, 405, 200]
    for answer in [*answers, refused]:
        assert_secured(answer)
        assert "Strict-Transport-Security" not in answer.headers
    assert answers[1].headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


async def test_over_https_answers_ask_browsers_to_stay_on_https(runtime: Runtime) -> None:
    transport = httpx.ASGITransport(app=create_app(runtime.services()), client=("127.0.0.31", 50003))
    async with httpx.AsyncClient(transport=transport, base_url="https://wattledger.test") as client:
        secure = [await client.get("/api/health"), await client.get("/api/devices")]
    assert all(a.headers["Strict-Transport-Security"] == "max-age=31536000" for a in secure)


async def test_account_answers_are_never_stored(
    runtime: Runtime, admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    signed_in, client = admin
    answers = {
        "login": await client.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD}),
        "failed login": await client.post("/api/auth/login", json={"username": ADMIN, "password": "wrong"}),
        "refresh": await client.post("/api/auth/refresh", json={"refresh_token": signed_in.refresh_token}),
        "me": await client.get("/api/auth/me"),
        "sessions": await client.get("/api/auth/sessions"),
        "users": await client.get("/api/users"),
        "keys": await client.get("/api/keys"),
        "new key": await client.post("/api/keys", json={"name": "dashboard", "current_password": ADMIN_PASSWORD}),
    }
    devices = await client.get("/api/devices")
    assert {name: a.headers.get("Cache-Control") for name, a in answers.items()} == dict.fromkeys(answers, "no-store")
    assert "no-store" not in devices.headers.get("Cache-Control", "")


def _sources(html: str) -> dict[str, set[str]]:
    """The origins a page loads scripts, styles and images from, and whether it has inline script."""
    found: dict[str, set[str]] = {"script-src": set(), "style-src": set(), "img-src": set()}
    for tag, attribute in re.findall(r"<(script|link)\b([^>]*)>", html):
        url = re.search(r"""(?:src|href)\s*=\s*["']([^"']+)""", attribute)
        if url is None:
            if tag == "script":
                found["script-src"].add("'unsafe-inline'")
            continue
        parts = urlsplit(url[1])
        origin = f"{parts.scheme}://{parts.netloc}" if parts.netloc else "'self'"
        if tag == "script":
            found["script-src"].add(origin)
        elif "stylesheet" in attribute:
            found["style-src"].add(origin)
        elif "icon" in attribute:
            found["img-src"].add(origin)
    if re.search(r"<script\b[^>]*>\s*[^<\s]", html):
        found["script-src"].add("'unsafe-inline'")
    return found


@pytest.mark.parametrize("page", SCHEMA_PAGES)
async def test_the_schema_pages_policy_allows_what_they_load(anonymous: httpx.AsyncClient, page: str) -> None:
    answer = await anonymous.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert_secured(answer)
    policy = {
        name: set(values)
        for name, *values in (directive.split() for directive in answer.headers["Content-Security-Policy"].split("; "))
    }
    for directive, origins in _sources(answer.text).items():
        assert origins <= policy[directive], (page, directive, origins - policy[directive])
