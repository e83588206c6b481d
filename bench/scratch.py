"""A throwaway database for a benchmark run, on DATABASE_URL's server."""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import sql

from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, ensure_events_schema, store_env
from domain.address import DeviceAddress
from domain.commands import PollResult, RecordPolls
from domain.handlers import CommandHandlers
from domain.ports import DeviceDriver
from domain.readings import DeviceSnapshot

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def scratch_database(prefix: str = "wl_bench") -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
    admin = os.environ.get("DATABASE_URL", DEFAULT_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        parts = psycopg.conninfo.conninfo_to_dict(admin)
        parts["dbname"] = name
        yield psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()})
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def plug(i: int, total_wh: float) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias=f"plug {i}", model="HS110", device_type="plug", mac=f"m{i}", firmware="1", is_on=True,
        has_emeter=True, power_w=40.0, voltage_v=230.0, current_a=0.17, total_wh=total_wh,
    )


def bench_main(doc: str | None, run: Callable[[str, int, int], None], *, devices: int, cycles: int) -> None:
    """Parse `--devices` / `--cycles` and run one benchmark on a scratch database."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=devices)
    parser.add_argument("--cycles", type=int, default=cycles)
    args = parser.parse_args()
    with scratch_database() as url:
        run(url, args.devices, args.cycles)


class PollRecorder:
    """Stores poll results through the poller's handlers (caching store), from synchronous bench code."""

    def __init__(self, app: WattLedger) -> None:
        self.handlers = CommandHandlers(StoreUnitOfWork(app, cache=True), NoDriver(), SystemClock())
        self.loop = asyncio.new_event_loop()

    def record(self, results: Sequence[PollResult]) -> int:
        stored = self.loop.run_until_complete(
            self.handlers.record_polls(RecordPolls(results=tuple(results), actor="bench"))
        )
        return stored.recorded

    def close(self) -> None:
        self.loop.close()


class NoDriver(DeviceDriver):
    """Storing polls contacts no device."""

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        raise AssertionError("storing polls contacted a device")

    async def discover(self, target: str, *, port: int | None = None) -> list[DeviceAddress]:
        return []


def seed_fleet_history(app: WattLedger, devices: int, cycles: int, *, subnet: int) -> int:
    """Store `devices` plugs (at 10.<subnet>.x.y) and `cycles` readings of each, a minute apart, through
    the poller's write path; returns the number of events stored."""
    from datetime import datetime, timedelta, timezone

    from domain.device import Device

    fleet = [Device.from_snapshot(f"10.{subnet}.{i // 256}.{i % 256}", plug(i, 0), alias=None, actor="bench")
             for i in range(devices)]  # fmt: skip
    for start in range(0, len(fleet), 100):
        app.save(*fleet[start : start + 100])
    began_at = datetime(2026, 1, 5, tzinfo=timezone.utc)
    recorder = PollRecorder(app)
    for cycle in range(cycles):
        at = began_at + timedelta(minutes=cycle + 1)
        recorder.record([PollResult(device_id=d.id, measured_at=at, snapshot=plug(i, cycle + 1.0))
                         for i, d in enumerate(fleet)])  # fmt: skip
    recorder.close()
    return app.recorder.max_notification_id() or 0


def seed_fleet(database_url: str, devices: int, cycles: int, *, subnet: int) -> int:
    """`seed_fleet_history` into the database at `database_url`, its event tables made first."""
    ensure_events_schema(database_url)
    app = WattLedger(store_env(database_url))
    try:
        return seed_fleet_history(app, devices, cycles, subnet=subnet)
    finally:
        app.close()


def log_read_rate(app: WattLedger, section: int) -> float:
    """Events/s of reading and decoding the whole notification log in sections: every rebuild's floor."""
    import time

    total = app.recorder.max_notification_id() or 0
    began = time.perf_counter()
    position = 0
    while batch := app.recorder.select_notifications(start=position, limit=section, inclusive_of_start=False):
        for notification in batch:
            app.mapper.to_domain_event(notification)
        position = batch[-1].id
    return total / (time.perf_counter() - began)
