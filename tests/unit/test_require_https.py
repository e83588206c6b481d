"""`require_https`: plain HTTP to the API is a 403, to pages a redirect; HTTPS, the machine itself and a
switched-off flag pass; the flag is read at most every few seconds and survives an unreadable store."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from api.https import HttpsPolicy, RequireHttps
from domain.config import ConfigValues

REMOTE = ("192.0.2.10", 50000)


class Inner:
    """The app behind the wrapper: answers 200 and counts what reached it."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class Config:
    """`ConfigHandlers.current` as the policy calls it: a flag, a count of reads, and scripted failures."""

    def __init__(self, require_https: bool) -> None:
        self.require_https = require_https
        self.reads = 0
        self.failing = False

    async def __call__(self) -> ConfigValues:
        self.reads += 1
        if self.failing:
            raise psycopg.OperationalError("the database is away")
        return ConfigValues(require_https=self.require_https)


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def client(app: Any, peer: tuple[str, int] = REMOTE, scheme: str = "http") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=peer),
                             base_url=f"{scheme}://wattledger.test")  # fmt: skip


async def test_plain_http_is_refused_for_the_api_and_redirected_for_pages_while_the_flag_is_on() -> None:
    inner = Inner()
    app = RequireHttps(inner, HttpsPolicy(Config(True)))
    async with client(app) as http:
        refused = await http.get("/api/devices", headers={"Authorization": "Bearer t"})
        assert refused.status_code == 403
        body = refused.json()
        assert (body["error_code"], body["status_code"], body["required_permission"]) == ("HTTPS_REQUIRED", 403, None)
        assert (await http.post("/api", json={})).status_code == 403
        page = await http.get("/schema/redoc?x=1")
        assert page.status_code == 307 and page.headers["location"] == "https://wattledger.test/schema/redoc?x=1"
        bad_host = await http.get("/schema", headers={"Host": "evil.example/path"})
        assert bad_host.status_code == 403
    assert inner.reached == []
    async with client(app, scheme="https") as https:
        assert (await https.get("/api/devices")).status_code == 200
    async with client(app, peer=("127.0.0.1", 4000)) as local, client(app, peer=("::1", 4000)) as local6:
        assert (await local.get("/api/devices")).status_code == 200
        assert (await local6.get("/api/devices")).status_code == 200
        assert (await local.get("/api/devices", headers={"X-Forwarded-For": "198.51.100.7"})).status_code == 403
        assert (await local.get("/api/devices", headers={"X-Forwarded-Proto": "http"})).status_code == 403
    assert inner.reached == ["/api/devices"] * 3


async def test_with_the_flag_off_plain_http_passes() -> None:
    inner = Inner()
    async with client(RequireHttps(inner, HttpsPolicy(Config(False)))) as http:
        assert (await http.get("/api/devices")).status_code == 200
        assert (await http.get("/schema")).status_code == 200
    assert inner.reached == ["/api/devices", "/schema"]


async def test_a_plain_websocket_handshake_is_closed_before_it_is_accepted() -> None:
    inner = Inner()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    scope = {"type": "websocket", "scheme": "ws", "path": "/ws", "client": REMOTE, "headers": []}
    await RequireHttps(inner, HttpsPolicy(Config(True)))(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.close"] and inner.reached == []


async def test_the_flag_is_read_at_most_every_ttl_and_the_last_value_stays_while_the_store_is_unreadable() -> None:
    config, ticks = Config(True), Ticks()
    policy = HttpsPolicy(config, ttl=5.0, monotonic=ticks)
    assert await policy.required() and await policy.required()
    assert config.reads == 1
    config.require_https = False
    ticks.now += 4.9
    assert await policy.required() and config.reads == 1
    ticks.now += 0.2
    assert not await policy.required() and config.reads == 2
    config.require_https, config.failing = True, True
    ticks.now += 10
    assert not await policy.required() and config.reads == 3
    config.failing = False
    ticks.now += 10
    assert await policy.required() and config.reads == 4


@pytest.mark.parametrize("scheme", ["https", "wss"])
async def test_a_secure_scheme_never_reads_the_flag(scheme: str) -> None:
    config = Config(True)
    inner = Inner()
    scope = {"type": "http", "scheme": scheme, "path": "/api/devices", "client": REMOTE, "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        pass

    await RequireHttps(inner, HttpsPolicy(config))(scope, receive, send)
    assert inner.reached == ["/api/devices"] and config.reads == 0
