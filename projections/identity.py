"""The identity read models (users, sessions, API keys), their queries, and the per-request reader.

Rows come from events alone, so a replay from zero gives the same rows. No
query result carries a secret: the only secret column, `api_keys.key_hash`, is
read by nothing that answers a client (authentication checks keys against the
event store, not against this table). Last activity of sessions and last use of keys live in
two plain tables written by authentication, not by events (`projections.identity_activity`),
and are joined in here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from adapters.history import EVENTS_TABLE
from domain.access import Permission, Role, Scope, permissions_for
from domain.identity import ApiKey, Session, User
from domain.ports import IdentityReader
from projections.identity_activity import KEY_USAGE_TABLE, SESSION_ACTIVITY_TABLE, ActivityNotes
from projections.quarantine import MEASUREMENTS
from projections.tables import READ_SCHEMA, Table

USERS_TABLE = f"{READ_SCHEMA}.users"
SESSIONS_TABLE = f"{READ_SCHEMA}.sessions"
API_KEYS_TABLE = f"{READ_SCHEMA}.api_keys"


class UserRow(msgspec.Struct, kw_only=True):
    """One row of `wl_read.users`."""

    id: UUID
    username: str
    email: str | None
    full_name: str
    role: str
    active: bool = True
    deleted: bool = False
    totp_enabled: bool = False
    created_at: datetime
    updated_at: datetime


class SessionRow(msgspec.Struct, kw_only=True):
    """One row of `wl_read.sessions`; `generation` is the current refresh generation."""

    id: UUID
    user_id: UUID
    ip: str
    user_agent: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    generation: int = 1


class ApiKeyRow(msgspec.Struct, kw_only=True):
    """One row of `wl_read.api_keys`; `key_hash` serves key checks only and is never returned by a query."""

    id: UUID
    user_id: UUID
    name: str
    scope: str
    prefix: str
    key_hash: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


USERS = Table(USERS_TABLE, UserRow, key="id")
SESSIONS = Table(
    SESSIONS_TABLE, SessionRow, key="id",
    indexes=(f"CREATE INDEX sessions_user_idx ON {SESSIONS_TABLE} (user_id, created_at)",),
)
API_KEYS = Table(
    API_KEYS_TABLE, ApiKeyRow, key="id",
    indexes=(f"CREATE INDEX api_keys_user_idx ON {API_KEYS_TABLE} (user_id, created_at)",),
)


def _stamp(event: object) -> datetime:
    moment: datetime = getattr(event, "timestamp")
    return moment


class IdentityProjector:
    """Projects User, Session and ApiKey events into their three tables.

    A batch loads the rows it touches once, folds its events into them in
    memory and writes each touched row once.
    """

    name = "identity"
    ignores = MEASUREMENTS
    version = 1
    tables = (USERS, SESSIONS, API_KEYS)

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        users = USERS.load(cur, {e.originator_id for e in events if isinstance(e, User.Event)})
        sessions = SESSIONS.load(cur, {e.originator_id for e in events if isinstance(e, Session.Event)})
        keys = API_KEYS.load(cur, {e.originator_id for e in events if isinstance(e, ApiKey.Event)})
        touched: dict[str, set[UUID]] = {USERS.name: set(), SESSIONS.name: set(), API_KEYS.name: set()}
        for event in events:
            if isinstance(event, User.Event):
                if self._user(users, event):
                    touched[USERS.name].add(event.originator_id)
            elif isinstance(event, Session.Event):
                if self._session(sessions, event):
                    touched[SESSIONS.name].add(event.originator_id)
            elif isinstance(event, ApiKey.Event) and self._key(keys, event):
                touched[API_KEYS.name].add(event.originator_id)
        folded: list[tuple[Table[Any], dict[UUID, Any]]] = [(USERS, users), (SESSIONS, sessions), (API_KEYS, keys)]
        for table, rows in folded:
            if touched[table.name]:
                table.write(cur, [table.values(rows[i]) for i in sorted(touched[table.name])])

    @staticmethod
    def _user(rows: dict[UUID, UserRow], event: User.Event) -> bool:
        """Fold one user event; False if it changes no column."""
        at = _stamp(event)
        if isinstance(event, User.Registered):
            rows[event.originator_id] = UserRow(
                id=event.originator_id, username=event.username, email=event.email, full_name=event.full_name,
                role=event.role, created_at=at, updated_at=at,
            )
            return True
        row = rows.get(event.originator_id)
        if row is None:
            return False
        match event:
            case User.ProfileChanged():
                row.email, row.full_name = event.email, event.full_name
            case User.RoleChanged():
                row.role = event.role
            case User.Deactivated():
                row.active = False
            case User.Reactivated():
                row.active = True
            case User.Deleted():
                row.active, row.deleted = False, True
            case User.TotpEnabled():
                row.totp_enabled = True
            case User.TotpDisabled() | User.TotpReset():
                row.totp_enabled = False
            case _:
                return False
        row.updated_at = at
        return True

    @staticmethod
    def _session(rows: dict[UUID, SessionRow], event: Session.Event) -> bool:
        if isinstance(event, Session.Started):
            rows[event.originator_id] = SessionRow(
                id=event.originator_id, user_id=event.user_id, ip=event.ip, user_agent=event.user_agent,
                created_at=_stamp(event), expires_at=event.expires_at,
            )
            return True
        row = rows.get(event.originator_id)
        if row is None:
            return False
        match event:
            case Session.Refreshed():
                row.generation = event.generation
            case Session.Ended():
                row.ended_at, row.end_reason = _stamp(event), event.reason
            case _:
                return False
        return True

    @staticmethod
    def _key(rows: dict[UUID, ApiKeyRow], event: ApiKey.Event) -> bool:
        if isinstance(event, ApiKey.Issued):
            rows[event.originator_id] = ApiKeyRow(
                id=event.originator_id, user_id=event.user_id, name=event.name, scope=event.scope,
                prefix=event.prefix, key_hash=event.key_hash, created_at=_stamp(event), expires_at=event.expires_at,
            )
            return True
        row = rows.get(event.originator_id)
        if row is None or not isinstance(event, ApiKey.Revoked):
            return False
        row.revoked_at = _stamp(event)
        return True


# ---- what queries return (no secret fields) ----


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    """A user as the API shows it (`is_active` as in the Kasa Monitor API)."""

    id: UUID
    username: str
    email: str | None
    full_name: str
    role: Role
    permissions: list[Permission]
    is_active: bool
    totp_enabled: bool
    created_at: datetime
    updated_at: datetime


class SessionView(msgspec.Struct, frozen=True, kw_only=True):
    session_id: UUID
    user_id: UUID
    ip_address: str
    user_agent: str
    created_at: datetime
    last_activity: datetime
    expires_at: datetime
    is_current: bool


class ApiKeyView(msgspec.Struct, frozen=True, kw_only=True):
    """A key as lists show it: its prefix, never the key or its hash."""

    key_id: UUID
    user_id: UUID
    name: str
    scope: Scope
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


_USER_COLUMNS = "id, username, email, full_name, role, active, totp_enabled, created_at, updated_at"


def _user_view(record: Sequence[Any]) -> UserView:
    user_id, username, email, full_name, role, active, totp_enabled, created_at, updated_at = record
    return UserView(
        id=user_id, username=username, email=email, full_name=full_name, role=Role(role),
        permissions=sorted(permissions_for(Role(role))), is_active=active, totp_enabled=totp_enabled,
        created_at=created_at, updated_at=updated_at,
    )


async def list_users(conn: psycopg.AsyncConnection[Any]) -> list[UserView]:
    """Every user not deleted, by user name."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(f"SELECT {_USER_COLUMNS} FROM {USERS_TABLE} WHERE NOT deleted ORDER BY lower(username)")
        return [_user_view(r) for r in await cur.fetchall()]


