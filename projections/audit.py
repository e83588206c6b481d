"""The audit log: one row per stored event, in words a person reads, and its queries.

Each row says who (`actor_name`: the user's name, the API key's name and owner, the
command line login or the system part), did what (`action`), to what (`target`), when
(`at`, the event's timestamp), and from where when the event knows it (`source`: the
client address of a sign-in). The raw `actor`, `aggregate`, `event` and
`originator_id` stay beside the words for filtering.

Names come from events alone, through a table of this read model's own
(`wl_read.audit_names`: users, keys and devices as the events named them), so the words
are those of the moment and a replay from zero gives the same rows. Words come from the
public contract's data of each event, so no secret can reach the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec
import psycopg

from adapters.contract import (
    NO_ACTOR,
    ApiKeyIssued,
    ComplianceExportCompleted,
    ComplianceExportFailed,
    ComplianceExportRequested,
    DeviceAdded,
    DeviceRenamed,
    DeviceRestored,
    DeviceStateChanged,
    DeviceWentOffline,
    MeterDayOpened,
    ReadingRecorded,
    SecurityActivitySummarised,
    RosterAdminAdded,
    RosterAdminRemoved,
    RosterFounded,
    SessionEnded,
    SessionRefreshed,
    SessionStarted,
    UserRegistered,
    UserRoleChanged,
    UserSignedIn,
    aggregate_name,
    event_data,
)
from adapters.eventstore import WattLedger
from adapters.history import (
    DEFAULT_SCAN,
    EventFilter,
    HistoryPage,
    decode_records,
    read_page,
    records_at,
    records_for_events,
    windowed,
)
from projections.tables import READ_SCHEMA, Table

LOG_TABLE = f"{READ_SCHEMA}.audit_log"
NAMES_TABLE = f"{READ_SCHEMA}.audit_names"


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


class NameRow(msgspec.Struct, kw_only=True):
    """What the events called a user, a key or a device (by id); `owner` is a key's user."""

    id: UUID
    kind: str
    name: str
    owner: UUID | None = None


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


@dataclass
class _Names:
    """The names a batch needs, loaded once and updated in memory as its events go by."""

    rows: dict[UUID, NameRow]
    changed: set[UUID]

    def name(self, ident: UUID | str | None, fallback: str) -> str:
        row = self.rows.get(ident) if isinstance(ident, UUID) else None
        return row.name if row else fallback

    def set(self, ident: UUID, kind: str, name: str, owner: UUID | None = None) -> None:
        self.rows[ident] = NameRow(id=ident, kind=kind, name=name, owner=owner)
        self.changed.add(ident)

    def device(self, ident: UUID) -> str:
        return f"device {self.name(ident, str(ident))}"

    def user(self, ident: UUID) -> str:
        return f"user {self.name(ident, str(ident))}"

    def actor(self, actor: str) -> tuple[str, str]:
        """The kind and words of an actor string (`user:<id>`, `key:<id>`, `cli:<login>`, `system:<part>`)."""
        kind, _, rest = actor.partition(":")
        ident = _uuid(rest)
        if kind == "user":
            return "user", self.user(ident) if ident else f"user {rest}"
        if kind == "key":
            row = self.rows.get(ident) if ident else None
            if row is None:
                return "key", f"API key {rest}"
            return "key", f"API key {row.name} of {self.user(row.owner)}" if row.owner else f"API key {row.name}"
        if kind == "cli":
            return "cli", f"command line ({rest})"
        if kind == "system" or actor == NO_ACTOR:
            return "system", f"system ({rest})" if rest else "system"
        return "other", actor


def _uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


def _referenced(events: Sequence[object]) -> set[UUID]:
    """Every id a batch's words may need a name for."""
    ids: set[UUID] = set()
    for event in events:
        ids.add(getattr(event, "originator_id"))
        for attr in ("device_id", "user_id", "first_admin"):
            value = getattr(event, attr, None)
            if isinstance(value, UUID):
                ids.add(value)
        actor = getattr(event, "actor", None)
        if isinstance(actor, str) and (ident := _uuid(actor.partition(":")[2])) is not None:
            ids.add(ident)
    return ids


def _on_off(is_on: bool) -> str:
    return "on" if is_on else "off"


