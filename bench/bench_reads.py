"""API reads under a real HTTP load generator, each against a minimal app serving the same body.

    python bench/bench_reads.py [--devices 1000] [--seconds 8] [--connections 32]

Needs `wrk` (Debian: `apt-get install wrk`). A scratch database holds `devices` plugs with a
few readings each (through the poller's write path); the read models are caught up once. The
app is served by uvicorn on a loopback port, one process, as `wattledger api` serves it, and
`wrk` calls it with `connections` open connections for `seconds`:

- `GET /api/devices`, then a minimal Litestar app on the same server settings answering the same
  bytes from memory (the baseline);
- `GET /api/device/{id}/history` over the 24 hours up to one device's newest reading, and its baseline;
- `GET /api/devices` on a second app over the same runtime with rate limiting on (limits high
  enough that nothing is refused), alternated with the first `rounds` times (each round in the
  other order than the one before), best of each: the limiter's share of the cost is the
  difference; the median of the rounds' own differences is printed beside it, and the server's
  CPU time per request with and without (least of the rounds), which a busy machine disturbs less.

Prints requests/s for each and the ratios the README quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import resource
import shutil
import socket
import sys
import tempfile
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import msgspec
import structlog
import uvicorn
from litestar import Litestar, Response, get

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.ratelimits import Limit  # noqa: E402
from api.app import create_app  # noqa: E402
from bench.scratch import scratch_database, seed_fleet  # noqa: E402
from domain.access import Scope  # noqa: E402
from domain.identity_requests import NewKey, StepUp  # noqa: E402
from infra.bootstrap import open_runtime  # noqa: E402
from infra.settings import Settings  # noqa: E402

ADMIN, PASSWORD = "timer", "Long-passphrase-for-runs-42"
UNREACHED = (Limit(1_000_000_000, 60),)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(app: object, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    return server, task


async def stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task


class Load(msgspec.Struct, frozen=True):
    rate: float
    """Requests per second `wrk` reached."""
    cpu_ms: float
    """This process's CPU time (the servers run in it; `wrk` does not) per request answered, in ms."""


