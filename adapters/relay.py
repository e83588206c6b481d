"""The relay: every stored event, in notification order, onto the JetStream events stream.

The PostgreSQL notification log is the truth; the stream is a copy that the relay can
rebuild from any position. The relay reads the log after its saved position in
sections of `batch_size`, publishes a section with `publish_async`, gathers the acks,
then saves the position of the last contiguously acknowledged notification. A crash
between publishing and saving re-sends at most one section on restart, and JetStream
drops the re-sends because every message carries `Nats-Msg-Id = "<originator_id>:<version>"`.

Subjects: `<prefix>.events.<aggregate>.<key>.<EventName>`, where a MeterDay event's key
is its device id (not the day stream's id), so `<prefix>.events.meter.<device>.ReadingRecorded`
carries one device's live readings.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable
from datetime import datetime
from pathlib import PurePath
from typing import Any, NamedTuple
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import psycopg
import structlog
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Notification
from nats.js import JetStreamContext
from nats.js.api import PubAck
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from adapters.bus import BusError, StreamConfig, subject_for
from adapters.eventstore import WattLedger
from domain.device import Device
from domain.meter import MeterDay

log = structlog.get_logger(__name__)

READ_SCHEMA = "wl_read"
POSITION_TABLE = "relay_position"
_INTERNAL_FIELDS = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


class RelayPublishError(BusError):
    """JetStream did not acknowledge part of a batch; the position stops before it."""


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """The body of every message on the events stream.

    `data` holds the event's own fields as JSON values: UUIDs and Decimals as strings,
    datetimes as ISO 8601, nested Structs as objects.
    """

    notification_id: int
    originator_id: UUID
    originator_version: int
    aggregate: str
    event: str
    topic: str
    timestamp: datetime
    data: dict[str, Any]


class Route(NamedTuple):
    aggregate: str
    key: str
    event: str


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, (ipaddress.IPv4Address, ipaddress.IPv6Address, ZoneInfo, PurePath)):
        return str(obj)
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)
_DECODER = msgspec.json.Decoder(Envelope)


def route_for(event: DomainEventProtocol[Any]) -> Route:
    """Where an event goes: `device` / `meter` (keyed by device id), else its aggregate's class name."""
    cls = type(event)
    name = cls.__name__
    if isinstance(event, MeterDay.Event):
        return Route("meter", str(getattr(event, "device_id", event.originator_id)), name)
    if isinstance(event, Device.Event):
        return Route("device", str(event.originator_id), name)
    owner = cls.__qualname__.rpartition(".")[0].rpartition(".")[2] or name
    return Route(owner.lower(), str(event.originator_id), name)


def event_data(event: DomainEventProtocol[Any]) -> dict[str, Any]:
    """The event's own fields, without the ones every event carries."""
    return {k: v for k, v in vars(event).items() if k not in _INTERNAL_FIELDS}


def encode_envelope(
    notification_id: int, topic: str, event: DomainEventProtocol[Any], route: Route | None = None
) -> bytes:
    """JSON envelope of one stored event, as published on the stream."""
    where = route or route_for(event)
    return _ENCODER.encode(
        Envelope(
            notification_id=notification_id,
            originator_id=event.originator_id,
            originator_version=event.originator_version,
            aggregate=where.aggregate,
            event=where.event,
            topic=topic,
            timestamp=getattr(event, "timestamp"),  # every aggregate event has one
            data=event_data(event),
        )
    )


def decode_envelope(raw: bytes) -> Envelope:
    return _DECODER.decode(raw)


class _Outgoing(NamedTuple):
    notification_id: int
    subject: str
    payload: bytes
    headers: dict[str, str]


class _BatchResult(NamedTuple):
    acked: int
    duplicates: int
    error: BaseException | None


