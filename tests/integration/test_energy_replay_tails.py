"""A replay of the energy read model refolds each channel from the tail it kept in memory after the last
section, and takes its devices from memory too, without reading the tables again, and ends with the rows the
live read model holds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import psycopg
import pytest

from adapters.eventstore import PollResult, WattLedger
from domain.readings import DeviceSnapshot
from projections.energy import BUCKETS, DEVICES, HOURS, READINGS, EnergyProjector, _Channel
from projections.engine import ProjectionEngine
from projections.tables import Table
from projections.tracking import QUARANTINE
from tests.kit import seed_device, seed_polls

T0 = datetime(2026, 3, 1, 23, 50, tzinfo=timezone.utc)


def plug(total_wh: float, power_w: float = 60.0) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Heater", model="HS110", device_type="plug", mac="AA:01", firmware="1", is_on=True, has_emeter=True,
        power_w=power_w, voltage_v=230.0, current_a=0.3, total_wh=total_wh,
    )


def energy_rows(database_url: str) -> list[list[tuple[Any, ...]]]:
    with psycopg.connect(database_url) as conn:
        return [conn.execute(f"SELECT * FROM {t.name} ORDER BY 1, 2, 3").fetchall() for t in (READINGS, BUCKETS, HOURS)]


def seed_minutes(app: WattLedger, plugs: Sequence[UUID], minutes: range) -> None:
    for minute in minutes:
        at = T0 + timedelta(minutes=minute)
        seed_polls(app, [PollResult(device_id=d, measured_at=at, snapshot=plug(100.0 * i + minute * 1.5))
                         for i, d in enumerate(plugs)])  # fmt: skip


def test_after_its_first_section_a_replay_reads_no_stored_reading_of_a_channel_read_in_order(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugs = [seed_device(app, f"127.0.0.1:{13200 + i}", plug(100.0 * i), measured_at=T0) for i in range(3)]
    seed_minutes(app, plugs, range(1, 25))
    engine = ProjectionEngine(app, database_url, [EnergyProjector()], batch_size=5000, replay_batch_size=9)
    engine.setup()
    try:
        engine.catch_up_all()
        live = energy_rows(database_url)
        asked: list[int] = []
        window = EnergyProjector._window

        def counted(self: EnergyProjector, cur: psycopg.Cursor[Any], channels: list[_Channel], *, bounded: bool
                    ) -> list[list[tuple[Any, ...]]]:  # fmt: skip
            asked.append(len(channels))
            return window(self, cur, channels, bounded=bounded)

        loaded: list[int] = []
        load = Table.load

        def counted_load(self: Table[Any], cur: psycopg.Cursor[Any], keys: Any) -> dict[Any, Any]:
            if self is DEVICES:
                loaded.append(len(keys))
            return load(self, cur, keys)

        monkeypatch.setattr(EnergyProjector, "_window", counted)
        monkeypatch.setattr(Table, "load", counted_load)
        replayed = engine.rebuild("energy")
        assert replayed > 9 * 8, "the replay ran over many sections"
        assert energy_rows(database_url) == live
        assert sum(asked) == len(plugs), "each channel's stored readings were read once, at its first section"
        assert sum(loaded) == len(plugs), "each device's row was read once, when its first event came"
    finally:
        engine.close()


def test_a_late_reading_and_a_failing_batch_leave_the_replay_equal_to_the_live_read_model(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late reading sends its channel back to the table; a batch that fails once it has refolded its
    channels (its savepoint rolled back, its event quarantined) leaves no tail behind that the table lacks."""
    plugs = [seed_device(app, f"127.0.0.1:{13300 + i}", plug(100.0 * i), measured_at=T0) for i in range(3)]
    seed_minutes(app, plugs, range(1, 13))
    late = T0 + timedelta(minutes=4, seconds=30)
    seed_polls(app, [PollResult(device_id=plugs[1], measured_at=late, snapshot=plug(105.0, 900.0))])
    seed_minutes(app, plugs, range(13, 21))
    poison = T0 + timedelta(minutes=7)
    fold = EnergyProjector._fold

    def failing(self: EnergyProjector, cur: psycopg.Cursor[Any], channels: list[_Channel],
                tails: dict[Any, Any] | None = None) -> Any:  # fmt: skip
        folded = fold(self, cur, channels, tails)  # the channels are refolded, their new tails made, then it fails
        if any(c.device_id == plugs[0] and poison in c.new for c in channels):
            raise ValueError("a reading this read model cannot apply")
        return folded

    monkeypatch.setattr(EnergyProjector, "_fold", failing)
    engine = ProjectionEngine(app, database_url, [EnergyProjector()], batch_size=5000, replay_batch_size=5)
    engine.setup()
    try:
        engine.catch_up_all()
        live = energy_rows(database_url)
        with psycopg.connect(database_url) as conn:
            quarantined = conn.execute(f"SELECT projector, position FROM {QUARANTINE}").fetchall()
        assert [name for name, _ in quarantined] == ["energy"]
        assert engine.verify(["energy"]) == []
        engine.rebuild("energy")
        assert energy_rows(database_url) == live
        with psycopg.connect(database_url) as conn:
            assert conn.execute(f"SELECT projector, position FROM {QUARANTINE}").fetchall() == quarantined
        assert any(r[2] == late for r in live[0]), "the late reading is kept"
    finally:
        engine.close()
