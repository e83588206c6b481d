"""The faults the outside libraries raise when a server or device is away, and how a loop reports them.

A loop over outside I/O catches these and only these: each is one warning line
(`part.fault`, no traceback) and a retry after a short pause that grows while the fault
lasts. Anything else is a bug and reaches the part's supervisor, which logs it with its
traceback and restarts the part.

What the libraries raise, read from their code (nats-py 2.16, psycopg 3, psycopg_pool,
eventsourcing 9.5, python-kasa):

- nats-py: a pull `fetch()` raises `nats.errors.TimeoutError`, `FetchTimeoutError` and also a
  bare `asyncio.TimeoutError` (its no-wait probe answered 408 just before its timer), so the
  base class is caught; `publish` while the connection is draining raises
  `ConnectionDrainingError`, with a full reconnect buffer `OutboundBufferLimitError`; a request
  nobody serves `NoRespondersError`; JetStream without a leader (or a pull on a consumer that is
  gone) answers 503, `ServiceUnavailableError`. `ConnectionClosedError` is not among them: a
  closed client never comes back (our clients reconnect for ever), so retrying cannot help.
- psycopg / psycopg_pool: a lost or refused connection, an ended backend, a pool that gives no
  connection in time are all `psycopg.OperationalError` (`PoolTimeout` included);
  eventsourcing re-raises them as its own `OperationalError`.
- python-kasa: `KasaException` (its `TimeoutError` too), `TimeoutError` from the caller's own
  deadline, `OSError` (refused, reset, unreachable); `adapters.kasa_driver` turns them into the
  domain's `DeviceError`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import eventsourcing.persistence
import kasa
import nats.errors
import nats.js.errors
import psycopg
import structlog

from domain.errors import DeviceError

log = structlog.get_logger(__name__)

NATS_FAULTS: tuple[type[BaseException], ...] = (
    asyncio.TimeoutError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)
DATABASE_FAULTS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    eventsourcing.persistence.OperationalError,
)
DEVICE_FAULTS: tuple[type[BaseException], ...] = (DeviceError, kasa.KasaException, TimeoutError, OSError)


def describe(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message (which may name it already)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    name = type(exc).__name__
    if not first:
        return name
    return first if name in first else f"{name}: {first}"


def report(part: str, exc: BaseException, *, repeat: bool = False, **context: Any) -> None:
    """One warning line for an expected fault of `part`, never a traceback; a `repeat` of the
    fault before it (a loop that warns once per outage) goes to debug."""
    (log.debug if repeat else log.warning)("part.fault", part=part, error=describe(exc), **context)


def reraise_if_cancelled() -> None:
    """Raise CancelledError when the running task was asked to stop.

    nats-py turns a cancelled `next_msg` into `ConnectionClosedError` once its connection is
    closed, and a task that swallowed its cancellation would run on: call this in a handler of
    an expected fault before retrying.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Backoff:
    """Pauses between the retries of one loop: `first`, doubling up to `cap`, back to `first` after a success."""

    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        if first <= 0 or cap < first:
            raise ValueError("first must be positive and cap at least first")
        self.first = first
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay: float = min(self.first * 2.0**self.failures, self.cap)
        self.failures = min(self.failures + 1, 32)
        return delay

    def reset(self) -> None:
        self.failures = 0

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Sleep the next pause, ending early when `stop` is set."""
        delay = self.next()
        if stop is None:
            await asyncio.sleep(delay)
            return
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass
