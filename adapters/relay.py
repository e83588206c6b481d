"""The relay: every stored event, in notification order, onto the JetStream events stream.

The PostgreSQL notification log is the truth; the stream is a copy that the relay can
rebuild from any position. The relay reads the log after its saved position in
sections of `batch_size`, publishes a section with `publish_async`, gathers the acks,
then saves the position of the last contiguously settled notification. A crash
between publishing and saving re-sends at most one section on restart, and JetStream
drops the re-sends because every message carries `Nats-Msg-Id = "<originator_id>:<version>"`.

Subjects: `<prefix>.events.<aggregate>.<key>.<EventName>`, where a MeterDay event's key
is its device id (not the day stream's id), so `<prefix>.events.meter.<device>.ReadingRecorded`
carries one device's live readings. Bodies follow the public contract of `adapters.contract`.

A message settles in one of two ways:

- published: JetStream acknowledged it (a duplicate ack counts: the message is in the stream);
- refused for good: the same message would be refused on every attempt, so it is recorded in
  `wl_read.relay_rejected`, logged, and skipped, and the relay carries on with the next one.
  These are a body plus headers larger than the server's `max_payload` (checked before
  sending: the server would close the connection, and nats-py raises `MaxPayloadError` for
  a body alone over it), and the JetStream API errors in `REFUSED_FOR_GOOD` (10054: larger
  than the stream's `max_msg_size`; 10097: headers too large).

Everything else is transient and retried in log order, the position stopping before it: no
ack within `ack_timeout`, no responders (the stream does not exist yet, or JetStream is down),
a reconnecting connection (these three are `part.fault` warnings), and every other API error
(logged as errors: someone has to act on them), because those (the subject
bound to another stream, a stream full with the discard-new policy, a sealed stream, server
errors) would refuse every message after it as well, and skipping them would empty the log
into the rejections table. A closed client never reconnects: `run` raises it.

nats-py 2.16 loses the JetStream API errors of `publish_async` (nats.py issue #985: the ack
future never resolves and the error goes to the connection's error callback). So a message
still without an answer once the batch's last ack is in (or after `ack_timeout`) is published
once more with `js.publish`, which does raise them, and settled by that answer; the same
`Nats-Msg-Id` makes the second send harmless if the first was stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import msgspec
import psycopg
import structlog
from eventsourcing.domain import DomainEventProtocol
from nats.errors import ConnectionClosedError, MaxPayloadError
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck
from nats.js.errors import APIError
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from adapters.bus import BusError, StreamConfig, subject_for
from adapters.contract import aggregate_name, decode_envelope, encode_envelope
from adapters.errors import AdapterError
from adapters.eventlog import EventLog, Logged
from adapters.eventstore import WattLedger
from adapters.faults import DATABASE_FAULTS, NATS_FAULTS, describe, reraise_if_cancelled, report
from domain.meter import MeterDay

__all__ = [
    "REFUSED_FOR_GOOD",
    "Rejection",
    "Relay",
    "RelayPublishError",
    "RelayStatus",
    "Route",
    "decode_envelope",
    "encode_envelope",
    "relay_status",
    "route_for",
]

log = structlog.get_logger(__name__)

READ_SCHEMA = "wl_read"
POSITION_TABLE = "relay_position"
REJECTED_TABLE = "relay_rejected"

#: JetStream API error codes that refuse one message for good: sending it again gets the same answer.
REFUSED_FOR_GOOD = frozenset({10054, 10097})

_HEADER_FRAME = len(b"NATS/1.0\r\n\r\n")


class RelayPublishError(BusError):
    """JetStream did not acknowledge part of a batch; the position stops before it."""


class _OverMaxPayload(AdapterError):
    """A message the relay does not send: with its headers it is larger than the server accepts."""


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """One event JetStream refused for good: it is in the event store but not in the stream."""

    notification_id: int
    subject: str
    error: str
    rejected_at: datetime


class RelayStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How far the relay of one stream got.

    `lag` counts notification ids after `position` (holes in the ids included, so it is an
    upper bound on the events still to publish); `rejected` counts the events refused for
    good and missing from the stream, the most recent in log order in `last_rejections`.
    """

    stream: str
    position: int
    lag: int
    rejected: int
    last_rejections: list[Rejection]


