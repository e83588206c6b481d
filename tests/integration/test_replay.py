"""Rebuilds into shadow tables swapped in atomically, and verification against the live read models."""

from __future__ import annotations

import io
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import msgspec
import psycopg
import pytest
from psycopg.rows import dict_row

from adapters.eventstore import PollResult, WattLedger
from infra import replay
from infra.replay import ProgressDisplay
from domain.readings import DeviceSnapshot
from projections import replay_plan
from projections.devices import DEVICES, DevicesProjector
from projections.engine import ProjectionEngine
from projections.rebuild import SHADOW_SCHEMA, VERIFY_SCHEMA, ReplayBusy, ReplayProgress
from projections.tables import READ_SCHEMA, Table
from projections.identity import IdentityProjector
from tests.kit import ManualClock, seed_device, seed_polls

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)


def plug(total_wh: float, *, is_on: bool = True) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Kettle", model="HS110", device_type="plug", mac="AA", firmware="1", is_on=is_on, has_emeter=True,
        power_w=50.0, voltage_v=230.0, current_a=0.2, total_wh=total_wh, rssi=-50,
    )


class Tally(msgspec.Struct, kw_only=True):
    topic: str
    events: int


class TallyProjector:
    """Counts events by type: an event applied twice or missed shows in the sums."""

    version = 1

    def __init__(self, name: str = "tally", *, indexes: Sequence[str] = ()) -> None:
        self.name = name
        self.table = Table(f"tally_{name}", Tally, key="topic", indexes=indexes)
        self.tables = (self.table,)
        self.hook: Callable[[Table[Any]], None] = lambda table: None

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        self.hook(self.table)
        counts = Counter(type(event).__qualname__ for event in events)
        cur.execute(f"{self.table.select} WHERE topic = ANY(%s)", (list(counts),))
        for row in map(self.table.decode, cur.fetchall()):
            counts[row.topic] += row.events
        cur.executemany(self.table.upsert, [self.table.values(Tally(topic=t, events=n)) for t, n in counts.items()])


