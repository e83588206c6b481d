"""The commands read model: one row per control command with its state and outcome, and its queries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from psycopg.rows import tuple_row

from domain.control import ControlCommand
from projections.quarantine import MEASUREMENTS
from projections.tables import READ_SCHEMA, Table


class OutletState(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    outlet_id: str
    is_on: bool


class CommandRow(msgspec.Struct, kw_only=True):
    """One row of `wl_read.commands`; the fields are its columns, in order."""

    command_id: UUID
    device_id: UUID
    outlet: int | None
    action: str
    status: str
    actor: str
    idempotency_key: str | None
    requested_at: datetime
    deadline: datetime
    attempted_at: datetime | None = None
    desired: bool | None = None
    finished_at: datetime | None = None
    is_on: bool | None = None
    outlets: list[OutletState] = msgspec.field(default_factory=list)
    reason: str | None = None
    detail: str | None = None
    position: int = 0


class CommandView(msgspec.Struct, frozen=True, kw_only=True):
    """A control command as the API shows it: `status` requested, executing, succeeded or failed."""

    command_id: UUID
    device_id: UUID
    outlet: int | None
    action: str
    status: str
    actor: str
    requested_at: datetime
    deadline: datetime
    attempted_at: datetime | None
    finished_at: datetime | None
    is_on: bool | None
    outlets: list[OutletState]
    reason: str | None
    detail: str | None


COMMANDS = Table(
    f"{READ_SCHEMA}.commands",
    CommandRow,
    key="command_id",
    indexes=(f"CREATE INDEX ON {READ_SCHEMA}.commands (device_id, requested_at DESC, command_id)",),
)


def _row(event: ControlCommand.ControlRequested) -> CommandRow:
    return CommandRow(
        command_id=event.originator_id, device_id=event.device_id, outlet=event.outlet, action=event.action,
        status="requested", actor=event.actor, idempotency_key=event.idempotency_key,
        requested_at=event.timestamp, deadline=event.deadline,
    )  # fmt: skip


def _apply(row: CommandRow, event: object) -> None:
    match event:
        case ControlCommand.ControlAttempted():
            row.status, row.attempted_at, row.desired = "executing", event.timestamp, event.desired
        case ControlCommand.ControlSucceeded():
            row.status, row.finished_at, row.is_on = "succeeded", event.timestamp, event.is_on
            row.outlets = [msgspec.convert(o, OutletState) for o in event.outlets]
        case ControlCommand.ControlFailed():
            row.status, row.finished_at = "failed", event.timestamp
            row.reason, row.detail = event.reason, event.detail


class CommandsProjector:
    """Projects ControlCommand events into `wl_read.commands`, one upsert per touched command."""

    name = "commands"
    ignores = MEASUREMENTS
    version = 1
    tables = (COMMANDS,)

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        mine = [e for e in events if isinstance(e, ControlCommand.Event)]
        if not mine:
            return
        rows = COMMANDS.load(cur, {e.originator_id for e in mine})
        for event in mine:
            if isinstance(event, ControlCommand.ControlRequested):
                rows[event.originator_id] = _row(event)
            row = rows.get(event.originator_id)
            if row is not None:
                _apply(row, event)
        COMMANDS.write(cur, [COMMANDS.values(r) for r in rows.values()])


def _view(row: CommandRow) -> CommandView:
    return CommandView(
        command_id=row.command_id, device_id=row.device_id, outlet=row.outlet, action=row.action,
        status=row.status, actor=row.actor, requested_at=row.requested_at, deadline=row.deadline,
        attempted_at=row.attempted_at, finished_at=row.finished_at, is_on=row.is_on, outlets=row.outlets,
        reason=row.reason, detail=row.detail,
    )  # fmt: skip


async def find_command(conn: psycopg.AsyncConnection[Any], command_id: UUID) -> CommandView | None:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(f"{COMMANDS.select} WHERE command_id = %s", (command_id,))
        record = await cur.fetchone()
    return _view(COMMANDS.decode(record)) if record else None


async def device_commands(
    conn: psycopg.AsyncConnection[Any], device_id: UUID, *, limit: int, offset: int
) -> tuple[list[CommandView], int]:
    """One page of a device's commands, newest first, and how many it has in all."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            f"{COMMANDS.select} WHERE device_id = %s ORDER BY requested_at DESC, command_id LIMIT %s OFFSET %s",
            (device_id, limit, offset),
        )
        records = await cur.fetchall()
        await cur.execute(f"SELECT count(*) FROM {COMMANDS.name} WHERE device_id = %s", (device_id,))
        total = await cur.fetchone()
    return [_view(COMMANDS.decode(r)) for r in records], int(total[0]) if total else 0


async def interrupted_commands(conn: psycopg.AsyncConnection[Any], attempted_before: datetime) -> list[UUID]:
    """Commands attempted before `attempted_before` that have no outcome yet (their executor died), oldest first."""
    cur = await conn.execute(
        f"SELECT command_id FROM {COMMANDS.name} WHERE attempted_at < %s AND finished_at IS NULL "
        "ORDER BY attempted_at LIMIT 100",
        (attempted_before,),
    )
    return [row[0] for row in await cur.fetchall()]
