"""Checkpoints of read models: a rebuild that starts from one equals one from zero, and a bad one is refused."""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import msgspec
import psycopg
import pytest

from adapters.eventstore import PollResult, WattLedger
from adapters.history import EVENTS_TABLE
from infra.bootstrap import all_projectors
from infra.settings import load_settings
from projections.chain import ChainProjector
from projections.checkpoints import CheckpointError, CheckpointRefused, list_checkpoints, prune, write
from projections.devices import DevicesProjector
from projections.engine import ProjectionEngine, Projector
from projections.parallel import GroupFailed, groups, rebuild_in_processes
from projections.rebuild import SHADOW_SCHEMA, rebuild_from_checkpoints, verify_from_checkpoints
from projections.tables import Table
from projections.tracking import quarantined_events
from tests.integration.test_replay import rows, seed_plugs, shadow_tables
from tests.integration.test_replay_equivalence import T0, change, dump, plug, seed_mixed_history
from tests.kit import seed_polls


class Tally(msgspec.Struct, kw_only=True):
    topic: str
    events: int


class PickyTally:
    """Counts events by type, and cannot apply a device's rename (so renames are quarantined)."""

    name = "picky"
    version = 1

    def __init__(self) -> None:
        self.table = Table("picky_tally", Tally, key="topic")
        self.tables = (self.table,)

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        counts = Counter(type(event).__qualname__ for event in events)
        if "Device.Renamed" in counts:
            raise ValueError("renames are not counted here")
        cur.execute(f"{self.table.select} WHERE topic = ANY(%s)", (list(counts),))
        for row in map(self.table.decode, cur.fetchall()):
            counts[row.topic] += row.events
        cur.executemany(self.table.upsert, [self.table.values(Tally(topic=t, events=n)) for t, n in counts.items()])


def berlin_projectors() -> list[Projector]:
    return [*all_projectors(load_settings({**os.environ, "WATTLEDGER_TIMEZONE": "Europe/Berlin"})), PickyTally()]


def more_history(app: WattLedger, devices: Sequence[Any]) -> None:
    for minute in range(60, 75, 3):
        seed_polls(app, [PollResult(device_id=d, measured_at=T0 + timedelta(minutes=minute),
                                    snapshot=plug(500.0 + minute)) for d in devices])  # fmt: skip
    change(app, devices[0], "rename")


def device_ids(database_url: str) -> list[Any]:
    return [r["device_id"] for r in rows(database_url, "wl_read.devices", "address")]


def test_a_rebuild_from_checkpoints_equals_one_from_zero_row_by_row(app: WattLedger, database_url: str) -> None:
    projectors = berlin_projectors()
    names = [p.name for p in projectors]
    engine = ProjectionEngine(app, database_url, projectors, batch_size=7, replay_batch_size=5)
    engine.setup()
    try:
        seed_mixed_history(app)
        engine.catch_up_all()
        made = [write(database_url, p) for p in projectors]
        at = app.recorder.max_notification_id() or 0
        assert [c.position for c in made] == [at] * len(made)
        assert all(c.version == p.version for c, p in zip(made, projectors, strict=True))
        more_history(app, device_ids(database_url))
        engine.catch_up_all()

        engine.rebuild_many(names)
        from_zero = dump(database_url, projectors)
        quarantine_from_zero = [(e.projector, e.position, e.error) for e in quarantined_events_of(database_url)]
        assert any(p == "picky" for p, _, _ in quarantine_from_zero), "a rename before and after the checkpoint"

        events, used = rebuild_from_checkpoints(engine, names)
        assert set(used) == set(names)
        assert events == (app.recorder.max_notification_id() or 0) - at, "only the events after the checkpoints"
        assert dump(database_url, projectors) == from_zero
        assert [(e.projector, e.position, e.error) for e in quarantined_events_of(database_url)] == quarantine_from_zero
        assert engine.position("energy") == app.recorder.max_notification_id()

        differences, _ = verify_from_checkpoints(engine, names)
        assert differences == []
        assert shadow_tables(database_url) == []
    finally:
        engine.close()


def quarantined_events_of(database_url: str) -> list[Any]:
    with psycopg.connect(database_url) as conn:
        return quarantined_events(conn)