async def load(url: str, seconds: int, connections: int, headers: dict[str, str]) -> Load:
    """What `wrk` reached on `url`; exits if any answer was not 2xx."""
    flags = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    before = _cpu_s()
    process = await asyncio.create_subprocess_exec(
        "wrk", "-t2", f"-c{connections}", f"-d{seconds}s", *flags, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out = (await process.communicate())[0].decode()
    used = _cpu_s() - before
    if "Non-2xx" in out:
        raise SystemExit(f"{url}: answers that were not 2xx\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    answered = re.search(r"(\d+) requests in", out)
    if match is None or answered is None:
        raise SystemExit(f"wrk printed no rate:\n{out}")
    return Load(rate=float(match[1]), cpu_ms=used * 1000 / max(int(answered[1]), 1))


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def minimal_app(body: bytes) -> Litestar:
    @get("/", sync_to_thread=False)
    def answer() -> Response[bytes]:
        return Response(body, media_type="application/json")

    return Litestar(route_handlers=[answer], debug=False)


async def compare(label: str, url: str, args: argparse.Namespace, headers: dict[str, str]) -> float:
    async with httpx.AsyncClient(headers=headers) as http:
        answer = await http.get(url)
    if answer.status_code != 200:
        raise SystemExit(f"{url}: {answer.status_code} {answer.text[:200]}")
    rate = (await load(url, args.seconds, args.connections, headers)).rate
    port = free_port()
    server, task = await serve(minimal_app(answer.content), port)
    try:
        baseline = (await load(f"http://127.0.0.1:{port}/", args.seconds, args.connections, {})).rate
    finally:
        await stop(server, task)
    print(f"{label}: {rate:,.0f} requests/s against {baseline:,.0f}/s for the same "
          f"{len(answer.content) / 1024:.0f} KiB from memory: {rate / baseline:.3f}x")  # fmt: skip
    return rate


def scratch_settings() -> Settings:
    """Settings of a runtime on a scratch database: its own stream, rate limiting off (limits never
    reached once it is turned on)."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="wl-bench-")), stream_name=f"WLB_{tag.upper()}",
        subject_prefix=f"wlb{tag}", rate_limits=False, polling_interval=60,
        rate_limit_ip=UNREACHED, rate_limit_user=UNREACHED, rate_limit_key=UNREACHED,
    )  # fmt: skip


async def run(database_url: str, args: argparse.Namespace) -> None:
    events = await asyncio.to_thread(seed_fleet, database_url, args.devices, args.cycles, subnet=9)
    settings = scratch_settings()
    async with open_runtime(settings, database_url, args.nats_url) as runtime:
        await asyncio.to_thread(runtime.engine.catch_up_all)
        servers = []
        try:
            # The same runtime served twice: without rate limiting, and with it (limits never reached).
            for with_limits in (False, True):
                runtime.settings = msgspec.structs.replace(settings, rate_limits=with_limits)
                port = free_port()
                servers.append((f"http://127.0.0.1:{port}", *await serve(create_app(runtime.services()), port)))
            base, limited_base = servers[0][0], servers[1][0]
            headers = await _read_key(runtime, base)
            print(f"{args.devices} devices, {events} events stored and projected; wrk -c{args.connections} "
                  f"-d{args.seconds}s")  # fmt: skip
            await compare("GET /api/devices", f"{base}/api/devices", args, headers)
            async with httpx.AsyncClient(headers=headers) as http:
                listed = msgspec.json.decode((await http.get(f"{base}/api/devices")).content)
                device = listed[0]["device_id"]
                last_seen = (await http.get(f"{base}/api/device/{device}")).json()["last_seen"]
            end = datetime.fromisoformat(last_seen.replace("Z", "+00:00")) + timedelta(minutes=1)
            span = urlencode({"start_time": (end - timedelta(days=1)).isoformat(), "end_time": end.isoformat()})
            await compare("GET /api/device/{id}/history (the day of its readings)",
                          f"{base}/api/device/{device}/history?{span}", args, headers)  # fmt: skip
            # Alternated in turn (off-on, on-off, ...), best of each, so a busy moment of the machine does
            # not land on one side; the median of the rounds' own ratios is printed beside it.
            async with httpx.AsyncClient(headers=headers) as http:
                # Its first answer reads the counters' clock from the database: not part of the steady state.
                await http.get(f"{limited_base}/api/devices")
            plain: list[Load] = []
            limited: list[Load] = []
            for round_ in range(args.rounds):
                urls = [(plain, base), (limited, limited_base)]
                for loads, url in urls if round_ % 2 == 0 else urls[::-1]:
                    loads.append(await load(f"{url}/api/devices", args.seconds, args.connections, headers))
            best_off, best_on = max(x.rate for x in plain), max(x.rate for x in limited)
            paired = sorted(1 - on.rate / off.rate for on, off in zip(limited, plain, strict=True))
            cpu_off, cpu_on = min(x.cpu_ms for x in plain), min(x.cpu_ms for x in limited)
            cpu_paired = sorted(on.cpu_ms / off.cpu_ms - 1 for on, off in zip(limited, plain, strict=True))
            print(f"GET /api/devices with rate limiting on: {best_on:,.0f} requests/s against {best_off:,.0f}/s "
                  f"without (best of {args.rounds}): the limiter costs {1 - best_on / best_off:.1%} "
                  f"(median of the rounds: {paired[len(paired) // 2]:.1%}); server CPU per request "
                  f"{cpu_on:.3f} ms against {cpu_off:.3f} ms (least of {args.rounds}): {cpu_on / cpu_off - 1:+.1%} "
                  f"(the rounds' own: median {cpu_paired[len(cpu_paired) // 2]:+.1%}, "
                  f"{cpu_paired[0]:+.1%} to {cpu_paired[-1]:+.1%})")  # fmt: skip
        finally:
            for _, server, task in servers:
                await stop(server, task)
            await runtime.js.delete_stream(settings.stream_name)


async def _read_key(runtime: object, base: str) -> dict[str, str]:
    """A `read` API key of a new administrator (set up on the first call, signed in after)."""
    from infra.bootstrap import Runtime

    assert isinstance(runtime, Runtime)
    async with httpx.AsyncClient(base_url=base) as http:
        await http.post("/api/auth/setup", json={"username": ADMIN, "password": PASSWORD})
        login = (await http.post("/api/auth/login", json={"username": ADMIN, "password": PASSWORD})).json()
    admin = await runtime.identity.authenticate_session(
        uuid.UUID(login["session"]["session_id"]), uuid.UUID(login["user"]["id"])
    )
    issued = await runtime.identity.issue_key(admin, NewKey(name=f"bench-{uuid.uuid4().hex[:6]}", scope=Scope.READ),
                                              StepUp(current_password=PASSWORD))  # fmt: skip
    return {"X-API-Key": issued.key}


async def main(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark needs wrk (Debian: apt-get install wrk)")
    with scratch_database("wl_bench_reads") as database_url:
        await run(database_url, args)


if __name__ == "__main__":
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=3, help="readings stored per device (default 3)")
    parser.add_argument("--seconds", type=int, default=8, help="seconds of load per route (default 8)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of the limiter's comparison (default 3)")
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(parser.parse_args()))
