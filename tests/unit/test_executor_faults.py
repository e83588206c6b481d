"""The executor's fetch loop through the faults nats-py really raises, on the library's own fetch code.

The pull subscription is nats-py's `PullSubscription`; only its inbox (a `Subscription`) and the
client's `publish` are fakes, answering each pull request as a server would: late, with a status
message, or with a control request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import nats.errors
import nats.js.errors
import psycopg
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from adapters import executor as executor_module
from adapters.bus import StreamConfig
from adapters.contract import encode_envelope
from adapters.executor import DURABLE, CommandExecutor
from domain.control import Action, ControlCommand, RequestControl, Status
from domain.config import ConfigValues
from domain.control_handlers import ConfigHandlers, ControlHandlers
from domain.device import Device
from tests.kit import FakeSwitch, ManualClock, MemoryStore, plug

T0 = datetime(2026, 3, 8, 6, 0, tzinfo=timezone.utc)
FETCH_WAIT_S = 0.05
ACK_PREFIX = "$JS.ACK."
LATE = -1.0
"""An answer's delay meaning: when the fetch's own timer runs out (the race nats-py loses under load)."""


def status(code: str, description: str) -> Msg:
    return Msg(_client=Client(), subject="_INBOX.executor", headers={"Status": code, "Description": description})


class Wire(Client):
    """A NATS client without a server: records pull requests and acks; can refuse the next publishes."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[str, bytes]] = []
        self.answered = asyncio.Event()
        self.refuse: deque[Exception] = deque()

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", headers: Any = None) -> None:
        if self.refuse:
            raise self.refuse.popleft()
        self.published.append((subject, payload))
        if subject.startswith(ACK_PREFIX) and not payload.startswith(b"+WPI"):
            self.answered.set()

    def answers(self) -> list[bytes]:
        """What the executor answered JetStream about its requests: b"" an ack, b"-NAK..." a nak."""
        return [payload for subject, payload in self.published if subject.startswith(ACK_PREFIX)]


class Inbox(Subscription):
    """The pull subscription's inbox: each read gets the next scripted answer after its delay; with
    none left, the read waits out its timeout as a server holding an empty pull would."""

    def __init__(self, wire: Wire, answers: list[tuple[float, Msg]]) -> None:
        super().__init__(wire, id=1, subject="_INBOX.executor")
        self.script = deque(answers)

    async def next_msg(self, timeout: float | None = 1.0) -> Msg:
        if not self.script:
            await asyncio.sleep(timeout or 0)
            raise nats.errors.TimeoutError
        delay, msg = self.script.popleft()
        await asyncio.sleep((timeout or 0) if delay == LATE else delay)
        return msg

    async def unsubscribe(self, limit: int = 0) -> None:
        self._closed = True


class Jet(JetStreamContext):
    """JetStream whose pull subscriptions read the scripted inboxes, one per `pull_subscribe`."""

    def __init__(self, wire: Wire, *inboxes: Inbox) -> None:
        super().__init__(wire)
        self.inboxes = deque(inboxes)
        self.subscribed = 0

    async def pull_subscribe(self, subject: str, durable: str | None = None, stream: str | None = None,
                             config: Any = None, **options: Any) -> JetStreamContext.PullSubscription:  # fmt: skip
        self.subscribed += 1
        inbox = self.inboxes.popleft() if len(self.inboxes) > 1 else self.inboxes[0]
        return JetStreamContext.PullSubscription(self, inbox, stream or "", durable or DURABLE, b"_INBOX.executor")


async def requested(wire: Wire) -> tuple[ControlHandlers, MemoryStore, UUID, Msg]:
    """A plug, a stored request to switch it on, and that request's message as delivered through `wire`."""
    store = MemoryStore()
    snapshot = plug(is_on=False)
    device = Device.from_snapshot("10.0.0.5:9999", snapshot, alias=None, actor="test")
    store.put(device)
    handlers = ControlHandlers(store, FakeSwitch(snapshot), ManualClock(T0, step=timedelta(seconds=1)),
                               ConfigHandlers(store, ConfigValues()), deadline_s=30)  # fmt: skip
    accepted = await handlers.request_control(RequestControl(device_id=device.id, action=Action.ON, actor="user:u1"))
    command_id = accepted.command_id
    event = store.events[command_id][0]
    msg = Msg(_client=wire, subject=f"wl.events.command.{command_id}.ControlRequested",
              reply=f"{ACK_PREFIX}WL_EVENTS.{DURABLE}.1.1.1.0.0", data=encode_envelope(1, event))  # fmt: skip
    return handlers, store, command_id, msg


def executor(jet: Jet, handlers: ControlHandlers) -> CommandExecutor:
    return CommandExecutor(jet, handlers, stream=StreamConfig(), ack_wait=30.0)


@pytest.fixture(autouse=True)
def short_fetches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "FETCH_WAIT_S", FETCH_WAIT_S)


