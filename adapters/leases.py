"""Leases on devices in PostgreSQL, so several pollers share the devices and none polls one twice.

Every poller process is a member: it heartbeats a row in `wl_ops.poll_members`, and in
the same transaction renews the leases it holds in `wl_ops.poll_leases`, releases what
exceeds its fair share (the present devices divided by the live members, rounded up),
and claims unowned or expired leases up to that share with `FOR UPDATE SKIP LOCKED`.
A lease lasts `ttl` seconds by the database's clock; a member that dies loses its
devices to the others once they expire.

The member trusts its leases locally for `VALID_SHARE` of `ttl` from the moment it
began the round that renewed them, which is earlier than the database's expiry, so it
stops polling a device before any other member can claim it.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from uuid import UUID

import psycopg
import structlog
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from adapters.poll_assignment import Assigned
from adapters.schemas import OPS_SCHEMA, create_ops_schema
from domain.device import PUSH_ADDRESS_PREFIX

log = structlog.get_logger(__name__)

VALID_SHARE = 0.8
"""Part of the lease time a member polls on its last renewal; the rest is the hand-over margin."""

_SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {members} (
    member_id uuid PRIMARY KEY,
    name text NOT NULL,
    joined_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {leases} (
    device_id uuid PRIMARY KEY,
    member_id uuid,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
CREATE INDEX IF NOT EXISTS poll_leases_member ON {leases} (member_id);
"""

Release = Callable[[Collection[UUID]], Awaitable[None]]


