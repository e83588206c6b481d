"""A replay runs with the cyclic collector's thresholds raised, and puts back the ones it found."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import msgspec
import psycopg
import pytest

from adapters.eventstore import WattLedger
from projections.engine import ProjectionEngine
from projections.rebuild import REPLAY_COLLECTOR_THRESHOLDS, eased_collector
from projections.tables import Table
from tests.harness import lamp
from tests.kit import seed_device

T0 = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)


class Seen(msgspec.Struct, kw_only=True):
    n: int
    events: int


class ThresholdWatcher:
    """Counts the events it is given and notes the collector's thresholds at each batch."""

    name = "watcher"
    version = 1

    def __init__(self) -> None:
        self.table = Table("watcher_seen", Seen, key="n")
        self.tables = (self.table,)
        self.thresholds: list[tuple[int, int, int]] = []

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        self.thresholds.append(gc.get_threshold())
        cur.execute(self.table.upsert, self.table.values(Seen(n=len(self.thresholds), events=len(events))))


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    found = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield 700, 10, 10
    gc.set_threshold(*found)


def test_a_rebuild_and_a_verify_replay_with_raised_thresholds_and_put_them_back(
    app: WattLedger, database_url: str, thresholds: tuple[int, int, int]
) -> None:
    for i in range(3):
        seed_device(app, f"127.0.0.1:{12000 + i}", lamp(1.0), measured_at=T0)
    watcher = ThresholdWatcher()
    engine = ProjectionEngine(app, database_url, [watcher], batch_size=2, replay_batch_size=2)
    engine.setup()
    try:
        engine.catch_up_all()
        assert set(watcher.thresholds) == {thresholds}, "the live engine leaves the collector alone"
        watcher.thresholds.clear()

        engine.rebuild("watcher")
        assert len(watcher.thresholds) > 2
        assert set(watcher.thresholds) == {REPLAY_COLLECTOR_THRESHOLDS}
        assert gc.get_threshold() == thresholds

        watcher.thresholds.clear()
        assert engine.verify(["watcher"]) == []
        assert set(watcher.thresholds) == {REPLAY_COLLECTOR_THRESHOLDS}
        assert gc.get_threshold() == thresholds
    finally:
        engine.close()


def test_thresholds_are_only_raised_a_switched_off_collector_stays_off_and_overlapping_replays_restore_once(
    thresholds: tuple[int, int, int],
) -> None:
    gc.set_threshold(100_000, 5, 1_000)
    with eased_collector():
        assert gc.get_threshold() == (100_000, 20, 1_000)
    assert gc.get_threshold() == (100_000, 5, 1_000)

    gc.set_threshold(0)
    with eased_collector():
        assert gc.get_threshold()[0] == 0
    assert gc.get_threshold()[0] == 0

    gc.set_threshold(*thresholds)
    inside, release = threading.Event(), threading.Event()

    def other_replay() -> None:
        with eased_collector():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other_replay)
    with eased_collector():
        thread.start()
        assert inside.wait(5)
    assert gc.get_threshold() == REPLAY_COLLECTOR_THRESHOLDS, "still raised while the other replay runs"
    release.set()
    thread.join(5)
    assert gc.get_threshold() == thresholds
