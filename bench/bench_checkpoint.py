"""`rebuild all` from checkpoints against from zero: the time a rebuild takes once only the tail is replayed.

    python bench/bench_checkpoint.py [--devices 1000] [--cycles 60] [--tail 6]

Stores `devices x cycles` readings, projects them live, stores a checkpoint of every
read model (timed; bytes stored, as COPY text, and the live tables' size on disk), then
stores `devices x tail` more readings and projects them. Then, alternated, `--runs`
times each: `rebuild all` from zero, and from the checkpoints (checks, load, replay of
the tail, swap). Prints the best of each, events/s, and the baseline of reading and
decoding the whole log; then checks both rebuilds give the same rows.
Uses a scratch database on DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from uuid import UUID

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.eventstore import WattLedger, ensure_events_schema, store_env  # noqa: E402
from bench.scratch import log_read_rate, plug, scratch_database, seed_fleet_history  # noqa: E402
from domain.commands import PollResult  # noqa: E402
from infra.runtime import all_projectors  # noqa: E402
from infra.settings import Settings  # noqa: E402
from projections.checkpoints import write  # noqa: E402
from projections.engine import REPLAY_BATCH_SIZE, ProjectionEngine  # noqa: E402
from projections.rebuild import VERIFY_SCHEMA, checked_checkpoints, open_shadow, rebuild_from_checkpoints  # noqa: E402


SUBNET = 8


def fleet_ids(database_url: str) -> list[UUID]:
    """The seeded plugs' ids, in the order `seed_fleet_history` numbered them (by their address)."""
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT device_id, address FROM wl_read.devices").fetchall()

    def index(address: str) -> int:
        parts = address.split(":")[0].split(".")
        return int(parts[2]) * 256 + int(parts[3])
    return [device_id for device_id, _ in sorted(found, key=lambda r: index(r[1]))]


def seed_tail(app: WattLedger, ids: list[UUID], cycles: int, tail: int) -> None:
    """`tail` more poll cycles of the fleet, continuing its counters and its clock."""
    from datetime import datetime, timedelta, timezone

    from bench.scratch import PollRecorder

    recorder = PollRecorder(app)
    began_at = datetime(2026, 1, 5, tzinfo=timezone.utc)
    for cycle in range(cycles, cycles + tail):
        at = began_at + timedelta(minutes=cycle + 1)
        recorder.record([PollResult(device_id=d, measured_at=at, snapshot=plug(i, cycle + 1.0))
                         for i, d in enumerate(ids)])  # fmt: skip
    recorder.close()


def table_bytes(database_url: str, names: list[str]) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT sum(pg_total_relation_size(format('%%I.%%I', schemaname, tablename)::regclass)) "
                           "FROM pg_tables WHERE schemaname = 'wl_read' AND tablename = ANY(%s)", (names,)).fetchone()
    return int(row[0] or 0) if row else 0


def dump(database_url: str, engine: ProjectionEngine) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(database_url) as conn:
        return {t.name: conn.execute(f"{t.select} ORDER BY {t.key}").fetchall()
                for p in engine.projectors.values() for t in p.tables}  # fmt: skip


def run(url: str, devices: int, cycles: int, tail: int, runs: int) -> None:
    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    projectors = all_projectors(Settings())
    engine = ProjectionEngine(app, url, projectors)
    names = [p.name for p in projectors]
    try:
        seed_fleet_history(app, devices, cycles, subnet=SUBNET)
        engine.setup()
        engine.catch_up_all()
        began = time.perf_counter()
        made = [write(url, p) for p in projectors]
        checkpoint_s = time.perf_counter() - began
        at = made[0].position
        live = table_bytes(url, [t.bare for p in projectors for t in p.tables])
        seed_tail(app, fleet_ids(url), cycles, tail)
        engine.catch_up_all()
        total = app.recorder.max_notification_id() or 0
        baseline = log_read_rate(app, REPLAY_BATCH_SIZE)
        zero: list[float] = []
        resumed: list[float] = []
        checks: list[float] = []
        loads: list[float] = []
        replayed = 0
        for _ in range(runs):
            began = time.perf_counter()
            engine.rebuild_many(names)
            zero.append(time.perf_counter() - began)
            from_zero = dump(url, engine)
            began = time.perf_counter()
            replayed, _used = rebuild_from_checkpoints(engine, names)
            resumed.append(time.perf_counter() - began)
            began = time.perf_counter()
            found = checked_checkpoints(engine, projectors)
            checks.append(time.perf_counter() - began)
            with open_shadow(url, engine.event_log, projectors, VERIFY_SCHEMA, REPLAY_BATCH_SIZE) as shadow:
                began = time.perf_counter()
                shadow.restore(url, found)
                loads.append(time.perf_counter() - began)
        same = dump(url, engine) == from_zero
    finally:
        engine.close()
        app.close()
    stored = sum(c.stored_bytes for c in made)
    raw = sum(c.raw_bytes for c in made)
    rows = sum(c.rows for c in made)
    print(f"read models             {', '.join(names)}")
    print(f"log                     {total:,} events; checkpoints at {at:,}, tail {total - at:,} "
          f"({(total - at) / total:.0%})")
    print(f"read + decode log       {baseline:10,.0f} events/s")
    print(f"checkpoint all          {checkpoint_s:8.2f} s  {rows:,} rows, {stored / 2**20:,.1f} MiB stored, "
          f"{raw / 2**20:,.1f} MiB as text, live tables {live / 2**20:,.1f} MiB "
          f"({at / max(checkpoint_s, 1e-9):,.0f} log events covered/s)")
    print(f"rebuild all from zero   {min(zero):8.2f} s  {total / min(zero):10,.0f} events/s  "
          f"(best of {runs}: {', '.join(f'{t:.2f}' for t in zero)})")
    print(f"rebuild from checkpoint {min(resumed):8.2f} s  {replayed / min(resumed):10,.0f} tail events/s  "
          f"(best of {runs}: {', '.join(f'{t:.2f}' for t in resumed)})")
    print(f"  of which checks      {min(checks):8.2f} s  (versions, chain links, the chain over the tail)")
    print(f"  of which load        {min(loads):8.2f} s  {rows / min(loads):10,.0f} rows/s, "
          f"{at / min(loads):,.0f} log events' worth/s")
    print(f"speed-up                {min(zero) / min(resumed):8.2f}x; from zero is "
          f"{total / min(zero) / baseline:.2f}x reading the log")
    print(f"same rows as from zero  {same}")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=60)
    parser.add_argument("--tail", type=int, default=6)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with scratch_database() as url:
        run(url, args.devices, args.cycles, args.tail, args.runs)


if __name__ == "__main__":
    main()