def test_each_read_model_resumes_from_its_own_checkpoint_and_one_without_replays_from_zero(
    app: WattLedger, database_url: str
) -> None:
    devices, tally, chain = DevicesProjector(), PickyTally(), ChainProjector()
    engine = ProjectionEngine(app, database_url, [devices, tally, chain], batch_size=3)
    engine.setup()
    try:
        seed_plugs(app, 2, first_port=13000, readings=2)
        engine.catch_up_all()
        first = write(database_url, tally)
        seed_plugs(app, 2, first_port=13100, readings=2)
        engine.catch_up_all()
        second, older = write(database_url, tally), write(database_url, devices)
        assert second.position > first.position
        seed_plugs(app, 1, first_port=13200, readings=3)
        engine.catch_up_all()
        write(database_url, devices)
        seed_plugs(app, 1, first_port=13300, readings=1)
        engine.catch_up_all()
        before = dump(database_url, [devices, tally, chain])

        events, used = rebuild_from_checkpoints(engine, ["devices", "picky", "chain"])
        assert used["picky"] == second and used["devices"].position > older.position, "each its newest"
        assert "chain" not in used, "the chain has none and replays from zero"
        assert events == app.recorder.max_notification_id()
        assert dump(database_url, [devices, tally, chain]) == before, "no event applied twice or missed"

        with psycopg.connect(database_url, autocommit=True) as conn:
            assert {c.id for c in prune(conn, 1)} == {first.id, older.id}
            assert {c.id for c in list_checkpoints(conn)} == {second.id, used["devices"].id}
    finally:
        engine.close()


def tamper_chunk(database_url: str, checkpoint: int) -> None:
    """Change one character of the rows a checkpoint stores, and store them compressed again."""
    with psycopg.connect(database_url) as conn:
        seq, data = conn.execute(
            "SELECT seq, data FROM wl_checkpoint.checkpoint_chunks WHERE checkpoint = %s AND part = 'devices' "
            "ORDER BY seq LIMIT 1", (checkpoint,),
        ).fetchone() or (None, None)  # fmt: skip
        text = zlib.decompress(bytes(data))
        edited = text.replace(b"Kettle", b"Kettlf", 1)
        assert edited != text
        conn.execute("UPDATE wl_checkpoint.checkpoint_chunks SET data = %s WHERE checkpoint = %s AND part = 'devices' "
                     "AND seq = %s", (zlib.compress(edited), checkpoint, seq))  # fmt: skip


def test_a_tampered_checkpoint_is_refused_and_the_live_read_model_is_left_as_it_was(
    app: WattLedger, database_url: str
) -> None:
    devices = DevicesProjector()
    engine = ProjectionEngine(app, database_url, [devices], batch_size=3)
    engine.setup()
    try:
        seed_plugs(app, 3, first_port=13700)
        engine.catch_up_all()
        made = write(database_url, devices)
        before = dump(database_url, [devices])
        tamper_chunk(database_url, made.id)
        with pytest.raises(CheckpointRefused, match="no longer match its digest"):
            rebuild_from_checkpoints(engine, ["devices"])
        assert dump(database_url, [devices]) == before
        assert shadow_tables(database_url) == []

        again = write(database_url, devices)
        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE wl_checkpoint.checkpoints SET position = position - 1 WHERE id = %s", (again.id,))
        with pytest.raises(CheckpointRefused, match="digest"):
            rebuild_from_checkpoints(engine, ["devices"])
        assert dump(database_url, [devices]) == before
    finally:
        engine.close()


class DevicesNext(DevicesProjector):
    """The devices read model after a change of its tables' meaning."""

    version = DevicesProjector.version + 1


def test_a_checkpoint_made_by_an_older_version_of_the_read_model_is_refused(
    app: WattLedger, database_url: str
) -> None:
    engine = ProjectionEngine(app, database_url, [DevicesProjector()], batch_size=3)
    engine.setup()
    seed_plugs(app, 2, first_port=13400)
    engine.catch_up_all()
    write(database_url, DevicesProjector())
    engine.close()

    newer = ProjectionEngine(app, database_url, [DevicesNext()], batch_size=3)
    newer.setup()
    try:
        newer.catch_up_all()
        with pytest.raises(CheckpointRefused, match=rf"made by version {DevicesProjector.version} .* now version"):
            rebuild_from_checkpoints(newer, ["devices"])
        with pytest.raises(CheckpointError, match="built by version"):
            write(database_url, DevicesProjector())
    finally:
        newer.close()


