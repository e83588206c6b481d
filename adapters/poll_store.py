"""The poller's store queue: readings and offline reports, saved as they arrive.

Readings and offline reports go into one queue, drained by one store task (`PollStore.run`):
whatever has arrived is saved through `CommandHandlers.record_polls`, up to POLLS_PER_SAVE
devices per transaction, at most `flush_every` seconds after it arrived. The store's calls run
on an event loop of their own thread (`StoreLoop`). A failed save keeps its entries queued:
a failure of the store itself (`transient`) is retried with backoff; one of what was saved is
retried one entry at a time, and an entry that fails SAVE_GIVE_UP times alone is dropped.
Storing is idempotent by device and timestamp, so a retry of a save that did commit stores
nothing twice.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar
from uuid import UUID

import msgspec
import psycopg
import structlog
from eventsourcing.persistence import DataError, IntegrityError, PersistenceError

from adapters.eventstore import StoreUnitOfWork
from adapters.faults import report
from domain.commands import MissedPolls, PollResult, PollsRecorded, RecordPolls
from domain.errors import ConcurrencyConflict
from domain.handlers import POLLS_PER_SAVE, CommandHandlers

__all__ = ["POLLER_ACTOR", "SAVE_GIVE_UP", "Entry", "PollStore", "StoreLoop", "transient"]

log = structlog.get_logger(__name__)

POLLER_ACTOR = "system:poller"
SAVE_GIVE_UP = 3
"""Failures of a single entry, saved alone, after which it is dropped as unstorable."""

_T = TypeVar("_T")


class Entry(msgspec.Struct):
    """One queued reading or offline report, when it was queued, and how often saving it alone failed."""

    item: PollResult | MissedPolls
    queued: float
    failures: int = 0

    @property
    def device_id(self) -> UUID:
        return self.item.device_id


class StoreLoop:
    """An event loop on a thread of its own, where every call into the store runs.

    Loading an aggregate is a thread hop, and a part of 100 new devices makes about
    200 of them. On the polling loop each hop waits behind the polling traffic: at
    5,000 devices one part took seconds. Here the hops wait for nothing.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="poller-store", daemon=True)
        self._thread.start()

    async def call(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run `work` there; cancelling the caller cancels it."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    async def aclose(self) -> None:
        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)

        try:
            await asyncio.wait_for(self.call(cancel_the_rest()), 2.0)
        except (TimeoutError, RuntimeError):
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 2.0)
        if not self._thread.is_alive():
            self._loop.close()


def transient(exc: BaseException) -> bool:
    """A failure of the store itself (connection, server, conflict), not of what was saved."""
    if isinstance(exc, (DataError, psycopg.DataError)):
        return False
    if isinstance(exc, IntegrityError) and not isinstance(exc, ConcurrencyConflict):
        return False
    return isinstance(exc, (PersistenceError, psycopg.Error, OSError, TimeoutError, ConcurrencyConflict))


