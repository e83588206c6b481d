"""Sections of the log as read models get them, what a failure means, and the quarantine.

`read_section` reads one section of the log and decodes it once for every read
model; an event that cannot be decoded stands in it as `Undecodable`. A failure
is a fault (a server away or busy: retrying may succeed), a data error (the event
being applied fails the same way every time) or a bug (anything else).
`apply_isolating` applies a section under savepoints, and on a data error applies
it again in halves down to the one event that fails alone; that event, and any
`Undecodable`, is left out and becomes a quarantine row, recorded in the same
transaction as the rows of the events that did apply.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final
from uuid import UUID

import eventsourcing.persistence as es
import msgspec
import psycopg
import structlog
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic
from psycopg.types.json import set_json_loads
from psycopg_pool import PoolTimeout

from adapters.eventlog import EventLog
from domain.alert import AlertTicks
from domain.meter import MeterDay
from domain.text import escape_text
from projections.errors import ProjectionError
from projections.tables import Projector
from projections.tracking import QUARANTINE

__all__ = [
    "EVERY_EVENT",
    "EngineClosed",
    "MEASUREMENTS",
    "QuarantineRow",
    "Section",
    "Undecodable",
    "Unread",
    "apply_isolating",
    "data_error",
    "decode_notifications",
    "expected_fault",
    "ignored_topics",
    "log_quarantine",
    "notifications_of",
    "one_line",
    "read_section",
    "record_quarantine",
    "undecoded_topics",
]

log = structlog.get_logger(__name__)

QuarantineRow = tuple[str, int, UUID, int, str, str]
"""One quarantined event: read model, position, originator id and version, topic, error."""


_TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,  # lost connections, serialization failures, deadlocks, lock and statement timeouts
    psycopg.InterfaceError,
    es.OperationalError,
    es.InterfaceError,
    PoolTimeout,
    OSError,
)
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.DataError,  # NUL in text (UntranslatableCharacter), numbers out of range, bad encodings
    psycopg.IntegrityError,
    es.DataError,
    es.IntegrityError,
    ValueError,  # decoding (msgspec, UnicodeError), values a projector cannot use
    TypeError,
    LookupError,
    ArithmeticError,
)


class EngineClosed(ProjectionError, RuntimeError):
    """The engine was closed while a pass still ran in a worker thread."""


def expected_fault(error: BaseException) -> bool:
    """Whether `error` says a server was away or busy (retrying may succeed), not that the code or the data is wrong."""
    if isinstance(error, EngineClosed) or isinstance(error, _TRANSIENT):
        return True
    # The event store wraps a driver error in its own classes, keeping the cause.
    return type(error) is es.DatabaseError or (
        isinstance(error, es.PersistenceError) and error.__cause__ is not None and expected_fault(error.__cause__)
    )


def data_error(error: BaseException) -> bool:
    """Whether `error` is about the event being applied (so it fails the same way every time), not a fault."""
    return isinstance(error, _DATA_ERRORS) and not expected_fault(error)


def one_line(error: BaseException, limit: int = 2000) -> str:
    """`Type: message` on one line, escaped, at most `limit` characters: storable in `text` and loggable."""
    return escape_text(f"{type(error).__name__}: {error}".strip())[:limit]


class Undecodable(msgspec.Struct, frozen=True):
    """Stands in a section for a notification whose event could not be decoded."""

    error: str


def decode_notifications(event_log: EventLog, notifications: Sequence[Notification]) -> list[object]:
    """The domain events of `notifications`; one that cannot be decoded is an `Undecodable` in its place."""
    try:
        return list(event_log.decode_all(notifications))
    except Exception:
        pass
    events: list[object] = []
    for notification in notifications:
        try:
            events.append(event_log.decode(notification))
        except Exception as error:
            events.append(Undecodable(one_line(error)))
    return events


class Unread(msgspec.Struct, frozen=True):
    """Stands in a section for an event left undecoded: every read model of the pass ignores its type."""

    originator_id: Any
    originator_version: int
    topic: str


MEASUREMENTS: Final = (MeterDay.ReadingRecorded, AlertTicks.Opened, AlertTicks.Ticked)
"""Events that record what was measured or when (a reading every few seconds a device, a tick a minute): what
most read models ignore, and most of the log."""

EVERY_EVENT: Final = "*"
"""What a read model `ignores` when it needs no event decoded (it reads the stored rows, as the chain does)."""


def ignored_topics(projector: object) -> frozenset[str]:
    """The topics of the events `projector` declares it `ignores` (none for `EVERY_EVENT`: such a read model
    takes every event, undecoded, for its position and stored bytes)."""
    ignores = getattr(projector, "ignores", ())
    if ignores == EVERY_EVENT:
        return frozenset()
    return frozenset(get_topic(kind) for kind in ignores)


def undecoded_topics(projectors: Iterable[object]) -> frozenset[str]:
    """The topics none of `projectors` needs decoded: those every one of them `ignores`.

    A read model may declare `ignores`, the event types it does nothing with (or `EVERY_EVENT`);
    one that declares nothing needs every event. `EVERY_EVENT` in the answer: decode nothing."""
    needed = [ignored_topics(p) for p in projectors if getattr(p, "ignores", ()) != EVERY_EVENT]
    return frozenset.intersection(*needed) if needed else frozenset({EVERY_EVENT})


class Section(msgspec.Struct, frozen=True):
    """Notifications read after `after`, decoded once for every projector (`Undecodable` where that failed,
    `Unread` where no projector needed it decoded)."""

    after: int
    ids: list[int]
    events: list[object]
    notifications: list[Any]
    clean: bool = False
    """True when no event of the section is `Undecodable`."""

    def heeded(self, topics: frozenset[str], first: int = 0) -> tuple[list[object], list[Any]]:
        """The events from index `first` on and their notifications, without those whose topic is in `topics`
        (what a read model `ignores`, `ignored_topics`): a read model does nothing with those, so they are
        not handed to it."""
        if not topics:
            return self.events[first:], self.notifications[first:]
        notifications, events = self.notifications, self.events
        kept = [i for i in range(first, len(notifications)) if notifications[i].topic not in topics]
        return [events[i] for i in kept], [notifications[i] for i in kept]


def read_section(
    event_log: EventLog, after: int, limit: int, stop: int | None = None, skip: Collection[str] = frozenset()
) -> Section | None:
    """Up to `limit` notifications after `after` (up to `stop`), decoded once; None at the end of the log.

    The events whose topic is in `skip` (all of them if it holds `EVERY_EVENT`) are not decoded
    and stand as `Unread` (see `undecoded_topics`)."""
    notifications = event_log.read_raw(after, limit, stop)
    if not notifications:
        return None
    if not skip:
        events = decode_notifications(event_log, notifications)
    else:
        every = EVERY_EVENT in skip
        wanted = [not every and n.topic not in skip for n in notifications]
        decoded = iter(decode_notifications(event_log, [n for n, w in zip(notifications, wanted, strict=True) if w]))
        events = [next(decoded) if w else Unread(n.originator_id, n.originator_version, n.topic)
                  for n, w in zip(notifications, wanted, strict=True)]  # fmt: skip
    clean = Undecodable not in set(map(type, events))
    return Section(after, [n.id for n in notifications], events, list(notifications), clean)


_APPLYING: ContextVar[tuple[Sequence[object], Sequence[Notification]] | None] = ContextVar(
    "wattledger_applying", default=None
)


@contextmanager
def _applying(events: Sequence[object], notifications: Sequence[Notification]) -> Iterator[None]:
    token = _APPLYING.set((events, notifications))
    try:
        yield
    finally:
        _APPLYING.reset(token)


def notifications_of(events: Sequence[object]) -> Sequence[Notification] | None:
    """The notifications the engine read `events` from, in their order, while it applies them; None elsewhere.

    A read model that needs each event's position or stored bytes (the chain, the audit log) takes
    them from here instead of reading the stored rows again. The answer is given only when every
    event is the one its notification holds (same stream and version), so a caller that hands a
    projector other events than the section's gets None and reads the store.
    """
    applying = _APPLYING.get()
    if applying is None:
        return None
    handed, held = applying
    if events is handed:  # the very list the engine handed over, decoded from `held` one for one
        return held
    if len(held) != len(events):
        return None
    for event, notification in zip(events, held, strict=True):
        if (getattr(event, "originator_version", None) != notification.originator_version
                or getattr(event, "originator_id", None) != notification.originator_id):  # fmt: skip
            return None
    return held


def _quarantine(projector: str, notification: Notification, error: str) -> QuarantineRow:
    return (projector, notification.id, UUID(str(notification.originator_id)), notification.originator_version,
            notification.topic, error)  # fmt: skip


def apply_isolating(
    cur: psycopg.Cursor[Any], projector: Projector, events: Sequence[object], notifications: Sequence[Notification],
    *, clean: bool = False,
) -> list[QuarantineRow]:
    """Apply `events` in the caller's transaction, skipping those that fail alone with a data error.

    `notifications` are those `events` were decoded from, one for one (a section's), which the
    projector may take while it applies them (`notifications_of`).

    The read models' json columns are read with msgspec on `cur` (the same values as the standard
    library's parser gives, a few times faster). Each span is applied under a savepoint; a span that fails with a data error is rolled back
    and applied again in halves until the one event that fails alone is found. That event, and
    any `Undecodable`, is left out and returned as a quarantine row (projector, position,
    originator id and version, topic, error). Any other error (a fault, a bug) is raised.
    With `clean` the caller knows no event is `Undecodable` (`Section.clean`), so none is looked for.
    """
    set_json_loads(msgspec.json.decode, cur)
    found: list[QuarantineRow] = []
    start, end = 0, len(events)
    while start < end:
        marker = events[start]
        if not clean and isinstance(marker, Undecodable):
            found.append(_quarantine(projector.name, notifications[start], marker.error))
            start += 1
            continue
        stop = end if clean else next((i for i in range(start, end) if isinstance(events[i], Undecodable)), end)
        failed, error = _apply_span(cur, projector, events, notifications, start, stop)
        if error is not None:
            found.append(_quarantine(projector.name, notifications[failed], one_line(error)))
            start = failed + 1
        else:
            start = stop
    return found


def _apply_span(
    cur: psycopg.Cursor[Any], projector: Projector, events: Sequence[object], notifications: Sequence[Notification],
    start: int, stop: int,
) -> tuple[int, BaseException | None]:
    """Apply events[start:stop] under savepoints, up to the first one that fails alone with a data error.

    Returns (that event's index, its error), or (stop, None) when all applied."""
    chunk = stop - start
    while start < stop:
        span = events[start:start + chunk]
        try:
            with cur.connection.transaction(), _applying(span, notifications[start:start + chunk]):
                projector.apply_batch(cur, span)
        except Exception as error:
            if not data_error(error) or cur.connection.broken:
                raise
            if chunk == 1:
                return start, error
            chunk //= 2
            continue
        start += chunk
        chunk = stop - start
    return stop, None


_INSERT_QUARANTINE = (
    f"INSERT INTO {QUARANTINE} (projector, position, originator_id, originator_version, topic, error) "
    f"VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (projector, position) DO UPDATE SET error = EXCLUDED.error, "
    f"quarantined_at = now()"
)


def record_quarantine(cur: psycopg.Cursor[Any], rows: Sequence[QuarantineRow]) -> None:
    """Insert quarantine rows in the caller's transaction."""
    if rows:
        cur.executemany(_INSERT_QUARANTINE, list(rows))


def log_quarantine(rows: Sequence[QuarantineRow]) -> None:
    """One warning line per event quarantined (once its transaction committed)."""
    for projector, position, originator_id, version, topic, error in rows:
        log.warning("projector.event_quarantined", projector=projector, position=position,
                    originator_id=str(originator_id), originator_version=version, topic=topic, error=error)  # fmt: skip