class Relay:
    """Publishes the WattLedger notification log to JetStream and remembers how far it got.

    The position lives in `wl_read.relay_position`, one row per stream name. `run()` wakes
    on the event store's LISTEN/NOTIFY channel, on `wake()`, and every `poll_interval`
    seconds, because a lost notification must not stall the relay.

    `reset(position)` makes the relay publish again from `position + 1`. Re-sends inside
    JetStream's duplicate window (2 min) are dropped by `Nats-Msg-Id`; to rebuild the
    stream from older events, purge it first, or messages still in it are stored twice.
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
        self._app = app
        self._js = js
        self._database_url = database_url
        self._stream = stream
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._ack_timeout = ack_timeout
        self._channel: str | None = getattr(app.recorder, "channel_name", None) if listen else None
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
                sql.SQL("SELECT position FROM {} WHERE stream_name = %s").format(self._table()),
                (self._stream.name,),
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

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
                ).format(t=self._table()),
                (self._stream.name, position),
            )
        log.info("relay.reset", stream=self._stream.name, position=position)
        self.wake()

    async def publish_pending(self) -> int:
        """Publish everything after the saved position up to the log's end; return the count.

        Raises RelayPublishError after saving the position of the last contiguous ack
        when JetStream refuses or does not answer part of a batch.
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
                    position = await self._publish_batch(batch, position)
                except BaseException:
                    await _cancel(ahead)
                    raise
                published += len(batch)
                batch = await ahead if ahead else []
            return published

    async def _publish_batch(self, batch: list[_Outgoing], position: int) -> int:
        started = time.perf_counter()
        result = await self._publish(batch)
        if result.acked:
            position = batch[result.acked - 1].notification_id
            await self._save_position(position)
            log.debug(
                "relay.batch_published",
                stream=self._stream.name,
                count=result.acked,
                duplicates=result.duplicates,
                first=batch[0].notification_id,
                position=position,
                seconds=round(time.perf_counter() - started, 4),
            )
        if result.error is not None:
            failed = batch[result.acked].notification_id
            log.error(
                "relay.publish_failed",
                stream=self._stream.name,
                notification_id=failed,
                position=position,
                error=repr(result.error),
            )
            raise RelayPublishError(
                f"notification {failed} was not acknowledged by stream {self._stream.name}"
            ) from result.error
        return position

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Publish until cancelled or `stop` is set; failures are logged and retried with backoff."""
        await self.open()
        stop = stop or asyncio.Event()
        listener = asyncio.create_task(self._listen()) if self._channel else None
        stopped = asyncio.create_task(stop.wait())
        failures = 0
        log.info("relay.started", stream=self._stream.name, channel=self._channel)
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.publish_pending()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    if not isinstance(exc, RelayPublishError):
                        log.error("relay.pass_failed", stream=self._stream.name, error=repr(exc))
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
            except Exception as exc:
                log.warning("relay.listen_failed", channel=self._channel, error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _read_batch(self, after: int) -> list[_Outgoing]:
        notifications = self._app.recorder.select_notifications(
            after, self._batch_size, inclusive_of_start=False
        )
        return [self._outgoing(n) for n in notifications]

    def _outgoing(self, notification: Notification) -> _Outgoing:
        event = self._app.mapper.to_domain_event(notification)
        where = route_for(event)
        return _Outgoing(
            notification_id=notification.id,
            subject=subject_for(self._stream.subject_prefix, where.aggregate, where.key, where.event),
            payload=encode_envelope(notification.id, notification.topic, event, where),
            headers={
                "Nats-Msg-Id": f"{notification.originator_id}:{notification.originator_version}",
                "WL-Notification-Id": str(notification.id),
                "WL-Topic": notification.topic,
            },
        )

    async def _publish(self, batch: list[_Outgoing]) -> _BatchResult:
        futures: list[asyncio.Future[PubAck]] = []
        error: BaseException | None = None
        try:
            try:
                for msg in batch:
                    futures.append(
                        await self._js.publish_async(
                            msg.subject, msg.payload, headers=dict(msg.headers), stream=self._stream.name
                        )
                    )
            except Exception as exc:
                error = exc
            if futures:
                await asyncio.wait(futures, timeout=self._ack_timeout)
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
        acked = duplicates = 0
        first_failure: BaseException | None = None
        for future in futures:
            failure = (
                TimeoutError(f"no ack within {self._ack_timeout}s")
                if future.cancelled()
                else future.exception()
            )
            if first_failure is None and failure is not None:
                first_failure = failure
            if first_failure is None:
                acked += 1
                duplicates += bool(future.result().duplicate)
        return _BatchResult(acked, duplicates, first_failure or error)

    async def _save_position(self, position: int) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {t} (stream_name, position, updated_at) VALUES (%s, %s, now()) "
                    "ON CONFLICT (stream_name) DO UPDATE "
                    "SET position = GREATEST({t}.position, EXCLUDED.position), updated_at = now()"
                ).format(t=self._table()),
                (self._stream.name, position),
            )
        log.debug("relay.position_saved", stream=self._stream.name, position=position)

    async def _create_table(self) -> None:
        statements = [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(READ_SCHEMA)),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                "stream_name text PRIMARY KEY, "
                "position bigint NOT NULL, "
                "updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(self._table()),
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

    @staticmethod
    def _table() -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(READ_SCHEMA), sql.Identifier(POSITION_TABLE))


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
