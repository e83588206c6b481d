"""Compliance export: events/s and peak memory per format, against reading and decoding the log alone.

    python bench/bench_export.py [--events 1000000] [--formats jsonl,csv,xlsx]

Fills a scratch database on DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
with `--events` realistic `ReadingRecorded` events of 200 plugs (one meter day stream per plug
per day, a reading a minute), written with COPY straight into the stored events table in the
library's own format. Then times, in the same run:

1. the baseline: streaming the stored records and decoding each into its public envelope;
2. `export_events` in each format, each in a fresh child process, so its peak RSS
   (`resource.getrusage`) is the export's alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from adapters.compliance import export_events  # noqa: E402
from adapters.eventstore import WattLedger, ensure_events_schema, store_env  # noqa: E402
from adapters.history import EVENTS_TABLE, decode_records, iter_records  # noqa: E402
from bench.scratch import scratch_database  # noqa: E402
from projections.chain import ChainProjector, chain_link  # noqa: E402
from projections.engine import ProjectionEngine  # noqa: E402

DEVICES = 200
PER_DAY = 1440
START = datetime(2026, 1, 5, tzinfo=timezone.utc)
TOPIC = "domain.meter:MeterDay.ReadingRecorded"
STATE = (
    '{{"timestamp":{{"_type_":"datetime_iso","_data_":"{stamp}"}},'
    '"device_id":{{"_type_":"uuid_hex","_data_":"{device}"}},'
    '"measured_at":{{"_type_":"datetime_iso","_data_":"{measured}"}},'
    '"is_on":true,"power_w":{power},"voltage_v":{volts},"current_a":{amps},"total_wh":{total},'
    '"outlets":[],"actor":"system:poller","rssi":-52}}'
)


def fill(url: str, events: int) -> None:
    """`events` readings: device after device within each minute, one meter day stream per device per day."""
    devices = [uuid.uuid5(uuid.NAMESPACE_URL, f"bench-{i}") for i in range(DEVICES)]
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {EVENTS_TABLE} (originator_id, originator_version, topic, state) FROM STDIN") as copy:
            for n in range(events):
                minute, d = divmod(n, DEVICES)
                day, slot = divmod(minute, PER_DAY)
                at = START + timedelta(minutes=minute)
                power = 40.0 + (n * 7919 % 1000) / 10
                state = STATE.format(
                    stamp=(at + timedelta(seconds=1)).isoformat(), device=devices[d].hex, measured=at.isoformat(),
                    power=power, volts=229.0 + (n % 30) / 10, amps=round(power / 230, 3),
                    total=round(1000 + minute * power / 60, 3),
                )  # fmt: skip
                stream = uuid.uuid5(devices[d], str(day))
                copy.write_row((stream, slot + 2, TOPIC, state.encode()))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(url: str, fmt: str) -> None:
    """Run one export in this process and print its figures as JSON."""
    app = WattLedger(store_env(url))
    try:
        with tempfile.TemporaryDirectory(prefix="wl-export-") as out:
            from adapters.history import EventFilter

            began = time.perf_counter()
            manifest = export_events(url, app, EventFilter(), fmt, Path(out), chain_head=chain_link)
            seconds = time.perf_counter() - began
            size = sum(f.bytes for f in manifest.files)
    finally:
        app.close()
    print(json.dumps({"events": manifest.count, "seconds": seconds, "rss_mb": peak_rss_mb(), "bytes": size}))


def baseline(url: str, app: WattLedger) -> tuple[int, float]:
    """Stream the stored records and decode each into its envelope: the floor under any export."""
    began = time.perf_counter()
    count = 0
    with psycopg.connect(url) as conn, conn.transaction():
        section = []
        for record in iter_records(conn):
            section.append(record)
            if len(section) == 2000:
                count += len(decode_records(app, section))
                section.clear()
        count += len(decode_records(app, section))
    return count, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--formats", default="jsonl,csv,xlsx")
    parser.add_argument("--child", nargs=2, metavar=("URL", "FORMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with scratch_database("wl_bench_export") as url:
        ensure_events_schema(url)
        app = WattLedger(store_env(url))
        engine = ProjectionEngine(app, url, [ChainProjector()])
        try:
            engine.setup()
            began = time.perf_counter()
            fill(url, args.events)
            print(f"stored {args.events:,} events with COPY in {time.perf_counter() - began:.1f} s")
            count, seconds = baseline(url, app)
            print(f"read + decode log   {count / seconds:10,.0f} events/s  ({count:,} events, "
                  f"{seconds:.1f} s, peak RSS {peak_rss_mb():.0f} MB)")  # fmt: skip
            for fmt in args.formats.split(","):
                done = subprocess.run([sys.executable, __file__, "--child", url, fmt], capture_output=True, text=True,
                                      check=True)  # fmt: skip
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"export {fmt:<5}        {result['events'] / result['seconds']:10,.0f} events/s  "
                      f"({result['events']:,} events, {result['seconds']:.1f} s, peak RSS {result['rss_mb']:.0f} MB, "
                      f"{result['bytes'] / 1e6:,.0f} MB written)")  # fmt: skip
        finally:
            engine.close()
            app.close()


if __name__ == "__main__":
    main()
