"""The poller: reads each assigned device on its own clock and hands the readings to its store queue.

Every device has its own schedule (`adapters.poll_schedule`), spread over the interval by its
id, so there is no cycle for a slow device to hold up. A device whose last poll failed is a
suspect and polls within a concurrency bound of its own; a poll that is still running after
`slow_after` seconds gives its healthy slot back, so devices that accept connections and never
answer cannot fill the healthy slots either.

Readings and offline reports are saved by the poller's store queue (`adapters.poll_store`).
While `max_pending` entries wait there, no new readings are taken (the devices' counters keep
the energy meanwhile).

Which devices a poller polls comes from its `Assignment` (`adapters.poll_assignment`): every
present device (`AllDevices`), or the devices it holds leases on (`adapters.leases.Leases`)
when several pollers share them.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from uuid import UUID

import msgspec
import structlog

from adapters.faults import DATABASE_FAULTS, DEVICE_FAULTS, report
from adapters.poll_assignment import AllDevices, Assigned, Assignment, DeviceList
from adapters.poll_schedule import OFFLINE_RETRY_CAP, DeviceState, Slot, first_due, retry_delay
from adapters.poll_store import POLLER_ACTOR, SAVE_GIVE_UP, PollStore
from domain.address import parse_address
from domain.commands import MissedPolls, PollResult
from domain.config import ConfigValues
from domain.device import is_push_address
from domain.handlers import CommandHandlers
from domain.ports import Clock, DeviceDriver

# The assignment and schedule names are named here too, for callers that take them from the poller.
__all__ = [
    "OFFLINE_RETRY_CAP",
    "POLLER_ACTOR",
    "SAVE_GIVE_UP",
    "AllDevices",
    "Assigned",
    "Assignment",
    "DeviceList",
    "Poller",
    "PollerStats",
    "retry_delay",
]

log = structlog.get_logger(__name__)


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
    heap_freezes: int = 0
    """Rounds of `gc.freeze()` (see `Poller.freeze_heap_every`)."""
    taken: int = 0
    """Devices its assignment gave it (each time one is given anew)."""
    given_up: int = 0
    """Devices it stopped polling while running (handed to another poller, removed, or its assignment expired)."""
    assignment_failures: int = 0
    """Assignment refreshes that failed or timed out."""


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
        observe: Callable[[float, BaseException | None], None] = lambda seconds, failure: None,
        clock: Clock | None = None,
        freeze_heap_every: float | None = None,
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
        self.slow_after = slow_after
        self.log_every = log_every
        self.max_pending = max_pending
        self.observe = observe
        """Told each poll's duration in seconds and, for a failed one, what it raised (the metrics)."""
        self.freeze_heap_every = freeze_heap_every
        """Seconds between `gc.freeze()` rounds (None: never); see `_freeze_heap`."""
        self.clock = clock or commands.clock
        """Stamps each reading with the moment it was taken (the handlers' clock unless given)."""
        self._healthy = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._suspect = asyncio.Semaphore(suspect_concurrency)
        self._devices: dict[UUID, DeviceState] = {}
        self._valid_until = 0.0
        self._counts = collections.Counter[str]()
        self._store = PollStore(commands, flush_every=flush_every, on_saved=on_saved, counts=self._counts,
                                first_of_kind=self._first_of_kind)  # fmt: skip
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
            pending=len(self._store),
            store_lag=self._store.lag(now),
            heap_freezes=self._counts["heap_freezes"],
            taken=self._counts["taken"],
            given_up=self._counts["given_up"],
            assignment_failures=self._counts["assignment_failures"],
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
            due = first_due(state.device_id, self.interval)
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
        self._store.open()
        store = asyncio.create_task(self._store.run(), name="poller-store")
        assign = asyncio.create_task(self._assignment_loop(), name="poller-assignment")
        stopped = asyncio.create_task((stop or asyncio.Event()).wait())
        heap = asyncio.create_task(self._freeze_heap(), name="poller-heap")
        log.info("poller.started", interval=self.interval)
        try:
            done, _ = await asyncio.wait({store, assign, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopped}:
                task.result()
        finally:
            stopped.cancel()
            heap.cancel()
            await asyncio.gather(stopped, heap, return_exceptions=True)
            if self.freeze_heap_every is not None:
                gc.unfreeze()
            await self._shutdown(store, assign)

    async def _freeze_heap(self) -> None:
        """Keep the long-lived heap out of the collector's full passes.

        Every connected device holds a python-kasa object graph (about 130 objects), so
        thousands of devices make a heap that each full collection walks again; those ran
        every second or two at 5,000 devices, about a fifth of the poller's CPU. An interval
        after every held device's first poll began (their connections are made by then), and
        then every `freeze_heap_every` seconds, the heap is collected once and frozen
        (`gc.freeze`); unfreezing first each time lets what died among the frozen objects (a
        reconnected device's old graph) be collected then.
        """
        every = self.freeze_heap_every
        if every is None:
            return
        while not self._devices or not all(state.polled for state in self._devices.values()):
            await asyncio.sleep(min(1.0, every))
        await asyncio.sleep(min(self.interval, every))  # the first polls' connections are made by then
        while True:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._counts["heap_freezes"] += 1
            await asyncio.sleep(every)

    async def _shutdown(self, store: asyncio.Task[None], assign: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        assign.cancel()
        await asyncio.gather(assign, return_exceptions=True)
        await self._drop(list(self._devices), stopping=True)
        self._store.close()
        leaving = asyncio.create_task(self._leave())
        await asyncio.wait({store, leaving}, timeout=max(0.0, deadline - loop.time()))
        for task in (store, leaving):
            task.cancel()
        await asyncio.gather(store, leaving, return_exceptions=True)
        await self._store.aclose()
        if self._store:
            log.error("poller.stopped_unsaved", entries=len(self._store), grace=self.grace)
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
                self._counts["assignment_failures"] += 1
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
            if is_push_address(address):
                continue
            state = self._devices.get(device_id)
            if state is None:
                state = self._devices[device_id] = DeviceState(device_id, address, first_due(device_id, self.interval))
                self._counts["taken"] += 1
                state.task = asyncio.create_task(self._device_loop(state), name=f"poll-{device_id}")
            else:
                state.address = address

    async def _drop(self, device_ids: Collection[UUID], *, stopping: bool = False) -> None:
        """Stop polling these devices; polls in flight are cancelled and waited for."""
        tasks = []
        for device_id in device_ids:
            state = self._devices.pop(device_id, None)
            if state is None:
                continue
            if not stopping:
                self._counts["given_up"] += 1
            if state.task is not None:
                state.task.cancel()
                tasks.append(state.task)
        await asyncio.gather(*tasks, return_exceptions=True)

    # Polling ------------------------------------------------------------------------

    async def _device_loop(self, state: DeviceState) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = state.due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(self._store) >= self.max_pending:
                self._skip()
            elif loop.time() < self._valid_until:
                await self._poll(state)
            step = self._step(state)
            state.due += step
            now = loop.time()
            if state.due <= now:
                self._overrun(state, late=now - state.due)
                state.due = now

    def _step(self, state: DeviceState) -> float:
        return retry_delay(state.missed, interval=self.interval, offline_after=self.offline_after)

    async def _poll(self, state: DeviceState) -> None:
        state.polled = True
        suspect = state.missed > 0
        limit = self._suspect if suspect else self._healthy
        await limit.acquire()
        slot = Slot(limit)
        demote = None if suspect else asyncio.get_running_loop().call_later(self.slow_after, slot.give_back)
        began = time.monotonic()
        try:
            address = state.parsed
            if address is None:
                address = state.parsed = parse_address(state.address)
            async with asyncio.timeout(self.timeout):
                snapshot = await self.driver.poll(address)
        except Exception as exc:
            self.observe(time.monotonic() - began, exc)
            self._failed(state, exc)
            return
        finally:
            if demote is not None:
                demote.cancel()
            slot.give_back()
        self.observe(time.monotonic() - began, None)
        self._counts["polls"] += 1
        self._counts["readings"] += 1
        if state.missed:
            log.info("poll.recovered", device_id=str(state.device_id), address=state.address, missed=state.missed)
            state.missed = 0
            state.failing_since = None
        result = PollResult(device_id=state.device_id, measured_at=self.clock.now(), snapshot=snapshot)
        self._store.enqueue(result)

    def _failed(self, state: DeviceState, exc: Exception) -> None:
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
            self._store.enqueue(MissedPolls(device_id=state.device_id, count=state.missed))

    def _overrun(self, state: DeviceState, *, late: float) -> None:
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
            log.error("poller.backlog_full", pending=len(self._store), skipped=self._counts["skipped"])

    def _first_of_kind(self, exc: Exception) -> Exception | None:
        """The exception for a traceback the first time its type is seen, else None (one per type)."""
        if type(exc) in self._traced:
            return None
        self._traced.add(type(exc))
        return exc
