"""A replay lets go of its read models' replay locks itself, not only by closing its connection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from adapters.eventstore import WattLedger
from infra.runtime import all_projectors
from infra.settings import Settings
from projections.engine import ProjectionEngine


@pytest.fixture
def lingering_backends(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[psycopg.Connection[Any]]]:
    """Connections whose close is held back, as a busy server is slow to end a closed connection's
    backend (its session locks live until then); closed for real at the end."""
    held: list[psycopg.Connection[Any]] = []
    real_close = psycopg.Connection.close

    def held_back(self: psycopg.Connection[Any]) -> None:
        held.append(self)

    monkeypatch.setattr(psycopg.Connection, "close", held_back)
    yield held
    monkeypatch.undo()
    for conn in held:
        real_close(conn)


def test_a_replay_right_after_another_of_the_same_read_model_is_not_refused_as_busy(
    app: WattLedger, database_url: str, lingering_backends: list[psycopg.Connection[Any]]
) -> None:
    engine = ProjectionEngine(app, database_url, all_projectors(Settings()))
    try:
        engine.setup()
        engine.catch_up_all()
        assert engine.verify(["identity"]) == []
        assert engine.verify(["identity"]) == []  # ReplayBusy if the first one's lock outlived it
        engine.rebuild_many(["identity", "commands"])
        assert engine.verify(["identity", "commands"]) == []
        assert lingering_backends, "no connection was held back: the test proves nothing"
    finally:
        engine.close()
