"""The rate limiter's own cost per request, in-process, against the same app without it.

    python bench/bench_limiter.py [--requests 20000] [--rounds 5]

An API-key request (`GET /api/devices`, as `wrk` sends it) goes through the limiter wrapped around
an ASGI app that answers at once and leaves the key's principal, as the auth guard does; the
baseline is the same app called directly. Every limit is on (address, user, key, failed
attempts) and never reached, so every window is counted; counts are flushed to a scratch
database as in production. Rounds alternate; the best of each is printed, and the limiter's
microseconds per request (divide by a route's server time per request, e.g. `bench_reads`'s CPU
per request, for its share). No HTTP server or load generator adds its noise: on a busy machine
this is the figure to trust over `bench_reads`'s throughput difference.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.ratelimits import Limit, PgRateCounters  # noqa: E402
from api.ratelimit import RateLimiter  # noqa: E402
from api.ratelimit_rules import RateLimits  # noqa: E402
from bench.scratch import scratch_database  # noqa: E402
from domain.access import Principal, Role  # noqa: E402

UNREACHED = (Limit(1_000_000_000, 60),)
KEY_ID = uuid.uuid4()
KEY = f"wl_{KEY_ID.hex}_{'s' * 43}"
PRINCIPAL = Principal(kind="key", user_id=uuid.uuid4(), username="bench", role=Role.ADMIN,
                      permissions=frozenset(), key_id=KEY_ID)  # fmt: skip
REQUEST_HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"x-api-key", KEY.encode())]
ANSWER_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"2"), (b"x-total-count", b"1000")]

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    scope["state"]["principal"] = PRINCIPAL
    await send({"type": "http.response.start", "status": 200, "headers": list(ANSWER_HEADERS)})
    await send({"type": "http.response.body", "body": b"[]", "more_body": False})


async def per_request_us(app: App, requests: int) -> float:
    async def send(message: Any) -> None:
        pass

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    began = time.perf_counter()
    for _ in range(requests):
        scope = {"type": "http", "method": "GET", "path": "/api/devices", "headers": REQUEST_HEADERS,
                 "client": ("127.0.0.1", 50000), "state": {}}  # fmt: skip
        await app(scope, receive, send)
    return (time.perf_counter() - began) / requests * 1e6


async def run(database_url: str, args: argparse.Namespace) -> None:
    counters = PgRateCounters(database_url)
    limits = RateLimits(ip=UNREACHED, user=UNREACHED, key=UNREACHED, login=UNREACHED, login_ip=UNREACHED)
    limiter = RateLimiter(answer, limits, counters, cors=None)  # type: ignore[arg-type]
    try:
        await per_request_us(limiter, 100)  # the first request reads the database's clock
        bare: list[float] = []
        limited: list[float] = []
        for round_ in range(args.rounds):
            pair: list[tuple[list[float], App]] = [(bare, answer), (limited, limiter)]  # type: ignore[list-item]
            for times, app in pair if round_ % 2 == 0 else pair[::-1]:
                times.append(await per_request_us(app, args.requests))
    finally:
        await counters.close()
    cost = min(limited) - min(bare)
    print(f"{args.requests} requests x {args.rounds} rounds: {min(limited):.1f} us per request through the "
          f"limiter against {min(bare):.1f} us without (best of each): the limiter adds {cost:.1f} us")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with scratch_database("wl_bench_limiter") as database_url:
        asyncio.run(run(database_url, args))


if __name__ == "__main__":
    main()
