"""The alerts read model against a real PostgreSQL: power held past a rule's duration, energy per day,
judged by the readings' and ticks' own times; a rebuild gives the same rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row

from adapters.eventstore import PollResult, StoreUnitOfWork, WattLedger
from adapters.identity import FernetBox, RandomSecrets, derive_box_key
from domain.alert_handlers import AlertHandlers, RuleChange
from projections.alerts import AlertsProjector
from projections.engine import ProjectionEngine
from tests.harness import engine_for, lamp
from tests.kit import ManualClock, run_sync, seed_device, seed_polls

T0 = datetime(2026, 3, 2, 10, tzinfo=timezone.utc)


@pytest.fixture
def store(app: WattLedger, database_url: str) -> Iterator[tuple[WattLedger, ProjectionEngine]]:
    engine = engine_for(app, database_url, AlertsProjector(), batch_size=5)
    yield app, engine
    engine.close()


def handlers(app: WattLedger, at: datetime) -> AlertHandlers:
    return AlertHandlers(StoreUnitOfWork(app), ManualClock(at), FernetBox([derive_box_key("k" * 16)]), RandomSecrets())


def rule(app: WattLedger, **fields: object) -> UUID:
    saved = run_sync(handlers(app, T0).create_rule(RuleChange(**fields), actor="user:1"))  # type: ignore[arg-type]
    return saved.rule_id


def alerts(database_url: str) -> list[dict[str, object]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT rule_name, fired_at, resolved_at, detail FROM wl_read.alerts "
                            "ORDER BY fired_at, rule_name").fetchall()  # fmt: skip


def test_power_held_past_the_duration_fires_once_and_energy_per_day_fires_and_rolls_over(
    store: tuple[WattLedger, ProjectionEngine], database_url: str
) -> None:
    app, engine = store
    device = seed_device(app, "127.0.0.1:10001", lamp(1000.0, power_w=2000.0), measured_at=T0)
    rule(app, name="heater left on", kind="power_above", device_id=device, threshold=1500.0, for_s=600)
    rule(app, name="big day", kind="energy_per_day", device_id=device, threshold=0.5)
    polls = [PollResult(device_id=device, measured_at=T0 + timedelta(minutes=m), snapshot=lamp(1000.0 + 30 * m,
             power_w=2000.0 if m < 20 else 50.0)) for m in range(1, 25)]  # fmt: skip
    seed_polls(app, polls)
    assert run_sync(handlers(app, T0 + timedelta(days=1, minutes=1)).tick())
    engine.catch_up("alerts")
    live = alerts(database_url)
    engine.rebuild("alerts")

    assert [(a["rule_name"], a["fired_at"], a["resolved_at"]) for a in live] == [
        ("heater left on", T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)),
        ("big day", T0 + timedelta(minutes=17), T0 + timedelta(days=1, minutes=1)),
    ]
    assert live[1]["detail"] == "energy today 0.510 kWh, limit 0.5 kWh"
    assert alerts(database_url) == live and engine.verify(["alerts"]) == []
