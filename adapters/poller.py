"""The poller: reads each assigned device on its own clock and stores readings as they arrive.

Every device has its own schedule, spread over the interval by its id, so there is no
cycle for a slow device to hold up. A device whose last poll failed is a suspect and
polls within a concurrency bound of its own; a poll that is still running after
`slow_after` seconds gives its healthy slot back, so devices that accept connections
and never answer cannot fill the healthy slots either.

Readings and offline reports go into one queue, drained by one store task: whatever
has arrived is saved through `CommandHandlers.record_polls`, up to POLLS_PER_SAVE
devices per transaction, at most `flush_every` seconds after it arrived. The store's
calls run on an event loop of their own thread. A failed save keeps its entries queued
and retries them with backoff; storing is idempotent by device and timestamp, so a
retry of a save that did commit stores nothing twice. While `max_pending` entries wait,
no new readings are taken (the devices' counters keep the energy meanwhile).

Which devices a poller polls comes from its `Assignment`: every present device
(`AllDevices`), or the devices it holds leases on (`adapters.leases.Leases`) when
several pollers share them.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar
from uuid import UUID

import msgspec
import psycopg
import structlog
from eventsourcing.persistence import DataError, IntegrityError, PersistenceError

from adapters.eventstore import StoreUnitOfWork
from adapters.faults import DATABASE_FAULTS, DEVICE_FAULTS, report
from domain.address import DeviceAddress, parse_address
from domain.commands import MissedPolls, PollResult, PollsRecorded, RecordPolls
from domain.config import ConfigValues
from domain.errors import ConcurrencyConflict
from domain.handlers import POLLS_PER_SAVE, CommandHandlers
from domain.ports import DeviceDriver

log = structlog.get_logger(__name__)

POLLER_ACTOR = "system:poller"
OFFLINE_RETRY_CAP = 60.0
"""An offline device is retried at least this often (or every interval, if longer)."""
SAVE_GIVE_UP = 3
"""Failures of a single entry, saved alone, after which it is dropped as unstorable."""

DeviceList = Callable[[], Awaitable[Sequence[tuple[UUID, str]]]]
_T = TypeVar("_T")


def retry_delay(missed: int, *, interval: float, offline_after: int) -> float:
    """Seconds until a device that missed `missed` polls in a row is polled again.

    The interval until it is reported offline; then doubling, capped at six intervals
    and at OFFLINE_RETRY_CAP (or one interval, if that is longer).
    """
    beyond = missed - offline_after
    if beyond < 0:
        return interval
    cap = max(interval, min(OFFLINE_RETRY_CAP, 6 * interval))
    return min(interval * 2.0 ** min(beyond + 1, 16), cap)


class Assigned(msgspec.Struct, frozen=True, kw_only=True):
    """The devices a poller may poll (id → address) until `valid_until` (event loop time)."""

    devices: dict[UUID, str]
    valid_until: float = math.inf


class Assignment(Protocol):
    """Where a poller learns which devices are its own."""

    refresh_every: float

    async def refresh(self, release: Callable[[Collection[UUID]], Awaitable[None]]) -> Assigned:
        """The devices to poll now; `release` is awaited before any device is given to another poller."""
        ...

    async def leave(self) -> None:
        """Give up every device (clean stop)."""
        ...


class AllDevices(Assignment):
    """Every present device, for a poller that runs alone."""

    def __init__(self, devices: DeviceList, *, refresh_every: float = 10.0) -> None:
        self._devices = devices
        self.refresh_every = refresh_every

    async def refresh(self, release: Callable[[Collection[UUID]], Awaitable[None]]) -> Assigned:
        return Assigned(devices=dict(await self._devices()))

    async def leave(self) -> None:
        return None


class PollerStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters since start, and the state of the store queue now."""

    devices: int
    suspect: int
    offline: int
    polls: int
    readings: int
    stored: int
    failures: int
    overruns: int
    saves: int
    save_failures: int
    dropped: int
    skipped: int
    """Polls not made because `max_pending` entries were waiting to be stored."""
    pending: int
    store_lag: float
    """Seconds the oldest entry still waiting to be stored has waited."""


class _Entry(msgspec.Struct):
    item: PollResult | MissedPolls
    queued: float
    failures: int = 0

    @property
    def device_id(self) -> UUID:
        return self.item.device_id


