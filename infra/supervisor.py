"""Supervision of a process's parts: a part that fails is restarted alone, with backoff.

A part is a coroutine that runs until the process stops (the API, the poller, the relay, the
projectors, the executor, ...). When one raises something unexpected, or ends by itself while the
process is running, it is logged once with its cause and started again after a delay that doubles
from `backoff` to `backoff_max`; the other parts run on. A part that fails more than `intensity`
times within `period` seconds ends the supervisor with `PartFailedTooOften`, so that an outer
supervisor (systemd, a container runtime) restarts the whole process.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from adapters.eventstore import SystemClock
from adapters.faults import describe
from api.deps import PartStatus
from domain.ports import Clock
from infra.errors import InfraError

log = structlog.get_logger(__name__)

Part = Callable[[], Awaitable[None]]
STOP_PATIENCE_S = 10.0
"""How long a part that watches `stop` may take to finish what is in flight."""


class PartFailedTooOften(InfraError, RuntimeError):
    """A part kept failing past the restart intensity; the process should end non-zero."""

    def __init__(self, part: str, failures: int, period: float, cause: str) -> None:
        super().__init__(f"part {part!r} failed {failures} times within {period:g} s; last: {cause}")
        self.part = part


class PartEnded(InfraError, RuntimeError):
    """A part ended for a reason its message says in full (a child process exited): logged
    without a traceback, which would only show the supervisor's own frames."""


@dataclass
class _Record:
    name: str
    start: Part
    watches_stop: bool
    restarts: int = 0
    last_error: str | None = None
    failed_at: datetime | None = None
    failed_monotonic: float | None = None
    failures: deque[float] = field(default_factory=deque)
    state: str = "starting"


class Supervisor:
    """Runs parts side by side until `stop` is set; see the module docstring."""

    def __init__(
        self,
        *,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        intensity: int = 5,
        period: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Clock | None = None,
    ) -> None:
        self.backoff, self.backoff_max = backoff, backoff_max
        self.intensity, self.period = intensity, period
        self._monotonic = monotonic
        self._clock = clock or SystemClock()
        self._parts: dict[str, _Record] = {}

    def add(self, name: str, start: Part, *, watches_stop: bool = False) -> None:
        """Supervise the part `name`; `start` makes a fresh run of it each time it is called.

        A part that `watches_stop` ends by itself once the process stops (it finishes what is in
        flight) and is given up to 10 s for it; any other part is cancelled at once."""
        if name in self._parts:
            raise ValueError(f"a part named {name!r} is supervised already")
        self._parts[name] = _Record(name, start, watches_stop)

    def status(self) -> list[PartStatus]:
        """Each part's state: `running`, `degraded` (failed within the last period, or waiting to
        restart), `stopped`; with its restart count and last error."""
        now = self._monotonic()
        answer = []
        for record in self._parts.values():
            state = record.state
            recent = record.failed_monotonic is not None and now - record.failed_monotonic < self.period
            if state == "running" and recent:
                state = "degraded"
            answer.append(PartStatus(
                name=record.name, state=state, restarts=record.restarts, last_error=record.last_error,
                last_failure_at=record.failed_at,
            ))  # fmt: skip
        return answer

    async def run(self, stop: asyncio.Event) -> None:
        """Run every part until `stop` is set; raises PartFailedTooOften when one fails too often.

        Every part is cancelled and awaited before this returns or raises."""
        tasks = [asyncio.create_task(self._keep(record, stop), name=f"supervise-{record.name}")
                 for record in self._parts.values()]  # fmt: skip
        try:
            await first_failure(tasks)
        finally:
            stop.set()
            # Each keeper stops its own part (a part that watches `stop` gets its patience first).
            await asyncio.wait(tasks, timeout=STOP_PATIENCE_S + 5.0)
            await cancel_all(tasks)

    async def _keep(self, record: _Record, stop: asyncio.Event) -> None:
        delay = self.backoff
        try:
            while not stop.is_set():
                record.state = "running"
                began = self._monotonic()
                task = asyncio.create_task(_call(record.start), name=record.name)
                stopper = asyncio.create_task(stop.wait())
                try:
                    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
                    if not task.done() and record.watches_stop:
                        await asyncio.wait([task], timeout=STOP_PATIENCE_S)
                finally:
                    stopper.cancel()
                    if not task.done():
                        await cancel_all([task])
                if stop.is_set():
                    late = None if task.cancelled() else task.exception()
                    if late is not None:
                        log.warning("part.failed_while_stopping", part=record.name, error=describe(late))
                    break
                error = RuntimeError("cancelled from outside") if task.cancelled() else task.exception()
                if error is None:
                    error = RuntimeError("ended by itself while the process runs")
                now = self._monotonic()
                if now - began > 2 * self.backoff_max:
                    delay = self.backoff
                self._failed(record, error, now, delay)
                record.state = "degraded"
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, self.backoff_max)
                record.restarts += 1
        finally:
            record.state = "stopped"

    def _failed(self, record: _Record, error: BaseException, now: float, delay: float) -> None:
        cause = describe(error)
        record.last_error, record.failed_at, record.failed_monotonic = cause, self._clock.now(), now
        record.failures.append(now)
        while record.failures and now - record.failures[0] > self.period:
            record.failures.popleft()
        if len(record.failures) > self.intensity:
            log.error("part.gave_up", part=record.name, failures=len(record.failures), period_s=self.period,
                      error=cause)  # fmt: skip
            raise PartFailedTooOften(record.name, len(record.failures), self.period, cause) from error
        if isinstance(error, PartEnded):
            log.error("part.failed", part=record.name, restart_in_s=delay, restarts=record.restarts, error=cause)
            return
        log.error("part.failed", part=record.name, restart_in_s=delay, restarts=record.restarts,
                  exc_info=error)  # fmt: skip


async def _call(start: Part) -> None:
    await start()


async def together(*runs: Coroutine[Any, Any, None]) -> None:
    """Run coroutines side by side as one part: the first to fail ends the others and raises."""
    tasks = [asyncio.create_task(run) for run in runs]
    try:
        await first_failure(tasks)
    finally:
        await cancel_all(tasks)


async def first_failure(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Wait until every task ended or one failed; raise the failure."""
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def cancel_all(tasks: Sequence[asyncio.Task[Any]], *, every: float = 0.5, attempts: int = 20) -> None:
    """Cancel `tasks` and wait for them to end, cancelling again every `every` seconds: a library
    that swallows one cancellation (seen with nats-py) must not hold a process's stop forever.
    Tasks still running after `attempts` rounds are logged by name and left behind."""
    for _ in range(attempts):
        pending = [task for task in tasks if not task.done()]
        if not pending:
            break
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=every)
    stuck = [task.get_name() for task in tasks if not task.done()]
    if stuck:
        log.warning("process.tasks_not_stopped", tasks=stuck)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a failure was already reported by whoever awaited it
