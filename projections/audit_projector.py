"""The audit log's tables and its projector: one row per action, in words a person reads.

Every stored event is an action and has its row, except a meter's readings: nobody
did them, and at one a device every few seconds they would outnumber the actions
thousands to one. Readings stay in the event log and in the hash chain (and in
`GET /api/events`, which finds them by reading the log).

Each row says who (`actor_name`: the user's name, the API key's name and owner, the
command line login or the system part), did what (`action`), to what (`target`), when
(`at`, the event's timestamp), and from where when the event knows it (`source`: the
client address of a sign-in). The raw `actor`, `aggregate`, `event` and
`originator_id` stay beside the words for filtering.

Names come from events alone, through a table of this read model's own
(`wl_read.audit_names`: users, keys and devices as the events named them), so the words
are those of the moment and a replay from zero gives the same rows. The words themselves
are `projections.audit_words`; the queries are `projections.audit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
import psycopg

from adapters.contract import NO_ACTOR, aggregate_name
from adapters.history import records_for_events
from projections.audit_words import NameRow, Names, describe, name_new_ones, referenced
from projections.quarantine import MEASUREMENTS, Unread, notifications_of
from projections.tables import READ_SCHEMA, Table

__all__ = ["AUDIT_LOG", "AUDIT_NAMES", "LOG_TABLE", "NAMES_TABLE", "AuditProjector", "AuditRow"]

LOG_TABLE = f"{READ_SCHEMA}.audit_log"
NAMES_TABLE = f"{READ_SCHEMA}.audit_names"

NOT_ACTIONS = MEASUREMENTS
"""Events that record what was measured or when, not what someone did: they stay in the log and the
chain, and get no audit row (a reading every few seconds per device, a tick a minute)."""


_LEFT_OUT = (*NOT_ACTIONS, Unread)


class AuditRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of `wl_read.audit_log` (and one line of `GET /api/audit`): `summary` is the whole
    sentence (`actor_name action`)."""

    position: int
    at: datetime
    actor: str
    actor_kind: str
    actor_name: str
    action: str
    target: str
    source: str | None
    summary: str
    aggregate: str
    event: str
    originator_id: UUID


AUDIT_LOG = Table(
    LOG_TABLE, AuditRow, key="position",
    indexes=(
        f"CREATE INDEX audit_log_actor_idx ON {LOG_TABLE} (actor, position)",
        f"CREATE INDEX audit_log_target_idx ON {LOG_TABLE} (originator_id, position)",
        f"CREATE INDEX audit_log_event_idx ON {LOG_TABLE} (aggregate, event, position)",
        f"CREATE INDEX audit_log_at_idx ON {LOG_TABLE} (at)",
        f"CREATE INDEX audit_log_actions_idx ON {LOG_TABLE} (position) WHERE aggregate <> 'meter'",
    ),
)  # fmt: skip
AUDIT_NAMES = Table(NAMES_TABLE, NameRow, key="id")


class AuditProjector:
    """Writes one audit row per event but readings; keeps the names of users, keys and devices it needs."""

    name = "audit"
    version = 2
    tables = (AUDIT_LOG, AUDIT_NAMES)
    ignores = NOT_ACTIONS

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        held = notifications_of(events)
        if held is not None:
            positions = {
                (n.originator_id, n.originator_version): n.id
                for e, n in zip(events, held, strict=True) if not isinstance(e, _LEFT_OUT)
            }  # fmt: skip
        events = [e for e in events if not isinstance(e, _LEFT_OUT)]
        if not events:
            return
        if held is None:
            positions = {(r.originator_id, r.version): r.notification_id for r in records_for_events(cur, events)}
        names = Names(rows=AUDIT_NAMES.load(cur, referenced(events)), changed=set())
        name_new_ones(events, names)
        rows: list[tuple[Any, ...]] = []
        for event in events:
            position = positions.get((getattr(event, "originator_id"), getattr(event, "originator_version")))
            if position is None:
                continue
            actor = str(getattr(event, "actor", None) or NO_ACTOR)
            actor_kind, actor_name = names.actor(actor)
            action, target, source = describe(event, names)
            timestamp: datetime = getattr(event, "timestamp")
            rows.append(AUDIT_LOG.values(AuditRow(
                position=position, at=timestamp, actor=actor, actor_kind=actor_kind, actor_name=actor_name,
                action=action, target=target, source=source, summary=f"{actor_name} {action}",
                aggregate=aggregate_name(type(event)), event=type(event).__name__,
                originator_id=getattr(event, "originator_id"),
            )))  # fmt: skip
        if rows:
            AUDIT_LOG.write(cur, rows)
        if names.changed:
            AUDIT_NAMES.write(cur, [AUDIT_NAMES.values(names.rows[i]) for i in names.changed])
