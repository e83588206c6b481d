"""A replay's sections commit without waiting for the write-ahead log to reach the disk; the swap waits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import psycopg
import pytest

from adapters.eventstore import PollResult, WattLedger
from domain.readings import DeviceSnapshot
from projections.engine import ProjectionEngine
from projections.rebuild import SHADOW_SCHEMA, Shadow
from projections.tables import READ_SCHEMA, Table
from tests.kit import seed_device, seed_polls

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)


class Applied(msgspec.Struct, kw_only=True):
    position: int


class CommitWatcher:
    """Notes, for every batch it applies to the shadow tables, the transaction's synchronous_commit."""

    name = "commit_watcher"
    version = 1

    def __init__(self) -> None:
        self.table = Table(f"{READ_SCHEMA}.replay_commit_applied", Applied, key="position")
        self.tables = (self.table,)
        self.seen: list[str] = []

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        if self.table.schema == SHADOW_SCHEMA:
            row = cur.execute("SHOW synchronous_commit").fetchone()
            self.seen.append(str(row[0]) if row else "")
        cur.execute(f"SELECT count(*) FROM {self.table.name}")


def kettle(total_wh: float) -> DeviceSnapshot:
    return DeviceSnapshot(alias="Kettle", model="HS110", device_type="plug", mac="AA", firmware="1", is_on=True,
                          has_emeter=True, power_w=50.0, total_wh=total_wh)  # fmt: skip


def test_replay_sections_commit_without_waiting_for_the_disk_and_the_swap_waits(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = seed_device(app, "127.0.0.1:11400", kettle(1.0), measured_at=T0)
    for minute in range(1, 12):
        seed_polls(app, [PollResult(device_id=device, measured_at=T0 + timedelta(minutes=minute),
                                    snapshot=kettle(1.0 + minute))])  # fmt: skip
    watcher = CommitWatcher()
    engine = ProjectionEngine(app, database_url, [watcher], batch_size=4)
    engine.setup()
    caught_up: list[int] = []
    replay = Shadow.catch_up

    def then_one_more_reading(self: Shadow, progress: Any) -> None:
        """After the replay's sections, one more event: the swap replays it under its locks."""
        replay(self, progress)
        caught_up.append(len(watcher.seen))
        seed_polls(app, [PollResult(device_id=device, measured_at=T0 + timedelta(minutes=30), snapshot=kettle(40.0))])

    monkeypatch.setattr(Shadow, "catch_up", then_one_more_reading)
    try:
        engine.catch_up_all()
        with psycopg.connect(database_url) as conn:
            default = conn.execute("SHOW synchronous_commit").fetchone()
        engine.rebuild_many(["commit_watcher"])
    finally:
        engine.close()
    assert default is not None and default[0] != "off"
    replayed, swapped = watcher.seen[: caught_up[0]], watcher.seen[caught_up[0] :]
    assert len(replayed) >= 3 and set(replayed) == {"off"}
    assert swapped and set(swapped) == {default[0]}
