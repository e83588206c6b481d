"""The `wl_auth` schema: its name, the secrets' tables and their creation.

Everything secret the system keeps outside the event store lives in the
PostgreSQL schema `wl_auth`, which no read model rebuild touches:

- `wl_auth.secrets`: the secret box key, generated once, unless the setting
  `WATTLEDGER_SECRET_KEY` is given (a key stored earlier still opens what it sealed).
- `wl_auth.signing_keys`: the JWT signing keys (`kid`, secret, created_at);
  tokens are signed with the newest and verified with any of them.

The schema also holds the last use of API keys and last activity of sessions, noted by
per-request authentication; their tables are created and written by
`projections.identity_activity`, after `create_auth_schema`.
"""

from __future__ import annotations

from typing import Any

import psycopg

AUTH_SCHEMA = "wl_auth"
SECRETS_TABLE = f"{AUTH_SCHEMA}.secrets"
SIGNING_KEYS_TABLE = f"{AUTH_SCHEMA}.signing_keys"

AUTH_DDL = f"""
CREATE TABLE IF NOT EXISTS {SECRETS_TABLE} (
    name text PRIMARY KEY,
    value text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {SIGNING_KEYS_TABLE} (
    kid text PRIMARY KEY,
    secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

# Serialises creating the schema and the first keys between processes starting at once.
AUTH_LOCK = 0x574C_4155


async def create_auth_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create `wl_auth` if missing, in the caller's transaction, holding the lock every process
    creating it, its tables or its first keys takes to the end of that transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUTH_LOCK,))
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {AUTH_SCHEMA}")


async def ensure_auth_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create the `wl_auth` schema and the secrets' tables if missing (safe to run from several processes)."""
    async with conn.transaction():
        await create_auth_schema(conn)
        await conn.execute(AUTH_DDL)