class GatedDevices(DevicesProjector):
    """The devices read model, holding its replay at the first shadow batch until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.release = threading.Event()

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        if DEVICES.schema == SHADOW_SCHEMA and not self.release.is_set():
            self.reached.set()
            assert self.release.wait(30)
        super().apply_batch(cur, events)


def engine_for(app: WattLedger, database_url: str, *projectors: Any, batch_size: int = 4) -> ProjectionEngine:
    engine = ProjectionEngine(app, database_url, list(projectors), batch_size=batch_size)
    engine.setup()
    return engine


def rows(database_url: str, table: str, order: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()


def shadow_tables(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname = ANY(%s)",
            ([SHADOW_SCHEMA, VERIFY_SCHEMA],),
        )
        return [r[0] for r in cur.fetchall()]


def seed_plugs(app: WattLedger, count: int, *, first_port: int = 11000, readings: int = 4) -> list[UUID]:
    devices = [seed_device(app, f"127.0.0.1:{first_port + i}", plug(10.0 * i), measured_at=T0) for i in range(count)]
    for minute in range(1, readings + 1):
        at = T0 + timedelta(minutes=minute)
        seed_polls(app, [PollResult(device_id=d, measured_at=at, snapshot=plug(10.0 * i + minute, is_on=minute != 2))
                         for i, d in enumerate(devices)])
    return devices


def test_queries_answer_from_the_old_tables_until_the_swap(app: WattLedger, database_url: str) -> None:
    gated = GatedDevices()
    engine = engine_for(app, database_url, gated)
    try:
        seed_plugs(app, 3)
        engine.catch_up_all()
        before = rows(database_url, f"{READ_SCHEMA}.devices", "address")
        seen: list[ReplayProgress] = []
        rebuilding = threading.Thread(target=engine.rebuild, args=("devices", seen.append))
        rebuilding.start()
        try:
            assert gated.reached.wait(30)
            assert rows(database_url, f"{READ_SCHEMA}.devices", "address") == before
            seed_plugs(app, 1, first_port=11100, readings=1)
            engine.catch_up_all()
            during = rows(database_url, f"{READ_SCHEMA}.devices", "address")
            assert len(during) == len(before) + 1, "the live engine kept projecting during the rebuild"
        finally:
            gated.release.set()
            rebuilding.join(30)
        assert rows(database_url, f"{READ_SCHEMA}.devices", "address") == during
        assert engine.position("devices") == app.recorder.max_notification_id()
        assert seen[-1].phase == "swap" and seen[-1].events == app.recorder.max_notification_id()
        assert shadow_tables(database_url) == []
    finally:
        engine.close()


def test_events_stored_while_a_rebuild_runs_are_applied_exactly_once(app: WattLedger, database_url: str) -> None:
    tally = TallyProjector()
    engine = engine_for(app, database_url, tally, batch_size=3)
    device_id = seed_device(app, "127.0.0.1:11200", plug(1.0), measured_at=T0)
    engine.catch_up_all()
    stop = threading.Event()

    def write() -> None:
        minute = 0
        while not stop.is_set() and minute < 400:
            minute += 1
            seed_polls(app, [PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=minute),
                                        snapshot=plug(1.0 + minute))])

    def project_live() -> None:
        while not stop.is_set():
            engine.catch_up_all()

    workers = [threading.Thread(target=write), threading.Thread(target=project_live)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(3):
            engine.rebuild("tally")
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    try:
        engine.catch_up_all()
        head = app.recorder.max_notification_id()
        assert sum(r["events"] for r in rows(database_url, tally.table.name, "topic")) == head
        assert engine.verify(["tally"]) == []
    finally:
        engine.close()


def test_verify_names_every_missing_extra_and_changed_row(app: WattLedger, database_url: str) -> None:
    engine = engine_for(app, database_url, DevicesProjector(), TallyProjector())
    try:
        first, second, third = seed_plugs(app, 3)
        engine.catch_up_all()
        assert engine.verify(["devices", "tally"]) == []
        stranger = uuid4()
        with psycopg.connect(database_url) as conn:
            conn.execute(f"DELETE FROM {READ_SCHEMA}.devices WHERE device_id = %s", (first,))
            conn.execute(f"UPDATE {READ_SCHEMA}.devices SET alias = 'Tampered', online = false "
                         f"WHERE device_id = %s", (second,))
            conn.execute(f"CREATE TEMP TABLE copied AS SELECT * FROM {READ_SCHEMA}.devices WHERE device_id = %s",
                         (third,))
            conn.execute("UPDATE copied SET device_id = %s, address = '10.9.9.9:9999'", (stranger,))
            conn.execute(f"INSERT INTO {READ_SCHEMA}.devices SELECT * FROM copied")
        found = {(d.key["device_id"], d.kind): d for d in engine.verify(["devices", "tally"])}
        assert set(found) == {(first, "missing"), (second, "changed"), (stranger, "extra")}
        assert found[(second, "changed")].columns == ("alias", "online")
        assert found[(second, "changed")].live is not None and found[(second, "changed")].live["alias"] == "Tampered"
        assert found[(first, "missing")].rebuilt is not None and found[(first, "missing")].table == "devices"
        assert shadow_tables(database_url) == []
        engine.rebuild_many(["devices", "tally"])
        assert engine.verify(["devices", "tally"]) == []
    finally:
        engine.close()


def test_verify_brings_a_lagging_live_read_model_to_the_same_position(app: WattLedger, database_url: str) -> None:
    engine = engine_for(app, database_url, DevicesProjector())
    try:
        seed_plugs(app, 2)
        engine.catch_up_all()
        seed_plugs(app, 1, first_port=11300)
        assert engine.position("devices") < (app.recorder.max_notification_id() or 0)
        assert engine.verify(["devices"]) == []
        assert engine.position("devices") == app.recorder.max_notification_id()
    finally:
        engine.close()


def test_rebuilt_tables_keep_their_indexes_whichever_way_the_ddl_names_the_table(
    app: WattLedger, database_url: str
) -> None:
    tally = TallyProjector(indexes=(
        f"CREATE INDEX tally_tally_qualified ON {READ_SCHEMA}.tally_tally (events)",
        "CREATE INDEX tally_tally_bare ON tally_tally (topic, events)",
    ))
    engine = engine_for(app, database_url, tally, IdentityProjector())
    try:
        seed_plugs(app, 1)
        engine.catch_up_all()
        engine.rebuild_many(["tally", "identity"])
        with psycopg.connect(database_url) as conn:
            indexes = {r[0] for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (READ_SCHEMA,)
            ).fetchall()}
        assert {"tally_tally_qualified", "tally_tally_bare", "sessions_user_idx", "api_keys_user_idx"} <= indexes
        assert shadow_tables(database_url) == []
    finally:
        engine.close()


def test_a_second_replay_of_the_same_read_model_is_refused_while_one_runs(
    app: WattLedger, database_url: str
) -> None:
    gated = GatedDevices()
    engine = engine_for(app, database_url, gated)
    try:
        seed_plugs(app, 1)
        rebuilding = threading.Thread(target=engine.rebuild, args=("devices",))
        rebuilding.start()
        try:
            assert gated.reached.wait(30)
            with pytest.raises(ReplayBusy, match="devices"):
                engine.verify(["devices"])
        finally:
            gated.release.set()
            rebuilding.join(30)
        assert engine.verify(["devices"]) == []
    finally:
        engine.close()


def test_a_replay_that_fails_leaves_the_live_read_model_as_it_was(app: WattLedger, database_url: str) -> None:
    tally = TallyProjector()
    engine = engine_for(app, database_url, tally)
    try:
        seed_plugs(app, 2)
        engine.catch_up_all()
        before = rows(database_url, tally.table.name, "topic")

        def fail_in_shadow(table: Table[Any]) -> None:
            if table.schema == SHADOW_SCHEMA:
                raise RuntimeError("cannot replay this")

        tally.hook = fail_in_shadow
        with pytest.raises(RuntimeError, match="cannot replay"):
            engine.rebuild("tally")
        assert rows(database_url, tally.table.name, "topic") == before
        assert engine.position("tally") == app.recorder.max_notification_id()
        assert shadow_tables(database_url) == []
    finally:
        engine.close()


def test_a_table_outside_a_rebuild_names_its_home_schema() -> None:
    bare, qualified = Table("things", Tally, key="topic"), Table(f"{READ_SCHEMA}.things", Tally, key="topic")
    assert bare.name == qualified.name == f"{READ_SCHEMA}.things"
    assert bare.select == qualified.select and bare.upsert == qualified.upsert


def test_progress_is_a_redrawn_bar_on_a_terminal_and_plain_lines_elsewhere() -> None:
    clock = ManualClock(T0)
    terminal, pipe = io.StringIO(), io.StringIO()
    bar = ProgressDisplay(terminal, "rebuilding devices", tty=True, clock=clock.monotonic, width=10)
    lines = ProgressDisplay(pipe, "rebuilding devices", tty=False, every=1000, clock=clock.monotonic, width=10)
    for events in (500, 1000, 1500, 2000):
        clock.advance(1.0)
        for display in (bar, lines):
            display(ReplayProgress(phase="replay", position=events, head=4000, events=events))
    clock.advance(1.0)
    for display in (bar, lines):
        display(ReplayProgress(phase="swap", position=4000, head=4000, events=4000))
        display.finish("rebuilt devices: 4,000 events replayed")
    assert terminal.getvalue().count("\r") >= 5 and "\n" not in terminal.getvalue().rstrip("\n")
    assert "[#####.....] 2,000/4,000 events, 500 events/s, ETA 00:04" in terminal.getvalue()
    assert pipe.getvalue().splitlines() == [
        "rebuilding devices [##........] 1,000/4,000 events, 500 events/s, ETA 00:06",
        "rebuilding devices [#####.....] 2,000/4,000 events, 500 events/s, ETA 00:04",
        "rebuilding devices [##########] 4,000/4,000 events, 800 events/s, ETA 00:00 (swap)",
        "rebuilt devices: 4,000 events replayed in 00:05 (800 events/s)",
    ]


def test_a_rebuild_not_told_how_many_processes_takes_what_the_events_and_cores_allow(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_plugs(app, 2)
    engine = ProjectionEngine(app, database_url, [DevicesProjector(), IdentityProjector()])
    engine.setup()
    try:
        assert replay.default_jobs(engine, ["devices", "identity"]) == 1, "a short log: one process"
        monkeypatch.setattr(replay_plan, "PARALLEL_FROM", 1)
        monkeypatch.setattr(replay, "cores", lambda: 2)
        assert replay.default_jobs(engine, ["devices", "identity"]) == 1, "a second process would gain too little"
        monkeypatch.setattr(replay, "cores", lambda: 16)
        monkeypatch.setattr(replay_plan, "REPLAY_COST", {"devices": 10.0, "identity": 10.0})
        assert replay.default_jobs(engine, ["devices", "identity"]) == 2
        err = io.StringIO()
        assert replay.rebuild(engine, ["devices", "identity"], err, tty=False) == 0
        assert "rebuilding devices, identity in 2 processes" in err.getvalue()
        assert engine.verify(["devices", "identity"]) == []
    finally:
        engine.close()
