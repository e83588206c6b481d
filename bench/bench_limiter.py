"""The rate limiter's own cost per request, in-process, against the same app without it.

    python bench/bench_limiter.py [--requests 20000] [--rounds 5]
    python bench/bench_limiter.py --app [--devices 1000] [--requests 1000] [--rounds 5]

An API-key request (`GET /api/devices`, as `wrk` sends it) goes through the limiter wrapped around
an ASGI app that answers at once and leaves the key's principal, as the auth guard does, inside the
security headers layer as in the app (the limiter hands its labels to it); the baseline is the same
app inside the same layer, without the limiter. Every limit is on (address, user, key, failed
attempts) and never reached, so every window is counted; counts are flushed to a scratch
database as in production. Rounds alternate; the best of each is printed, and the limiter's
microseconds per request (divide by a route's server time per request, e.g. `bench_reads`'s CPU
per request, for its share). No HTTP server or load generator adds its noise: on a busy machine
this is the figure to trust over `bench_reads`'s throughput difference.

`--app` measures the limiter's share where it counts: the whole app (`create_app` over a runtime on a
scratch database holding `--devices` plugs, NATS from NATS_URL) called in-process with an API key for
`GET /api/devices`, once with rate limiting on (limits never reached) and once off, alternating every
100 requests, for `--rounds` rounds of `--requests` each; it prints the process CPU time per request of each (least of the rounds) and the
difference as a share, and the median of the rounds' own differences. In-process calls leave out the
HTTP server's own work, so the share printed is an upper bound of what a served request pays.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.ratelimits import Limit, PgRateCounters  # noqa: E402
from api.headers import SecurityHeaders  # noqa: E402
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

BATCH = 100
"""Requests of one side between two switches in `--app`'s rounds."""

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    scope["state"]["principal"] = PRINCIPAL
    await send({"type": "http.response.start", "status": 200, "headers": list(ANSWER_HEADERS)})
    await send({"type": "http.response.body", "body": b"[]", "more_body": False})


def request_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """An HTTP scope of `GET /api/devices` from a loopback client, as uvicorn gives it (without `state`)."""
    return {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/api/devices",
            "raw_path": b"/api/devices", "root_path": "", "query_string": b"", "headers": headers,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "asgi": {"version": "3.0"}}  # fmt: skip


async def per_request_us(
    app: App, requests: int, scope: dict[str, Any] | None = None, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Microseconds by `clock` per call of `app` with `scope` (each with a fresh `state`), answered into nothing."""
    async def send(message: Any) -> None:
        pass

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    template = scope or request_scope(REQUEST_HEADERS)
    began = clock()
    for _ in range(requests):
        await app({**template, "state": {}}, receive, send)
    return (clock() - began) / requests * 1e6


async def run(database_url: str, args: argparse.Namespace) -> None:
    counters = PgRateCounters(database_url)
    limits = RateLimits(ip=UNREACHED, user=UNREACHED, key=UNREACHED, login=UNREACHED, login_ip=UNREACHED)
    limiter = SecurityHeaders(RateLimiter(answer, limits, counters, cors=None))  # type: ignore[arg-type]
    plain = SecurityHeaders(answer)  # type: ignore[arg-type]
    try:
        await per_request_us(limiter, 100)  # type: ignore[arg-type]  # the first request reads the database's clock
        bare: list[float] = []
        limited: list[float] = []
        for round_ in range(args.rounds):
            pair: list[tuple[list[float], App]] = [(bare, plain), (limited, limiter)]  # type: ignore[list-item]
            for times, app in pair if round_ % 2 == 0 else pair[::-1]:
                times.append(await per_request_us(app, args.requests))
    finally:
        await counters.close()
    cost = min(limited) - min(bare)
    print(f"{args.requests} requests x {args.rounds} rounds: {min(limited):.1f} us per request through the "
          f"limiter against {min(bare):.1f} us without (best of each): the limiter adds {cost:.1f} us")  # fmt: skip


async def run_app(database_url: str, args: argparse.Namespace) -> None:
    import msgspec

    from api.app import create_app
    from bench.bench_reads import _read_key, free_port, scratch_settings, serve, stop
    from bench.scratch import seed_fleet
    from infra.bootstrap import open_runtime

    await asyncio.to_thread(seed_fleet, database_url, args.devices, 3, subnet=9)
    settings = scratch_settings()
    nats_url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    async with open_runtime(settings, database_url, nats_url) as runtime:
        try:
            await asyncio.to_thread(runtime.engine.catch_up_all)
            apps: list[App] = []
            for limited in (False, True):
                runtime.settings = msgspec.structs.replace(settings, rate_limits=limited)
                apps.append(create_app(runtime.services()))  # type: ignore[arg-type]
            port = free_port()
            server, task = await serve(apps[0], port)
            try:
                key = (await _read_key(runtime, f"http://127.0.0.1:{port}"))["X-API-Key"]
            finally:
                await stop(server, task)
            scope = request_scope([(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"x-api-key", key.encode())])
            for app in apps:  # warm up; the limited app's first answer reads the database's clock
                await per_request_us(app, 200, scope, time.process_time)
            off: list[float] = []
            on: list[float] = []
            batches = max(1, args.requests // BATCH)
            for _ in range(args.rounds):
                # Batches of the two alternate within a round, so a busy moment of the machine falls on both.
                spent = [0.0, 0.0]
                for batch in range(batches):
                    for side in (0, 1) if batch % 2 == 0 else (1, 0):
                        spent[side] += await per_request_us(apps[side], BATCH, scope, time.process_time)
                off.append(spent[0] / batches)
                on.append(spent[1] / batches)
        finally:
            await runtime.js.delete_stream(settings.stream_name)
    paired = sorted(b / a - 1 for a, b in zip(off, on, strict=True))
    print(f"GET /api/devices over {args.devices} plugs, in-process, {args.requests} requests x {args.rounds} rounds: "
          f"{min(on):.1f} us of CPU per request with rate limiting on against {min(off):.1f} us off (least of "
          f"each): {min(on) / min(off) - 1:+.1%}; the rounds' own: median {paired[len(paired) // 2]:+.1%}, "
          f"{paired[0]:+.1%} to {paired[-1]:+.1%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--app", action="store_true", help="the whole app in-process, limiter on against off")
    parser.add_argument("--devices", type=int, default=1000, help="plugs in the --app database (default 1000)")
    args = parser.parse_args()
    with scratch_database("wl_bench_limiter") as database_url:
        if args.app:
            if args.requests == parser.get_default("requests"):
                args.requests = 1000
            asyncio.run(run_app(database_url, args))
        else:
            asyncio.run(run(database_url, args))


if __name__ == "__main__":
    main()
