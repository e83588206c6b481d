"""PostgreSQL schemas that more than one adapter writes to, named once, and the one way to create them."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

OPS_SCHEMA = "wl_ops"
"""Operational state shared by processes, not events: poll members and leases, rate-limit counters,
the relay's positions."""


async def create_ops_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create `OPS_SCHEMA` if missing, in the caller's transaction.

    Every part that creates it waits on one advisory lock first, held to the end of that
    transaction: two parts starting together (a relay and a poller) would otherwise both try
    to create it, and the loser of that race fails with a unique violation.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (OPS_SCHEMA,))
    await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(OPS_SCHEMA)))
