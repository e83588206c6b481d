"""Setting read models up: the tracking tables, and fresh tables for a read model whose schema version changed.

Each projector declares a schema `version`; the tracking table records the version its
tables were built with. `set_up` drops, recreates and replays from zero any read model
whose version differs or whose tables are missing (in place: the old tables cannot
answer for the new version anyway). Processes starting at once set up one after another.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
import structlog

from projections.tables import Projector, home_schemas, set_search_path
from projections.tracking import CLEARED, QUARANTINE, TRACKING, TRACKING_DDL

__all__ = ["reset", "restart", "set_up"]

log = structlog.get_logger(__name__)

# Serialises set-up between processes starting at once (an arbitrary constant key).
_SETUP_LOCK = 0x574C_5052


def set_up(cur: psycopg.Cursor[Any], projectors: Iterable[Projector]) -> list[str]:
    """Create the tracking tables; give every read model that is new, whose version changed or whose
    tables are missing fresh tables and position zero. In the caller's transaction; returns their names."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
    cur.execute(TRACKING_DDL)
    cur.execute(f"SELECT name, version FROM {TRACKING}")
    recorded: dict[str, int | None] = dict(cur.fetchall())
    fresh: list[str] = []
    for projector in projectors:
        missing = [t.name for t in projector.tables if not _exists(cur, t.name)]
        if projector.name not in recorded:
            log.info("projector.created", projector=projector.name, version=projector.version)
        elif recorded[projector.name] != projector.version or missing:
            log.warning(
                "projector.schema_rebuild",
                projector=projector.name,
                recorded_version=recorded[projector.name],
                version=projector.version,
                missing_tables=missing,
            )
        else:
            continue
        reset(cur, projector)
        fresh.append(projector.name)
    return fresh


def _exists(cur: psycopg.Cursor[Any], table: str) -> bool:
    row = cur.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    return row is not None and row[0] is not None


def reset(cur: psycopg.Cursor[Any], projector: Projector) -> None:
    """Fresh tables, position zero and no quarantined events for one read model, in the caller's transaction."""
    set_search_path(cur, home_schemas(projector.tables))
    for table in projector.tables:
        table.create(cur)
    restart(cur, projector, 0)
    cur.execute(f"DELETE FROM {QUARANTINE} WHERE projector = %s", (projector.name,))


def restart(cur: psycopg.Cursor[Any], projector: Projector, position: int) -> None:
    """The read model's tracking row at `position` with the projector's version and no failure: its tables
    were just built (afresh, or by a rebuild up to `position`). In the caller's transaction."""
    cur.execute(
        f"INSERT INTO {TRACKING} (name, version, position) VALUES (%s, %s, %s) "
        f"ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, position = EXCLUDED.position, "
        f"updated_at = now(), {CLEARED}",
        (projector.name, projector.version, position),
    )
