"""The relay's publisher: one section of the log onto JetStream, each message settled in order.

`Publisher.publish(batch)` sends a section with `publish_async`, gathers the acks, and
settles the messages in log order up to the first one that failed for a transient reason.
A message settles in one of two ways:

- published: JetStream acknowledged it (a duplicate ack counts: the message is in the stream);
- refused for good: the same message would be refused on every attempt. These are a body
  plus headers larger than the server's `max_payload` (checked before sending: the server
  would close the connection, and nats-py raises `MaxPayloadError` for a body alone over it),
  and the JetStream API errors in `REFUSED_FOR_GOOD` (10054: larger than the stream's
  `max_msg_size`; 10097: headers too large).

Everything else is transient: the batch's result carries it, and the relay stops before it.

nats-py 2.16 loses the JetStream API errors of `publish_async` (nats.py issue #985: the ack
future never resolves and the error goes to the connection's error callback). So a message
still without an answer once the batch's last ack is in (or after `ack_timeout`) is published
once more with `js.publish`, which does raise them, and settled by that answer; the same
`Nats-Msg-Id` makes the second send harmless if the first was stored.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck
from nats.js.errors import APIError

from adapters.errors import AdapterError

__all__ = ["REFUSED_FOR_GOOD", "BatchResult", "Outgoing", "Publisher", "Refused"]

#: JetStream API error codes that refuse one message for good: sending it again gets the same answer.
REFUSED_FOR_GOOD = frozenset({10054, 10097})

_HEADER_FRAME = len(b"NATS/1.0\r\n\r\n")


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


class Publisher:
    """Publishes sections of the log to one stream and settles every message's answer."""

    def __init__(self, js: JetStreamContext, stream_name: str, *, ack_timeout: float) -> None:
        self._js = js
        self._stream_name = stream_name
        self._ack_timeout = ack_timeout

    def _max_payload(self) -> int:
        # nats-py compares only the body with the server's max_payload; a message whose
        # headers carry it over is sent, and the server closes the connection for it.
        return int(self._js._nc.max_payload)

    async def publish(self, batch: list[Outgoing]) -> BatchResult:
        """Publish a batch and settle its messages in order, up to the first transient failure."""
        limit = self._max_payload()
        sent: list[asyncio.Future[PubAck] | BaseException] = []
        error: BaseException | None = None
        try:
            for msg in batch:
                size = msg.wire_size(self._stream_name)
                if size > limit:
                    sent.append(_OverMaxPayload(f"{size} bytes with headers, over the server's max_payload of {limit}"))
                    continue
                try:
                    sent.append(
                        await self._js.publish_async(
                            msg.subject, msg.payload, headers=dict(msg.headers), stream=self._stream_name
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
        self, batch: list[Outgoing], sent: list[asyncio.Future[PubAck] | BaseException], error: BaseException | None
    ) -> BatchResult:
        settled = duplicates = 0
        refused: list[Refused] = []
        for msg, outcome in zip(batch, sent):
            answer = _answer(outcome)
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


def _refused_for_good(exc: BaseException) -> bool:
    if isinstance(exc, (_OverMaxPayload, MaxPayloadError)):
        return True
    return isinstance(exc, APIError) and exc.err_code in REFUSED_FOR_GOOD


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