class Route(NamedTuple):
    aggregate: str
    key: str
    event: str


def route_for(event: DomainEventProtocol[Any]) -> Route:
    """Where an event goes: `device` / `meter` (keyed by device id), else its aggregate's class name."""
    key = getattr(event, "device_id", event.originator_id) if isinstance(event, MeterDay.Event) else event.originator_id
    return Route(aggregate_name(type(event)), str(key), type(event).__name__)


def _refused_for_good(exc: BaseException) -> bool:
    if isinstance(exc, (_OverMaxPayload, MaxPayloadError)):
        return True
    return isinstance(exc, APIError) and exc.err_code in REFUSED_FOR_GOOD


def _table(name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(READ_SCHEMA), sql.Identifier(name))


async def relay_status(
    conn: psycopg.AsyncConnection[Any], stream_name: str, max_notification_id: int, *, last: int = 5
) -> RelayStatus:
    """The relay's position, lag behind `max_notification_id` and refused messages for one stream.

    Reads only; before any relay has run (no tables yet) the position is 0 and nothing is rejected.
    """
    cur = await conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
        (f"{READ_SCHEMA}.{POSITION_TABLE}", f"{READ_SCHEMA}.{REJECTED_TABLE}"),
    )
    exists: Any = await cur.fetchone()
    position = rejected = 0
    rejections: list[Rejection] = []
    if exists[0]:
        cur = await conn.execute(
            sql.SQL("SELECT position FROM {} WHERE stream_name = %s").format(_table(POSITION_TABLE)),
            (stream_name,),
        )
        row = await cur.fetchone()
        position = int(row[0]) if row else 0
    if exists[1]:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE stream_name = %s").format(_table(REJECTED_TABLE)),
            (stream_name,),
        )
        counted: Any = await cur.fetchone()
        rejected = int(counted[0])
        cur = await conn.execute(
            sql.SQL(
                "SELECT notification_id, subject, error, rejected_at FROM {} "
                "WHERE stream_name = %s ORDER BY notification_id DESC LIMIT %s"
            ).format(_table(REJECTED_TABLE)),
            (stream_name, last),
        )
        rejections = [
            Rejection(notification_id=int(r[0]), subject=r[1], error=r[2], rejected_at=r[3])
            for r in await cur.fetchall()
        ]
    return RelayStatus(
        stream=stream_name,
        position=position,
        lag=max(0, max_notification_id - position),
        rejected=rejected,
        last_rejections=rejections,
    )


class _Outgoing(NamedTuple):
    notification_id: int
    subject: str
    payload: bytes
    headers: dict[str, str]

    def wire_size(self, stream_name: str) -> int:
        """Body plus headers as sent (with the expected-stream header), the size the server checks."""
        headers = {**self.headers, Header.EXPECTED_STREAM.value: stream_name}
        header_bytes = _HEADER_FRAME + sum(len(f"{k}: {v}\r\n".encode()) for k, v in headers.items())
        return header_bytes + len(self.payload)


class _Refused(NamedTuple):
    notification_id: int
    subject: str
    error: str


class _BatchResult(NamedTuple):
    settled: int
    duplicates: int
    refused: list[_Refused]
    error: BaseException | None


