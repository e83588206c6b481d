"""Fleet backfill: plugs importing a month of last year's readings over HTTP, 4 clients at once.

    python bench/bench_backfill.py [--devices 200] [--interval-min 60] [--clients 4] [--rate tiered|simple]
                                   [--single-days 31] [--no-relay | --relay-process | --relay-in-process]

An API process runs the real parts (`run_parts`: API under uvicorn, projectors, and the relay
in a child process of its own, as `wattledger serve` runs them) on a scratch database, with a
tiered rate (the running-total path) or a simple one.
This process then:

1. fleet: `--devices` plugs each import June of last year (one reading every
   `--interval-min` minutes, one request per plug) through
   `POST /api/devices/{device}/readings` with an API key, `--clients` requests in
   flight at once. Reported: readings/s stored (every answer received) and end to
   end (the energy read model holding all of them), the share of answers that said
   `projected: true`, and the API process's peak RSS (VmHWM) before and after;
2. one device: `--single-days` of one-minute readings in requests of 10,000, one at
   a time, readings/s stored (every answer received) and end to end (projected),
   against plain psycopg `executemany` of the same rows (timestamp, power, counter)
   into an unindexed table in the same run, measured just before and just after the
   import (the better of the two is the baseline); both ratios are printed, with each
   request's seconds, and the same requests through the import use case in this
   process (no HTTP, no wait for projection) as a third figure.

`--no-relay` runs the API process without the relay, to see what publishing every event to
NATS costs the imports; `--relay-in-process` runs the relay in the API process (as `serve` with
`WATTLEDGER_RELAY_PROCESS=false` does), where its CPU is taken from the API's handlers and
projectors; `--relay-process` runs it in a process this bench starts beside the API process
(as `wattledger api` and `wattledger relay` would).

PostgreSQL from DATABASE_URL (a scratch database, dropped at the end), NATS from NATS_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch import scratch_database  # noqa: E402

DEFAULT_NATS = "nats://127.0.0.1:4222"
RELAY_MODES = {"no_relay": "off", "relay_process": "alone", "relay_in_process": "in-process"}
"""Where the relay runs, by option; by default in a child process of the API process, as `serve` runs it."""
PASSWORD = "Backfill-passphrase-42"
PER_REQUEST = 10_000
RATES = {
    "tiered": {"rate_type": "tiered", "effective_from": "2000-01-01T00:00:00Z", "billing_cycle_day": 1,
               "rate_structure": {"tier1_limit": 500, "tier1_rate": 0.1, "tier2_limit": 1500, "tier2_rate": 0.2,
                                  "tier3_rate": 0.3}},
    "simple": {"rate_type": "simple", "effective_from": "2000-01-01T00:00:00Z", "rate_structure": {"rate_per_kwh": 0.2}},
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def memory(field: str) -> str:
    return next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))


def seed_devices(url: str, count: int) -> list[str]:
    """Store `count` plugs plus the two single-import ones (the API process's projectors catch up); their ids."""
    from adapters.eventstore import WattLedger, ensure_events_schema, store_env
    from domain.device import Device
    from domain.readings import DeviceSnapshot

    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    ids: list[str] = []
    try:
        for first in range(0, count + 2, 100):
            fleet = [
                Device.from_snapshot(f"10.20.{i // 256}.{i % 256}:9999", DeviceSnapshot(
                    alias=f"plug {i}", model="HS110", device_type="plug", mac=f"m{i}", firmware="1", is_on=True,
                    has_emeter=True, power_w=0.0, total_wh=0.0,
                ), alias=None, actor="bench")  # fmt: skip
                for i in range(first, min(first + 100, count + 2))
            ]
            app.save(*fleet)
            ids += [str(d.id) for d in fleet]
    finally:
        app.close()
    return ids


def serve(options: dict[str, Any], conn: Connection) -> None:
    asyncio.run(_serve(options, conn))


def _settings(options: dict[str, Any]) -> Any:
    """The settings both bench processes run with (errors only in the log), logging configured."""
    from infra.logging import configure_logging
    from infra.settings import Settings

    configure_logging("error")
    return Settings(port=options["port"], stream_name=options["stream"], subject_prefix=options["prefix"],
                    rate_limits=False, log_level="error")  # fmt: skip


async def _serve(options: dict[str, Any], conn: Connection) -> None:
    from domain.access import Scope
    from domain.identity_requests import Login, NewKey, SetupAdmin, StepUp
    from infra.bootstrap import open_runtime, run_parts
    from infra.child_parts import relay_child

    settings = _settings(options)
    stop = asyncio.Event()
    url, nats_url = options["database_url"], options["nats_url"]
    child = relay_child(settings, url, nats_url) if options["relay"] == "child" else None
    async with open_runtime(settings, url, nats_url) as runtime:
        task = asyncio.create_task(run_parts(runtime, stop, api=True, poll=False, relay=options["relay"] != "off",
                                             project=True, relay_process=child))  # fmt: skip
        await runtime.identity.setup(SetupAdmin(username="bench", password=PASSWORD))
        grant = await runtime.identity.login(Login(username="bench", password=PASSWORD))
        principal = await runtime.identity.authenticate_session(grant.session_id, grant.user_id)
        issued = await runtime.identity.issue_key(principal, NewKey(name="bench", scope=Scope.ADMIN),
                                                  StepUp(current_password=PASSWORD))  # fmt: skip
        runtime.saved()
        reads = runtime.services().reads
        while not await reads.wait_projected(await reads.newest(), projector="energy", timeout=5):
            pass
        conn.send((issued.key, memory("VmHWM")))
        while (request := await asyncio.get_running_loop().run_in_executor(None, conn.recv)) != "stop":
            newest = await reads.newest()
            while not await reads.wait_projected(newest, projector="energy", timeout=5):
                pass
            conn.send(memory("VmHWM"))
        stop.set()
        await task


def relay_alone(options: dict[str, Any], conn: Connection) -> None:
    asyncio.run(_relay_alone(options, conn))


async def _relay_alone(options: dict[str, Any], conn: Connection) -> None:
    """The relay part alone, until the pipe says stop."""
    from infra.bootstrap import open_runtime, run_parts

    stop = asyncio.Event()
    async with open_runtime(_settings(options), options["database_url"], options["nats_url"]) as runtime:
        task = asyncio.create_task(run_parts(runtime, stop, api=False, poll=False, relay=True, project=False))
        conn.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        stop.set()
        await task


def month_of_readings(start: datetime, end: datetime, step: timedelta, seed: int) -> list[dict[str, Any]]:
    """Readings from `start` to `end`: a load that changes with the hour, and a rising counter."""
    out = []
    total = 0.0
    at = start
    while at < end:
        power = 20.0 + (seed % 7) * 10 + 900.0 * (18 <= at.hour < 20)
        out.append({"timestamp": at.isoformat(), "power_w": power, "total_wh": round(total, 3)})
        total += power * step.total_seconds() / 3600
        at += step
    return out


async def fleet_import(base: str, key: str, ids: list[str], clients: int, step: timedelta) -> tuple[int, float, int]:
    """Every plug imports last June, `clients` requests at once; (readings, seconds, answers saying projected)."""
    import httpx

    year = datetime.now(timezone.utc).year - 1
    start, end = datetime(year, 6, 1, tzinfo=timezone.utc), datetime(year, 7, 1, tzinfo=timezone.utc)
    bodies = [(d, month_of_readings(start, end, step, n)) for n, d in enumerate(ids)]
    queue: asyncio.Queue[tuple[str, list[dict[str, Any]]]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    projected = 0

    async def client() -> None:
        nonlocal projected
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=600) as http:
            while not queue.empty():
                device, items = queue.get_nowait()
                response = await http.post(f"/api/devices/{device}/readings", json={"readings": items})
                assert response.status_code == 200, response.text
                projected += response.json()["projected"]

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return sum(len(items) for _, items in bodies), time.perf_counter() - began, projected


async def single_import(base: str, key: str, device: str, items: list[dict[str, Any]]) -> tuple[float, list[float], int]:
    """One request at a time; (seconds, each request's seconds, answers saying projected)."""
    import httpx

    latencies: list[float] = []
    projected = 0
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=600) as http:
        began = time.perf_counter()
        for first in range(0, len(items), PER_REQUEST):
            sent = time.perf_counter()
            response = await http.post(f"/api/devices/{device}/readings", json={"readings": items[first:first + PER_REQUEST]})
            latencies.append(time.perf_counter() - sent)
            assert response.status_code == 200, response.text
            projected += response.json()["projected"]
        return time.perf_counter() - began, latencies, projected