@asynccontextmanager
async def running(cmd: CommandExecutor) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(cmd.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait({task}, timeout=5)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=5)
        assert task.done()
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def answered_or_failed(wire: Wire, task: asyncio.Task[None], timeout: float = 5.0) -> None:
    """Until the executor answered JetStream about a request; raises what ended the executor instead."""
    answered = asyncio.create_task(wire.answered.wait())
    try:
        await asyncio.wait({answered, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        answered.cancel()
    if task.done():
        task.result()
        raise AssertionError("the executor stopped by itself")
    assert wire.answered.is_set(), f"no answer within {timeout} s; published {wire.published}"


async def settled(handlers: ControlHandlers, command_id: UUID) -> ControlCommand:
    return await handlers.command(command_id)


def test_every_timeout_nats_py_raises_is_an_asyncio_timeout_error() -> None:
    assert asyncio.TimeoutError is TimeoutError
    assert issubclass(nats.errors.TimeoutError, asyncio.TimeoutError)
    assert issubclass(nats.js.errors.FetchTimeoutError, asyncio.TimeoutError)


async def test_nats_py_fetch_raises_a_bare_asyncio_timeout_when_its_probe_is_answered_at_its_timer() -> None:
    wire = Wire()
    sub = JetStreamContext.PullSubscription(
        JetStreamContext(wire), Inbox(wire, [(LATE, status("408", "Request Timeout"))]), "S", "C", b"_INBOX.executor"
    )
    with pytest.raises(asyncio.TimeoutError) as raised:
        await sub.fetch(batch=16, timeout=FETCH_WAIT_S)
    assert not isinstance(raised.value, nats.errors.TimeoutError)


async def test_a_bare_asyncio_timeout_from_fetch_is_an_empty_fetch_and_the_next_request_runs() -> None:
    wire = Wire()
    handlers, _, command_id, msg = await requested(wire)
    late_408 = (LATE, status("408", "Request Timeout"))
    inbox = Inbox(wire, [late_408, late_408, (0.0, msg), (0.0, status("404", "No Messages"))])
    with capture_logs() as logs:
        async with running(executor(Jet(wire, inbox), handlers)) as task:
            await answered_or_failed(wire, task)
    assert wire.answers() == [b""]
    assert (await settled(handlers, command_id)).status is Status.SUCCEEDED
    assert [e for e in logs if e["log_level"] in ("warning", "error", "critical")] == []


async def test_a_consumer_jetstream_no_longer_serves_is_one_warning_then_subscribed_again() -> None:
    wire = Wire()
    handlers, _, command_id, msg = await requested(wire)
    gone = Inbox(wire, [(0.0, status("503", ""))])
    again = Inbox(wire, [(0.0, msg), (0.0, status("404", "No Messages"))])
    jet = Jet(wire, gone, again)
    with capture_logs() as logs:
        async with running(executor(jet, handlers)) as task:
            await answered_or_failed(wire, task)
    assert jet.subscribed == 2
    assert (await settled(handlers, command_id)).status is Status.SUCCEEDED
    faults = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["event"], e["part"], e["action"]) for e in faults] == [("part.fault", "executor", "subscribe again")]
    assert "ServiceUnavailableError" in faults[0]["error"]
    assert not any("exc_info" in e or "exception" in e for e in logs)


async def test_pull_requests_refused_while_reconnecting_are_warnings_and_retried() -> None:
    wire = Wire()
    handlers, _, command_id, msg = await requested(wire)
    wire.refuse.extend([nats.errors.OutboundBufferLimitError(), nats.errors.ConnectionDrainingError()])
    inbox = Inbox(wire, [(0.0, msg), (0.0, status("404", "No Messages"))])
    with capture_logs() as logs:
        async with running(executor(Jet(wire, inbox), handlers)) as task:
            await answered_or_failed(wire, task)
    assert (await settled(handlers, command_id)).status is Status.SUCCEEDED
    assert [e["error"] for e in logs if e["event"] == "part.fault"] == [
        "OutboundBufferLimitError: nats: outbound buffer limit exceeded",
        "ConnectionDrainingError: nats: connection draining",
    ]


async def test_a_store_that_lost_its_connection_naks_the_request_with_one_warning() -> None:
    wire = Wire()
    handlers, store, command_id, msg = await requested(wire)
    store.fail_next(psycopg.OperationalError("server closed the connection unexpectedly"))
    inbox = Inbox(wire, [(0.0, msg), (0.0, status("404", "No Messages"))])
    with capture_logs() as logs:
        async with running(executor(Jet(wire, inbox), handlers)) as task:
            await answered_or_failed(wire, task)
    assert wire.answers() == [b'-NAK {"delay": 1000000000}']
    faults = [e for e in logs if e["log_level"] in ("warning", "error")]
    assert [(e["event"], e["error"]) for e in faults] == [
        ("part.fault", "OperationalError: server closed the connection unexpectedly")
    ]
    assert (await settled(handlers, command_id)).status is Status.REQUESTED


class ClosedWhileWaiting(Inbox):
    """nats-py's `next_msg` on a closed connection: a cancellation comes out as ConnectionClosedError."""

    waiting = asyncio.Event()

    async def next_msg(self, timeout: float | None = 1.0) -> Msg:
        try:
            self.waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise nats.errors.ConnectionClosedError from None
        raise AssertionError("unreachable")


async def test_cancelling_the_executor_ends_it_even_when_nats_py_turns_the_cancellation_into_closed() -> None:
    wire = Wire()
    handlers, _, _, _ = await requested(wire)
    inbox = ClosedWhileWaiting(wire, [])
    task = asyncio.create_task(executor(Jet(wire, inbox), handlers).run())
    await asyncio.wait_for(inbox.waiting.wait(), 5)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
