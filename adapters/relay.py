"""The relay: every stored event, in notification order, onto the JetStream events stream.

The PostgreSQL notification log is the truth; the stream is a copy that the relay can
rebuild from any position. The relay reads the log after its saved position in
sections of `batch_size`, publishes a section (`adapters.publisher`: every message with a
reply subject of its own, the acks gathered, each message settled), then saves the position
of the last contiguously settled notification (`adapters.relay_positions`). A crash between publishing and saving
re-sends at most one section on restart, and JetStream drops the re-sends because every
message carries `Nats-Msg-Id = "<originator_id>:<version>"`.

Subjects: `<prefix>.events.<aggregate>.<key>.<EventName>`, where a MeterDay event's key
is its device id (not the day stream's id), so `<prefix>.events.meter.<device>.ReadingRecorded`
carries one device's live readings. Bodies follow the public contract of `adapters.contract`.

A message refused for good (see `adapters.publisher`) is recorded in `wl_ops.relay_rejected`,
logged, and skipped, and the relay carries on with the next one. Everything else is transient
and retried in log order, the position stopping before it: no ack within `ack_timeout`, no
responders (the stream does not exist yet, or JetStream is down), a reconnecting connection
(these three are `part.fault` warnings), and every other API error (logged as errors: someone
has to act on them), because those (the subject bound to another stream, a stream full with
the discard-new policy, a sealed stream, server errors) would refuse every message after it as
well, and skipping them would empty the log into the rejections table. A closed client never
reconnects: `run` raises it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple

import psycopg
import structlog
from eventsourcing.domain import DomainEventProtocol
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from adapters.bus import BusError, StreamConfig, subject_for
from adapters.contract import aggregate_name, decode_envelope, encode_envelope
from adapters.eventlog import EventLog, Logged
from adapters.eventstore import WattLedger
from adapters.faults import DATABASE_FAULTS, NATS_FAULTS, describe, reraise_if_cancelled, report
from adapters.publisher import Outgoing, Publisher, Refused
from adapters.relay_positions import RelayPositions, RelayStatus, relay_status
from domain.meter import MeterDay

# The envelope's codec and the relay's status are named here too, for callers that take them from the relay.
__all__ = [
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


class RelayPublishError(BusError):
    """JetStream did not acknowledge part of a batch; the position stops before it."""


class Route(NamedTuple):
    aggregate: str
    key: str
    event: str


def route_for(event: DomainEventProtocol[Any]) -> Route:
    """Where an event goes: `device` / `meter` (keyed by device id), else its aggregate's class name."""
    key = getattr(event, "device_id", event.originator_id) if isinstance(event, MeterDay.Event) else event.originator_id
    return Route(aggregate_name(type(event)), str(key), type(event).__name__)


class Relay:
    """Publishes the WattLedger notification log to JetStream and remembers how far it got.

    The position lives in `wl_ops.relay_position`, one row per stream name. `run()` wakes
    on the event store's LISTEN/NOTIFY channel, on `wake()`, and every `poll_interval`
    seconds, because a lost notification must not stall the relay.

    `reset(position)` makes the relay publish again from `position + 1`. Re-sends inside
    JetStream's duplicate window (2 min) are dropped by `Nats-Msg-Id`; to rebuild the
    stream from older events, purge it first, or messages still in it are stored twice.

    Messages refused for good (see `adapters.publisher`) are kept in `wl_ops.relay_rejected`
    until a later pass (after `reset`, once the limit that refused them is raised) publishes
    them; `status()` and `adapters.relay_positions.relay_status()` report them.
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
        self.js = js
        """The JetStream context the relay publishes through."""
        self._event_log = EventLog(app)
        self._publisher = Publisher(js, stream.name, ack_timeout=ack_timeout)
        self._database_url = database_url
        self._stream = stream
        self._batch_size = batch_size
        self._poll_interval = poll_interval
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
        self._positions = RelayPositions(self._pool, stream.name)
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
        """Open the position pool and create (or move into place) the position tables (also done lazily)."""
        async with self._open_lock:
            if self._opened:
                return
            self._loop = asyncio.get_running_loop()
            await self._pool.open(wait=True, timeout=30)
            await self._positions.create()
            self._opened = True

    async def aclose(self) -> None:
        await self._publisher.close()
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
        return await self._positions.position()

    async def status(self, *, last: int = 5) -> RelayStatus:
        """`relay_status` of this relay's stream, against the event store's newest notification."""
        await self.open()
        max_id = await asyncio.to_thread(self._event_log.max_id)
        return await self._positions.status(max_id, last=last)

    async def reset(self, position: int = 0) -> None:
        """Publish again from `position + 1` on the next pass (see the class docstring)."""
        if position < 0:
            raise ValueError("position must not be negative")
        await self.open()
        async with self._pass_lock:
            await self._positions.reset(position)
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

    async def _publish_batch(self, batch: list[Outgoing], position: int) -> tuple[int, int]:
        started = time.perf_counter()
        result = await self._publisher.publish(batch)
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

    async def _save_progress(self, first: int, position: int, refused: Sequence[Refused]) -> None:
        """Save the position after a batch and its refused messages, in one transaction."""
        await self._positions.save_progress(first, position, refused)

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

    def _read_batch(self, after: int) -> list[Outgoing]:
        return [self._outgoing(logged) for logged in self._event_log.read(after, self._batch_size)]

    def _outgoing(self, logged: Logged) -> Outgoing:
        notification, event = logged
        where = route_for(event)
        return Outgoing(
            notification_id=notification.id,
            subject=subject_for(self._stream.subject_prefix, where.aggregate, where.key, where.event),
            payload=encode_envelope(notification.id, event),
            headers={
                "Nats-Msg-Id": f"{notification.originator_id}:{notification.originator_version}",
                "WL-Notification-Id": str(notification.id),
            },
        )


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
