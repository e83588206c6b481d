"""The command executor: runs the `ControlRequested` events it takes from JetStream, at most once each.

Every executor process pulls from one durable consumer (`wattledger-executor`) on
`<prefix>.events.command.*.ControlRequested` with explicit acks, so several executors share
the requests and each request goes to one of them at a time. A request is acked only once its
outcome is stored; while it runs, the executor tells JetStream it is still working on it
(`in_progress`, a third of the ack wait), so a live executor never sees its request handed to
another. Commands for one device run one after another (a lock per device), so concurrent
toggles are resolved in order; different devices run side by side, up to `concurrency`.
Given a `DeviceOrder`, commands for one device also run in the order they were requested across
executor processes: a request waits, its heartbeat going, until every earlier request of its
device is settled (`adapters.command_order`).

Crash semantics (see `domain.control_handlers`): a request whose executor died is redelivered
once the ack wait has passed. If the dead executor had not stored `ControlAttempted`, the next
one runs the command normally (or fails it `expired`); if it had, the command is settled by
reading the device back and never switched again. A store failure naks the request (retried
after a second); a request naming no stored command is acked and dropped.

An executor given `interrupted` (the commands read model) does not wait for the redelivery: every
few seconds it settles the commands attempted more than `settle_after` seconds ago that still have
no outcome, the same way. `settle_after` is longer than a live executor's device call can take,
so it never settles a command another executor is still switching.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from uuid import UUID, uuid4

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from adapters.bus import StreamConfig
from adapters.command_order import DeviceOrder, Queued
from adapters.contract import decode_envelope
from adapters.faults import DATABASE_FAULTS, DEVICE_FAULTS, NATS_FAULTS, Backoff, describe, reraise_if_cancelled, report
from domain.control import Status
from domain.control_handlers import ControlHandlers
from domain.errors import CommandNotFound

log = structlog.get_logger(__name__)

DURABLE = "wattledger-executor"
FETCH_WAIT_S = 1.0
NAK_DELAY_S = 1.0
STOP_GRACE_S = 5.0
SWEEP_S = 2.0
FAULT_PAUSE_MAX_S = 5.0
TURN_POLL_S = 0.1
EXPIRED_GRACE_S = 10.0
"""How long past its deadline a request nobody attempted still holds later ones of its device back:
an executor fails it `expired` without touching the device, or its request was lost."""


def executor_name() -> str:
    """`host:pid:random`: names the executor that claimed a command in `ControlAttempted`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:6]}"


