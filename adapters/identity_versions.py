"""The stored versions of sessions, keys and users, remembered between requests while the log says they hold.

Per-request authentication asks the event store which version each session, key and user is
at (`IdentityReader.versions`): one round trip on every authenticated request, for answers that
change only when someone signs in or out, or a key or user is changed. `RememberedVersions`
answers from memory what the store answered before, and forgets an aggregate as soon as a new
event of it is known:

- a change stored through this process's identity handlers (`NotingStore`) is forgotten before
  the handler returns, so the next request of this process asks the store again;
- a change stored by another process is learnt from the event log by a watcher on its own
  connection: woken by the store's notification (`LISTEN`), and every `poll_s` in case one is
  lost, it reads the identity events stored since its last look (one indexed range scan) and
  forgets their aggregates. Another process's change is in force here within that read, a few
  milliseconds after it is stored, and at most `poll_s` (1 s) if a notification is lost;
- while the watcher is not connected and caught up (starting, after a lost connection), nothing
  is answered from memory: every request asks the store, as without this class.

An answer is remembered only if no aggregate was forgotten while it was being read, so an answer
read before a change can never be remembered after it (the log's notification ids are committed
in order, so the watcher never steps over an event still to commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import psycopg
import structlog
from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic
from psycopg import sql

from adapters.eventstore import StoreUnitOfWork, WattLedger
from adapters.faults import DATABASE_FAULTS, report
from adapters.history import EVENTS_TABLE
from domain.identity import ApiKey, Session, User
from domain.ports import IdentityReader

__all__ = ["IDENTITY_TOPICS", "WATCHER_NAME", "NotingStore", "RememberedVersions"]

log = structlog.get_logger(__name__)

IDENTITY_TOPICS: Final = tuple(f"{get_topic(kind)}.%" for kind in (User, Session, ApiKey))
"""`LIKE` patterns of the stored topics of every event of a user, a session or an API key."""
POLL_S = 1.0
MIN_SCAN_INTERVAL_S = 0.01
SCAN_BATCH = 50_000
CONNECT_TIMEOUT_S = 5
WATCHER_NAME = "wattledger-identity-watch"
"""The watcher connection's `application_name` (as `pg_stat_activity` shows it)."""

_HEAD = f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}"
_CHANGES = (
    "SELECT max(notification_id), coalesce(array_agg(originator_id) FILTER (WHERE topic LIKE ANY(%(topics)s)), "
    f"'{{}}') FROM (SELECT notification_id, originator_id, topic FROM {EVENTS_TABLE} "
    "WHERE notification_id > %(after)s ORDER BY notification_id LIMIT %(batch)s) AS stored"
)


class RememberedVersions(IdentityReader):
    """`inner` with its `versions` answered from memory while the event log says they still hold
    (see the module doc); activity and key lists go to `inner` as they are.

    The watcher starts with the first call; `close()` stops it.
    """

    def __init__(
        self,
        inner: IdentityReader,
        database_url: str,
        *,
        channel: str | None,
        size: int = 10_000,
        poll_s: float = POLL_S,
    ) -> None:
        self.inner = inner
        self.database_url = database_url
        self.channel = channel
        self.size = size
        self.poll_s = poll_s
        self._known: dict[UUID, int] = {}
        self._generation = 0
        self._live = False
        self._through = 0
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self._caught_up = asyncio.Event()

    @property
    def live(self) -> bool:
        """Whether answers are being remembered now (the watcher is connected and caught up)."""
        return self._live

    @property
    def through(self) -> int:
        """The position in the event log up to which the watcher has read the changes."""
        return self._through

    async def versions(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, int]:
        self._start()
        if self._live:
            known = self._known
            remembered = {i: known[i] for i in aggregate_ids if i in known}
            if len(remembered) == len(aggregate_ids):
                return remembered
        generation, live = self._generation, self._live
        answer = await self.inner.versions(aggregate_ids)
        if live and self._live and generation == self._generation:
            for aggregate_id, version in answer.items():
                self._remember(aggregate_id, version)
        return answer

    async def touch_session(self, session_id: UUID, at: datetime) -> None:
        await self.inner.touch_session(session_id, at)

    async def touch_key(self, key_id: UUID, at: datetime) -> None:
        await self.inner.touch_key(key_id, at)

    async def api_key_ids(self, user_id: UUID) -> list[UUID]:
        return await self.inner.api_key_ids(user_id)

    def forget(self, aggregate_ids: Iterable[UUID]) -> None:
        """A new event of these aggregates is (or may be) stored: answer them from the store again,
        and remember nothing read before now."""
        self._generation += 1
        for aggregate_id in aggregate_ids:
            self._known.pop(aggregate_id, None)

    async def wait_live(self, timeout: float) -> bool:
        """Wait until the watcher has connected and caught up (for tests and start-up checks)."""
        self._start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._caught_up.wait()
        return self._live

    async def close(self) -> None:
        self._closed = True
        self._go_dark()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    def _remember(self, aggregate_id: UUID, version: int) -> None:
        known = self._known
        if aggregate_id not in known and len(known) >= self.size:
            del known[next(iter(known))]
        known[aggregate_id] = version

    def _go_dark(self) -> None:
        self._live = False
        self._caught_up.clear()
        self._generation += 1
        self._known.clear()

    def _start(self) -> None:
        if self._watcher is None and not self._closed:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="identity-versions-watch")

    async def _watch(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name=WATCHER_NAME
                ) as conn:
                    if self.channel is not None:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    row = await (await conn.execute(_HEAD)).fetchone()
                    self._go_dark()
                    self._through = int(row[0]) if row else 0
                    self._live = True
                    self._caught_up.set()
                    delay = 0.5
                    while True:
                        await self._wait(conn)
                        await self._catch_up(conn)
            except DATABASE_FAULTS as exc:
                report("identity-versions", exc, retry_in=delay)
            except Exception:
                # Not an outage: logged with its traceback; requests ask the store meanwhile.
                log.exception("identity.versions_watch_failed", retry_in=delay)
            finally:
                self._go_dark()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _wait(self, conn: psycopg.AsyncConnection[Any]) -> None:
        began = time.monotonic()
        if self.channel is None:
            await asyncio.sleep(self.poll_s)
        else:
            async for _ in conn.notifies(timeout=self.poll_s, stop_after=1):
                pass
        # A store written to without pause wakes this once per write: one scan covers many.
        await asyncio.sleep(max(0.0, MIN_SCAN_INTERVAL_S - (time.monotonic() - began)))

    async def _catch_up(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            cur = await conn.execute(_CHANGES, {"topics": list(IDENTITY_TOPICS), "after": self._through,
                                                "batch": SCAN_BATCH})  # fmt: skip
            row = await cur.fetchone()
            if row is None or row[0] is None:
                return
            changed: list[UUID] = row[1]
            if changed:
                self.forget(changed)
                log.debug("identity.versions_forgotten", aggregates=len(set(changed)), through=row[0])
            self._through = int(row[0])


class NotingStore(StoreUnitOfWork):
    """The identity handlers' store: what it saves is forgotten by `versions` before `save` returns
    (also when the save failed: its outcome may be unknown)."""

    def __init__(self, app: WattLedger, versions: RememberedVersions) -> None:
        super().__init__(app)
        self.versions = versions

    async def save(self, *aggregates: Aggregate) -> int:
        try:
            return await super().save(*aggregates)
        finally:
            self.versions.forget(aggregate.id for aggregate in aggregates)
