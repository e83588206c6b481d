"""A replay reads the next section of the log while it applies the current one, and leaves nothing behind."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg.rows import dict_row

from adapters.eventstore import PollResult, WattLedger
from domain.readings import DeviceSnapshot
from projections.engine import ProjectionEngine
from projections.quarantine import notifications_of
from projections.rebuild import SHADOW_SCHEMA, Shadow
from projections.tables import READ_SCHEMA, Table
from tests.kit import seed_device, seed_polls

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
BATCH = 4
READER = "wl-replay-read"


def plug(total_wh: float) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Kettle", model="HS110", device_type="plug", mac="AA", firmware="1", is_on=True, has_emeter=True,
        power_w=50.0, voltage_v=230.0, current_a=0.2, total_wh=total_wh, rssi=-50,
    )


class Seen(msgspec.Struct, kw_only=True):
    position: int
    topic: str


class SeenProjector:
    """Keeps one row per event applied, by position: an event applied twice, missed or out of order shows."""

    name = "seen"
    version = 1

    def __init__(self) -> None:
        self.table = Table(f"{READ_SCHEMA}.readpath_seen", Seen, key="position")
        self.tables = (self.table,)
        self.batches: list[list[int]] = []

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        held = notifications_of(events)
        assert held is not None
        if self.table.schema == SHADOW_SCHEMA:
            self.batches.append([n.id for n in held])
            self.shadow_batch(len(self.batches))
        self.table.write(cur, [self.table.values(Seen(position=n.id, topic=type(e).__name__))
                               for n, e in zip(held, events, strict=True)])  # fmt: skip

    def shadow_batch(self, number: int) -> None:
        """Called as the replay applies its `number`th section."""


def seeded(app: WattLedger, events: int) -> int:
    """A device and its readings, at least `events` stored events; the log's head."""
    device = seed_device(app, "127.0.0.1:11300", plug(1.0), measured_at=T0)
    minute = 0
    while (head := app.recorder.max_notification_id() or 0) < events:
        minute += 1
        seed_polls(app, [PollResult(device_id=device, measured_at=T0 + timedelta(minutes=minute),
                                    snapshot=plug(1.0 + minute))])
    return head


def engine_for(app: WattLedger, database_url: str, projector: SeenProjector) -> ProjectionEngine:
    engine = ProjectionEngine(app, database_url, [projector], batch_size=BATCH)
    engine.setup()
    return engine


def seen_rows(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(f"SELECT * FROM {READ_SCHEMA}.readpath_seen ORDER BY position").fetchall()


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(READER)]


class Reads:
    """Counts the event log's reads on an engine (by the position each starts after); `gate` may hold one."""

    def __init__(self, engine: ProjectionEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started: Counter[int] = Counter()
        self.ended: Counter[int] = Counter()
        self.lock = threading.Lock()
        real = engine.event_log.read_raw

        def read_raw(after: int, limit: int, stop: int | None = None, topics: Sequence[str] | None = None) -> Any:
            with self.lock:
                self.started[after] += 1
            try:
                self.gate(after)
                return real(after, limit, stop, topics)
            finally:
                with self.lock:
                    self.ended[after] += 1

        monkeypatch.setattr(engine.event_log, "read_raw", read_raw)

    def gate(self, after: int) -> None:
        """Called before each read."""


def test_the_next_section_is_read_while_the_current_one_is_applied(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = seeded(app, 13)
    projector = SeenProjector()
    engine = engine_for(app, database_url, projector)
    try:
        engine.catch_up_all()
        live = seen_rows(database_url)
        reads = Reads(engine, monkeypatch)
        asked = threading.Event()
        reads.gate = lambda after: asked.set() if after == BATCH else None
        reached: list[bool] = []
        # While the first section is applied, the read of the second (after position BATCH) is asked for;
        # a replay that read only after applying would never ask while this waits.
        projector.shadow_batch = lambda number: reached.append(asked.wait(30)) if number == 1 else None
        assert engine.rebuild_many(["seen"]) == head
        assert reached == [True]
        assert seen_rows(database_url) == live
        assert [p for batch in projector.batches for p in batch] == list(range(1, head + 1))
        assert reads.started == reads.ended
        assert readers() == []
    finally:
        engine.close()


def test_a_replay_reads_no_further_than_one_that_reads_section_by_section(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = seeded(app, 3 * BATCH + 1)
    assert head % BATCH, "the log ends with a full section: the test proves less"
    projector = SeenProjector()
    engine = engine_for(app, database_url, projector)
    try:
        reads = Reads(engine, monkeypatch)
        assert engine.rebuild_many(["seen"]) == head
        # One read a section up to the first short one (or the empty one after a full one), then the swap's.
        catch_up = [k * BATCH for k in range(head // BATCH + 1)]
        assert reads.started == Counter([*catch_up, head])
        assert reads.started == reads.ended
    finally:
        engine.close()


def test_a_failed_read_ahead_is_raised_by_the_replay_and_leaves_the_live_tables(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded(app, 13)
    projector = SeenProjector()
    engine = engine_for(app, database_url, projector)
    try:
        engine.catch_up_all()
        live = seen_rows(database_url)
        reads = Reads(engine, monkeypatch)

        def fail(after: int) -> None:
            if after == 2 * BATCH and reads.started[after] == 1:  # once: the swap's own read would raise again
                raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

        reads.gate = fail
        with pytest.raises(psycopg.errors.QueryCanceled):
            engine.rebuild_many(["seen"])
        assert [len(b) for b in projector.batches] == [BATCH, BATCH]
        assert seen_rows(database_url) == live
        assert reads.started == reads.ended
        assert readers() == []
    finally:
        engine.close()


def test_a_replay_that_fails_waits_for_its_read_ahead_before_it_ends(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded(app, 13)
    projector = SeenProjector()
    engine = engine_for(app, database_url, projector)
    try:
        reads = Reads(engine, monkeypatch)
        order: list[str] = []
        failing, dropped = threading.Event(), threading.Event()
        drop = Shadow.drop

        def dropping(shadow: Shadow) -> None:
            order.append("shadow dropped")
            dropped.set()
            drop(shadow)

        monkeypatch.setattr(Shadow, "drop", dropping)

        def held(after: int) -> None:
            # The read ahead of the second section goes on once the first section's apply has failed, and
            # not before the replay has ended (its shadow tables dropped) if the replay ends without it.
            if after == BATCH:
                failing.wait(30)
                dropped.wait(2)
                order.append("read ahead")

        reads.gate = held

        def fail(number: int) -> None:
            failing.set()
            raise RuntimeError("a bug in the read model")

        projector.shadow_batch = fail
        with pytest.raises(RuntimeError, match="a bug in the read model"):
            engine.rebuild_many(["seen"])
        assert order == ["read ahead", "shadow dropped"], "the replay ended while its read ahead still ran"
        assert reads.started == reads.ended
        assert readers() == []
    finally:
        engine.close()