def handler_import(url: str, device: str, items: list[dict[str, Any]]) -> float:
    """The same requests through the import use case in this process (no HTTP, no wait for projection);
    readings/s stored."""
    import msgspec

    from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, store_env
    from domain.energy_handlers import EnergyHandlers, ImportReadings
    from domain.imports import ImportedReading

    app = WattLedger(store_env(url))
    try:
        handlers = EnergyHandlers(StoreUnitOfWork(app), SystemClock())
        bodies = [msgspec.json.encode({"readings": items[first:first + PER_REQUEST]})
                  for first in range(0, len(items), PER_REQUEST)]  # fmt: skip
        began = time.perf_counter()
        for body in bodies:
            readings = msgspec.json.decode(body, type=dict[str, tuple[ImportedReading, ...]])["readings"]
            asyncio.run(handlers.import_readings(
                ImportReadings(device_id=uuid.UUID(device), readings=readings, actor="bench")))  # fmt: skip
        return len(items) / (time.perf_counter() - began)
    finally:
        app.close()


def plain_executemany(url: str, items: list[dict[str, Any]], table: str) -> float:
    import psycopg

    rows = [(datetime.fromisoformat(r["timestamp"]), r["power_w"], r["total_wh"]) for r in items]
    with psycopg.connect(url) as conn:
        conn.execute(f"CREATE TABLE {table} (at timestamptz, power_w double precision, total_wh double precision)")
        began = time.perf_counter()
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", rows)
        conn.commit()
        return len(rows) / (time.perf_counter() - began)


