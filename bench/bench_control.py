"""Control round trip: REST call to confirmed state, next to a direct python-kasa switch of the same device.

    python bench/bench_control.py [--commands 200]

One emulated HS110 on loopback, a scratch database and a scratch stream (both removed at
the end). Each command is `POST /api/device/{id}/control?wait=true` through the ASGI app,
timed until the answer carries the confirmed state: the request is stored, relayed to
JetStream, pulled by the executor, claimed, switched, read back, stored and seen by the
waiting request. The baseline switches the same device with python-kasa (`set_state` then
`update`, the executor's own device calls) on a connection kept open.
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

from adapters.emulator import EmulatorFleet  # noqa: E402
from api.app import create_app  # noqa: E402
from bench.scratch import scratch_database  # noqa: E402
from infra.bootstrap import open_runtime  # noqa: E402
from infra.settings import Settings  # noqa: E402

ADMIN, PASSWORD = "timer", "Long-passphrase-for-runs-42"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def report(label: str, seconds: list[float]) -> float:
    median = statistics.median(seconds) * 1000
    print(f"{label}: {len(seconds)} commands, median {median:.1f} ms, p99 {percentile(seconds, 0.99) * 1000:.1f} ms")
    return median


async def direct_kasa(address: str, commands: int) -> list[float]:
    from kasa import Device, DeviceConfig

    host, _, port = address.rpartition(":")
    device = await Device.connect(config=DeviceConfig(host=host, port_override=int(port)))
    timings = []
    try:
        for i in range(commands):
            started = time.perf_counter()
            await device.set_state(i % 2 == 0)
            await device.update()
            assert device.is_on is (i % 2 == 0)
            timings.append(time.perf_counter() - started)
    finally:
        await device.disconnect()
    return timings


async def through_rest(database_url: str, nats_url: str, address: str, commands: int) -> list[float]:
    tag = uuid.uuid4().hex[:10]
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="wl-bench-")), stream_name=f"WLB_{tag.upper()}",
        subject_prefix=f"wlb{tag}", rate_limits=False, polling_interval=3600,
    )  # fmt: skip
    async with open_runtime(settings, database_url, nats_url) as runtime:
        runtime.wakers += [runtime.relay.wake, runtime.engine.wake]
        parts = [
            asyncio.create_task(runtime.relay.run()),
            asyncio.create_task(runtime.engine.run(poll_interval=0.2)),
            asyncio.create_task(runtime.executor().run()),
        ]
        transport = httpx.ASGITransport(app=create_app(runtime.services()), client=("127.0.0.1", 50000))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                setup = await http.post("/api/auth/setup", json={"username": ADMIN, "password": PASSWORD})
                if setup.status_code != 201:
                    raise SystemExit(f"setup failed: {setup.text}")
                login = await http.post("/api/auth/login", json={"username": ADMIN, "password": PASSWORD})
                http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
                added = await http.post("/api/devices/manual", json={"ip": address})
                device_id = added.json()["device_id"]
                timings = []
                for i in range(commands):
                    action = "on" if i % 2 == 0 else "off"
                    started = time.perf_counter()
                    answer = await http.post(
                        f"/api/device/{device_id}/control", params={"wait": "true"}, json={"action": action}
                    )
                    elapsed = time.perf_counter() - started
                    body = answer.json()
                    if answer.status_code != 200 or body["status"] != "succeeded":
                        for part in parts:
                            if part.done():
                                print(part, part.exception())
                        raise SystemExit(f"command {i} did not succeed: {answer.status_code} {body}")
                    timings.append(elapsed)
        finally:
            for part in parts:
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
            try:
                await runtime.js.delete_stream(settings.stream_name)
            except Exception:
                pass
    return timings


async def main(args: argparse.Namespace) -> None:
    async with EmulatorFleet(["HS110"], host="127.0.0.1", port=0, seed=3) as fleet:
        address = fleet.addresses[0]
        with scratch_database("wl_bench_control") as database_url:
            rest = await through_rest(database_url, args.nats_url, address, args.commands)
        direct = await direct_kasa(address, args.commands)
    rest_median = report("REST control ?wait=true -> confirmed state", rest)
    direct_median = report("baseline python-kasa set_state + update", direct)
    print(f"REST / baseline (median): {rest_median / direct_median:.1f}x")


if __name__ == "__main__":
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=200, help="commands per side (default 200)")
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(parser.parse_args()))