def test_an_event_edited_after_the_checkpoint_stops_the_rebuild_at_its_position(
    app: WattLedger, database_url: str
) -> None:
    devices, chain = DevicesProjector(), ChainProjector()
    engine = ProjectionEngine(app, database_url, [devices, chain], batch_size=3)
    engine.setup()
    try:
        seed_plugs(app, 2, first_port=13500)
        engine.catch_up_all()
        write(database_url, devices)
        made = write(database_url, chain)
        seed_plugs(app, 1, first_port=13600)
        engine.catch_up_all()
        target = made.position + 2
        with psycopg.connect(database_url) as conn:
            conn.execute(f"UPDATE {EVENTS_TABLE} SET state = state || '\\x20'::bytea WHERE notification_id = %s",
                         (target,))  # fmt: skip
        before = dump(database_url, [devices, chain])
        with pytest.raises(CheckpointRefused, match=f"position {target:,}"):
            rebuild_from_checkpoints(engine, ["devices", "chain"])
        assert dump(database_url, [devices, chain]) == before
        assert SHADOW_SCHEMA not in {t.split(".")[0] for t in shadow_tables(database_url)}
    finally:
        engine.close()


class BrokenTally(PickyTally):
    """A counting read model whose replay fails with a bug (not a data error): its live projection works."""

    name = "broken"

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        if self.table.schema == SHADOW_SCHEMA:
            raise RuntimeError("a bug in the replay")
        super().apply_batch(cur, events)


def test_read_models_rebuilt_in_two_processes_equal_a_rebuild_in_one_and_swap_together(
    app: WattLedger, database_url: str
) -> None:
    devices, tally, chain = DevicesProjector(), PickyTally(), ChainProjector()
    engine = ProjectionEngine(app, database_url, [devices, tally, chain], batch_size=3, replay_batch_size=4)
    engine.setup()
    try:
        seed_plugs(app, 3, first_port=15000, readings=3)
        engine.catch_up_all()
        write(database_url, tally)
        seed_plugs(app, 2, first_port=15100, readings=2)
        engine.catch_up_all()
        engine.rebuild_many(["devices", "picky", "chain"])
        one = dump(database_url, [devices, tally, chain])

        assert [[p.name for p in g] for g in groups([devices, tally, chain], 2)] == [["devices"], ["picky", "chain"]]
        events, used = rebuild_in_processes(engine, ["devices", "picky", "chain"], 2)
        assert events == app.recorder.max_notification_id() and used == {}
        assert dump(database_url, [devices, tally, chain]) == one
        assert {engine.position(n) for n in ("devices", "picky", "chain")} == {app.recorder.max_notification_id()}

        events, used = rebuild_in_processes(engine, ["devices", "picky", "chain"], 2, from_checkpoint=True)
        assert set(used) == {"picky"}
        assert dump(database_url, [devices, tally, chain]) == one, "the checkpointed one neither skips nor repeats"
        assert shadow_tables(database_url) == []
    finally:
        engine.close()


def test_a_group_that_fails_in_its_process_swaps_nothing(app: WattLedger, database_url: str) -> None:
    devices, broken = DevicesProjector(), BrokenTally()
    engine = ProjectionEngine(app, database_url, [devices, broken], batch_size=3)
    engine.setup()
    try:
        seed_plugs(app, 2, first_port=15200, readings=2)
        engine.catch_up_all()
        before = dump(database_url, [devices, broken])
        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE wl_read.devices SET alias = 'Live'")
        with pytest.raises(GroupFailed, match="replaying broken failed: RuntimeError: a bug in the replay"):
            rebuild_in_processes(engine, ["devices", "broken"], 2)
        assert rows(database_url, "wl_read.devices", "address")[0]["alias"] == "Live", "devices not swapped alone"
        assert dump(database_url, [broken]) == {k: v for k, v in before.items() if "broken" in k or "picky" in k}
        assert shadow_tables(database_url) == []
        assert engine.position("devices") == app.recorder.max_notification_id()
    finally:
        engine.close()
