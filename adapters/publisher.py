"""The relay's publisher: one section of the log onto JetStream, each message settled in order.

`Publisher.publish(batch)` sends a section, each message with a reply subject of its own
under one inbox of the publisher's, gathers the answers, and settles the messages in log
order up to the first one that failed for a transient reason. A message settles in one of
two ways:

- published: JetStream acknowledged it (a duplicate ack counts: the message is in the stream);
- refused for good: the same message would be refused on every attempt. These are a body
  plus headers larger than the server's `max_payload` (checked before sending: the server
  would close the connection, and nats-py raises `MaxPayloadError` for a body alone over it),
  and the JetStream API errors in `REFUSED_FOR_GOOD` (10054: larger than the stream's
  `max_msg_size`; 10097: headers too large).

Everything else is transient: the batch's result carries it, and the relay stops before it.

The answers are read here rather than through nats-py's `publish_async`, which costs a
future, a random token and a semaphore round per message, and loses JetStream's API errors
(nats.py issue #985: `APIError.from_error` raises inside its reply handler, so the future
never resolves). A message still without an answer once the batch's last answer is in (or
after `ack_timeout`) is published once more with `js.publish` and settled by that answer;
the same `Nats-Msg-Id` makes the second send harmless if the first was stored.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck
from nats.js.errors import APIError, NoStreamResponseError

from adapters.errors import AdapterError

__all__ = ["REFUSED_FOR_GOOD", "BatchResult", "Outgoing", "Publisher", "Refused"]

#: JetStream API error codes that refuse one message for good: sending it again gets the same answer.
REFUSED_FOR_GOOD = frozenset({10054, 10097})

_HEADER_FRAME = len(b"NATS/1.0\r\n\r\n")
NO_RESPONDERS_STATUS = "503"


class _OverMaxPayload(AdapterError):
    """A message the relay does not send: with its headers it is larger than the server accepts."""


class Outgoing(NamedTuple):
    """One stored event as it goes onto the stream."""

    notification_id: int
    subject: str
    payload: bytes
    headers: dict[str, str]

    def wire_size(self, stream_name: str) -> int:
        """Body plus headers as sent (with the expected-stream header), the size the server checks."""
        headers = {**self.headers, Header.EXPECTED_STREAM.value: stream_name}
        header_bytes = _HEADER_FRAME + sum(len(f"{k}: {v}\r\n".encode()) for k, v in headers.items())
        return header_bytes + len(self.payload)


class Refused(NamedTuple):
    """A message refused for good, and why."""

    notification_id: int
    subject: str
    error: str


class BatchResult(NamedTuple):
    """How many messages of a batch settled (in order), how, and the transient failure after them."""

    settled: int
    duplicates: int
    refused: list[Refused]
    error: BaseException | None


class _Reply(msgspec.Struct):
    """A JetStream publish answer: an ack (stream, seq, duplicate) or an API error."""

    stream: str = ""
    seq: int = 0
    domain: str | None = None
    duplicate: bool | None = None
    error: dict[str, Any] | None = None


_decode_reply = msgspec.json.Decoder(_Reply).decode

Answer = PubAck | BaseException | None
"""What JetStream said about one message: an ack, why not, or nothing (yet)."""


class Publisher:
    """Publishes sections of the log to one stream and settles every message's answer.

    Every message carries a reply subject of its own under one inbox subscription of the
    publisher's, `<inbox>.<serial>`, the serial counting the publisher's messages, so an answer
    is placed by its number and one arriving late for an earlier section is ignored. That is
    what `publish_async` does, less its per-message future, random token and semaphore, and
    with JetStream's API errors read from the answer (nats-py drops them, see the module
    docstring). Every `yield_every` messages the event loop runs other work, so a large
    section neither holds the loop nor waits to go out until it is all queued.
    """

    def __init__(
        self, js: JetStreamContext, stream_name: str, *, ack_timeout: float, yield_every: int = 200
    ) -> None:
        self._js = js
        self._stream_name = stream_name
        self._ack_timeout = ack_timeout
        self._yield_every = max(1, yield_every)
        self._expected_stream = {Header.EXPECTED_STREAM.value: stream_name}
        self._inbox = ""
        self._sub: Subscription | None = None
        self._serial = 0
        self._base = 0
        self._answers: list[Answer] = []
        self._awaited = -1
        self._last_in = asyncio.Event()

    @property
    def _nc(self) -> Client:
        return self._js._nc

    def _max_payload(self) -> int:
        # nats-py compares only the body with the server's max_payload; a message whose
        # headers carry it over is sent, and the server closes the connection for it.
        return int(self._nc.max_payload)

    async def close(self) -> None:
        """Unsubscribe the answers' inbox (a closed connection has none left)."""
        sub, self._sub = self._sub, None
        if sub is not None and not self._nc.is_closed:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass

    async def _replies(self) -> str:
        if self._sub is None:
            self._inbox = f"{self._nc.new_inbox()}."
            self._sub = await self._nc.subscribe(f"{self._inbox}*", cb=self._on_reply)
        return self._inbox

    async def publish(self, batch: list[Outgoing]) -> BatchResult:
        """Publish a batch and settle its messages in order, up to the first transient failure."""
        limit = self._max_payload()
        inbox = await self._replies()
        answers: list[Answer] = [None] * len(batch)
        base = self._base = self._serial
        self._serial += len(batch)
        self._answers, self._awaited = answers, -1
        self._last_in.clear()
        error: BaseException | None = None
        attempted = last_sent = 0
        try:
            for attempted, msg in enumerate(batch, start=1):
                size = msg.wire_size(self._stream_name)
                if size > limit:
                    answers[attempted - 1] = _OverMaxPayload(
                        f"{size} bytes with headers, over the server's max_payload of {limit}"
                    )
                    continue
                try:
                    await self._nc.publish(
                        msg.subject, msg.payload, reply=f"{inbox}{base + attempted - 1}",
                        headers=msg.headers | self._expected_stream,
                    )  # fmt: skip
                except Exception as exc:
                    if not _refused_for_good(exc):
                        error = exc
                        attempted -= 1
                        break
                    answers[attempted - 1] = exc
                    continue
                last_sent = attempted
                if attempted % self._yield_every == 0:
                    await asyncio.sleep(0)
            if last_sent and answers[last_sent - 1] is None:
                # Answers come back in publishing order: once the last is in, a message still
                # without one lost its answer (or the message itself); it is asked about again.
                self._awaited = last_sent - 1
                try:
                    await asyncio.wait_for(self._last_in.wait(), timeout=self._ack_timeout)
                except TimeoutError:
                    pass
            return await self._settle(batch[:attempted], answers, error)
        finally:
            self._answers, self._awaited = [], -1

    async def _on_reply(self, msg: Msg) -> None:
        try:
            index = int(msg.subject[len(self._inbox):]) - self._base
        except ValueError:
            return
        answers = self._answers
        if not 0 <= index < len(answers) or answers[index] is not None:
            return
        answers[index] = _answer_of(msg)
        if index == self._awaited:
            self._last_in.set()

    async def _settle(self, batch: list[Outgoing], answers: list[Answer], error: BaseException | None) -> BatchResult:
        settled = duplicates = 0
        refused: list[Refused] = []
        for msg, answer in zip(batch, answers):
            if answer is None:
                answer = await self._ask_again(msg)
            if isinstance(answer, PubAck):
                duplicates += bool(answer.duplicate)
            elif _refused_for_good(answer):
                refused.append(Refused(msg.notification_id, msg.subject, _describe(answer)))
            else:
                return BatchResult(settled, duplicates, refused, answer)
            settled += 1
        return BatchResult(settled, duplicates, refused, error)

    async def _ask_again(self, msg: Outgoing) -> PubAck | BaseException:
        """Publish one message again and wait for its answer; the same `Nats-Msg-Id` makes it idempotent."""
        try:
            return await self._js.publish(
                msg.subject,
                msg.payload,
                timeout=self._ack_timeout,
                stream=self._stream_name,
                headers=dict(msg.headers),
            )
        except Exception as exc:
            return exc


def _answer_of(msg: Msg) -> Answer:
    """One answer read: an ack, an API error, no responders, or None when it cannot be read (asked again)."""
    if msg.headers and msg.headers.get(Header.STATUS.value) == NO_RESPONDERS_STATUS:
        return NoStreamResponseError()
    try:
        reply = _decode_reply(msg.data)
    except msgspec.DecodeError:
        return None
    if reply.error is not None:
        try:
            APIError.from_error(reply.error)  # raises the error's class
        except APIError as exc:
            return exc
        except TypeError:  # an error without the expected fields
            return None
    return PubAck(stream=reply.stream, seq=reply.seq, domain=reply.domain, duplicate=reply.duplicate)


def _refused_for_good(exc: BaseException) -> bool:
    if isinstance(exc, (_OverMaxPayload, MaxPayloadError)):
        return True
    return isinstance(exc, APIError) and exc.err_code in REFUSED_FOR_GOOD


def _describe(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return f"JetStream err_code {exc.err_code}: {exc.description}"
    if isinstance(exc, _OverMaxPayload):
        return f"message too large: {exc}"
    return str(exc) or type(exc).__name__