def describe(event: object, names: _Names) -> tuple[str, str, str | None]:
    """What an event did in words, to what, and from where (if the event knows): `(action, target, source)`.

    Updates `names` with what the event names (a new user, key or device alias) after
    describing it, so a rename reads "renamed device Old to New".
    """
    ident: UUID = getattr(event, "originator_id")
    data = event_data(event)  # type: ignore[arg-type]
    match data:
        case DeviceAdded():
            names.set(ident, "device", data.alias)
            return f"added device {data.alias} ({data.address}, {data.model})", names.device(ident), None
        case DeviceRenamed():
            target = names.device(ident)
            names.set(ident, "device", data.alias)
            return f"renamed {target} to {data.alias}", target, None
        case DeviceRestored():
            names.set(ident, "device", data.alias)
            return f"added {names.device(ident)} again ({data.model})", names.device(ident), None
        case DeviceStateChanged():
            target = names.device(ident)
            where = target if data.outlet_index is None else f"outlet {data.outlet_index} of {target}"
            return f"switched {where} {_on_off(data.is_on)}", target, None
        case DeviceWentOffline():
            target = names.device(ident)
            return f"marked {target} offline after {data.missed_polls} missed polls", target, None
        case MeterDayOpened():
            target = names.device(data.device_id)
            return f"opened the readings of {target} for {data.day.isoformat()}", target, None
        case ReadingRecorded():
            target = names.device(data.device_id)
            power = "no power reading" if data.power_w is None else f"{data.power_w:g} W"
            return f"recorded a reading of {target} ({power}, {_on_off(data.is_on)})", target, None
        case RosterFounded():
            return f"completed first-run setup with administrator {names.user(data.first_admin)}", "the roster", None
        case RosterAdminAdded():
            return f"counted {names.user(data.user_id)} as an active administrator", "the roster", None
        case RosterAdminRemoved():
            return f"no longer counted {names.user(data.user_id)} as an active administrator", "the roster", None
        case UserRegistered():
            names.set(ident, "user", data.username)
            return f"created {names.user(ident)} with role {data.role}", names.user(ident), None
        case UserRoleChanged():
            return f"changed the role of {names.user(ident)} to {data.role}", names.user(ident), None
        case UserSignedIn():
            return f"signed in {names.user(ident)} (session {data.session_id})", names.user(ident), None
        case SessionStarted():
            target = f"session of {names.user(data.user_id)}"
            return f"started a {target} from {data.ip} ({data.user_agent or 'no user agent'})", target, data.ip
        case SessionRefreshed():
            return f"refreshed a session (generation {data.generation})", f"session {ident}", None
        case SessionEnded():
            return f"ended a session ({data.reason})", f"session {ident}", None
        case ComplianceExportRequested():
            filters = ", ".join(f"{k}={v}" for k, v in sorted(data.filters.items())) or "no filters"
            return f"requested a {data.format} compliance export ({filters})", f"compliance export {ident}", None
        case ComplianceExportCompleted():
            upto = f" up to position {data.last_position}" if data.last_position is not None else ""
            return f"completed compliance export {ident}: {data.count} events{upto}", f"compliance export {ident}", None
        case ComplianceExportFailed():
            return f"failed compliance export {ident}: {data.reason}", f"compliance export {ident}", None
        case SecurityActivitySummarised():
            refused = sum(c.count for c in data.counts) + data.others
            by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(_by_kind(data).items()))
            return f"counted {refused} refused requests from {len(data.counts)} sources ({by_kind})", \
                "security", None
        case ApiKeyIssued():
            names.set(ident, "key", data.name, owner=data.user_id)
            target = f"API key {data.name}"
            return f"issued {target} ({data.scope}) for {names.user(data.user_id)}", target, None
    return _plain(event, ident, names)


_PLAIN: dict[tuple[str, str], str] = {
    ("device", "Removed"): "removed {device}",
    ("device", "CameOnline"): "saw {device} come back online",
    ("user", "ProfileChanged"): "changed the profile of {user}",
    ("user", "Deactivated"): "deactivated {user}",
    ("user", "Reactivated"): "reactivated {user}",
    ("user", "Deleted"): "deleted {user}",
    ("user", "PasswordChanged"): "changed the password of {user}",
    ("user", "TotpSetupStarted"): "started two-factor set-up for {user}",
    ("user", "TotpEnabled"): "turned two-factor authentication on for {user}",
    ("user", "TotpDisabled"): "turned two-factor authentication off for {user}",
    ("user", "TotpCodeAccepted"): "accepted a two-factor code of {user}",
    ("user", "BackupCodeUsed"): "spent a backup code of {user}",
    ("apikey", "Revoked"): "revoked {key}",
}


def _by_kind(data: SecurityActivitySummarised) -> dict[str, int]:
    totals: dict[str, int] = {}
    for c in data.counts:
        totals[c.kind] = totals.get(c.kind, 0) + c.count
    return totals


def _plain(event: object, ident: UUID, names: _Names) -> tuple[str, str, str | None]:
    """Events whose words need no data: from the table above, or a generic sentence."""
    aggregate, kind = aggregate_name(type(event)), type(event).__name__
    targets = {
        "device": names.device(ident), "user": names.user(ident),
        "key": f"API key {names.name(ident, str(ident))}",
    }  # fmt: skip
    target = {"device": targets["device"], "user": targets["user"], "apikey": targets["key"]}.get(
        aggregate, f"{aggregate} {ident}"
    )
    template = _PLAIN.get((aggregate, kind))
    if template is None:
        return f"recorded {kind} on {target}", target, None
    return template.format(**targets), target, None


def _name_new_ones(events: Sequence[object], names: _Names) -> None:
    """Name the users, keys and devices a batch creates before its words are written: first-run
    setup names its administrator (as actor and as roster member) before registering it."""
    for event in events:
        ident: UUID = getattr(event, "originator_id")
        if ident in names.rows:
            continue
        match event_data(event):  # type: ignore[arg-type]
            case UserRegistered(username=username):
                names.set(ident, "user", username)
            case ApiKeyIssued(name=name, user_id=owner):
                names.set(ident, "key", name, owner=owner)
            case DeviceAdded(alias=alias):
                names.set(ident, "device", alias)


