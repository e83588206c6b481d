"""Backup schedules: one aggregate holding every schedule, and the record of each time one fired.

A schedule has a name, a cron expression, an enabled flag, `retention_days` and a compression.
Firing is an event of the same aggregate (`Fired`, with the moment it was due), so when several
processes find a schedule due at once, the first to store that event wins and the others meet an
optimistic-concurrency conflict: a due schedule runs exactly once. Pure: whether an expression is
valid, and when it is next due, is the `CronRules` port's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Protocol
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
from eventsourcing.domain import Aggregate, event

from domain.errors import BackupScheduleNotFound, InvalidSchedule

__all__ = [
    "MAX_SCHEDULES", "SCHEDULES_ID", "BackupScheduleNotFound", "BackupSchedules", "CronRules", "InvalidSchedule",
    "Schedule", "ScheduleSpec",
]

SCHEDULES_ID: UUID = uuid5(NAMESPACE_URL, "https://wattledger.invalid/backup-schedules")
MAX_SCHEDULES = 50


class CronRules(Protocol):
    def check(self, expression: str) -> None:
        """Raises ValueError, saying why, for an expression that is not a valid cron expression."""
        ...

    def latest(self, expression: str, after: datetime, now: datetime) -> datetime | None:
        """The newest moment the expression names in (after, now], or None if there is none."""
        ...


Compression = Literal["fast", "normal", "high"]


class ScheduleSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A schedule as it is asked for (`POST` and `PUT` bodies)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    cron: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    enabled: bool = True
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30
    compression: Compression = "normal"


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as it stands: its spec, since when it exists, and when it last fired."""

    id: UUID
    name: str
    cron: str
    enabled: bool
    retention_days: int
    compression: str
    created_at: datetime
    last_fired: datetime | None = None


class BackupSchedules(Aggregate):
    """Every backup schedule of the installation (a singleton: `SCHEDULES_ID`)."""

    class Opened(Aggregate.Created):
        actor: str

    class Set(Aggregate.Event):
        schedule_id: UUID
        name: str
        cron: str
        enabled: bool
        retention_days: int
        compression: str
        at: datetime
        actor: str

    class Removed(Aggregate.Event):
        schedule_id: UUID
        actor: str

    class Fired(Aggregate.Event):
        schedule_id: UUID
        due_at: datetime
        actor: str

    def __init__(self, *, actor: str) -> None:
        self.schedules: dict[UUID, Schedule] = {}

    @classmethod
    def open(cls, *, actor: str) -> BackupSchedules:
        return cls._create(cls.Opened, id=SCHEDULES_ID, actor=actor)

    def get(self, schedule_id: UUID) -> Schedule:
        found = self.schedules.get(schedule_id)
        if found is None:
            raise BackupScheduleNotFound(f"no backup schedule {schedule_id}")
        return found

    def put(self, schedule_id: UUID, spec: ScheduleSpec, *, at: datetime, actor: str) -> None:
        """Add the schedule (due from `at` on), or change it if it exists. Raises InvalidSchedule past
        MAX_SCHEDULES."""
        if schedule_id not in self.schedules and len(self.schedules) >= MAX_SCHEDULES:
            raise InvalidSchedule(f"at most {MAX_SCHEDULES} backup schedules")
        self._set(schedule_id=schedule_id, name=spec.name, cron=spec.cron, enabled=spec.enabled,
                  retention_days=spec.retention_days, compression=spec.compression, at=at, actor=actor)  # fmt: skip

    def remove(self, schedule_id: UUID, *, actor: str) -> None:
        self.get(schedule_id)
        self._removed(schedule_id=schedule_id, actor=actor)

    def due(self, cron: CronRules, now: datetime) -> list[tuple[Schedule, datetime]]:
        """The enabled schedules due by `now` and the newest moment each was due (missed ones fire once)."""
        found = []
        for schedule in self.schedules.values():
            if not schedule.enabled:
                continue
            moment = cron.latest(schedule.cron, schedule.last_fired or schedule.created_at, now)
            if moment is not None:
                found.append((schedule, moment))
        return found

    def fire(self, schedule_id: UUID, due_at: datetime, *, actor: str) -> None:
        schedule = self.get(schedule_id)
        if schedule.last_fired is not None and due_at <= schedule.last_fired:
            raise InvalidSchedule("the schedule already fired for that moment")
        self._fired(schedule_id=schedule_id, due_at=due_at, actor=actor)

    @event(Set)
    def _set(self, schedule_id: UUID, name: str, cron: str, enabled: bool, retention_days: int, compression: str,
             at: datetime, actor: str) -> None:  # fmt: skip
        before = self.schedules.get(schedule_id)
        self.schedules[schedule_id] = Schedule(
            id=schedule_id, name=name, cron=cron, enabled=enabled, retention_days=retention_days,
            compression=compression, created_at=before.created_at if before else at,
            last_fired=before.last_fired if before else None,
        )  # fmt: skip

    @event(Removed)
    def _removed(self, schedule_id: UUID, actor: str) -> None:
        self.schedules.pop(schedule_id, None)

    @event(Fired)
    def _fired(self, schedule_id: UUID, due_at: datetime, actor: str) -> None:
        schedule = self.schedules[schedule_id]
        self.schedules[schedule_id] = msgspec.structs.replace(schedule, last_fired=due_at)
