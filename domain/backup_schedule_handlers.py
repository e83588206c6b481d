"""The use cases of backup schedules: list, add, change and remove them, and claim a due one to run."""

from __future__ import annotations

import uuid
from datetime import datetime
from uuid import UUID

from domain.backup_schedule import SCHEDULES_ID, BackupSchedules, CronRules, InvalidSchedule, Schedule, ScheduleSpec
from domain.errors import ConcurrencyConflict
from domain.ports import Clock, EventStore


class ScheduleHandlers:
    """Backup schedules over the store port; `claim` is how exactly one process runs a due schedule."""

    def __init__(self, store: EventStore, cron: CronRules, clock: Clock) -> None:
        self.store = store
        self.cron = cron
        self.clock = clock

    async def _load(self, actor: str) -> BackupSchedules:
        found = await self.store.aggregate(SCHEDULES_ID, BackupSchedules)
        return found if found is not None else BackupSchedules.open(actor=actor)

    def _check(self, spec: ScheduleSpec) -> None:
        try:
            self.cron.check(spec.cron)
        except ValueError as exc:
            raise InvalidSchedule(f"cron: {exc}") from None

    async def all(self) -> list[Schedule]:
        found = await self.store.aggregate(SCHEDULES_ID, BackupSchedules)
        return sorted(found.schedules.values(), key=lambda s: (s.created_at, str(s.id))) if found else []

    async def add(self, spec: ScheduleSpec, *, actor: str) -> Schedule:
        """Raises InvalidSchedule for a cron expression that does not parse, or past the limit."""
        self._check(spec)
        schedules = await self._load(actor)
        schedule_id = uuid.uuid4()
        schedules.put(schedule_id, spec, at=self.clock.now(), actor=actor)
        await self.store.save(schedules)
        return schedules.get(schedule_id)

    async def change(self, schedule_id: UUID, spec: ScheduleSpec, *, actor: str) -> Schedule:
        """Raises BackupScheduleNotFound, InvalidSchedule."""
        self._check(spec)
        schedules = await self._load(actor)
        schedules.get(schedule_id)
        schedules.put(schedule_id, spec, at=self.clock.now(), actor=actor)
        await self.store.save(schedules)
        return schedules.get(schedule_id)

    async def remove(self, schedule_id: UUID, *, actor: str) -> None:
        """Raises BackupScheduleNotFound."""
        schedules = await self._load(actor)
        schedules.remove(schedule_id, actor=actor)
        await self.store.save(schedules)

    async def claim_due(self, *, actor: str) -> list[tuple[Schedule, datetime]]:
        """Record each schedule due now as fired and return those; if another process recorded one first
        (a concurrency conflict), this process takes none of them and they are the other's to run."""
        schedules = await self.store.aggregate(SCHEDULES_ID, BackupSchedules)
        if schedules is None:
            return []
        due = schedules.due(self.cron, self.clock.now())
        if not due:
            return []
        for schedule, moment in due:
            schedules.fire(schedule.id, moment, actor=actor)
        try:
            await self.store.save(schedules)
        except ConcurrencyConflict:
            return []
        return due
