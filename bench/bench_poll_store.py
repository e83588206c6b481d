"""Storing poll cycles: the handlers' `record_polls` against a plain multi-aggregate `save()` baseline, same run.

    python bench/bench_poll_store.py [--devices 500] [--cycles 10]

A poll cycle of N devices is N readings plus the devices' relay / online checks, stored by
`CommandHandlers.record_polls` over the poller's caching store (one transaction per 100 devices). The baseline saves N new readings streams with one reading each in one
`save()` (no loading of devices): the floor set by the event store itself. Uses a scratch
database on DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch import NoDriver, bench_main, plug  # noqa: E402

from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, ensure_events_schema, store_env  # noqa: E402
from domain.commands import PollResult, RecordPolls  # noqa: E402
from domain.device import Device  # noqa: E402
from domain.handlers import CommandHandlers  # noqa: E402
from domain.meter import MeterDay  # noqa: E402


async def store_cycles(app: WattLedger, fleet: list[Device], start: datetime, cycles: int) -> None:
    handlers = CommandHandlers(StoreUnitOfWork(app, cache=True), NoDriver(), SystemClock())
    for cycle in range(cycles):
        at = start + timedelta(minutes=cycle + 1)
        results = tuple(PollResult(device_id=d.id, measured_at=at, snapshot=plug(i, cycle + 1.0))
                        for i, d in enumerate(fleet))
        await handlers.record_polls(RecordPolls(results=results, actor="bench"))


def run(url: str, devices: int, cycles: int) -> None:
    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    try:
        fleet = [Device.from_snapshot(f"10.8.{i // 256}.{i % 256}", plug(i, 0), alias=None, actor="bench")
                 for i in range(devices)]
        for first in range(0, len(fleet), 100):
            app.save(*fleet[first : first + 100])
        start = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)

        began = time.perf_counter()
        asyncio.run(store_cycles(app, fleet, start, cycles))
        ours = devices * cycles / (time.perf_counter() - began)

        began = time.perf_counter()
        for cycle in range(cycles):
            at = start + timedelta(days=cycle + 1)
            meters = []
            for i, d in enumerate(fleet):
                meter = MeterDay(device_id=d.id, day=at.date().isoformat())
                meter.record(at, plug(i, cycle + 1.0), actor="bench")
                meters.append(meter)
            app.save(*meters)
        baseline = devices * cycles / (time.perf_counter() - began)
    finally:
        app.close()
    print(f"record_polls          {ours:10,.0f} readings/s  ({devices} devices x {cycles} cycles)")
    print(f"baseline save()       {baseline:10,.0f} readings/s  (new streams, no device loads)")
    print(f"ratio                 {ours / baseline:10.2f}")


if __name__ == "__main__":
    bench_main(__doc__, run, devices=500, cycles=10)
