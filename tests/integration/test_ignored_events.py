"""A read model is handed only the events it does not `ignores`, live and in a replay; the one that ignores
every event (the chain) still takes them all."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from adapters.eventstore import WattLedger
from domain.meter import MeterDay
from projections.devices import DevicesProjector
from projections.engine import ProjectionEngine, Projector
from projections.quarantine import EVERY_EVENT, MEASUREMENTS, Unread, notifications_of
from projections.tracking import QUARANTINE
from tests.integration.test_projection_sections import seed

MEASURED = {get_topic(kind) for kind in MEASUREMENTS}


class Probe:
    """Records the topic and position of every event handed to it, and whether the engine's notifications
    line up with them (`notifications_of`)."""

    version = 1
    tables = ()

    def __init__(self, name: str, ignores: Any) -> None:
        self.name = name
        self.ignores = ignores
        self.seen: list[tuple[str, int]] = []
        self.aligned: list[bool] = []

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Any) -> None:
        held = notifications_of(events)
        self.aligned.append(held is not None and len(held) == len(events))
        for event, notification in zip(events, held or [], strict=True):
            topic = event.topic if isinstance(event, Unread) else get_topic(type(event))
            assert topic == notification.topic
            self.seen.append((topic, notification.id))


def stored(app: WattLedger) -> list[tuple[str, int]]:
    return [(n.topic, n.id) for n in app.recorder.select_notifications(start=1, limit=1_000_000)]


@pytest.mark.parametrize("replay", [False, True])
def test_a_read_model_is_handed_only_the_events_it_does_not_ignore(
    app: WattLedger, database_url: str, replay: bool
) -> None:
    seed(app)
    log = stored(app)
    assert {topic for topic, _ in log} & MEASURED and {topic for topic, _ in log} - MEASURED
    picky, everything = Probe("picky", MEASUREMENTS), Probe("everything", EVERY_EVENT)
    projectors: list[Projector] = [picky, everything, DevicesProjector()]
    engine = ProjectionEngine(app, database_url, projectors, batch_size=7, replay_batch_size=7)
    engine.setup()
    try:
        if replay:
            engine.rebuild_many(["picky", "everything", "devices"])
        else:
            engine.catch_up_all()
    finally:
        engine.close()
    assert picky.seen == [(topic, position) for topic, position in log if topic not in MEASURED]
    assert everything.seen == log, "a read model that needs no event decoded still takes every one"
    assert all(picky.aligned) and all(everything.aligned)


def test_an_undecodable_event_is_quarantined_only_for_the_read_models_that_take_it(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(app)
    reading = next(position for topic, position in stored(app)
                   if topic == get_topic(MeterDay.ReadingRecorded))  # fmt: skip
    decode = app.mapper.to_domain_event

    def broken(notification: Notification) -> Any:
        if notification.id == reading:
            raise ValueError("unknown field in stored state")
        return decode(notification)

    monkeypatch.setattr(app.mapper, "to_domain_event", broken)
    picky = Probe("picky", MEASUREMENTS)
    engine = ProjectionEngine(app, database_url, [picky, DevicesProjector()], batch_size=7)
    engine.setup()
    try:
        engine.catch_up_all()
    finally:
        engine.close()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(f"SELECT projector, position FROM {QUARANTINE} ORDER BY projector").fetchall()
    assert rows == [("devices", reading)], "the read model that ignores readings neither takes nor quarantines it"
    assert reading not in {position for _, position in picky.seen}