class AuditProjector:
    """Writes one audit row per event; keeps the names of users, keys and devices it needs for words."""

    name = "audit"
    version = 1
    tables = (AUDIT_LOG, AUDIT_NAMES)

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        positions = {(r.originator_id, r.version): r.notification_id for r in records_for_events(cur, events)}
        wanted = list(_referenced(events))
        cur.execute(f"{AUDIT_NAMES.select} WHERE id = ANY(%s)", (wanted,))
        names = _Names(rows={row.id: row for row in map(AUDIT_NAMES.decode, cur.fetchall())}, changed=set())
        _name_new_ones(events, names)
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
            cur.executemany(AUDIT_LOG.upsert, rows)
        if names.changed:
            cur.executemany(AUDIT_NAMES.upsert, [AUDIT_NAMES.values(names.rows[i]) for i in names.changed])


AuditEntry = AuditRow
"""The API shows audit rows as they are stored."""


class AuditFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which audit rows to list; `readings` includes the meter's readings, left out by default."""

    actor: str | None = None
    aggregate: str | None = None
    event: str | None = None
    originator_id: UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    readings: bool = False


async def audit_page(
    conn: psycopg.AsyncConnection[Any],
    where: AuditFilter,
    *,
    after: int | None,
    limit: int,
    order: Literal["asc", "desc"] = "desc",
) -> tuple[list[AuditEntry], int | None]:
    """One keyset page of the audit log and the position the next page continues from (None: the end).

    `after` is the last position of the previous page (None: start at the newest, or the
    oldest with `order="asc"`). Each filter has an index that keeps its position order, so a
    deep page costs what the first does.
    """
    clauses: list[str] = []
    params: list[Any] = []
    if after is not None:
        clauses.append("position < %s" if order == "desc" else "position > %s")
        params.append(after)
    for column, value in (("actor", where.actor), ("aggregate", where.aggregate), ("event", where.event),
                          ("originator_id", where.originator_id)):  # fmt: skip
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if where.since is not None:
        clauses.append("at >= %s")
        params.append(where.since)
    if where.until is not None:
        clauses.append("at < %s")
        params.append(where.until)
    if not where.readings and where.aggregate is None:
        clauses.append("aggregate <> 'meter'")
    condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    cur = await conn.execute(
        f"{AUDIT_LOG.select}{condition} ORDER BY position {order.upper()} LIMIT %s", [*params, limit + 1]
    )
    rows = [AUDIT_LOG.decode(r) for r in await cur.fetchall()]
    more = len(rows) > limit
    entries = rows[:limit]
    return entries, entries[-1].position if more and entries else None


async def read_events_page(
    conn: psycopg.AsyncConnection[Any],
    app: WattLedger,
    where: EventFilter,
    *,
    after: int,
    limit: int,
    scan: int = DEFAULT_SCAN,
) -> HistoryPage:
    """One keyset page of `GET /api/events`, using this read model's indexes for the filters the store
    has none for (type, aggregate, actor, time).

    Up to the audit log's own position the matching positions come from its indexes, so a page
    holds `limit` events wherever they lie; the events themselves are read from the store and
    checked against the filters again. Past that position (the few events not projected yet) the
    page continues the bounded way of `read_page`, which may come back short with a position to
    go on from.
    """
    if not windowed(where):
        return await read_page(conn, app, where, after=after, limit=limit, scan=scan)
    cur = await conn.execute(f"SELECT position FROM {READ_SCHEMA}.projector_tracking WHERE name = %s",
                             (AuditProjector.name,))  # fmt: skip
    row = await cur.fetchone()
    indexed = int(row[0]) if row else 0
    start = max(after, where.from_position - 1)
    if start >= indexed:
        return await read_page(conn, app, where, after=start, limit=limit, scan=scan)
    clauses: list[str] = ["position > %s", "position <= %s"]
    params: list[Any] = [start, indexed]
    for column, value in (("aggregate", where.aggregate), ("event", where.event_type), ("actor", where.actor),
                          ("originator_id", where.originator_id)):  # fmt: skip
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if where.since is not None:
        clauses.append("at >= %s")
        params.append(where.since)
    if where.until is not None:
        clauses.append("at < %s")
        params.append(where.until)
    cur = await conn.execute(
        f"SELECT position FROM {AUDIT_LOG.name} WHERE {' AND '.join(clauses)} ORDER BY position LIMIT %s",
        [*params, limit],
    )
    positions = [int(r[0]) for r in await cur.fetchall()]
    records = await records_at(conn, positions)
    events = await asyncio.to_thread(decode_records, app, records, where)
    if len(positions) == limit:
        return HistoryPage(events=events, next_position=positions[-1])
    rest = await read_page(conn, app, where, after=indexed, limit=limit - len(positions), scan=scan)
    return HistoryPage(events=events + rest.events, next_position=rest.next_position)
