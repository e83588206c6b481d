"""A parallel rebuild's groups run in processes forked from multiprocessing's forkserver, asked to import
the read models' modules once, not in processes this one spawns and that import them anew."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from multiprocessing import forkserver
from typing import Any

import msgspec
import psycopg

from adapters.eventstore import WattLedger
from projections.engine import ProjectionEngine
from projections.parallel import rebuild_in_processes
from projections.tables import Table
from tests.harness import lamp
from tests.kit import seed_device

T0 = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)


class Origin(msgspec.Struct, kw_only=True):
    pid: int
    parent: int


class OriginOfReplay:
    """Notes which process applied its events, and that process's parent."""

    name = "origin"
    version = 1

    def __init__(self) -> None:
        self.table = Table("replay_origin", Origin, key="pid")
        self.tables = (self.table,)

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        row = Origin(pid=os.getpid(), parent=os.getppid())
        cur.execute(self.table.upsert, self.table.values(row))


def test_groups_run_in_forks_of_the_server_asked_to_import_their_modules(app: WattLedger, database_url: str) -> None:
    for i in range(2):
        seed_device(app, f"127.0.0.1:{13000 + i}", lamp(1.0), measured_at=T0)
    first, second = OriginOfReplay(), OriginOfReplay()
    second.name, second.table = "origin2", Table("replay_origin2", Origin, key="pid")
    second.tables = (second.table,)
    engine = ProjectionEngine(app, database_url, [first, second])
    engine.setup()
    try:
        rebuild_in_processes(engine, ["origin", "origin2"], 2)
        with psycopg.connect(database_url) as conn:
            found = [conn.execute(f"{t.select}").fetchall() for t in (first.table, second.table)]
    finally:
        engine.close()

    server = getattr(forkserver, "_forkserver")._forkserver_pid
    assert server is not None and server != os.getpid()
    origins = [Origin(pid=r[0], parent=r[1]) for rows in found for r in rows]
    assert len({o.pid for o in origins}) == 2, "one process a group"
    assert all(o.pid != os.getpid() and o.parent == server for o in origins), origins
    preloaded = getattr(forkserver, "_forkserver")._preload_modules
    assert {"__main__", "projections.parallel", OriginOfReplay.__module__} <= set(preloaded)
