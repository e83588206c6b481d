"""A whole WattLedger process in-test: real PostgreSQL, real JetStream, emulated devices.

Clients sign in as a client would: `client` runs first-run setup and logs in as the
administrator; `viewer`, `operator` and `read_key` are a viewer, an operator and a `read`
API key of the administrator. Passwords are hashed with argon2 at a low cost here (the CLI
tests run the production cost): every test has its own database, so each signs in anew.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest
from litestar import Litestar

from adapters.bus import StreamConfig
from adapters.emulator import EmulatorFleet
from adapters.identity import Argon2Hasher
from api.app import create_app
from domain.access import Principal, Role, Scope
from domain.identity_requests import NewKey, NewUser, StepUp
from domain.ports import Clock
from infra.bootstrap import Runtime, cancel_all, open_runtime
from infra.settings import Settings

ADMIN = "root"
ADMIN_PASSWORD = "Admin-passphrase-4-tests"
VIEWER, VIEWER_PASSWORD = "vera", "Views-the-plugs-42"
OPERATOR, OPERATOR_PASSWORD = "olga", "Operates-the-plugs-42"
BASE_URL = "http://wattledger.test"


@pytest.fixture
def settings(tmp_path: Path, stream_config: StreamConfig) -> Settings:
    return Settings(
        data_dir=tmp_path,
        polling_interval=1.0,
        poll_timeout=2.0,
        offline_after=2,
        discovery_target="127.0.0.1",
        stream_name=stream_config.name,
        subject_prefix=stream_config.subject_prefix,
        # Tests send far more than 100 requests a minute from one address; the rate-limit tests turn them on.
        rate_limits=False,
    )


@pytest.fixture
async def runtime(settings: Settings, database_url: str, nats_url: str, clock: Clock) -> AsyncIterator[Runtime]:
    async with open_runtime(settings, database_url, nats_url) as rt:
        rt.identity.hasher = Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1)
        rt.clock = clock
        yield rt


@asynccontextmanager
async def background(runtime: Runtime, *, poll: bool = True) -> AsyncIterator[None]:
    """Relay, projectors and (optionally) the poller running beside the test."""
    runtime.wakers += [runtime.relay.wake, runtime.engine.wake]
    tasks = [
        asyncio.create_task(runtime.relay.run()),
        asyncio.create_task(runtime.engine.run(poll_interval=0.2)),
    ]
    if poll:
        tasks.append(asyncio.create_task(runtime.poller().run()))
    try:
        yield
    finally:
        await cancel_all(tasks)


class SignedIn(msgspec.Struct, kw_only=True):
    """What a sign-in answered, and the client that now carries its access token."""

    user_id: UUID
    session_id: UUID
    access_token: str
    refresh_token: str


def http_client(app: Litestar, *, headers: dict[str, str] | None = None, **options: Any) -> httpx.AsyncClient:
    """The app through an HTTP client on the test's own event loop (the app's pools live there)."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=headers, **options)


async def log_in(http: httpx.AsyncClient, username: str, password: str, **extra: Any) -> SignedIn:
    response = await http.post("/api/auth/login", json={"username": username, "password": password, **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    return SignedIn(
        user_id=UUID(body["user"]["id"]), session_id=UUID(body["session"]["session_id"]),
        access_token=body["access_token"], refresh_token=body["refresh_token"],
    )  # fmt: skip


async def set_up_and_log_in(http: httpx.AsyncClient) -> SignedIn:
    """First-run setup, then sign-in as that administrator; `http` carries the token from then on."""
    setup = await http.post("/api/auth/setup", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert setup.status_code == 201, setup.text
    admin = await log_in(http, ADMIN, ADMIN_PASSWORD)
    http.headers["Authorization"] = f"Bearer {admin.access_token}"
    return admin


def bearer(signed_in: SignedIn) -> dict[str, str]:
    return {"Authorization": f"Bearer {signed_in.access_token}"}


@pytest.fixture
def api(runtime: Runtime) -> Litestar:
    return create_app(runtime.services())


@pytest.fixture
async def anonymous(api: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no credentials, before first-run setup."""
    async with http_client(api) as http:
        yield http


@pytest.fixture
async def admin(api: Litestar) -> AsyncIterator[tuple[SignedIn, httpx.AsyncClient]]:
    async with http_client(api) as http:
        yield await set_up_and_log_in(http), http


@pytest.fixture
def client(admin: tuple[SignedIn, httpx.AsyncClient]) -> httpx.AsyncClient:
    """A client signed in as the first administrator."""
    return admin[1]


@pytest.fixture
async def admin_principal(runtime: Runtime, admin: tuple[SignedIn, httpx.AsyncClient]) -> Principal:
    signed_in = admin[0]
    return await runtime.identity.authenticate_session(signed_in.session_id, signed_in.user_id)


async def _member(runtime: Runtime, api: Litestar, creator: Principal, username: str, password: str,
                  role: Role) -> httpx.AsyncClient:  # fmt: skip
    # Made by the same use case POST /api/users calls, which would wait for the read models.
    await runtime.identity.create_user(creator, NewUser(username=username, password=password, role=role))
    http = http_client(api)
    async with http_client(api) as anonymous:
        http.headers.update(bearer(await log_in(anonymous, username, password)))
    return http


@pytest.fixture
async def viewer(runtime: Runtime, api: Litestar, admin_principal: Principal) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in as a user with the viewer role."""
    async with await _member(runtime, api, admin_principal, VIEWER, VIEWER_PASSWORD, Role.VIEWER) as http:
        yield http


@pytest.fixture
async def operator(runtime: Runtime, api: Litestar, admin_principal: Principal) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in as a user with the operator role."""
    async with await _member(runtime, api, admin_principal, OPERATOR, OPERATOR_PASSWORD, Role.OPERATOR) as http:
        yield http


@pytest.fixture
async def read_key(runtime: Runtime, api: Litestar, admin_principal: Principal) -> AsyncIterator[httpx.AsyncClient]:
    """A client sending a `read` API key of the administrator (`X-API-Key`)."""
    issued = await runtime.identity.issue_key(admin_principal, NewKey(name="dashboard", scope=Scope.READ),
                                              StepUp(current_password=ADMIN_PASSWORD))  # fmt: skip
    async with http_client(api, headers={"X-API-Key": issued.key}) as http:
        yield http


@pytest.fixture
async def fleet() -> AsyncIterator[EmulatorFleet]:
    async with EmulatorFleet(["HS110", "KP115", "HS100", "HS300", "KP303"], host="127.0.0.1", port=0,
                             speed=120.0, seed=11) as devices:
        yield devices
