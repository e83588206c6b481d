"""Bytes per reading, store and read models together, against a plain narrow table of the same readings.

    python bench/bench_bytes.py [--devices 20] [--cycles 500]

Stores `devices x cycles` readings as the poller does (one reading per device per cycle,
one `record_polls` per cycle) and projects after every cycle, as a live projector does,
with the read models readings touch (devices, chain, audit, energy). Then prints, for every
table of the event store and the read models, what it grew by per reading
(`pg_total_relation_size`: rows, indexes, TOAST and free space) after a plain `VACUUM`
(what autovacuum does: dead row versions become free space, the file keeps its size) and
after `VACUUM FULL` (the live rows alone). The two differ by the tables' update bloat, which
depends on the server: dead versions are reclaimed on the page only once no transaction of
the whole server is older than them. The baseline is one narrow row per reading (device, time, on, power, voltage,
current, counter; primary key on device and time) in the same database.
Uses a scratch database on DATABASE_URL, dropped at the end.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.eventstore import EVENTS_SCHEMA, WattLedger, ensure_events_schema, store_env  # noqa: E402
from bench.scratch import PollRecorder, bench_main, plug  # noqa: E402
from domain.commands import PollResult  # noqa: E402
from domain.device import Device  # noqa: E402
from domain.energy import EnergyRules  # noqa: E402
from projections.audit import AuditProjector  # noqa: E402
from projections.chain import ChainProjector  # noqa: E402
from projections.devices import DevicesProjector  # noqa: E402
from projections.energy import EnergyProjector  # noqa: E402
from projections.engine import ProjectionEngine, Projector  # noqa: E402
from projections.tables import READ_SCHEMA  # noqa: E402

START = datetime(2026, 1, 5, tzinfo=timezone.utc)
STEP = timedelta(seconds=10)
NARROW = """CREATE TABLE bench_narrow (
    device_id uuid NOT NULL, measured_at timestamptz NOT NULL, is_on boolean NOT NULL, power_w double precision,
    voltage_v double precision, current_a double precision, total_wh double precision,
    PRIMARY KEY (device_id, measured_at))"""


def sizes(url: str) -> dict[str, int]:
    """Every table of the store's and the read models' schemas (and the baseline's), by name: total bytes."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT n.nspname || '.' || c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = ANY(%s) "
            "OR c.relname = 'bench_narrow'",
            ([EVENTS_SCHEMA, READ_SCHEMA],),
        ).fetchall()
    return {name: int(size) for name, size in rows}


def run(url: str, devices: int, cycles: int) -> None:
    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    projectors: list[Projector] = [
        DevicesProjector(), ChainProjector(), AuditProjector(), EnergyProjector(EnergyRules())
    ]
    engine = ProjectionEngine(app, url, projectors)
    recorder = PollRecorder(app)
    try:
        engine.setup()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(NARROW)
        fleet = [Device.from_snapshot(f"10.6.{i // 256}.{i % 256}", plug(i, 0), alias=None, actor="bench")
                 for i in range(devices)]  # fmt: skip
        app.save(*fleet)
        engine.catch_up_all()
        before = sizes(url)
        with psycopg.connect(url, autocommit=True) as conn:
            for cycle in range(cycles):
                at = START + cycle * STEP
                results = [PollResult(device_id=d.id, measured_at=at, snapshot=plug(i, 1000.0 + cycle))
                           for i, d in enumerate(fleet)]  # fmt: skip
                recorder.record(results)
                engine.catch_up_all()
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO bench_narrow VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        [(r.device_id, r.measured_at, r.snapshot.is_on, r.snapshot.power_w, r.snapshot.voltage_v,
                          r.snapshot.current_a, r.snapshot.total_wh) for r in results],
                    )  # fmt: skip
            conn.execute("VACUUM")
            vacuumed = sizes(url)
            conn.execute("VACUUM FULL")
            compact = sizes(url)
    finally:
        recorder.close()
        engine.close()
        app.close()
    readings = devices * cycles
    grown = {name: (vacuumed[name] - before.get(name, 0), compact[name] - before.get(name, 0)) for name in vacuumed}
    print(f"{readings:,} readings ({devices} devices x {cycles} cycles): bytes per reading")
    print(f"  {'table':40} {'VACUUM':>8} {'FULL':>8}")
    totals = [0.0, 0.0]
    for name, sizes_of in sorted(grown.items(), key=lambda item: -item[1][1]):
        if name.endswith("bench_narrow") or max(sizes_of) <= 0:
            continue
        per = [max(size, 0) / readings for size in sizes_of]
        totals = [t + p for t, p in zip(totals, per, strict=True)]
        print(f"  {name:40} {per[0]:8.1f} {per[1]:8.1f}")
    narrow = next(sizes_of for name, sizes_of in grown.items() if name.endswith("bench_narrow"))
    baseline = [size / readings for size in narrow]
    print(f"  {'total':40} {totals[0]:8.1f} {totals[1]:8.1f}")
    print(f"  {'baseline narrow row':40} {baseline[0]:8.1f} {baseline[1]:8.1f}")
    print(f"  {'ratio':40} {totals[0] / baseline[0]:8.2f} {totals[1] / baseline[1]:8.2f}")

if __name__ == "__main__":
    bench_main(__doc__, run, devices=20, cycles=500)
