"""Replay equivalence: every read model, projected live while events arrive, equals its replay from zero."""

from __future__ import annotations

import itertools
import os
import threading
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.eventstore import PollResult, WattLedger
from domain.device import Device
from domain.readings import DeviceSnapshot, OutletReading
from infra.bootstrap import all_projectors
from infra.settings import load_settings
from projections.devices import DevicesProjector
from projections.engine import ProjectionEngine, Projector
from tests.kit import seed_device, seed_polls

T0 = datetime(2026, 10, 24, 21, 30, tzinfo=timezone.utc)
PORTS = itertools.count(12000)


def plug(total_wh: float | None, *, is_on: bool = True, mac: str = "AA", power_w: float | None = 80.0) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Heater", model="HS110", device_type="plug", mac=mac, firmware="1", is_on=is_on, has_emeter=True,
        power_w=power_w, voltage_v=231.0, current_a=0.35, total_wh=total_wh, rssi=-45,
    )


def strip(totals: list[float], states: list[bool]) -> DeviceSnapshot:
    outlets = tuple(
        OutletReading(outlet_id=f"s{i}", index=i, alias=f"Outlet {i}", is_on=on, power_w=5.0, total_wh=t)
        for i, (t, on) in enumerate(zip(totals, states, strict=True))
    )
    return DeviceSnapshot(
        alias="Strip", model="HS300", device_type="strip", mac="CC", firmware="1", is_on=any(states),
        has_emeter=True, power_w=5.0 * len(totals), total_wh=sum(totals), outlets=outlets,
    )


def change(app: WattLedger, device_id: UUID, act: str) -> None:
    device = app.repository.get(device_id)
    assert isinstance(device, Device)
    if act == "rename" and not device.removed:
        device.rename(f"{device.alias}+", actor="test")
    elif act == "remove" and not device.removed:
        device.remove(actor="test")
    elif act == "restore" and device.removed:
        device.restore(plug(None, mac="DD"), alias="Back", actor="test")
    elif act == "offline":
        device.went_offline(3, actor="test")
    elif act == "online":
        device.came_online(actor="test")
    app.save(device)


def seed_mixed_history(app: WattLedger) -> None:
    """Plugs and a strip across a local midnight in Berlin: resets, jitter, late readings, renames, removals."""
    plugs = [seed_device(app, f"127.0.0.1:{next(PORTS)}", plug(100.0 * i), measured_at=T0) for i in range(3)]
    power_strip = seed_device(app, f"127.0.0.1:{next(PORTS)}", strip([1.0, 2.0], [True, False]), measured_at=T0)
    for minute in range(1, 50, 4):
        at = T0 + timedelta(minutes=minute)
        totals = [100.0 * i + minute * (0.1 if minute % 12 else -50) for i in range(3)]
        seed_polls(app, [PollResult(device_id=d, measured_at=at, snapshot=plug(max(t, 0.0), is_on=minute % 8 != 1))
                         for d, t in zip(plugs, totals, strict=True)])
        seed_polls(app, [PollResult(device_id=power_strip, measured_at=at,
                                    snapshot=strip([1.0 + minute, 2.0 + minute / 2], [minute % 3 == 0, True]))])
        if minute == 21:
            change(app, plugs[1], "rename")
            change(app, plugs[2], "remove")
        if minute == 33:
            change(app, plugs[2], "restore")
            change(app, plugs[0], "offline")
            seed_polls(app, [], offline={plugs[1]: 3})
    seed_polls(app, [PollResult(device_id=plugs[0], measured_at=T0 + timedelta(minutes=2), snapshot=plug(7.0))])


def test_every_registered_read_model_replays_to_the_rows_it_projected_live(
    app: WattLedger, database_url: str
) -> None:
    projectors: list[Projector] = all_projectors(load_settings({**os.environ, "WATTLEDGER_TIMEZONE": "Europe/Berlin"}))
    engine = ProjectionEngine(app, database_url, projectors, batch_size=7)
    engine.setup()
    stop = threading.Event()

    def project_live() -> None:
        while not stop.is_set():
            engine.catch_up_all()

    live = threading.Thread(target=project_live)
    live.start()
    try:
        seed_mixed_history(app)
    finally:
        stop.set()
        live.join(30)
    try:
        engine.catch_up_all()
        names = [p.name for p in projectors]
        before = dump(database_url, projectors)
        for name in names:
            assert engine.verify([name]) == [], name
        engine.rebuild_many(names)
        assert dump(database_url, projectors) == before
    finally:
        engine.close()


def dump(database_url: str, projectors: list[Projector]) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(database_url) as conn:
        return {
            table.name: conn.execute(f"{table.select} ORDER BY {table.key}").fetchall()
            for projector in projectors
            for table in projector.tables
        }


step = st.one_of(
    st.tuples(st.just("poll"), st.integers(-2, 30), st.floats(-60.0, 40.0), st.booleans()),
    st.tuples(st.sampled_from(["rename", "remove", "restore", "offline", "online", "project", "missed"])),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=14), batch=st.integers(1, 6))
def test_the_devices_read_model_replays_to_what_it_projected_live_for_any_history(
    app: WattLedger, database_url: str, steps: list[tuple[Any, ...]], batch: int
) -> None:
    engine = ProjectionEngine(app, database_url, [DevicesProjector()], batch_size=batch)
    engine.setup()
    try:
        device_id = seed_device(app, f"127.0.0.1:{next(PORTS)}", plug(50.0), measured_at=T0)
        minute, total = 0, 50.0
        for kind, *args in steps:
            if kind == "poll":
                gap, delta, is_on = args
                minute, total = max(minute + gap, 0), max(total + delta, 0.0)
                seed_polls(app, [PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=minute),
                                            snapshot=plug(total, is_on=is_on))])
            elif kind == "project":
                engine.catch_up_all()
            elif kind == "missed":
                seed_polls(app, [], offline={device_id: 3})
            else:
                change(app, device_id, kind)
        engine.catch_up_all()
        assert engine.verify(["devices"]) == []
    finally:
        engine.close()
