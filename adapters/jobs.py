"""Background work for the export use cases: tasks by key, the notes a job logs, and a loop run at an interval."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from uuid import UUID

import structlog

from adapters.faults import DATABASE_FAULTS, describe, report

log = structlog.get_logger(__name__)


class BackgroundTasks:
    """Work on this event loop, one task per key, at most `concurrency` at a time (None: no limit)."""

    def __init__(self, name: str, *, concurrency: int | None = None) -> None:
        self.name = name
        self._slots = asyncio.Semaphore(concurrency) if concurrency is not None else None
        self._tasks: dict[UUID, asyncio.Task[None]] = {}

    def spawn(self, key: UUID, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if key in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._slotted(work), name=f"{self.name}-{key}")
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def _slotted(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._slots is None:
            await work()
            return
        async with self._slots:
            await work()

    def __contains__(self, key: object) -> bool:
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, key: UUID) -> None:
        task = self._tasks.get(key)
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LoggedNotes:
    """A job's notes as structured log lines of `part`: a database outage is one warning line, never a traceback."""

    def __init__(self, part: str) -> None:
        self.part = part

    def is_outage(self, exc: BaseException) -> bool:
        return isinstance(exc, DATABASE_FAULTS)

    def fault(self, exc: BaseException, event: str, **context: Any) -> None:
        if self.is_outage(exc):
            report(self.part, exc, **context)
        else:
            log.error(event, exc_info=exc, **context)

    def describe(self, exc: BaseException) -> str:
        return describe(exc)

    def info(self, event: str, **context: Any) -> None:
        log.info(event, **context)

    def warning(self, event: str, **context: Any) -> None:
        log.warning(event, **context)


async def every(part: str, interval: float, work: Callable[[], Awaitable[object]]) -> None:
    """Run `work` every `interval` seconds until cancelled. A database fault is one warning line and the work
    runs again at the next interval; anything else is a bug and reaches the supervisor."""
    while True:
        try:
            await work()
        except DATABASE_FAULTS as exc:
            report(part, exc)
        await asyncio.sleep(interval)
