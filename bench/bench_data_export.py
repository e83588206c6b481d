"""Data export over a device's whole history: rows/s and peak memory, against reading its readings alone.

    python bench/bench_data_export.py [--days 730] [--kinds raw-csv,hourly-json,daily-excel]

Fills a scratch database on DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
with `--days` of one-minute `ReadingRecorded` events of one plug (its meter day streams, in the
library's own format, with COPY). Then times, in the same run:

1. the baseline: `device_readings` over the whole range, reading and decoding the events alone;
2. `write_export` over 2000-01-01 to 2999-12-31 (the whole history and far past it) for each kind,
   each in a fresh child process, so its peak RSS (`resource.getrusage`) is the export's alone.
   Hourly and daily rows carry `cost`, priced from 5-minute buckets made up in memory at the rate the
   energy read model would answer them (a month per call), so the export's own work is measured.
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
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from adapters.data_exports import device_readings, write_export  # noqa: E402
from adapters.eventstore import WattLedger, ensure_events_schema, store_env  # noqa: E402
from adapters.history import EVENTS_TABLE  # noqa: E402
from bench.scratch import scratch_database  # noqa: E402
from domain.energy import EnergyRules  # noqa: E402
from domain.exports import DeviceLabel, ExportSpec  # noqa: E402
from domain.meter import meter_day_id  # noqa: E402

DEVICE = uuid.uuid5(uuid.NAMESPACE_URL, "bench-export-plug")
LABEL = DeviceLabel(device_id=DEVICE, address="10.7.0.1", name="Bench plug", mac="BE:NC:H1")
START = datetime(2024, 1, 1, tzinfo=timezone.utc)
WHOLE = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2999, 12, 31, tzinfo=timezone.utc))
NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
TOPIC = "domain.meter:MeterDay.ReadingRecorded"
STATE = (
    '{{"timestamp":{{"_type_":"datetime_iso","_data_":"{stamp}"}},'
    '"device_id":{{"_type_":"uuid_hex","_data_":"{device}"}},'
    '"measured_at":{{"_type_":"datetime_iso","_data_":"{measured}"}},'
    '"is_on":true,"power_w":{power},"voltage_v":230.1,"current_a":{amps},"total_wh":{total},'
    '"outlets":[],"actor":"system:poller","rssi":-52}}'
)
KINDS = {"raw-csv": ("raw", "csv"), "hourly-json": ("hourly", "json"), "daily-excel": ("daily", "excel")}


def fill(url: str, days: int) -> int:
    """One reading a minute for `days` days: a daily load curve and a rising counter."""
    total = 0.0
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {EVENTS_TABLE} (originator_id, originator_version, topic, state) FROM STDIN") as copy:
            for minute in range(days * 1440):
                at = START + timedelta(minutes=minute)
                power = 40.0 + 400.0 * (18 <= at.hour < 20)
                state = STATE.format(
                    stamp=(at + timedelta(seconds=1)).isoformat(), device=DEVICE.hex, measured=at.isoformat(),
                    power=power, amps=round(power / 230, 3), total=round(total, 3),
                )  # fmt: skip
                copy.write_row((meter_day_id(DEVICE, at.date()), minute % 1440 + 2, TOPIC, state.encode()))
                total += power / 60
    return days * 1440


def priced(device_id: uuid.UUID, start: datetime, end: datetime) -> list[tuple[datetime, Decimal]]:
    """What the energy read model answers for [start, end): a priced bucket every 5 minutes of the readings."""
    first, last = max(start, START), end
    count = max(int((last - first).total_seconds() // 300), 0)
    return [(first + timedelta(minutes=5 * n), Decimal("0.0012")) for n in range(count)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(url: str, kind: str) -> None:
    """Run one export in this process and print its figures as JSON."""
    aggregation, fmt = KINDS[kind]
    fields = ("timestamp", "power_w", "energy_kwh", "cost")
    spec = ExportSpec(devices=(DEVICE,), start=WHOLE[0], end=WHOLE[1], fields=fields, aggregation=aggregation,
                      timezone="America/New_York", format=fmt)  # type: ignore[arg-type]  # fmt: skip
    app = WattLedger(store_env(url))
    try:
        with tempfile.TemporaryDirectory(prefix="wl-data-export-") as out:
            began = time.perf_counter()
            written = write_export(app, uuid.uuid4(), spec, {DEVICE: LABEL}, Path(out), EnergyRules(), now=NOW,
                                   priced=None if aggregation == "raw" else priced)  # fmt: skip
            seconds = time.perf_counter() - began
    finally:
        app.close()
    print(json.dumps({"rows": written.record_count, "seconds": seconds, "rss_mb": peak_rss_mb(),
                      "bytes": written.file_size}))  # fmt: skip


def baseline(app: WattLedger) -> tuple[int, float]:
    """Read and decode the device's readings over the whole range: the floor under any export of them."""
    began = time.perf_counter()
    count = sum(1 for _ in device_readings(app, DEVICE, WHOLE[0], NOW))
    return count, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--child", nargs=2, metavar=("URL", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with scratch_database("wl_bench_data_export") as url:
        ensure_events_schema(url)
        app = WattLedger(store_env(url))
        try:
            began = time.perf_counter()
            stored = fill(url, args.days)
            print(f"stored {stored:,} readings ({args.days} days, one a minute) with COPY in "
                  f"{time.perf_counter() - began:.1f} s")  # fmt: skip
            count, seconds = baseline(app)
            print(f"read + decode       {count / seconds:10,.0f} readings/s  ({count:,} readings, {seconds:.1f} s)")
            for kind in args.kinds.split(","):
                done = subprocess.run([sys.executable, __file__, "--child", url, kind], capture_output=True,
                                      text=True, check=True)  # fmt: skip
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"export {kind:<12} {count / result['seconds']:10,.0f} readings/s  ({result['rows']:,} rows, "
                      f"{result['seconds']:.1f} s, peak RSS {result['rss_mb']:.0f} MB, "
                      f"{result['bytes'] / 1e6:,.1f} MB written)")  # fmt: skip
        finally:
            app.close()


if __name__ == "__main__":
    main()
