"""The limiter's path for requests within every limit: the labels it hands to the security headers
layer, the windows it keeps at hand per client, and requests it counts in no window at all."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.ratelimits import MAX_WINDOW_S, Limit, PgRateCounters
from api.headers import SecurityHeaders
from api.ratelimit import RateLimiter
from api.ratelimit_rules import RateLimits
from domain.access import Principal, Role

KEY_ID = uuid.uuid4()
KEY = f"wl_{KEY_ID.hex}_{'s' * 43}"
PRINCIPAL = Principal(kind="key", user_id=uuid.uuid4(), username="k", role=Role.ADMIN, permissions=frozenset(),
                      key_id=KEY_ID)  # fmt: skip
APP_HEADERS = [(b"content-type", b"application/json"), (b"x-total-count", b"3")]


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    scope["state"]["principal"] = PRINCIPAL
    await send({"type": "http.response.start", "status": 200, "headers": list(APP_HEADERS)})
    await send({"type": "http.response.body", "body": b"[]", "more_body": False})


async def _get(app: Any, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The answer's headers to `GET /api/devices` from one address."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "scheme": "http", "path": "/api/devices", "headers": headers,
             "client": ("203.0.113.9", 5000), "state": {}}  # fmt: skip
    await app(scope, receive, send)
    return list(sent[0]["headers"])


@pytest.fixture
async def counters(database_url: str) -> AsyncIterator[PgRateCounters]:
    store = PgRateCounters(database_url, flush_every=3600)
    try:
        yield store
    finally:
        await store.close()


async def test_labels_handed_to_the_security_headers_come_in_the_order_the_limiter_adds_them(
    counters: PgRateCounters,
) -> None:
    limits = RateLimits(ip=(Limit(100, MAX_WINDOW_S),), key=(Limit(50, MAX_WINDOW_S),))
    outside = SecurityHeaders(RateLimiter(_app, limits, counters, cors=None))  # type: ignore[arg-type]
    inside = RateLimiter(SecurityHeaders(_app), limits, counters, cors=None)  # type: ignore[arg-type]
    request = [(b"host", b"h"), (b"X-Api-Key", KEY.encode())]
    await _get(outside, request)  # the first request reads the database's clock
    for left in (48, 46):
        # Outside, the labels come after the answer's own headers and before the security headers,
        # where they came when the limiter wrapped `send`; inside, the limiter adds them itself, last.
        labelled = await _get(outside, request)
        plain = await _get(inside, request)
        labels = [(b"x-ratelimit-limit", b"50"), (b"x-ratelimit-remaining", str(left).encode())]
        assert plain[-3:-1] == [labels[0], (b"x-ratelimit-remaining", str(left - 1).encode())]
        assert labelled == [*APP_HEADERS, *labels, plain[-1], *plain[len(APP_HEADERS) : -3]]


async def test_a_client_counts_in_a_new_entry_once_its_window_was_forgotten(counters: PgRateCounters) -> None:
    limits = RateLimits(ip=(Limit(100, MAX_WINDOW_S),))
    limiter = RateLimiter(_app, limits, counters, cors=None)  # type: ignore[arg-type]
    request = [(b"host", b"h")]
    await _get(limiter, request)
    await _get(limiter, request)
    (window,) = counters._local.values()
    assert window.known + window.pending == 2
    # Forgotten (as an ended window is), the entry no longer reaches the shared table: counting in it
    # would lose the count.
    counters._local.clear()
    counters._generation += 1
    await _get(limiter, request)
    (fresh,) = counters._local.values()
    assert fresh is not window and fresh.pending == 1


async def test_a_request_counted_in_no_window_passes_unlabelled(counters: PgRateCounters) -> None:
    # No address limit: a request without credentials is counted nowhere, even once a keyed request
    # has had the database's clock read.
    limiter = RateLimiter(_app, RateLimits(key=(Limit(50, MAX_WINDOW_S),)), counters, cors=None)  # type: ignore[arg-type]
    keyed = await _get(limiter, [(b"x-api-key", KEY.encode())])
    assert keyed[-2] == (b"x-ratelimit-remaining", b"49")
    for _ in range(2):
        assert await _get(limiter, [(b"host", b"h")]) == APP_HEADERS