async def find_user(conn: psycopg.AsyncConnection[Any], user_id: UUID) -> UserView | None:
    """A user not deleted, or None."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(f"SELECT {_USER_COLUMNS} FROM {USERS_TABLE} WHERE id = %s AND NOT deleted", (user_id,))
        record = await cur.fetchone()
    return _user_view(record) if record else None


async def list_sessions(
    conn: psycopg.AsyncConnection[Any],
    user_id: UUID | None,
    *,
    current: UUID | None = None,
    now: datetime | None = None,
) -> list[SessionView]:
    """The active sessions (not ended, not expired) of a user, or of everyone with `user_id=None`, oldest first.

    `current` marks the caller's own session.
    """
    moment = now or datetime.now(timezone.utc)
    where = "s.ended_at IS NULL AND s.expires_at > %s" + ("" if user_id is None else " AND s.user_id = %s")
    params: tuple[Any, ...] = (moment,) if user_id is None else (moment, user_id)
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            f"SELECT s.id, s.user_id, s.ip, s.user_agent, s.created_at, coalesce(a.last_activity, s.created_at), "
            f"s.expires_at FROM {SESSIONS_TABLE} s LEFT JOIN {SESSION_ACTIVITY_TABLE} a ON a.session_id = s.id "
            f"WHERE {where} ORDER BY s.created_at, s.id",
            params,
        )
        records = await cur.fetchall()
    return [
        SessionView(
            session_id=sid, user_id=uid, ip_address=ip, user_agent=agent, created_at=created,
            last_activity=max(activity, created), expires_at=expires, is_current=sid == current,
        )
        for sid, uid, ip, agent, created, activity, expires in records
    ]


async def list_api_keys(
    conn: psycopg.AsyncConnection[Any], user_id: UUID | None, *, include_revoked: bool = False
) -> list[ApiKeyView]:
    """The keys of a user, or of everyone with `user_id=None`, oldest first; revoked ones only if asked."""
    conditions = [] if include_revoked else ["k.revoked_at IS NULL"]
    params: tuple[Any, ...] = ()
    if user_id is not None:
        conditions.append("k.user_id = %s")
        params = (user_id,)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            f"SELECT k.id, k.user_id, k.name, k.scope, k.prefix, k.created_at, k.expires_at, u.last_used_at, "
            f"k.revoked_at FROM {API_KEYS_TABLE} k LEFT JOIN {KEY_USAGE_TABLE} u ON u.key_id = k.id "
            f"{where} ORDER BY k.created_at, k.id",
            params,
        )
        records = await cur.fetchall()
    return [
        ApiKeyView(
            key_id=kid, user_id=uid, name=name, scope=Scope(scope), prefix=prefix, created_at=created,
            expires_at=expires, last_used_at=used, revoked_at=revoked,
        )
        for kid, uid, name, scope, prefix, created, expires, used, revoked in records
    ]


class IdentityReadModels(IdentityReader):
    """The `IdentityReader` port for per-request authentication, on the read pool.

    `versions` reads the event store's own table (its primary key index), never a read
    model, so authentication follows the log even while the identity projector lags.
    Activity is noted through `ActivityNotes`, at most once a minute per session or key.
    """

    def __init__(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], *, remember: int = 10_000) -> None:
        self.pool = pool
        self._activity = ActivityNotes(pool, remember=remember)

    async def versions(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, int]:
        if not aggregate_ids:
            return {}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT originator_id, max(originator_version) FROM {EVENTS_TABLE} "
                f"WHERE originator_id = ANY(%s) GROUP BY originator_id",
                (list(aggregate_ids),),
            )
            return {originator_id: int(version) for originator_id, version in await cur.fetchall()}

    async def api_key_ids(self, user_id: UUID) -> list[UUID]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT id FROM {API_KEYS_TABLE} WHERE user_id = %s AND revoked_at IS NULL ORDER BY created_at, id",
                (user_id,),
            )
            return [key_id for (key_id,) in await cur.fetchall()]

    async def touch_session(self, session_id: UUID, at: datetime) -> None:
        await self._activity.session(session_id, at)

    async def touch_key(self, key_id: UUID, at: datetime) -> None:
        await self._activity.key(key_id, at)
