"""`GET /metrics` with 1,000 devices, next to `GET /api/devices` over the same devices.

    python bench/bench_metrics.py [--devices 1000] [--cycles 3] [--requests 50]

A scratch database holds `devices` plugs (each with `cycles` readings, through the poller's write
path) and a scratch stream; the read models are caught up once. Then both routes are called
`requests` times each, alternately, through the ASGI app with a `read` API key, and the
median and p99 of each are printed with the size of the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.app import create_app  # noqa: E402
from bench.scratch import scratch_database, seed_fleet  # noqa: E402
from domain.access import Scope  # noqa: E402
from domain.identity_requests import NewKey, StepUp  # noqa: E402
from infra.bootstrap import open_runtime  # noqa: E402
from infra.settings import Settings  # noqa: E402

ADMIN, PASSWORD = "timer", "Long-passphrase-for-runs-42"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def report(label: str, seconds: list[float], size: int) -> float:
    median = statistics.median(seconds) * 1000
    print(f"{label}: {len(seconds)} requests, median {median:.1f} ms, p99 {percentile(seconds, 0.99) * 1000:.1f} ms, "
          f"{size / 1024:.0f} KiB")  # fmt: skip
    return median


async def run(database_url: str, nats_url: str, devices: int, cycles: int, requests: int) -> None:
    tag = uuid.uuid4().hex[:10]
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="wl-bench-")), stream_name=f"WLB_{tag.upper()}",
        subject_prefix=f"wlb{tag}", rate_limits=False, polling_interval=60,
    )  # fmt: skip
    events = await asyncio.to_thread(seed_fleet, database_url, devices, cycles, subnet=7)
    async with open_runtime(settings, database_url, nats_url) as runtime:
        await asyncio.to_thread(runtime.engine.catch_up_all)
        print(f"{devices} devices, {events} events stored and projected")
        transport = httpx.ASGITransport(app=create_app(runtime.services()), client=("127.0.0.1", 50000))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                setup = await http.post("/api/auth/setup", json={"username": ADMIN, "password": PASSWORD})
                if setup.status_code != 201:
                    raise SystemExit(f"setup failed: {setup.text}")
                admin = await runtime.identity.authenticate_session(*await _session(http))
                issued = await runtime.identity.issue_key(
                    admin, NewKey(name="bench", scope=Scope.READ), StepUp(current_password=PASSWORD)
                )
                http.headers["X-API-Key"] = issued.key
                timings: dict[str, list[float]] = {"/metrics": [], "/api/devices": []}
                sizes: dict[str, int] = {}
                for _ in range(requests + 2):
                    for path, spent in timings.items():
                        began = time.perf_counter()
                        answer = await http.get(path)
                        spent.append(time.perf_counter() - began)
                        if answer.status_code != 200:
                            raise SystemExit(f"{path}: {answer.status_code} {answer.text[:200]}")
                        sizes[path] = len(answer.content)
        finally:
            await runtime.js.delete_stream(settings.stream_name)
    metrics = report("GET /metrics", timings["/metrics"][2:], sizes["/metrics"])
    listed = report("baseline GET /api/devices", timings["/api/devices"][2:], sizes["/api/devices"])
    print(f"/metrics / /api/devices (median): {metrics / listed:.2f}x")


async def _session(http: httpx.AsyncClient) -> tuple[uuid.UUID, uuid.UUID]:
    login = await http.post("/api/auth/login", json={"username": ADMIN, "password": PASSWORD})
    body = login.json()
    return uuid.UUID(body["session"]["session_id"]), uuid.UUID(body["user"]["id"])


async def main(args: argparse.Namespace) -> None:
    with scratch_database("wl_bench_metrics") as database_url:
        await run(database_url, args.nats_url, args.devices, args.cycles, args.requests)


if __name__ == "__main__":
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=3, help="readings stored per device (default 3)")
    parser.add_argument("--requests", type=int, default=50, help="requests per route (default 50)")
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(parser.parse_args()))