class CommandExecutor:
    """Pulls control requests from JetStream and runs each through `ControlHandlers.execute`."""

    def __init__(
        self,
        js: JetStreamContext,
        handlers: ControlHandlers,
        *,
        stream: StreamConfig,
        ack_wait: float = 30.0,
        concurrency: int = 64,
        name: str | None = None,
        on_saved: Callable[[], None] = lambda: None,
        interrupted: Callable[[datetime], Awaitable[list[UUID]]] | None = None,
        settle_after: float = 30.0,
        order: DeviceOrder | None = None,
    ) -> None:
        if ack_wait < 1 or concurrency < 1:
            raise ValueError("ack_wait must be at least 1 s and concurrency at least 1")
        self._js = js
        self._handlers = handlers
        self._stream = stream
        self._ack_wait = ack_wait
        self._concurrency = concurrency
        self.name = name or executor_name()
        self._on_saved = on_saved
        self._device_locks: dict[UUID, asyncio.Lock] = {}
        self._running: dict[UUID, asyncio.Task[None]] = {}
        self._interrupted = interrupted
        self._settle_after = settle_after
        self._order = order
        self.executed = 0
        self.settled_interrupted = 0

    @property
    def subject(self) -> str:
        return f"{self._stream.subject_prefix}.events.command.*.ControlRequested"

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            durable_name=DURABLE,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            filter_subject=self.subject,
            max_ack_pending=max(self._concurrency * 4, 256),
        )
        return await self._js.pull_subscribe(self.subject, durable=DURABLE, stream=self._stream.name, config=config)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Pull and execute until `stop` is set; running commands then get STOP_GRACE_S to finish. Cancelled,
        it abandons them at once, as a killed process would (their requests are redelivered).

        NATS away is waited out: a fetch that times out (whichever timeout nats-py raises) is an
        empty fetch, the other faults of `NATS_FAULTS` are one warning and a retry after a pause,
        and a consumer that JetStream no longer serves is subscribed again (created if gone).
        """
        stop = stop or asyncio.Event()
        subscription = await self._subscribe_until(stop)
        if subscription is None:
            return
        log.info("executor.started", executor=self.name, subject=self.subject)
        graceful = False
        backoff = Backoff(first=0.2, cap=FAULT_PAUSE_MAX_S)
        sweeper = asyncio.create_task(self._sweep(), name="executor-sweep") if self._interrupted else None
        try:
            while not stop.is_set():
                if sweeper is not None and sweeper.done():
                    sweeper.result()
                room = self._concurrency - len(self._running)
                if room <= 0:
                    await asyncio.wait(list(self._running.values()), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    messages = await self._fetch(subscription, min(room, 16))
                except asyncio.TimeoutError:
                    reraise_if_cancelled()
                    backoff.reset()
                    continue
                except nats.js.errors.ServiceUnavailableError as exc:
                    report("executor", exc, action="subscribe again")
                    await backoff.wait(stop)
                    await _unsubscribe(subscription)
                    resubscribed = await self._subscribe_until(stop)
                    if resubscribed is None:
                        break
                    subscription = resubscribed
                    continue
                except NATS_FAULTS as exc:
                    report("executor", exc)
                    await backoff.wait(stop)
                    continue
                except DATABASE_FAULTS as exc:
                    report("executor", exc, action="fetch again")
                    await backoff.wait(stop)
                    continue
                except nats.errors.ConnectionClosedError:
                    reraise_if_cancelled()
                    raise
                backoff.reset()
                for message in messages:
                    await self._take(message)
            graceful = True
        finally:
            if sweeper is not None:
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)
            running = list(self._running.values())
            if running and graceful:
                await asyncio.wait(running, timeout=STOP_GRACE_S)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await _unsubscribe(subscription)

    async def _fetch(self, subscription: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
        """Up to `batch` requests; with a `DeviceOrder`, fetched under its lock and queued per device."""

        async def fetch() -> list[Msg]:
            return await subscription.fetch(batch=batch, timeout=FETCH_WAIT_S)

        if self._order is None:
            return await fetch()
        return await self._order.take(fetch, lambda messages: [q for m in messages if (q := _queued(m))])

    async def _subscribe_until(self, stop: asyncio.Event) -> JetStreamContext.PullSubscription | None:
        """The pull subscription, retried through NATS faults; None if `stop` is set first."""
        backoff = Backoff(first=0.2, cap=FAULT_PAUSE_MAX_S)
        while not stop.is_set():
            try:
                return await self._subscribe()
            except NATS_FAULTS as exc:
                reraise_if_cancelled()
                report("executor", exc, action="subscribe")
                await backoff.wait(stop)
        return None

    async def _sweep(self) -> None:
        """Settle, every SWEEP_S, the commands whose executor died after storing its attempt.

        A fault of the database (or of a device, though the handlers settle those) is logged
        and tried again at the next round; the redelivery from JetStream remains as the fallback.
        Anything else is a bug: it ends the sweep, and `run` raises it.
        """
        assert self._interrupted is not None
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                before = self._handlers.clock.now() - timedelta(seconds=self._settle_after)
                for command_id in await self._interrupted(before):
                    if command_id in self._running:
                        continue
                    control = await self._handlers.command(command_id)
                    async with self._device_locks.setdefault(control.device_id, asyncio.Lock()):
                        outcome = await self._handlers.execute(command_id, executor=self.name)
                    if outcome is not None and outcome.settled:
                        # Counted and announced as soon as the outcome is stored: a stop while the queue
                        # entry is being removed must not lose that this sweep settled it.
                        self.settled_interrupted += 1
                        self._on_saved()
                        log.info("executor.interrupted_settled", command_id=str(command_id),
                                 status=outcome.status.value, reason=outcome.reason)  # fmt: skip
                        if self._order is not None:
                            await self._order.leave(command_id)
            except DATABASE_FAULTS + DEVICE_FAULTS as exc:
                report("executor", exc, action="sweep")

    async def _take(self, message: Msg) -> None:
        try:
            envelope = decode_envelope(message.data)
            command_id = envelope.originator_id
            device_id = UUID(str(envelope.data["device_id"]))
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError, ValueError) as exc:
            log.warning("executor.message_dropped", subject=message.subject, error=repr(exc))
            await _settle_message(message.term())
            return
        if command_id in self._running:
            return  # a redelivery of a command this executor is running: its heartbeat keeps it
        request = _queued(message) if self._order is not None else None
        task = asyncio.create_task(self._execute(message, command_id, device_id, request), name=f"control-{command_id}")
        self._running[command_id] = task
        task.add_done_callback(lambda _: self._running.pop(command_id, None))

    async def _execute(self, message: Msg, command_id: UUID, device_id: UUID, request: Queued | None) -> None:
        heartbeat = asyncio.create_task(self._keep_alive(message))
        try:
            async with self._device_locks.setdefault(device_id, asyncio.Lock()):
                if request is not None:
                    await self._wait_turn(request)
                outcome = await self._handlers.execute(command_id, executor=self.name)
                if self._order is not None and outcome is not None and outcome.settled:
                    await self._order.leave(command_id)
        except CommandNotFound:
            log.warning("executor.unknown_command", command_id=str(command_id))
            if self._order is not None:
                await self._order.leave(command_id)
            await _settle_message(message.ack())
            return
        except DATABASE_FAULTS + DEVICE_FAULTS as exc:
            report("executor", exc, command_id=str(command_id), action="redeliver")
            await _settle_message(message.nak(delay=NAK_DELAY_S))
            return
        except Exception:
            log.exception("executor.command_failed", command_id=str(command_id))
            await _settle_message(message.nak(delay=NAK_DELAY_S))
            return
        finally:
            heartbeat.cancel()
        self._on_saved()
        self.executed += 1
        if outcome is not None:
            log.info(
                "executor.command_done", command_id=str(command_id), device_id=str(device_id),
                status=outcome.status.value, reason=outcome.reason,
            )  # fmt: skip
        await _settle_message(message.ack())

    async def _wait_turn(self, request: Queued) -> None:
        """Wait until no earlier request of the device can still switch it, or this one has expired
        (then `execute` fails it without touching the device). Earlier requests found settled leave
        the queue here, whoever settled them."""
        assert self._order is not None
        while True:
            waiting = False
            for earlier in await self._order.earlier(request):
                if await self._finished(earlier):
                    await self._order.leave(earlier)
                else:
                    waiting = True
                    break
            if not waiting:
                return
            mine = await self._handlers.command(request.command_id)
            if mine.settled or mine.expired(self._handlers.clock.now()):
                return
            await asyncio.sleep(TURN_POLL_S)

    async def _finished(self, command_id: UUID) -> bool:
        """Whether a queued command can no longer touch its device: settled, unknown, or long expired unattempted."""
        try:
            control = await self._handlers.command(command_id)
        except CommandNotFound:
            return True
        if control.settled:
            return True
        now = self._handlers.clock.now()
        return control.status is Status.REQUESTED and control.expired(now - timedelta(seconds=EXPIRED_GRACE_S))

    async def _keep_alive(self, message: Msg) -> None:
        """Tell JetStream the request is still being worked on, so it is not handed to another executor."""
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            try:
                await message.in_progress()
            except nats.errors.Error as exc:  # the next beat, or the redelivery, makes up for it
                log.debug("executor.in_progress_not_sent", error=describe(exc))


def _queued(message: Msg) -> Queued | None:
    """The queue entry of a request: its stream sequence, command and device; None if it names none."""
    try:
        envelope = decode_envelope(message.data)
        return Queued(
            sequence=message.metadata.sequence.stream, command_id=envelope.originator_id,
            device_id=UUID(str(envelope.data["device_id"])),
        )  # fmt: skip
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, ValueError, nats.errors.Error):
        return None


async def _settle_message(answer: Awaitable[None]) -> None:
    """Ack or nak a request; when NATS is away the request is redelivered after its ack wait instead."""
    try:
        await answer
    except nats.errors.MsgAlreadyAckdError:
        pass
    except NATS_FAULTS + (nats.errors.ConnectionClosedError,) as exc:
        reraise_if_cancelled()
        report("executor", exc, action="ack")


async def _unsubscribe(subscription: JetStreamContext.PullSubscription) -> None:
    try:
        await subscription.unsubscribe()
    except nats.errors.Error as exc:  # a closed or reconnecting connection keeps no subscription to end
        log.debug("executor.unsubscribe_failed", error=describe(exc))