def member_name() -> str:
    """`host:pid`, for people reading the members table."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Leases:
    """One poller's membership and device leases; implements the poller's `Assignment`.

    `devices_table` is the devices read model (`device_id`, `address`, `removed`).
    Every call runs one short transaction on a connection from `pool`.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        *,
        devices_table: str,
        ttl: float = 30.0,
        name: str | None = None,
        member_id: UUID | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self._pool = pool
        self.ttl = ttl
        self.refresh_every = ttl / 3
        self.member_id = member_id or uuid.uuid4()
        self.name = name or member_name()
        schema, _, table = devices_table.rpartition(".")
        self._names: dict[str, sql.Composable] = {
            "schema": sql.Identifier(OPS_SCHEMA),
            "members": sql.Identifier(OPS_SCHEMA, "poll_members"),
            "leases": sql.Identifier(OPS_SCHEMA, "poll_leases"),
            "devices": sql.Identifier(schema, table) if schema else sql.Identifier(table),
        }
        self._ready = False

    def _sql(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(**self._names)

    async def setup(self) -> None:
        """Create the schema and tables if missing; concurrent members wait on one advisory lock."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock(hashtext('{OPS_SCHEMA}.poll_leases'))")
            await create_ops_schema(conn)
            await conn.execute(self._sql(_SCHEMA_SQL))
        self._ready = True

    async def refresh(self, release: Release) -> Assigned:
        """Heartbeat, renew, rebalance; returns the devices this member holds now.

        `release` is awaited with the devices about to be given up, before the release
        commits, so the caller stops polling them first.
        """
        if not self._ready:
            await self.setup()
        began = asyncio.get_running_loop().time()
        ttl = self.ttl
        me = self.member_id
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                self._sql(
                    "INSERT INTO {members} (member_id, name, expires_at) "
                    "VALUES (%s, %s, now() + make_interval(secs => %s)) "
                    "ON CONFLICT (member_id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
                ),
                (me, self.name, ttl),
            )
            await conn.execute(self._sql("DELETE FROM {members} WHERE expires_at < now() - interval '1 day'"))
            members = await _scalar(conn, self._sql("SELECT count(*) FROM {members} WHERE expires_at > now()"))
            present = await _scalar(conn, self._sql("SELECT count(*) FROM {devices} WHERE NOT removed"))
            share = math.ceil(present / max(members, 1))
            await conn.execute(
                self._sql(
                    "UPDATE {leases} l SET member_id = NULL, expires_at = '-infinity' "
                    "WHERE l.member_id = %s AND NOT EXISTS "
                    "(SELECT 1 FROM {devices} d WHERE d.device_id = l.device_id AND NOT d.removed)"
                ),
                (me,),
            )
            cur = await conn.execute(
                self._sql(
                    "UPDATE {leases} l SET expires_at = now() + make_interval(secs => %s) "
                    "FROM {devices} d WHERE l.member_id = %s AND d.device_id = l.device_id AND NOT d.removed "
                    "RETURNING l.device_id, d.address"
                ),
                (ttl, me),
            )
            held: dict[UUID, str] = {row[0]: row[1] for row in await cur.fetchall()}
            if len(held) > share:
                excess = sorted(held, reverse=True)[: len(held) - share]
                await release(excess)
                await conn.execute(
                    self._sql(
                        "UPDATE {leases} SET member_id = NULL, expires_at = '-infinity' "
                        "WHERE member_id = %s AND device_id = ANY(%s)"
                    ),
                    (me, excess),
                )
                for device_id in excess:
                    del held[device_id]
                log.info("leases.released", member=self.name, count=len(excess), share=share, members=members)
            elif len(held) < share:
                held.update(await self._claim(conn, share - len(held)))
        return Assigned(devices=held, valid_until=began + VALID_SHARE * ttl)

    async def _claim(self, conn: psycopg.AsyncConnection[Any], wanted: int) -> dict[UUID, str]:
        await conn.execute(
            self._sql(
                "INSERT INTO {leases} (device_id) SELECT d.device_id FROM {devices} d "
                "WHERE NOT d.removed AND NOT starts_with(d.address, %s) "
                "AND NOT EXISTS (SELECT 1 FROM {leases} l WHERE l.device_id = d.device_id) "
                "ORDER BY d.device_id ON CONFLICT (device_id) DO NOTHING"
            ),
            (PUSH_ADDRESS_PREFIX,),
        )
        await conn.execute(
            self._sql(
                "DELETE FROM {leases} l WHERE (l.member_id IS NULL OR l.expires_at <= now()) AND NOT EXISTS "
                "(SELECT 1 FROM {devices} d WHERE d.device_id = l.device_id AND NOT d.removed)"
            )
        )
        cur = await conn.execute(
            self._sql(
                "WITH free AS ("
                " SELECT l.device_id FROM {leases} l JOIN {devices} d ON d.device_id = l.device_id"
                " WHERE NOT d.removed AND (l.member_id IS NULL OR l.expires_at <= now())"
                " ORDER BY l.device_id LIMIT %s FOR UPDATE OF l SKIP LOCKED) "
                "UPDATE {leases} l SET member_id = %s, expires_at = now() + make_interval(secs => %s) "
                "FROM free, {devices} d WHERE l.device_id = free.device_id AND d.device_id = l.device_id "
                "RETURNING l.device_id, d.address"
            ),
            (wanted, self.member_id, self.ttl),
        )
        claimed = {row[0]: row[1] for row in await cur.fetchall()}
        if claimed:
            log.info("leases.claimed", member=self.name, count=len(claimed))
        return claimed

    async def leave(self) -> None:
        """Give up every lease and the membership, so the others take over at their next round."""
        if not self._ready:
            return
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                self._sql("UPDATE {leases} SET member_id = NULL, expires_at = '-infinity' WHERE member_id = %s"),
                (self.member_id,),
            )
            await conn.execute(self._sql("DELETE FROM {members} WHERE member_id = %s"), (self.member_id,))
        log.info("leases.left", member=self.name)

    async def holders(self) -> dict[UUID, UUID]:
        """device id → member id of every lease held and unexpired now (status and tests)."""
        if not self._ready:
            await self.setup()
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                self._sql("SELECT device_id, member_id FROM {leases} WHERE member_id IS NOT NULL AND expires_at > now()")
            )
            return {row[0]: row[1] for row in await cur.fetchall()}


async def _scalar(conn: psycopg.AsyncConnection[Any], query: sql.Composed) -> int:
    cur = await conn.execute(query)
    row = await cur.fetchone()
    return int(row[0]) if row else 0