class _Device:
    __slots__ = ("address", "device_id", "due", "failing_since", "missed", "task")

    def __init__(self, device_id: UUID, address: str, due: float) -> None:
        self.device_id = device_id
        self.address = address
        self.due = due
        self.missed = 0
        self.failing_since: str | None = None
        self.task: asyncio.Task[None] | None = None


class _Slot:
    """A concurrency slot that can be handed back early, once."""

    __slots__ = ("_limit", "held")

    def __init__(self, limit: asyncio.Semaphore) -> None:
        self._limit = limit
        self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self._limit.release()


class _StoreLoop:
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


def _transient(exc: BaseException) -> bool:
    """A failure of the store itself (connection, server, conflict), not of what was saved."""
    if isinstance(exc, (DataError, psycopg.DataError)):
        return False
    if isinstance(exc, IntegrityError) and not isinstance(exc, ConcurrencyConflict):
        return False
    return isinstance(exc, (PersistenceError, psycopg.Error, OSError, TimeoutError, ConcurrencyConflict))


class Poller:
    """Polls assigned devices with bounded concurrency and per-device timeouts.

    A device that fails `offline_after` polls in a row is reported offline once; the
    Device aggregate turns that into one WentOffline event, and its next good poll into
    CameOnline. Offline devices are retried with doubling delays, capped so a device
    that returns is seen within OFFLINE_RETRY_CAP seconds. A device still polling when
    its next poll is due is an overrun (counted; logged at most every `log_every` s).

    `run()` polls until cancelled or `stop` is set; then it stops polling (polls in
    flight are abandoned), and stores what is queued for at most `grace` seconds.
    """

    def __init__(
        self,
        commands: CommandHandlers,
        driver: DeviceDriver,
        assignment: Assignment,
        *,
        interval: float,
        timeout: float = 10.0,
        concurrency: int = 64,
        suspect_concurrency: int = 64,
        offline_after: int = 3,
        grace: float = 10.0,
        flush_every: float = 0.5,
        slow_after: float = 1.0,
        log_every: float = 10.0,
        max_pending: int = 50_000,
        on_saved: Callable[[], None] = lambda: None,
    ) -> None:
        if interval <= 0 or timeout <= 0 or concurrency < 1 or suspect_concurrency < 1 or offline_after < 1:
            raise ValueError("interval and timeout must be positive, concurrency and offline_after at least 1")
        self.commands = commands
        self.driver = driver
        self.assignment = assignment
        self.interval = interval
        self.timeout = timeout
        self.offline_after = offline_after
        self.grace = grace
        self.flush_every = flush_every
        self.slow_after = slow_after
        self.log_every = log_every
        self.max_pending = max_pending
        self.on_saved = on_saved
        self._healthy = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._suspect = asyncio.Semaphore(suspect_concurrency)
        self._devices: dict[UUID, _Device] = {}
        self._valid_until = 0.0
        self._queue: collections.deque[_Entry] = collections.deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._solo = 0
        self._counts = collections.Counter[str]()
        self._overruns_logged = 0
        self._skip_log_at = 0.0
        self._traced: set[type[Exception]] = set()
        self._overrun_log_at = 0.0

    def stats(self) -> PollerStats:
        now = time.monotonic()
        states = self._devices.values()
        return PollerStats(
            devices=len(self._devices),
            suspect=sum(1 for d in states if d.missed),
            offline=sum(1 for d in states if d.missed >= self.offline_after),
            polls=self._counts["polls"],
            readings=self._counts["readings"],
            stored=self._counts["stored"],
            failures=self._counts["failures"],
            overruns=self._counts["overruns"],
            saves=self._counts["saves"],
            save_failures=self._counts["save_failures"],
            dropped=self._counts["dropped"],
            skipped=self._counts["skipped"],
            pending=len(self._queue),
            store_lag=round(now - self._queue[0].queued, 3) if self._queue else 0.0,
        )

    def apply_config(self, config: ConfigValues) -> None:
        """Take up a changed system configuration at once: interval, poll timeout, offline count, concurrency.

        A shorter interval brings each device's next poll forward to its place on the new
        clock (its loop restarts; a poll in flight then is abandoned); a longer one applies
        from each device's next poll on.
        """
        timeout = config.poll_timeout + 1.0
        if timeout != self.timeout or config.offline_after != self.offline_after:
            log.info("poller.config_changed", timeout=timeout, offline_after=config.offline_after)
        self.timeout, self.offline_after = timeout, config.offline_after
        if config.poll_concurrency != self._concurrency:
            self._concurrency = config.poll_concurrency
            self._healthy = asyncio.Semaphore(config.poll_concurrency)
        if config.polling_interval == self.interval:
            return
        log.info("poller.interval_changed", interval=config.polling_interval, was=self.interval)
        self.interval = config.polling_interval
        for state in self._devices.values():
            due = self._first_due(state.device_id)
            if state.missed == 0 and due < state.due and state.task is not None:
                state.task.cancel()
                state.due = due
                state.task = asyncio.create_task(self._device_loop(state), name=f"poll-{state.device_id}")

    async def follow_config(self, current: Callable[[], Awaitable[ConfigValues]], *, every: float = 2.0) -> None:
        """Read the system configuration every `every` seconds and apply it; a read the database
        fails is one warning per outage and tried again at the next round."""
        failing = False
        while True:
            try:
                self.apply_config(await current())
            except DATABASE_FAULTS as exc:
                report("poller", exc, repeat=failing, action="read config")
                failing = True
            else:
                failing = False
            await asyncio.sleep(every)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll until cancelled or `stop` is set, then store what was read (within `grace`)."""
        self._closing = False
        self._writer = _StoreLoop()
        store = asyncio.create_task(self._store_loop(), name="poller-store")
        assign = asyncio.create_task(self._assignment_loop(), name="poller-assignment")
        stopped = asyncio.create_task((stop or asyncio.Event()).wait())
        log.info("poller.started", interval=self.interval)
        try:
            done, _ = await asyncio.wait({store, assign, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopped}:
                task.result()
        finally:
            stopped.cancel()
            await asyncio.gather(stopped, return_exceptions=True)
            await self._shutdown(store, assign)

    async def _shutdown(self, store: asyncio.Task[None], assign: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        assign.cancel()
        await asyncio.gather(assign, return_exceptions=True)
        await self._drop(list(self._devices))
        self._closing = True
        self._arrived.set()
        leaving = asyncio.create_task(self._leave())
        await asyncio.wait({store, leaving}, timeout=max(0.0, deadline - loop.time()))
        for task in (store, leaving):
            task.cancel()
        await asyncio.gather(store, leaving, return_exceptions=True)
        await self._writer.aclose()
        if self._queue:
            log.error("poller.stopped_unsaved", entries=len(self._queue), grace=self.grace)
        log.info("poller.stopped", **msgspec.structs.asdict(self.stats()))

    async def _leave(self) -> None:
        try:
            await self.assignment.leave()
        except DATABASE_FAULTS as exc:  # the leases expire by themselves
            report("poller", exc, action="leave")
        except Exception:
            log.exception("poller.leave_failed")

    # Assignment ---------------------------------------------------------------------

    async def _assignment_loop(self) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            every = self.assignment.refresh_every
            try:
                async with asyncio.timeout(max(every, 5.0)):
                    assigned = await self.assignment.refresh(self._drop)
            except DATABASE_FAULTS + (TimeoutError,) as exc:
                report("poller", exc, repeat=failing, action="assignment")
                failing = True
                if loop.time() >= self._valid_until and self._devices:
                    log.warning("poller.assignment_expired", devices=len(self._devices))
                    await self._drop(list(self._devices))
                wait = min(every, 1.0)
            else:
                if failing:
                    log.info("poller.assignment_recovered")
                failing = False
                self._valid_until = assigned.valid_until
                await self._apply(assigned.devices)
                wait = every
            if self._devices:
                wait = max(0.05, min(wait, self._valid_until - loop.time()))
            await asyncio.sleep(wait)

    async def _apply(self, assigned: dict[UUID, str]) -> None:
        gone = [d for d in self._devices if d not in assigned]
        if gone:
            await self._drop(gone)
        for device_id, address in assigned.items():
            state = self._devices.get(device_id)
            if state is None:
                state = self._devices[device_id] = _Device(device_id, address, self._first_due(device_id))
                state.task = asyncio.create_task(self._device_loop(state), name=f"poll-{device_id}")
            else:
                state.address = address

    async def _drop(self, device_ids: Collection[UUID]) -> None:
        """Stop polling these devices; polls in flight are cancelled and waited for."""
        tasks = []
        for device_id in device_ids:
            state = self._devices.pop(device_id, None)
            if state is not None and state.task is not None:
                state.task.cancel()
                tasks.append(state.task)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _first_due(self, device_id: UUID) -> float:
        """The next moment on the device's own clock: a phase from its id, on wall-clock time.

        The phase is the same in every process, so a device handed to another poller
        keeps its rhythm.
        """
        phase = (device_id.int % 1_000_003) / 1_000_003 * self.interval
        wall = time.time()
        due = phase + math.ceil((wall - phase) / self.interval) * self.interval
        return asyncio.get_running_loop().time() + (due - wall)

    # Polling ------------------------------------------------------------------------

    async def _device_loop(self, state: _Device) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = state.due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(self._queue) >= self.max_pending:
                self._skip()
            elif loop.time() < self._valid_until:
                await self._poll(state)
            step = self._step(state)
            state.due += step
            now = loop.time()
            if state.due <= now:
                self._overrun(state, late=now - state.due)
                state.due = now

    def _step(self, state: _Device) -> float:
        return retry_delay(state.missed, interval=self.interval, offline_after=self.offline_after)

    async def _poll(self, state: _Device) -> None:
        suspect = state.missed > 0
        limit = self._suspect if suspect else self._healthy
        await limit.acquire()
        slot = _Slot(limit)
        demote = None if suspect else asyncio.get_running_loop().call_later(self.slow_after, slot.give_back)
        try:
            address: DeviceAddress = parse_address(state.address)
            async with asyncio.timeout(self.timeout):
                snapshot = await self.driver.poll(address)
        except Exception as exc:
            self._failed(state, exc)
            return
        finally:
            if demote is not None:
                demote.cancel()
            slot.give_back()
        self._counts["polls"] += 1
        self._counts["readings"] += 1
        if state.missed:
            log.info("poll.recovered", device_id=str(state.device_id), address=state.address, missed=state.missed)
            state.missed = 0
            state.failing_since = None
        result = PollResult(device_id=state.device_id, measured_at=datetime.now(timezone.utc), snapshot=snapshot)
        self._enqueue(result)

    def _failed(self, state: _Device, exc: Exception) -> None:
        self._counts["polls"] += 1
        self._counts["failures"] += 1
        state.missed += 1
        kind = type(exc).__name__
        fields: dict[str, Any] = {"device_id": str(state.device_id), "address": state.address, "missed": state.missed}
        repeat = state.failing_since == kind
        state.failing_since = kind
        if isinstance(exc, DEVICE_FAULTS):
            report("poller", exc, repeat=repeat, **fields)
        elif repeat:
            log.debug("poll.error", error=repr(exc), **fields)
        else:
            log.error("poll.error", error=repr(exc), exc_info=self._first_of_kind(exc), **fields)
        if state.missed == self.offline_after:
            log.info("poll.offline", **fields)
            self._enqueue(MissedPolls(device_id=state.device_id, count=state.missed))

    def _overrun(self, state: _Device, *, late: float) -> None:
        self._counts["overruns"] += 1
        now = time.monotonic()
        if now >= self._overrun_log_at:
            total = self._counts["overruns"]
            log.warning(
                "poll.overrun",
                device_id=str(state.device_id),
                address=state.address,
                late=round(late, 3),
                overruns_since_last_log=total - self._overruns_logged,
            )
            self._overruns_logged = total
            self._overrun_log_at = now + self.log_every

    def _skip(self) -> None:
        self._counts["skipped"] += 1
        now = time.monotonic()
        if now >= self._skip_log_at:
            self._skip_log_at = now + self.log_every
            log.error("poller.backlog_full", pending=len(self._queue), skipped=self._counts["skipped"])

    # Storing ------------------------------------------------------------------------

    def _enqueue(self, item: PollResult | MissedPolls) -> None:
        self._queue.append(_Entry(item=item, queued=time.monotonic()))
        if len(self._queue) == 1 or len(self._queue) >= POLLS_PER_SAVE:
            self._arrived.set()

    def _chunk(self) -> list[_Entry]:
        """The oldest entries, each device at most once, so the order of a device's entries holds."""
        limit = 1 if self._solo else POLLS_PER_SAVE
        chunk: list[_Entry] = []
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

    async def _store_loop(self) -> None:
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

    async def _save(self, chunk: Sequence[_Entry]) -> int:
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

    def _save_failed(self, chunk: list[_Entry], exc: Exception, backoff: float) -> float:
        """Decide what a failed save means; returns the delay before the next try (0: at once)."""
        self._counts["save_failures"] += 1
        if _transient(exc):
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

    def _first_of_kind(self, exc: Exception) -> Exception | None:
        """The exception for a traceback the first time its type is seen, else None (one per type)."""
        if type(exc) in self._traced:
            return None
        self._traced.add(type(exc))
        return exc