class Relay:
    """Publishes the WattLedger notification log to JetStream and remembers how far it got.

    The position lives in `wl_read.relay_position`, one row per stream name. `run()` wakes
    on the event store's LISTEN/NOTIFY channel, on `wake()`, and every `poll_interval`
    seconds, because a lost notification must not stall the relay.

    `reset(position)` makes the relay publish again from `position + 1`. Re-sends inside
    JetStream's duplicate window (2 min) are dropped by `Nats-Msg-Id`; to rebuild the
    stream from older events, purge it first, or messages still in it are stored twice.

    Messages refused for good (see the module docstring) are kept in `wl_read.relay_rejected`
    until a later pass (after `reset`, once the limit that refused them is raised) publishes
    them; `status()` and `relay_status()` report them.
    """

    def __init__(
        self,
        app: WattLedger,
        js: JetStreamContext,
        *,
        database_url: str,
        stream: StreamConfig,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        ack_timeout: float = 10.0,
        listen: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._event_log = EventLog(app)
        self._js = js
        self._database_url = database_url
        self._stream = stream
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._ack_timeout = ack_timeout
        self._channel: str | None = self._event_log.channel if listen else None
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=2,
            open=False,
            kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection,
            name=f"relay-{stream.name}",
        )
        self._opened = False
        self._open_lock = asyncio.Lock()
        self._pass_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Relay:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the position pool and create the position table if missing (also done lazily)."""
        async with self._open_lock:
            if self._opened:
                return
            self._loop = asyncio.get_running_loop()
            await self._pool.open(wait=True, timeout=30)
            await self._create_table()
            self._opened = True

    async def aclose(self) -> None:
        await self._pool.close()
        self._opened = False

    def wake(self) -> None:
        """Nudge a running relay to publish now; safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._wake.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def position(self) -> int:
        """The last notification id known to be in the stream (0: none)."""
        await self.open()
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                sql.SQL("SELECT position FROM {} WHERE stream_name = %s").format(_table(POSITION_TABLE)),
                (self._stream.name,),
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def status(self, *, last: int = 5) -> RelayStatus:
        """`relay_status` of this relay's stream, against the event store's newest notification."""
        await self.open()
        max_id = await asyncio.to_thread(self._event_log.max_id)
        async with self._pool.connection() as conn:
            return await relay_status(conn, self._stream.name, max_id, last=last)

    async def reset(self, position: int = 0) -> None:
        """Publish again from `position + 1` on the next pass (see the class docstring)."""
        if position < 0:
            raise ValueError("position must not be negative")
        await self.open()
        async with self._pass_lock, self._pool.connection() as conn:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {t} (stream_name, position, updated_at) VALUES (%s, %s, now()) "
                    "ON CONFLICT (stream_name) DO UPDATE "
                    "SET position = EXCLUDED.position, updated_at = now()"
                ).format(t=_table(POSITION_TABLE)),
                (self._stream.name, position),
            )
        log.info("relay.reset", stream=self._stream.name, position=position)
        self.wake()

    async def publish_pending(self) -> int:
        """Publish everything after the saved position up to the log's end; return how many were published.

        Messages refused for good are recorded and passed over (not counted). Raises
        RelayPublishError after saving the position of the last settled message when part
        of a batch fails for a transient reason; the next pass resumes there.
        """
        await self.open()
        async with self._pass_lock:
            position = await self.position()
            published = 0
            batch = await asyncio.to_thread(self._read_batch, position)
            while batch:
                # Read the next section while this one's acks come back; dropped on failure.
                ahead = (
                    asyncio.create_task(asyncio.to_thread(self._read_batch, batch[-1].notification_id))
                    if len(batch) == self._batch_size
                    else None
                )
                try:
                    position, count = await self._publish_batch(batch, position)
                except BaseException:
                    await _cancel(ahead)
                    raise
                published += count
                batch = await ahead if ahead else []
            return published

    async def _publish_batch(self, batch: list[_Outgoing], position: int) -> tuple[int, int]:
        started = time.perf_counter()
        result = await self._publish(batch)
        if result.settled:
            position = batch[result.settled - 1].notification_id
            await self._save_progress(batch[0].notification_id, position, result.refused)
            for refused in result.refused:
                log.error(
                    "relay.message_rejected",
                    stream=self._stream.name,
                    notification_id=refused.notification_id,
                    subject=refused.subject,
                    error=refused.error,
                )
            log.debug(
                "relay.batch_published",
                stream=self._stream.name,
                count=result.settled - len(result.refused),
                duplicates=result.duplicates,
                rejected=len(result.refused),
                first=batch[0].notification_id,
                position=position,
                seconds=round(time.perf_counter() - started, 4),
            )
        if result.error is not None:
            failed = batch[result.settled].notification_id
            if isinstance(result.error, NATS_FAULTS):
                report("relay", result.error, stream=self._stream.name, notification_id=failed, position=position)
            else:
                log.error(
                    "relay.publish_failed",
                    stream=self._stream.name,
                    notification_id=failed,
                    position=position,
                    error=describe(result.error),
                )
            raise RelayPublishError(
                f"notification {failed} was not acknowledged by stream {self._stream.name}"
            ) from result.error
        return position, result.settled - len(result.refused)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Publish until cancelled or `stop` is set.

        A fault of the database (`DATABASE_FAULTS`) or of JetStream (a `RelayPublishError`) is one
        line and a retry after a pause doubling from `poll_interval` to 30 s; the next pass starts
        at the saved position. A closed NATS client never comes back, and anything else is a bug:
        both are raised, for the supervisor to restart the relay.
        """
        stop = stop or asyncio.Event()
        listener = asyncio.create_task(self._listen()) if self._channel else None
        stopped = asyncio.create_task(stop.wait())
        failures = 0
        log.info("relay.started", stream=self._stream.name, channel=self._channel)
        try:
            while not stop.is_set():
                if listener is not None and listener.done():
                    listener.result()
                self._wake.clear()
                try:
                    await self.publish_pending()
                    failures = 0
                except RelayPublishError as exc:
                    if isinstance(exc.__cause__, ConnectionClosedError):
                        reraise_if_cancelled()
                        raise
                    failures += 1
                except DATABASE_FAULTS as exc:
                    failures += 1
                    report("relay", exc, stream=self._stream.name)
                if failures:
                    delay = min(self._poll_interval * 2**failures, 30.0)
                    await asyncio.wait({stopped}, timeout=delay)
                else:
                    await self._idle(stopped)
        finally:
            await _cancel(stopped, listener)
            log.info("relay.stopped", stream=self._stream.name)

    async def _idle(self, stopped: asyncio.Task[Any]) -> None:
        woken = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait(
                {woken, stopped}, timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            await _cancel(woken)

    async def _listen(self) -> None:
        """Wake the relay on the event store's notifications; a lost connection is one warning and a reconnect."""
        assert self._channel is not None
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._database_url, autocommit=True
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    log.debug("relay.listening", channel=self._channel)
                    self._wake.set()
                    delay = 0.5
                    while True:
                        async for _ in conn.notifies(timeout=30.0):
                            self._wake.set()
                        await conn.execute("SELECT 1")
            except DATABASE_FAULTS as exc:
                report("relay", exc, channel=self._channel, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _read_batch(self, after: int) -> list[_Outgoing]:
        return [self._outgoing(logged) for logged in self._event_log.read(after, self._batch_size)]

    def _outgoing(self, logged: Logged) -> _Outgoing:
        notification, event = logged
        where = route_for(event)
        return _Outgoing(
            notification_id=notification.id,
            subject=subject_for(self._stream.subject_prefix, where.aggregate, where.key, where.event),
            payload=encode_envelope(notification.id, event),
            headers={
                "Nats-Msg-Id": f"{notification.originator_id}:{notification.originator_version}",
                "WL-Notification-Id": str(notification.id),
            },
        )

    def _max_payload(self) -> int:
        # nats-py compares only the body with the server's max_payload; a message whose
        # headers carry it over is sent, and the server closes the connection for it.
        return int(self._js._nc.max_payload)

    async def _publish(self, batch: list[_Outgoing]) -> _BatchResult:
        """Publish a batch and settle its messages in order, up to the first transient failure."""
        limit = self._max_payload()
        sent: list[asyncio.Future[PubAck] | BaseException] = []
        error: BaseException | None = None
        try:
            for msg in batch:
                size = msg.wire_size(self._stream.name)
                if size > limit:
                    sent.append(_OverMaxPayload(f"{size} bytes with headers, over the server's max_payload of {limit}"))
                    continue
                try:
                    sent.append(
                        await self._js.publish_async(
                            msg.subject, msg.payload, headers=dict(msg.headers), stream=self._stream.name
                        )
                    )
                except Exception as exc:
                    if not _refused_for_good(exc):
                        error = exc
                        break
                    sent.append(exc)
            futures = [f for f in sent if isinstance(f, asyncio.Future)]
            if futures:
                # Acks come back in publishing order: once the last is in, a future still
                # waiting had an answer nats-py dropped (an API error) or lost its message.
                await asyncio.wait(futures[-1:], timeout=self._ack_timeout)
            return await self._settle(batch, sent, error)
        finally:
            for outcome in sent:
                if not isinstance(outcome, asyncio.Future):
                    continue
                if not outcome.done():
                    outcome.cancel()
                elif not outcome.cancelled():
                    outcome.exception()  # retrieved, so asyncio does not report it as lost

    async def _settle(
        self, batch: list[_Outgoing], sent: list[asyncio.Future[PubAck] | BaseException], error: BaseException | None
    ) -> _BatchResult:
        settled = duplicates = 0
        refused: list[_Refused] = []
        for msg, outcome in zip(batch, sent):
            answer = _answer(outcome)
            if answer is None:
                answer = await self._ask_again(msg)
            if isinstance(answer, PubAck):
                duplicates += bool(answer.duplicate)
            elif _refused_for_good(answer):
                refused.append(_Refused(msg.notification_id, msg.subject, _describe(answer)))
            else:
                return _BatchResult(settled, duplicates, refused, answer)
            settled += 1
        return _BatchResult(settled, duplicates, refused, error)

    async def _ask_again(self, msg: _Outgoing) -> PubAck | BaseException:
        """Publish one message again and wait for its answer; the same `Nats-Msg-Id` makes it idempotent."""
        try:
            return await self._js.publish(
                msg.subject,
                msg.payload,
                timeout=self._ack_timeout,
                stream=self._stream.name,
                headers=dict(msg.headers),
            )
        except Exception as exc:
            return exc

    async def _save_progress(self, first: int, position: int, refused: Sequence[_Refused]) -> None:
        """Save the position after a batch from `first`, and its refused messages, in one transaction.

        Earlier rejections inside the batch's range are cleared first: those messages are
        in the stream now, or were refused again and are among `refused`.
        """
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                sql.SQL(
                    "DELETE FROM {} WHERE stream_name = %s AND notification_id BETWEEN %s AND %s"
                ).format(_table(REJECTED_TABLE)),
                (self._stream.name, first, position),
            )
            if refused:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        sql.SQL(
                            "INSERT INTO {} (stream_name, notification_id, subject, error, rejected_at) "
                            "VALUES (%s, %s, %s, %s, now())"
                        ).format(_table(REJECTED_TABLE)),
                        [(self._stream.name, r.notification_id, r.subject, r.error) for r in refused],
                    )
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {t} (stream_name, position, updated_at) VALUES (%s, %s, now()) "
                    "ON CONFLICT (stream_name) DO UPDATE "
                    "SET position = GREATEST({t}.position, EXCLUDED.position), updated_at = now()"
                ).format(t=_table(POSITION_TABLE)),
                (self._stream.name, position),
            )
        log.debug("relay.position_saved", stream=self._stream.name, position=position, rejected=len(refused))

    async def _create_table(self) -> None:
        statements = [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(READ_SCHEMA)),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                "stream_name text PRIMARY KEY, "
                "position bigint NOT NULL, "
                "updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(_table(POSITION_TABLE)),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                "stream_name text NOT NULL, "
                "notification_id bigint NOT NULL, "
                "subject text NOT NULL, "
                "error text NOT NULL, "
                "rejected_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (stream_name, notification_id))"
            ).format(_table(REJECTED_TABLE)),
        ]
        for attempt in (1, 2):
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    for statement in statements:
                        await conn.execute(statement)
                return
            except psycopg.errors.UniqueViolation:
                # Two processes creating the schema at once: the loser's IF NOT EXISTS lost the race.
                if attempt == 2:
                    raise


def _answer(outcome: asyncio.Future[PubAck] | BaseException) -> PubAck | BaseException | None:
    """What JetStream said about one message so far; None when nothing usable arrived."""
    if isinstance(outcome, BaseException):
        return outcome
    if not outcome.done() or outcome.cancelled():
        return None
    return outcome.exception() or outcome.result()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return f"JetStream err_code {exc.err_code}: {exc.description}"
    if isinstance(exc, _OverMaxPayload):
        return f"message too large: {exc}"
    return str(exc) or type(exc).__name__


async def _cancel(*tasks: Awaitable[Any] | None) -> None:
    for task in tasks:
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()
    for task in tasks:
        if isinstance(task, asyncio.Task):
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                log.warning("relay.task_failed", error=repr(exc))
