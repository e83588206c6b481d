"""A replay in one process applies one group of read models in a second thread, on a connection of its own:
the same rows as applying them all in one thread, and a failure in either thread gives the replay up."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
import pytest

from adapters.eventstore import WattLedger
from infra.read_models import all_projectors
from infra.settings import load_settings
from projections import replay_plan
from projections.engine import ProjectionEngine, Projector
from projections.rebuild import SHADOW_SCHEMA
from tests.integration.test_replay import seed_plugs


class Where:
    """Records the thread and the database backend each section is applied in."""

    version = 1
    tables = ()

    def __init__(self, name: str, fail_at: int | None = None) -> None:
        self.name = name
        self.fail_at = fail_at
        self.seen: list[tuple[int, int]] = []

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Any) -> None:
        self.seen.append((threading.get_ident(), cur.connection.info.backend_pid))
        if self.fail_at is not None and len(self.seen) >= self.fail_at:
            raise RuntimeError(f"{self.name} cannot go on")


def dump(database_url: str, projectors: list[Projector]) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(database_url) as conn:
        return {t.name: conn.execute(f"{t.select} ORDER BY {t.key}").fetchall()
                for p in projectors for t in p.tables}  # fmt: skip


def rebuilt(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch, cores: int
) -> tuple[Where, Where, list[str]]:
    """Two probes rebuilt together on `cores` CPUs, after three plugs' readings; and the read models put aside."""
    seed_plugs(app, 3)
    monkeypatch.setattr(replay_plan, "cores", lambda: cores)
    first, second = Where("first"), Where("second")
    engine = ProjectionEngine(app, database_url, [first, second], batch_size=4)
    engine.setup()
    try:
        aside = engine.replay_aside([first, second])
        engine.rebuild_many(["first", "second"])
    finally:
        engine.close()
    return first, second, aside


def test_the_aside_group_is_applied_in_another_thread_on_another_connection(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, aside = rebuilt(app, database_url, monkeypatch, cores=2)
    assert aside == ["second"]
    assert len(first.seen) > 2 and len(second.seen) == len(first.seen)
    # Every section but the last (replayed by the swap under the tracking locks, in one transaction) is
    # applied to `second` beside `first`.
    caught_up = list(zip(first.seen, second.seen, strict=True))[:-1]
    assert caught_up and all(a[0] != b[0] and a[1] != b[1] for a, b in caught_up)
    assert len({b for _, b in caught_up}) == 1, "one thread and one connection for the whole catch-up"


def test_one_core_applies_every_read_model_in_the_replays_own_thread(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, aside = rebuilt(app, database_url, monkeypatch, cores=1)
    assert aside == []
    assert first.seen and first.seen == second.seen


@pytest.mark.parametrize("failing", ["first", "second"])
def test_a_failure_in_either_thread_gives_the_replay_up_and_swaps_nothing(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    seed_plugs(app, 3)
    monkeypatch.setattr(replay_plan, "cores", lambda: 2)
    probes = {name: Where(name, fail_at=2 if name == failing else None) for name in ("first", "second")}
    engine = ProjectionEngine(app, database_url, list(probes.values()), batch_size=4)
    engine.setup()
    try:
        engine.catch_up_all()
        positions = {name: engine.position(name) for name in probes}
        with pytest.raises(RuntimeError, match=f"{failing} cannot go on"):
            engine.rebuild_many(["first", "second"])
        assert {name: engine.position(name) for name in probes} == positions
    finally:
        engine.close()
    with psycopg.connect(database_url) as conn:
        left = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (SHADOW_SCHEMA,)).fetchone()
    assert left == (0,)


def test_a_replay_with_a_group_aside_equals_one_in_a_single_thread(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_plugs(app, 4, readings=30)
    monkeypatch.setattr(replay_plan, "cores", lambda: 2)
    settings = load_settings({**os.environ, "WATTLEDGER_TIMEZONE": "Europe/Berlin"})
    dumps = []
    for threads in (False, True):
        projectors = all_projectors(settings)
        engine = ProjectionEngine(app, database_url, projectors, batch_size=50, replay_threads=threads)
        engine.setup()
        try:
            assert bool(engine.replay_aside(projectors)) is threads
            engine.rebuild_many([p.name for p in projectors])
            assert engine.verify([p.name for p in projectors]) == []
            dumps.append(dump(database_url, projectors))
        finally:
            engine.close()
    assert dumps[0]["wl_read.energy_readings"] and dumps[0] == dumps[1]
