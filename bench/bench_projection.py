"""Projection catch-up: the devices projector's rebuild rate against reading the log alone, same run.

    python bench/bench_projection.py [--devices 200] [--cycles 100]

Stores `devices x cycles` readings, then times (1) the baseline: reading and decoding
the whole notification log in sections of 2000, and (2) `rebuild("devices")`, which
reads the same sections, applies them and commits rows and position once per batch.
Uses a scratch database on DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.eventstore import WattLedger, ensure_events_schema, store_env  # noqa: E402
from bench.scratch import bench_main, log_read_rate, seed_fleet_history  # noqa: E402
from projections.devices import DevicesProjector  # noqa: E402
from projections.engine import ProjectionEngine  # noqa: E402

SECTION = 2000


def run(url: str, devices: int, cycles: int) -> None:
    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    engine = ProjectionEngine(app, url, [DevicesProjector()], batch_size=SECTION)
    try:
        total = seed_fleet_history(app, devices, cycles, subnet=7)
        baseline = log_read_rate(app, SECTION)

        engine.setup()
        began = time.perf_counter()
        applied = engine.rebuild("devices")
        ours = applied / (time.perf_counter() - began)
    finally:
        engine.close()
        app.close()
    print(f"read + decode log     {baseline:10,.0f} events/s  ({total} events)")
    print(f"rebuild devices       {ours:10,.0f} events/s  ({applied} events, batches of {SECTION})")
    print(f"ratio                 {ours / baseline:10.2f}")


if __name__ == "__main__":
    bench_main(__doc__, run, devices=200, cycles=100)
