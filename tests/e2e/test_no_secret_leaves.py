"""No secret leaves PostgreSQL: a whole identity flow through the HTTP API, with the relay publishing
every event, puts no password, hash, TOTP secret, backup code, key or token on the JetStream
stream, in a log line, or in any answer but the one that hands it out."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pyotp
import pytest
from litestar import Litestar
from structlog.testing import capture_logs

from domain.identity import ApiKey, User
from infra.bootstrap import Runtime
from tests.harness import ADMIN, ADMIN_PASSWORD, OPERATOR, OPERATOR_PASSWORD, background, http_client
from tests.kit import eventually

NEW_ADMIN_PASSWORD = "A fresh admin passphrase 9"
RESET_OPERATOR_PASSWORD = "Reset by the admin 77"
GUESSED_PASSWORD = "Somebody guessing 12345"
UNUSED_PASSWORD = "Never becomes one 4321"
# Answers allowed to carry a secret: the sign-in and refresh tokens, the new TOTP secret, the new key.
HANDS_OUT = {
    ("POST", "/api/auth/login"): ("access_token", "refresh_token"),
    ("POST", "/api/auth/refresh"): ("access_token", "refresh_token"),
    ("POST", "/api/auth/2fa/setup"): ("secret", "otpauth_uri", "qr_code", "backup_codes"),
    ("POST", "/api/keys"): ("key",),
}


class Exchange:
    """Every answer the client got, as raw bytes with its route."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str, bytes]] = []

    async def keep(self, response: httpx.Response) -> None:
        await response.aread()
        self.answers.append((response.request.method, response.request.url.path, response.content))


@pytest.fixture
async def projecting(runtime: Runtime) -> AsyncIterator[None]:
    async with background(runtime, poll=False):
        yield


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def log_in(http: httpx.AsyncClient, username: str, password: str, **extra: str) -> dict[str, Any]:
    return ok(await http.post("/api/auth/login", json={"username": username, "password": password, **extra}))


async def identity_flow(http: httpx.AsyncClient) -> list[str]:
    """Setup, sign-ins, refresh, users, password changes, two-factor, keys, sign-out; returns every
    plain secret the flow used or was handed."""
    plain = [ADMIN_PASSWORD, OPERATOR_PASSWORD, NEW_ADMIN_PASSWORD, RESET_OPERATOR_PASSWORD, GUESSED_PASSWORD,
             UNUSED_PASSWORD]  # fmt: skip
    ok(await http.post("/api/auth/setup", json={"username": ADMIN, "password": ADMIN_PASSWORD}), 201)
    guess = await http.post("/api/auth/login", json={"username": ADMIN, "password": GUESSED_PASSWORD})
    assert guess.status_code == 401
    first = await log_in(http, ADMIN, ADMIN_PASSWORD)
    refreshed = ok(await http.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]}))
    plain += [first["access_token"], first["refresh_token"], refreshed["access_token"], refreshed["refresh_token"]]
    http.headers["Authorization"] = f"Bearer {refreshed['access_token']}"

    olga = ok(await http.post(
        "/api/users", json={"username": OPERATOR, "password": OPERATOR_PASSWORD, "role": "operator"}
    ), 201)  # fmt: skip
    olga_session = await log_in(http, OPERATOR, OPERATOR_PASSWORD)
    plain += [olga_session["access_token"], olga_session["refresh_token"]]
    ok(await http.patch(f"/api/users/{olga['id']}", json={"password": RESET_OPERATOR_PASSWORD}))
    wrong = await http.post(
        "/api/auth/change-password", json={"current_password": GUESSED_PASSWORD, "new_password": UNUSED_PASSWORD}
    )
    assert wrong.status_code == 422
    ok(await http.post(
        "/api/auth/change-password", json={"current_password": ADMIN_PASSWORD, "new_password": NEW_ADMIN_PASSWORD}
    ))  # fmt: skip

    enrollment = ok(await http.post("/api/auth/2fa/setup", json={"current_password": NEW_ADMIN_PASSWORD}))
    plain += [enrollment["secret"], *enrollment["backup_codes"]]
    plain += [code.replace("-", "") for code in enrollment["backup_codes"]]
    totp = pyotp.TOTP(enrollment["secret"])
    ok(await http.post("/api/auth/2fa/verify", json={"token": totp.now()}))
    later = totp.at(datetime.now(timezone.utc) + timedelta(seconds=30))
    with_code = await log_in(http, ADMIN, NEW_ADMIN_PASSWORD, totp_code=later)
    with_backup = await log_in(http, ADMIN, NEW_ADMIN_PASSWORD, totp_code=enrollment["backup_codes"][0])
    plain += [with_code["refresh_token"], with_backup["refresh_token"], with_backup["access_token"]]
    ok(await http.post("/api/auth/2fa/disable", json={"token": enrollment["backup_codes"][1]}))

    issued = ok(await http.post("/api/keys", json={"name": "home assistant", "scope": "read-write",
                                                   "current_password": NEW_ADMIN_PASSWORD}), 201)
    plain += [issued["key"], issued["key"].split("_", 2)[2]]
    ok(await http.get("/api/devices", headers={"X-API-Key": issued["key"]}))
    ok(await http.get("/api/keys"))
    ok(await http.get("/api/auth/sessions"))
    ok(await http.get("/api/users"))
    ok(await http.get("/api/auth/me"))
    ok(await http.delete(f"/api/keys/{issued['key_id']}"))
    ok(await http.post("/api/auth/logout"))
    reused = await http.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    return plain


