"""Running backup schedules: cron expressions read by `croniter`, and the loop that fires due schedules.

Every API process runs the loop; `ScheduleHandlers.claim_due` records a due schedule as fired
before anything runs, and only the process whose record was stored runs it (the others meet a
concurrency conflict), so a due schedule makes one archive however many processes are up. After
its backup, the archives that schedule made more than `retention_days` ago are pruned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog
from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

from domain.backup_schedule import CronRules, Schedule
from domain.backup_schedule_handlers import ScheduleHandlers
from domain.ports import Clock

log = structlog.get_logger(__name__)

SYSTEM_ACTOR = "system:backup-schedule"


class Croniter(CronRules):
    """Five-field cron expressions (minute hour day month weekday), in UTC."""

    def check(self, expression: str) -> None:
        if len(expression.split()) != 5:
            raise ValueError("five fields are needed: minute hour day-of-month month day-of-week")
        try:
            croniter(expression)
        except (CroniterBadCronError, CroniterNotAlphaError, CroniterBadDateError, ValueError, KeyError) as exc:
            raise ValueError(str(exc) or "not a cron expression") from None

    def latest(self, expression: str, after: datetime, now: datetime) -> datetime | None:
        if now <= after:
            return None
        previous: datetime = croniter(expression, now + timedelta(seconds=1)).get_prev(datetime)
        return previous if after < previous <= now else None


Backup = Callable[[Schedule], Awaitable[None]]
"""Make one archive for a schedule and prune that schedule's archives older than its retention."""


class ScheduleRunner:
    """Every `interval` seconds: claim the schedules due now and run each claimed one's backup."""

    def __init__(self, handlers: ScheduleHandlers, backup: Backup, clock: Clock, *, interval: float = 30.0) -> None:
        self.handlers = handlers
        self.backup = backup
        self.clock = clock
        self.interval = interval

    async def run_once(self) -> int:
        """Claim and run what is due now; the number of backups this process ran."""
        ran = 0
        for schedule, due_at in await self.handlers.claim_due(actor=SYSTEM_ACTOR):
            log.info("backup_schedule.fired", schedule=str(schedule.id), name=schedule.name, due_at=due_at.isoformat())
            try:
                await self.backup(schedule)
                ran += 1
            except Exception as exc:
                log.warning("backup_schedule.backup_failed", schedule=str(schedule.id), error=repr(exc))
        return ran

    async def run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)