def main(url: str, args: argparse.Namespace) -> None:
    import httpx

    ids = seed_devices(url, args.devices)
    port = free_port()
    options = {"database_url": url, "nats_url": os.environ.get("NATS_URL", DEFAULT_NATS), "port": port,
               "stream": f"WL_BACKFILL_{uuid.uuid4().hex[:6]}", "prefix": f"wlbf{uuid.uuid4().hex[:6]}",
               "relay": next((mode for option, mode in RELAY_MODES.items() if getattr(args, option)), "child")}  # fmt: skip
    here, there = mp.Pipe()
    process = mp.get_context("spawn").Process(target=serve, args=(options, there))
    process.start()
    relay_here, relay_there = mp.Pipe()
    relay_process = mp.get_context("spawn").Process(target=relay_alone, args=(options, relay_there))
    if args.relay_process:
        relay_process.start()
        relay_here.recv()
    try:
        key, rss_before = here.recv()
        base = f"http://127.0.0.1:{port}"
        response = httpx.post(f"{base}/api/rates", json=RATES[args.rate], headers={"X-API-Key": key}, timeout=60)
        assert response.status_code == 201, response.text
        step = timedelta(minutes=args.interval_min)
        began = time.perf_counter()
        readings, stored_s, projected = asyncio.run(fleet_import(base, key, ids[2:], args.clients, step))
        here.send("wait")
        rss_after = here.recv()
        end_to_end_s = time.perf_counter() - began

        year = datetime.now(timezone.utc).year - 1
        single = month_of_readings(datetime(year, 8, 1, tzinfo=timezone.utc),
                                   datetime(year, 8, 1, tzinfo=timezone.utc) + timedelta(days=args.single_days),
                                   timedelta(minutes=1), 3)  # fmt: skip
        baseline_before = plain_executemany(url, single, "plain_before")
        began = time.perf_counter()
        single_stored_s, latencies, single_projected = asyncio.run(single_import(base, key, ids[0], single))
        here.send("wait")
        here.recv()
        single_rate = len(single) / (time.perf_counter() - began)
        handler_rate = handler_import(url, ids[1], single)
        here.send("wait")
        here.recv()
        baseline = max(baseline_before, plain_executemany(url, single, "plain_after"))
        here.send("stop")
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.terminate()
        if args.relay_process:
            relay_here.send("stop")
            relay_process.join(timeout=60)
            if relay_process.is_alive():
                relay_process.terminate()
    where = {"off": "off", "alone": "in a process of its own, started beside the API process",
             "child": "in a child process of the API process (as serve)",
             "in-process": "in the API process"}[options["relay"]]  # fmt: skip
    print(f"relay                 {where}")
    print(f"fleet                 {args.devices} plugs x {readings // args.devices} readings (June {year}, every "
          f"{args.interval_min} min), {args.clients} clients, {args.rate} rate")  # fmt: skip
    print(f"stored (all answered) {readings / stored_s:10,.0f} readings/s  ({stored_s:.1f} s, {projected} of "
          f"{args.devices} answers projected: true)")  # fmt: skip
    print(f"end to end (projected){readings / end_to_end_s:10,.0f} readings/s  ({end_to_end_s:.1f} s)")
    print(f"API process memory    before {rss_before.split(':')[1].strip()}, after {rss_after.split(':')[1].strip()}")
    single_stored = len(single) / single_stored_s
    print(f"one device stored     {single_stored:10,.0f} readings/s  ({len(single)} one-minute readings, requests of "
          f"{PER_REQUEST}, every answer received)")  # fmt: skip
    print(f"one device end to end {single_rate:10,.0f} readings/s  (the energy read model holding all of them)")
    print(f"  answers             {single_projected} of {len(latencies)} projected: true, seconds each "
          + " ".join(f"{s:.2f}" for s in latencies))  # fmt: skip
    print(f"one device, use case  {handler_rate:10,.0f} readings/s stored (same requests, no HTTP, no wait)")
    print(f"baseline executemany  {baseline:10,.0f} rows/s  (best of {baseline_before:,.0f} before, after)")
    print(f"ratio stored          {single_stored / baseline:10.2f}")
    print(f"ratio end to end      {single_rate / baseline:10.2f}")
    print(f"ratio use case        {handler_rate / baseline:10.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--interval-min", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", choices=sorted(RATES), default="tiered")
    parser.add_argument("--single-days", type=int, default=31)
    relay = parser.add_mutually_exclusive_group()
    relay.add_argument("--no-relay", action="store_true",
                       help="run the API process without the relay (what publishing to NATS costs an import)")
    relay.add_argument("--relay-process", action="store_true",
                       help="run the relay in a process of its own beside the API process (wattledger api + relay)")
    relay.add_argument("--relay-in-process", action="store_true",
                       help="run the relay in the API process (serve with WATTLEDGER_RELAY_PROCESS=false)")
    arguments = parser.parse_args()
    with scratch_database() as database:
        main(database, arguments)
