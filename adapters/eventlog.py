"""The one door to the notification log: its head, sections of it decoded once, and decoding.

The relay, the projection engine, the live replay, history and the exports read the
stored events through `EventLog`; nothing else touches the eventsourcing library's
recorder or mapper. A section is one query of up to `limit` notifications after a
position (up to `stop`, of some `topics` only), so readers catching up ask for large
sections (the library's default is small) and decode each event once. Filtered and
paged reads of the stored table in SQL are `adapters.history`'s, which decodes here too.

Everything here is synchronous, as the library is: async callers run it in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, NamedTuple
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import InterfaceError, Notification, OperationalError
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier
from psycopg_pool import ConnectionPool

from adapters.errors import AdapterError
from adapters.eventstore import EVENTS_SCHEMA, WattLedger
from adapters.stored_form import CompactMapper

__all__ = ["EventLog", "Logged", "StoreNotEmpty"]


class StoreNotEmpty(AdapterError):
    """A restore aimed at an event store that already holds events."""


class Logged(NamedTuple):
    """One stored event: its notification (position, stream, version, topic, stored bytes) and the event."""

    notification: Notification
    event: DomainEventProtocol[Any]

    @property
    def id(self) -> int:
        """The event's position in the log (its notification id)."""
        return self.notification.id


@retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
def _select_notifications(
    recorder: PostgresApplicationRecorder, after: int, limit: int, stop: int | None, topics: Sequence[str]
) -> list[Notification]:
    """The library's `select_notifications` (after `after`, exclusive), retried and its errors translated as
    there, giving the same notifications for less: rows as tuples, each notification made as the library
    makes an event (`Mapper.to_domain_event`), its fields set at once rather than one frozen field a call.

    A section holds thousands of rows, and building them took as long as the query and the transfer."""
    statement = _SELECT.format(schema=Identifier(recorder.datastore.schema),
                               table=Identifier(recorder.events_table_name))  # fmt: skip
    params: list[Any] = [after]
    if stop is not None:
        statement += SQL(" AND notification_id <= %s")
        params.append(stop)
    if topics:
        statement += SQL(" AND topic = ANY(%s)")
        params.append(list(topics))
    statement += SQL(" ORDER BY notification_id LIMIT %s")
    params.append(limit)
    with recorder.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(statement, params, prepare=True)
        rows = cur.fetchall()
    notifications: list[Notification] = []
    append, new, assign = notifications.append, object.__new__, object.__setattr__
    for position, originator_id, version, topic, state in rows:
        notification = new(Notification)
        assign(notification, "__dict__", {"originator_id": originator_id, "originator_version": version,
                                          "topic": topic, "state": bytes(state), "id": position})  # fmt: skip
        append(notification)
    return notifications


_SELECT: Final = SQL(
    "SELECT notification_id, originator_id, originator_version, topic, state FROM {schema}.{table} "
    "WHERE notification_id>%s"
)


class EventLog:
    """The notification log of a `WattLedger` application, read in sections."""

    def __init__(self, app: WattLedger) -> None:
        self._app = app

    def max_id(self) -> int:
        """The newest notification id (0 while the log is empty)."""
        return self._app.recorder.max_notification_id() or 0

    def read_raw(
        self, after: int, limit: int, stop: int | None = None, topics: Sequence[str] | None = None
    ) -> Sequence[Notification]:
        """Up to `limit` notifications after position `after` (up to `stop`, inclusive), in log order, undecoded.

        `topics` None reads every event; an empty list matches none."""
        if topics is not None and not topics:
            return []
        recorder = self._app.recorder
        if isinstance(recorder, PostgresApplicationRecorder) and "select_notifications" not in vars(recorder):
            selected: list[Notification] = _select_notifications(recorder, after, limit, stop, topics or ())
            return selected
        return recorder.select_notifications(
            start=after, limit=limit, stop=stop, topics=topics or (), inclusive_of_start=False
        )

    def read(
        self, after: int, limit: int, stop: int | None = None, topics: Sequence[str] | None = None
    ) -> list[Logged]:
        """`read_raw`'s notifications with their events decoded. Raises what decoding raises."""
        notifications = self.read_raw(after, limit, stop, topics)
        return [Logged(n, e) for n, e in zip(notifications, self.decode_all(notifications), strict=True)]

    def decode(self, notification: Notification) -> DomainEventProtocol[UUID]:
        """The domain event a notification holds. Raises for one that no longer decodes."""
        return self._app.mapper.to_domain_event(notification)

    def decode_all(self, notifications: Sequence[Notification]) -> list[DomainEventProtocol[UUID]]:
        """The domain events of `notifications`, in their order. Raises at the first that does not decode."""
        mapper = self._app.mapper
        if isinstance(mapper, CompactMapper):  # decodes a section's events together, faster
            return mapper.to_domain_events(notifications)
        decode = mapper.to_domain_event
        return [decode(n) for n in notifications]

    @property
    def table(self) -> str:
        """The stored events' table, schema-qualified, for the readers that query it in SQL."""
        return f"{EVENTS_SCHEMA}.{getattr(self._app.recorder, 'events_table_name')}"

    def streams_holding(self, stream_ids: Sequence[UUID]) -> set[UUID]:
        """Which of `stream_ids` hold any stored event: one query, one index probe a stream."""
        query = (f"SELECT id FROM unnest(%s::uuid[]) AS id "
                 f"WHERE EXISTS (SELECT 1 FROM {self.table} WHERE originator_id = id)")
        with getattr(self._app.recorder, "datastore").transaction(commit=False) as cursor:
            cursor.execute(query, (list(stream_ids),))
            return {row["id"] for row in cursor.fetchall()}

    def restore(
        self, sections: Iterable[Sequence[Notification]], then: Callable[[Cursor[Any]], None] | None = None
    ) -> int:
        """Write `sections` of notifications, each at its own position, into this store while it is empty.

        One transaction: the rows are copied in log order, the position sequence is set past the
        last, and `then` runs on the same cursor before the commit; any failure leaves the store
        as it was. Returns the rows written. Raises StoreNotEmpty if the store holds any event."""
        written = 0
        with getattr(self._app.recorder, "datastore").transaction(commit=True) as cursor:
            cursor.execute(f"LOCK TABLE {self.table} IN EXCLUSIVE MODE")
            if cursor.execute(f"SELECT 1 FROM {self.table} LIMIT 1").fetchone() is not None:
                raise StoreNotEmpty("the event store restored into must be empty")
            columns = "originator_id, originator_version, topic, state, notification_id"
            with cursor.copy(f"COPY {self.table} ({columns}) FROM STDIN") as copy:
                for section in sections:
                    for n in section:
                        copy.write_row((n.originator_id, n.originator_version, n.topic, n.state, n.id))
                    written += len(section)
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence(%s, 'notification_id'), "
                f"(SELECT coalesce(max(notification_id), 0) + 1 FROM {self.table}), false)",
                (self.table,),
            )
            if then is not None:
                then(cursor)
            if self.channel is not None:
                cursor.execute(f'NOTIFY "{self.channel}"')
        return written

    @property
    def channel(self) -> str | None:
        """The PostgreSQL channel the store notifies after each write (None where the store has none)."""
        return getattr(self._app.recorder, "channel_name", None)

    def check_connections(self) -> None:
        """Test the idle connections of the store's pool and replace the dead ones (blocking)."""
        pool = getattr(getattr(self._app.recorder, "datastore", None), "pool", None)
        if isinstance(pool, ConnectionPool):
            pool.check()
