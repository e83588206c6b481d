"""Start-up: waiting for PostgreSQL and NATS before anything is created, within a time bound.

`starting` bounds the start-up to the settings' timeout and ends it at once when a stop is
asked for; `wait_for_postgres` and `wait_for_nats` retry until a server takes a connection and
give up at once on a final refusal (wrong credentials, a database that does not exist). Every
failure is one clean line (`StartupError`): which server, where (host:port, never credentials),
and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import eventsourcing.persistence
import nats.errors
import psycopg
from nats.aio.client import Client

from adapters.bus import BusError
from domain.text import escape_text
from infra.errors import InfraError
from infra.settings import mask_secrets

__all__ = ["Startup", "StartupError", "StartupInterrupted", "starting", "wait_for_nats", "wait_for_postgres"]


class StartupError(InfraError):
    """A server the process needs could not be reached or used in time; the one-line message says
    which and where (host:port, never credentials)."""


class StartupInterrupted(InfraError):
    """A stop was asked for (SIGINT/SIGTERM) while the process was still starting."""

_RETRY_FIRST_S, _RETRY_MAX_S = 0.2, 2.0
_STARTUP_FAILURES = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    eventsourcing.persistence.OperationalError,
    eventsourcing.persistence.InterfaceError,
    nats.errors.Error,
    BusError,
    OSError,
)
# PostgreSQL answers these FATALs while it cannot take connections yet; every other FATAL is final.
_PG_TRANSIENT_FATALS = ("starting up", "shutting down", "in recovery", "too many clients", "not yet accepting")


@dataclass
class Startup:
    """What start-up is waiting for, and the last reason it did not get it."""

    timeout: float
    target: str = "the servers"
    reason: str = ""

    def failure(self, reason: str | None = None) -> StartupError:
        why = reason or self.reason or "no answer"
        return StartupError(f"cannot reach {self.target} within {self.timeout:g} s: {why}")

    def refused(self, reason: str) -> StartupError:
        return StartupError(f"cannot use {self.target}: {reason}")


def _reason(exc: BaseException) -> str:
    """One clean line about why a connection failed: no credentials, no control characters."""
    if isinstance(exc, OSError) and exc.errno:
        text = os.strerror(exc.errno)
    elif isinstance(exc, TimeoutError):
        text = "no answer"
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "Is the server running" not in ln]
        text = lines[-1] if lines else type(exc).__name__
        text = text.rpartition(" failed: ")[2].removeprefix("FATAL:").strip() or text
    return escape_text(mask_secrets(text))[:300]


@contextlib.asynccontextmanager
async def starting(timeout: float, stop: asyncio.Event | None) -> AsyncIterator[Startup]:
    """Bound the start-up to `timeout` seconds, and end it at once when `stop` is set."""
    startup = Startup(timeout=timeout)
    task = asyncio.current_task()
    interrupted = False

    async def cancel_on_stop(event: asyncio.Event, starting: asyncio.Task[Any]) -> None:
        nonlocal interrupted
        await event.wait()
        interrupted = True
        while True:
            # Asked again until start-up ends: a library may swallow one cancellation.
            starting.cancel()
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(cancel_on_stop(stop, task)) if stop is not None and task is not None else None
    bound = asyncio.timeout(timeout)
    try:
        async with bound:
            yield startup
    except TimeoutError:
        if not bound.expired():
            raise
        raise startup.failure() from None
    except asyncio.CancelledError:
        if not interrupted or task is None:
            raise
        while task.uncancel():
            pass
        raise StartupInterrupted() from None
    except _STARTUP_FAILURES as exc:
        raise startup.refused(_reason(exc)) from None
    finally:
        if watcher is not None:
            watcher.cancel()


async def wait_for_postgres(database_url: str, startup: Startup) -> None:
    """Retry connecting until PostgreSQL takes a connection; give up at once on a final refusal."""
    delay = _RETRY_FIRST_S
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        except psycopg.OperationalError as exc:
            startup.reason = _reason(exc)
            message = str(exc)
            if "FATAL" in message and not any(t in message for t in _PG_TRANSIENT_FATALS):
                raise startup.refused(startup.reason) from None
        else:
            await conn.close()
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX_S)


async def _probe_nats(nats_url: str) -> None:
    """One connection attempt that fails instead of retrying forever, then closes again."""
    probe = Client()
    seen: list[Exception] = []

    async def remember(exc: Exception) -> None:
        seen.append(exc)

    try:
        await probe.connect(
            nats_url,
            name="wattledger-probe",
            allow_reconnect=False,
            # nats-py's first connect retries each server until it is past this count, forever at -1.
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            connect_timeout=2,
            error_cb=remember,
        )
    except nats.errors.NoServersError:
        raise seen[-1] if seen else TimeoutError() from None
    finally:
        with contextlib.suppress(Exception):
            await probe.close()


async def wait_for_nats(nats_url: str, startup: Startup) -> None:
    """Retry until a NATS server takes a connection; give up at once when it refuses our credentials."""
    delay = _RETRY_FIRST_S
    while True:
        try:
            await _probe_nats(nats_url)
            return
        except nats.errors.AuthorizationError as exc:
            raise startup.refused(_reason(exc) or "authorization violation") from None
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            startup.reason = _reason(exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX_S)
