"""The API's error table and edge guards, on a small app of their own (no sockets, no database)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any

import eventsourcing.persistence as es
import httpx
import msgspec
import psycopg
import pytest
from litestar import Litestar, get, post
from litestar.params import FromPath, FromQuery, JSONBody, Parameter, QueryParameter
from psycopg_pool import PoolTimeout

from adapters.eventstore import note_write
from api.app import READ_ATTEMPTS, RefuseUnsafeInput, RetryLostConnections
from api.errors import EXCEPTION_HANDLERS, VALIDATION_STATUS


def _es_lost() -> Exception:
    error = es.OperationalError("server closed the connection unexpectedly")
    error.__cause__ = psycopg.OperationalError("server closed the connection unexpectedly")
    return error


UNAVAILABLE: dict[str, Callable[[], Exception]] = {
    "psycopg-operational": lambda: psycopg.OperationalError("consuming input failed"),
    "psycopg-interface": lambda: psycopg.InterfaceError("the connection is lost"),
    "pool-timeout": lambda: PoolTimeout("couldn't get a connection after 5.00 sec"),
    "store-operational": _es_lost,
    "store-interface": lambda: es.InterfaceError("connection closed"),
    "store-database": lambda: es.DatabaseError("no connection"),
}


class Calls:
    def __init__(self) -> None:
        self.count = 0
        self.checks = 0
        self.raise_first: list[Exception] = []


@pytest.fixture
async def harness() -> AsyncIterator[tuple[httpx.AsyncClient, Calls]]:
    calls = Calls()

    def next_failure() -> None:
        calls.count += 1
        if calls.raise_first:
            raise calls.raise_first.pop(0)

    @get("/read/{key:str}", sync_to_thread=False)
    def read(key: FromPath[str]) -> dict[str, Any]:
        next_failure()
        return {"key": key}

    @post("/write", sync_to_thread=False)
    def write(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
        note_write()
        next_failure()
        return data

    @post("/decide", sync_to_thread=False)
    def decide(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
        next_failure()  # fails while still reading, before anything is handed to the store
        note_write()
        return data

    async def drop_dead() -> None:
        calls.checks += 1

    app = Litestar(
        route_handlers=[read, write, decide],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[RetryLostConnections(drop_dead), RefuseUnsafeInput()],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, calls


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {
        "detail": "The database is unavailable; retry shortly",
        "status_code": 503,
        "error_code": "DATABASE_UNAVAILABLE",
    }
    assert int(response.headers["retry-after"]) > 0


@pytest.mark.parametrize("make", UNAVAILABLE.values(), ids=UNAVAILABLE.keys())
async def test_every_database_outage_error_is_a_503_with_retry_after(
    harness: tuple[httpx.AsyncClient, Calls], make: Callable[[], Exception]
) -> None:
    client, calls = harness
    calls.raise_first = [make()]
    assert_unavailable(await client.post("/write", json={"a": 1}))


async def test_a_read_whose_connection_broke_is_run_again_until_it_succeeds(
    harness: tuple[httpx.AsyncClient, Calls],
) -> None:
    client, calls = harness
    calls.raise_first = [psycopg.OperationalError("server closed the connection unexpectedly"), _es_lost()]
    response = await client.get("/read/x")
    assert response.status_code == 200 and response.json() == {"key": "x"}
    assert (calls.count, calls.checks) == (3, 2)


async def test_retries_are_bounded_and_the_last_answer_is_a_503(harness: tuple[httpx.AsyncClient, Calls]) -> None:
    client, calls = harness
    calls.raise_first = [psycopg.OperationalError("lost") for _ in range(READ_ATTEMPTS + 1)]
    assert_unavailable(await client.get("/read/x"))
    assert calls.count == READ_ATTEMPTS


@pytest.mark.parametrize("make", [lambda: PoolTimeout("waited"), lambda: es.OperationalError("no cause")])
async def test_a_database_that_stays_away_is_not_asked_again(
    harness: tuple[httpx.AsyncClient, Calls], make: Callable[[], Exception]
) -> None:
    client, calls = harness
    calls.raise_first = [make()]
    assert_unavailable(await client.get("/read/x"))
    assert calls.count == 1


async def test_writes_are_never_repeated(harness: tuple[httpx.AsyncClient, Calls]) -> None:
    client, calls = harness
    calls.raise_first = [psycopg.OperationalError("server closed the connection unexpectedly")]
    assert_unavailable(await client.post("/write", json={"a": 1}))
    assert calls.count == 1


async def test_a_command_that_lost_its_connection_before_storing_anything_is_run_again_with_its_body(
    harness: tuple[httpx.AsyncClient, Calls],
) -> None:
    client, calls = harness
    calls.raise_first = [psycopg.OperationalError("server closed the connection unexpectedly")]
    response = await client.post("/decide", json={"a": 1})
    assert (response.status_code, response.json()) == (201, {"a": 1})
    assert (calls.count, calls.checks) == (2, 1)


@pytest.mark.parametrize("make", [lambda: psycopg.DataError("NUL bytes"), lambda: es.DataError("bad value")])
async def test_a_value_the_database_refuses_is_a_400(
    harness: tuple[httpx.AsyncClient, Calls], make: Callable[[], Exception]
) -> None:
    client, calls = harness
    calls.raise_first = [make()]
    response = await client.get("/read/x")
    assert (response.status_code, response.json()["error_code"]) == (400, "INVALID_VALUE")


async def test_a_programming_error_stays_a_500(harness: tuple[httpx.AsyncClient, Calls]) -> None:
    client, calls = harness
    calls.raise_first = [es.ProgrammingError("syntax error")]
    response = await client.get("/read/x")
    assert (response.status_code, response.json()["error_code"]) == (500, "INTERNAL_ERROR")


@pytest.mark.parametrize("path", ["/read/%00", "/read/a%1bb", "/read/%7f", "/nowhere/%0a"])
async def test_control_characters_in_the_path_are_refused_before_any_handler(
    harness: tuple[httpx.AsyncClient, Calls], path: str
) -> None:
    client, calls = harness
    response = await client.get(path)
    if path.startswith("/nowhere"):
        assert response.status_code == 404
        return
    assert (response.status_code, response.json()["error_code"]) == (400, "INVALID_PATH")
    assert calls.count == 0


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 20_000 + b"1" + b"}" * 20_000])
async def test_json_nested_too_deeply_is_a_400(harness: tuple[httpx.AsyncClient, Calls], body: bytes) -> None:
    client, calls = harness
    response = await client.post("/write", content=body, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error_code"]) == (400, "JSON_TOO_DEEP")
    assert calls.count == 0


async def test_printable_unicode_paths_and_ordinary_bodies_pass(harness: tuple[httpx.AsyncClient, Calls]) -> None:
    client, _ = harness
    assert (await client.get("/read/%C3%A9%E2%9C%93")).json() == {"key": "é✓"}
    assert (await client.post("/write", json={"nested": [[{"ok": True}]]})).json() == {"nested": [[{"ok": True}]]}


class Order(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    item: Annotated[str, msgspec.Meta(min_length=1)]
    count: int


@pytest.fixture
async def validating() -> AsyncIterator[httpx.AsyncClient]:
    """Routes with a typed body, typed query parameters and a constrained path parameter."""

    @post("/orders", sync_to_thread=False)
    def order(data: JSONBody[Order]) -> dict[str, Any]:
        return {"item": data.item}

    @post("/relay-orders", sync_to_thread=False, opt={VALIDATION_STATUS: 400})
    def relay_order(data: JSONBody[Order]) -> dict[str, Any]:
        return {"item": data.item}

    @get("/pages", sync_to_thread=False)
    def pages(limit: Annotated[int, QueryParameter(ge=1, le=10)], since: FromQuery[datetime | None] = None) -> int:
        return limit

    @get("/shelves/{shelf:int}", sync_to_thread=False)
    def shelf(shelf: Annotated[int, Parameter(ge=1)]) -> int:
        return shelf

    app = Litestar(route_handlers=[order, relay_order, pages, shelf], exception_handlers=EXCEPTION_HANDLERS,
                   middleware=[RefuseUnsafeInput()])  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


@pytest.mark.parametrize("body", [
    {"item": "tea", "count": "two"}, {"item": "tea"}, {"item": "", "count": 1}, {"item": "tea", "count": 1, "x": 1},
    ["tea", 1], None,
])  # fmt: skip
async def test_a_body_that_breaks_the_schema_is_a_422_naming_the_field(
    validating: httpx.AsyncClient, body: Any
) -> None:
    response = await validating.post("/orders", json=body)
    assert (response.status_code, response.json()["error_code"]) == (422, "VALIDATION_ERROR"), response.text
    assert response.json()["status_code"] == 422 and response.json()["errors"]


@pytest.mark.parametrize("query", ["", "?limit=0", "?limit=many", "?limit=1&since=yesterday"])
async def test_query_parameters_that_break_the_schema_are_a_422(validating: httpx.AsyncClient, query: str) -> None:
    response = await validating.get(f"/pages{query}")
    assert (response.status_code, response.json()["error_code"]) == (422, "VALIDATION_ERROR"), response.text


async def test_malformed_requests_stay_400(validating: httpx.AsyncClient) -> None:
    syntax = await validating.post("/orders", content=b'{"item": "tea",', headers={"content-type": "application/json"})
    assert (syntax.status_code, syntax.json()["error_code"]) == (400, "INVALID_REQUEST"), syntax.text
    path = await validating.get("/shelves/0")
    assert (path.status_code, path.json()["error_code"]) == (400, "VALIDATION_ERROR"), path.text
    assert (await validating.get("/shelves/3")).json() == 3


async def test_a_route_whose_contract_answers_400_declares_it(validating: httpx.AsyncClient) -> None:
    response = await validating.post("/relay-orders", json={"item": "tea"})
    assert (response.status_code, response.json()["error_code"]) == (400, "VALIDATION_ERROR"), response.text