class PollStore:
    """The queue of a poller's readings and offline reports, and the one task that saves them.

    Counts go into the poller's `counts` (saves, stored, save_failures, dropped);
    `first_of_kind` decides which failures are logged with a traceback.
    """

    def __init__(
        self,
        commands: CommandHandlers,
        *,
        flush_every: float,
        on_saved: Callable[[], None],
        counts: collections.Counter[str],
        first_of_kind: Callable[[Exception], Exception | None],
    ) -> None:
        self.commands = commands
        self.flush_every = flush_every
        self.on_saved = on_saved
        self._counts = counts
        self._first_of_kind = first_of_kind
        self._queue: collections.deque[Entry] = collections.deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._solo = 0
        self._writer: StoreLoop | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def lag(self, now: float) -> float:
        """Seconds the oldest entry still waiting to be stored has waited (monotonic `now`)."""
        return round(now - self._queue[0].queued, 3) if self._queue else 0.0

    def open(self) -> None:
        """Start taking entries for a run, with a store loop of its own."""
        self._closing = False
        self._writer = StoreLoop()

    def close(self) -> None:
        """No more entries are coming: `run` saves what is queued and ends."""
        self._closing = True
        self._arrived.set()

    async def aclose(self) -> None:
        if self._writer is not None:
            await self._writer.aclose()

    def enqueue(self, item: PollResult | MissedPolls) -> None:
        self._queue.append(Entry(item=item, queued=time.monotonic()))
        if len(self._queue) == 1 or len(self._queue) >= POLLS_PER_SAVE:
            self._arrived.set()

    def _chunk(self) -> list[Entry]:
        """The oldest entries, each device at most once, so the order of a device's entries holds."""
        limit = 1 if self._solo else POLLS_PER_SAVE
        chunk: list[Entry] = []
        seen: set[UUID] = set()
        for entry in self._queue:
            if len(chunk) >= limit or entry.device_id in seen:
                break
            seen.add(entry.device_id)
            chunk.append(entry)
        return chunk

    async def _gathered(self) -> None:
        """Wait until entries are queued, then for more of them up to `flush_every` or a full part."""
        while not self._queue:
            if self._closing:
                return
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._queue[0].queued + self.flush_every
        while not self._closing and len(self._queue) < POLLS_PER_SAVE:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                return

    async def run(self) -> None:
        """The only writer of the poller's caching store; ends once closing and drained."""
        backoff = 0.0
        while True:
            await self._gathered()
            if not self._queue:
                return
            chunk = self._chunk()
            try:
                recorded = await self._save(chunk)
            except Exception as exc:
                backoff = self._save_failed(chunk, exc, backoff)
                if backoff:
                    await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            for _ in chunk:
                self._queue.popleft()
            self._solo = max(0, self._solo - len(chunk))
            self._counts["saves"] += 1
            self._counts["stored"] += recorded
            try:
                self.on_saved()
            except Exception as exc:
                log.error("poller.on_saved_failed", error=repr(exc), exc_info=exc)

    async def _save(self, chunk: Sequence[Entry]) -> int:
        assert self._writer is not None, "open() before run()"
        results = tuple(e.item for e in chunk if isinstance(e.item, PollResult))
        offline = tuple(e.item for e in chunk if isinstance(e.item, MissedPolls))
        command = RecordPolls(results=results, offline=offline, actor=POLLER_ACTOR)
        stored = await self._writer.call(self._record(command))
        return stored.recorded

    async def _record(self, command: RecordPolls) -> PollsRecorded:
        """On the store's loop: record, and after any failure forget every cached aggregate."""
        try:
            return await self.commands.record_polls(command)
        except BaseException:
            store = self.commands.store
            if isinstance(store, StoreUnitOfWork):
                # A load that failed mid-part can leave decided but unsaved events in cached aggregates.
                store.forget_all()
            raise

    def _save_failed(self, chunk: list[Entry], exc: Exception, backoff: float) -> float:
        """Decide what a failed save means; returns the delay before the next try (0: at once)."""
        self._counts["save_failures"] += 1
        if transient(exc):
            delay = min(max(backoff * 2, 0.2), 5.0)
            report("poller", exc, repeat=backoff != 0, action="save", entries=len(chunk), pending=len(self._queue),
                   retry_in=delay)  # fmt: skip
            return delay
        if len(chunk) > 1:
            log.error("poller.save_rejected", entries=len(chunk), error=repr(exc), retry="one entry at a time")
            self._solo = len(chunk)
            return 0.0
        entry = chunk[0]
        entry.failures += 1
        if entry.failures < SAVE_GIVE_UP:
            return 0.0
        self._queue.popleft()
        self._solo = max(0, self._solo - 1)
        self._counts["dropped"] += 1
        log.error(
            "poller.entry_dropped",
            device_id=str(entry.device_id),
            kind=type(entry.item).__name__,
            failures=entry.failures,
            error=repr(exc),
            exc_info=self._first_of_kind(exc),
        )
        return 0.0
