"""The energy read model's hourly rollups and fleet rows as a batch writes them, against a real PostgreSQL.

Hours wholly inside a channel's refolded span are summed from the buckets just
computed; the others are rolled up in SQL. Either way each hour must hold, to the
last digit of its text, what rolling its stored buckets up in SQL gives.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg

from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, ensure_events_schema, store_env
from domain.energy import EnergyRules
from domain.energy_handlers import EnergyHandlers, ImportReadings, SetRate
from domain.imports import ImportedReading
from projections.energy import BUCKETS, FLEET, HOURS, EnergyProjector
from projections.engine import ProjectionEngine
from tests.integration.test_energy_projection import LOW_TIERS, T0, device, import_late_shuffled_batches

ROLLED_UP = (
    "SELECT device_id, channel, date_bin('1 hour', start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour, "
    "sum(wh)::text, sum(on_s)::text, min(power_min)::text, max(power_max)::text, sum(power_sum)::text, "
    "sum(count)::text, bool_or(gap)::text, sum(cost)::text FROM (SELECT * FROM {b} ORDER BY start) AS b "
    "GROUP BY device_id, channel, hour ORDER BY device_id, channel, hour"
).format(b=BUCKETS.name)
STORED = (
    "SELECT device_id, channel, start, wh::text, on_s::text, power_min::text, power_max::text, power_sum::text, "
    f"count::text, gap::text, cost::text FROM {HOURS.name} ORDER BY device_id, channel, start"
)


def test_every_hour_holds_its_buckets_rolled_up_in_sql_after_late_shuffled_batches(database_url: str) -> None:
    """Three plugs import shuffled late batches that start and end inside hours, under tiers crossed many
    times, with a rate version that reaches back: every hour row equals its buckets rolled up in SQL, as text."""
    ensure_events_schema(database_url)
    app = WattLedger(store_env(database_url))
    engine = ProjectionEngine(app, database_url, [EnergyProjector(EnergyRules.for_polling_interval(60))])
    try:
        engine.setup()
        import_late_shuffled_batches(app, engine, "10.7.2", random.Random(17))
        with psycopg.connect(database_url) as conn:
            stored = conn.execute(STORED).fetchall()
            expected = conn.execute(ROLLED_UP).fetchall()
        assert len(stored) == 3 * 6
        assert any(row[-1] not in ("0", None) and "." in row[-1] for row in stored), "hours carry costs"
        assert stored == expected
    finally:
        engine.close()
        app.close()


class Recording(psycopg.Cursor[Any]):
    """A cursor that keeps the text of every statement it runs."""

    statements: list[str] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        Recording.statements.append(str(query))
        return super().execute(query, params, **kwargs)


def writes(statements: Sequence[str], table: str) -> list[str]:
    return [s for s in statements if s.lstrip().startswith(("INSERT", "UPDATE", "DELETE")) and f"{table} " in s]


def test_a_first_import_writes_the_fleet_once_and_rolls_no_hour_up_in_sql(database_url: str) -> None:
    """A plug's first readings, from the top of an hour: the batch writes each fleet bucket in one statement
    (kWh, count, cost and price together) and its hours from the buckets it computed, not from SQL."""
    ensure_events_schema(database_url)
    app = WattLedger(store_env(database_url))
    engine = ProjectionEngine(app, database_url, [EnergyProjector(EnergyRules.for_polling_interval(60))])
    loop = asyncio.new_event_loop()
    try:
        engine.setup()
        plug = device("10.7.3.1")
        app.save(plug)
        handlers = EnergyHandlers(StoreUnitOfWork(app), SystemClock())
        loop.run_until_complete(handlers.set_rate(SetRate(body=LOW_TIERS, actor="test")))
        engine.catch_up("energy")
        part = tuple(ImportedReading(timestamp=(T0 + timedelta(minutes=n)).isoformat(), power_w=600.0,
                                     total_wh=10.0 * n) for n in range(180))  # fmt: skip
        loop.run_until_complete(handlers.import_readings(ImportReadings(device_id=plug.id, readings=part, actor="test")))
        Recording.statements = []
        engine._connection().cursor_factory = Recording
        engine.catch_up("energy")
        with psycopg.connect(database_url) as conn:
            stored = conn.execute(STORED).fetchall()
            expected = conn.execute(ROLLED_UP).fetchall()
            fleet = conn.execute(f"SELECT count(*), count(*) FILTER (WHERE cost > 0) FROM {FLEET.name}").fetchone()
        assert len(writes(Recording.statements, FLEET.name)) == 1
        assert writes(Recording.statements, HOURS.name) == [s for s in writes(Recording.statements, HOURS.name)
                                                             if s.lstrip().startswith("DELETE")]  # fmt: skip
        assert len(stored) == 3 and stored == expected
        assert fleet == (36, 36)
    finally:
        loop.close()
        engine.close()
        app.close()
