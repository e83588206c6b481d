"""Energy: importing and projecting a year of one-minute readings of one device, and answering over it.

    python bench/bench_energy.py [--days 365]

Measures, on a scratch database on DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres):

1. import: `EnergyHandlers.import_readings` in requests of 10,000 readings (what
   `POST /api/devices/{device}/readings` runs), readings/s;
2. projection: the energy read model catching up with those events
   (`rebuild("energy")`), readings/s;
3. baseline: plain psycopg `executemany` of the same rows (timestamp, power,
   counter) into an unindexed table, rows/s, in the same run;
4. the median time of the queries behind `history?period=1y` (auto: weekly),
   `history?period=24h&aggregation=raw` and `/api/costs` for a year, over 30
   runs each, with a simple rate in force.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, ensure_events_schema, store_env  # noqa: E402
from bench.scratch import scratch_database  # noqa: E402
from domain.device import Device  # noqa: E402
from domain.energy import EnergyRules  # noqa: E402
from domain.energy_handlers import EnergyHandlers, ImportReadings, SetRate  # noqa: E402
from domain.imports import ImportedReading  # noqa: E402
from domain.readings import DeviceSnapshot  # noqa: E402
from projections.costs import cost_report  # noqa: E402
from projections.energy import EnergyProjector  # noqa: E402
from projections.energy_queries import history  # noqa: E402
from projections.engine import ProjectionEngine  # noqa: E402

PER_REQUEST = 10_000
RUNS = 30
ZONE = ZoneInfo("America/New_York")


def readings(start: datetime, count: int) -> list[ImportedReading]:
    """One-minute readings: a daily load curve and a rising counter."""
    out = []
    total = 0.0
    for n in range(count):
        at = start + timedelta(minutes=n)
        power = 40.0 + 400.0 * (18 <= at.hour < 20)
        out.append(ImportedReading(timestamp=at.isoformat(), power_w=power, total_wh=round(total, 4)))
        total += power / 60
    return out


def median_ms(run: object, loop: asyncio.AbstractEventLoop) -> float:
    times = []
    for _ in range(RUNS):
        began = time.perf_counter()
        loop.run_until_complete(run())  # type: ignore[operator]
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def main(url: str, days: int) -> None:
    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    engine = ProjectionEngine(app, url, [EnergyProjector(EnergyRules.for_polling_interval(60))], batch_size=2000)
    loop = asyncio.new_event_loop()
    snapshot = DeviceSnapshot(
        alias="bench", model="HS110", device_type="plug", mac="BE:NC:H0", firmware="1", is_on=True,
        has_emeter=True, power_w=0.0, total_wh=0.0,
    )  # fmt: skip
    device = Device.from_snapshot("10.6.0.1", snapshot, alias=None, actor="bench")
    app.save(device)
    handlers = EnergyHandlers(StoreUnitOfWork(app), SystemClock())
    loop.run_until_complete(handlers.set_rate(SetRate(
        body={"rate_type": "simple", "rate_structure": {"rate_per_kwh": "0.15"}, "effective_from": "2000-01-01T00:00Z"},
        actor="bench",
    )))  # fmt: skip
    end = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    start = end - timedelta(days=days)
    items = readings(start, days * 1440)
    try:
        began = time.perf_counter()
        for first in range(0, len(items), PER_REQUEST):
            part = tuple(items[first : first + PER_REQUEST])
            loop.run_until_complete(handlers.import_readings(
                ImportReadings(device_id=device.id, readings=part, actor="bench")
            ))  # fmt: skip
        imported = len(items) / (time.perf_counter() - began)

        engine.setup()
        began = time.perf_counter()
        engine.rebuild("energy")
        projected = len(items) / (time.perf_counter() - began)

        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE plain_readings (at timestamptz, power_w double precision, total_wh double precision)")
            rows = [(datetime.fromisoformat(r.timestamp), r.power_w, r.total_wh) for r in items]
            began = time.perf_counter()
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO plain_readings VALUES (%s, %s, %s)", rows)
            conn.commit()
            baseline = len(rows) / (time.perf_counter() - began)

        async def connect() -> psycopg.AsyncConnection[object]:
            return await psycopg.AsyncConnection.connect(url, autocommit=True)

        conn_a = loop.run_until_complete(connect())
        now = datetime.now(timezone.utc)
        year_start = (now - timedelta(days=365)).replace(minute=0, second=0, microsecond=0)
        year_end = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)

        async def year_history() -> None:
            await history(conn_a, device.id, year_start, year_end, "weekly", ZONE)

        async def raw_day() -> None:
            await history(conn_a, device.id, now - timedelta(days=1), now, "raw", ZONE)

        async def year_costs() -> None:
            await cost_report(conn_a, (now - timedelta(days=364)).astimezone(ZONE).date(), now.astimezone(ZONE).date(), ZONE)

        timings = {
            "history?period=1y (weekly)": median_ms(year_history, loop),
            "history?period=24h&aggregation=raw": median_ms(raw_day, loop),
            "costs for a year": median_ms(year_costs, loop),
        }
        loop.run_until_complete(conn_a.close())
    finally:
        engine.close()
        app.close()
        loop.close()
    print(f"readings              {len(items):10,} ({days} days of one-minute readings, one device)")
    print(f"import                {imported:10,.0f} readings/s  (requests of {PER_REQUEST})")
    print(f"projection (rebuild)  {projected:10,.0f} readings/s")
    print(f"baseline executemany  {baseline:10,.0f} rows/s")
    for name, ms in timings.items():
        print(f"{name:36} median {ms:7.2f} ms over {RUNS} runs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    with scratch_database() as url:
        main(url, args.days)
