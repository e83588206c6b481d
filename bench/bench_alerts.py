"""The alerts read model's replay rate against the devices read model's, same run, same log.

    python bench/bench_alerts.py [--devices 200] [--cycles 100]

Stores `devices x cycles` readings and one `power_above` rule per tenth device, then times
`rebuild("devices")` (the baseline: the same energy fold per device) and `rebuild("alerts")`
(the fold, and the rules of each reading's device judged). Uses a scratch database on
DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, ensure_events_schema, store_env  # noqa: E402
from adapters.identity import FernetBox, RandomSecrets, derive_box_key  # noqa: E402
from bench.scratch import bench_main, seed_fleet_history  # noqa: E402
from domain.alert_handlers import AlertHandlers, RuleChange  # noqa: E402
from projections.alerts import AlertsProjector  # noqa: E402
from projections.devices import DEVICES, DevicesProjector  # noqa: E402
from projections.engine import ProjectionEngine  # noqa: E402

SECTION = 2000


def run(url: str, devices: int, cycles: int) -> None:
    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    engine = ProjectionEngine(app, url, [DevicesProjector(), AlertsProjector()], batch_size=SECTION)
    try:
        total = seed_fleet_history(app, devices, cycles, subnet=9)
        engine.setup()
        engine.catch_up("devices")
        with psycopg.connect(url) as conn:
            ids = [row[0] for row in conn.execute(f"SELECT device_id FROM {DEVICES.name} ORDER BY address")]
        handlers = AlertHandlers(StoreUnitOfWork(app), SystemClock(), FernetBox([derive_box_key("b" * 16)]),
                                 RandomSecrets())  # fmt: skip
        for device_id in ids[::10]:
            change = RuleChange(name="hot", kind="power_above", device_id=device_id, threshold=50.0, for_s=300)
            asyncio.run(handlers.create_rule(change, actor="bench"))
        timings = {}
        for name in ("devices", "alerts"):
            began = time.perf_counter()
            applied = engine.rebuild(name)
            timings[name] = applied / (time.perf_counter() - began)
    finally:
        engine.close()
        app.close()
    print(f"rebuild devices       {timings['devices']:10,.0f} events/s  ({total} events stored)")
    print(f"rebuild alerts        {timings['alerts']:10,.0f} events/s  ({len(ids[::10])} rules)")
    print(f"ratio                 {timings['alerts'] / timings['devices']:10.2f}")


if __name__ == "__main__":
    bench_main(__doc__, run, devices=200, cycles=100)