def stored_secrets(runtime: Runtime) -> list[str]:
    """The hashes and sealed secrets the event store holds for the flow (they must stay there)."""
    found: list[str] = []
    for notification in runtime.app.recorder.select_notifications(start=1, limit=10_000):
        event = runtime.app.mapper.to_domain_event(notification)
        match event:
            case User.Registered() | User.PasswordChanged():
                found.append(event.password_hash)
            case User.TotpSetupStarted():
                found += [event.secret_sealed, *event.backup_code_hashes]
            case ApiKey.Issued():
                found.append(event.key_hash)
    return found


async def published_messages(runtime: Runtime) -> list[bytes]:
    """Every message on the test's stream, headers and body, once the relay has published the whole log."""
    newest = await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0

    async def published() -> bool:
        runtime.relay.wake()
        return await runtime.relay.position() >= newest

    await eventually(published, within=30, what="the relay caught up")
    count = (await runtime.js.stream_info(runtime.stream.name)).state.messages
    assert count >= newest
    subscription = await runtime.js.subscribe(f"{runtime.stream.subject_prefix}.events.>", ordered_consumer=True)
    messages = []
    try:
        for _ in range(count):
            message = await subscription.next_msg(timeout=5)
            headers = "".join(f"{k}:{v}\n" for k, v in (message.headers or {}).items())
            messages.append(message.subject.encode() + b"\n" + headers.encode() + message.data)
    finally:
        await subscription.unsubscribe()
    return messages


def leaked(secrets: list[str], haystack: bytes) -> list[str]:
    return [s[:12] + "..." for s in secrets if s.encode() in haystack]


async def test_no_secret_of_the_identity_flow_leaves_postgresql(
    projecting: None, runtime: Runtime, api: Litestar, caplog: pytest.LogCaptureFixture
) -> None:
    exchange = Exchange()
    caplog.set_level("DEBUG")
    with capture_logs() as logs:
        async with http_client(api, event_hooks={"response": [exchange.keep]}) as http:
            plain = await identity_flow(http)
    hashes = stored_secrets(runtime)
    assert sum(h.startswith("$argon2") for h in hashes) == 4 and len(hashes) >= 4 + 11 + 1
    digests = [hashlib.sha256(s.encode()).hexdigest() for s in plain]
    secrets = plain + hashes + digests

    messages = await published_messages(runtime)
    stream = b"\n".join(messages)
    for kind in (b".user.", b".session.", b".apikey.", b".roster."):
        assert kind in stream, kind
    assert b"$argon2" not in stream
    assert leaked(secrets, stream) == []

    assert any(entry["event"] == "auth.signed_in" for entry in logs), logs
    logged = repr(logs).encode() + caplog.text.encode()
    assert b"$argon2" not in logged and leaked(secrets, logged) == []

    assert len(exchange.answers) == 23
    for method, path, body in exchange.answers:
        assert b"$argon2" not in body and leaked(hashes + digests, body) == [], (method, path)
        if (method, path) in HANDS_OUT:
            continue
        assert leaked(plain, body) == [], (method, path, body[:300])
    handed = b"\n".join(body for method, path, body in exchange.answers if (method, path) in HANDS_OUT)
    assert not leaked(plain[:6], handed)
