"""A whole WattLedger process in-test (the `runtime` of tests/harness.py) and its clients.

Clients sign in as a client would: `client` runs first-run setup and logs in as the
administrator; `viewer`, `operator` and `read_key` are a viewer, an operator and a `read`
API key of the administrator. `running` adds the command executor beside the relay and
projectors; `devices` adds two emulated devices through the write path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar

from adapters.emulator import EmulatorFleet
from adapters.executor import CommandExecutor
from api.app import create_app
from domain.access import Principal, Role, Scope
from domain.commands import AddDevice
from domain.identity_requests import NewKey, NewUser, StepUp
from infra.bootstrap import Runtime
from tests.harness import (
    ADMIN_PASSWORD,
    OPERATOR,
    OPERATOR_PASSWORD,
    VIEWER,
    VIEWER_PASSWORD,
    SignedIn,
    background,
    bearer,
    executing,
    http_client,
    log_in,
    set_up_and_log_in,
)


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
async def running(runtime: Runtime) -> AsyncIterator[CommandExecutor]:
    """Relay, projectors and the executor; no poller (the tests read state from the emulator itself)."""
    async with background(runtime, poll=False), executing(runtime) as executor:
        yield executor


@pytest.fixture
async def devices(runtime: Runtime, fleet: EmulatorFleet) -> list[str]:
    """Two emulated devices (a plug with a meter and a strip), added through the write path."""
    handlers = runtime.handlers()
    chosen = [fleet.addresses[0], fleet.addresses[3]]
    for address in chosen:
        await handlers.add_device(AddDevice(address=address, actor="test"))
    return chosen
