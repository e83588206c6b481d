"""Backup schedules under a settable clock: a due schedule runs once however many processes look, and only when due."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from adapters.backup_schedules import Croniter, ScheduleRunner
from domain.backup_schedule import BackupSchedules, BackupScheduleNotFound, InvalidSchedule, Schedule, ScheduleSpec
from domain.backup_schedule_handlers import ScheduleHandlers
from tests.kit import ManualClock, MemoryStore

START = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
NIGHTLY = ScheduleSpec(name="Daily Backup", cron="0 2 * * *", retention_days=30)


class Process:
    """One API process's schedule runner, recording the backups it ran."""

    def __init__(self, store: MemoryStore, clock: ManualClock) -> None:
        self.ran: list[str] = []
        self.handlers = ScheduleHandlers(store, Croniter(), clock)

        async def backup(schedule: Schedule) -> None:
            self.ran.append(schedule.name)

        self.runner = ScheduleRunner(self.handlers, backup, clock)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


async def test_a_due_schedule_runs_once_while_two_processes_look(store: MemoryStore, clock: ManualClock) -> None:
    first, second = Process(store, clock), Process(store, clock)
    await first.handlers.add(NIGHTLY, actor="user:admin")
    clock.set(START + timedelta(hours=13))  # 01:00 the next day: not yet due
    assert await first.runner.run_once() == 0 and await second.runner.run_once() == 0
    clock.set(START + timedelta(hours=14, minutes=1))  # 02:01
    store.collide(2)
    await asyncio.gather(first.runner.run_once(), second.runner.run_once())
    assert first.ran + second.ran == ["Daily Backup"]
    assert len(store.of_type(BackupSchedules.Fired)) == 1
    assert await first.runner.run_once() == 0 and await second.runner.run_once() == 0
    clock.advance(hours=24)
    assert await second.runner.run_once() + await first.runner.run_once() == 1
    assert len(first.ran + second.ran) == 2


async def test_missed_occurrences_fire_once_and_a_disabled_schedule_never(store: MemoryStore, clock: ManualClock) -> None:
    process = Process(store, clock)
    await process.handlers.add(NIGHTLY, actor="user:admin")
    paused = await process.handlers.add(ScheduleSpec(name="Paused", cron="*/5 * * * *", enabled=False),
                                        actor="user:admin")
    clock.advance(days=5)
    assert await process.runner.run_once() == 1 and process.ran == ["Daily Backup"]
    fired = store.of_type(BackupSchedules.Fired)
    assert [f.due_at for f in fired] == [datetime(2026, 3, 6, 2, 0, tzinfo=timezone.utc)]
    assert paused.id not in {f.schedule_id for f in fired}


async def test_an_invalid_cron_expression_changes_nothing(store: MemoryStore, clock: ManualClock) -> None:
    handlers = Process(store, clock).handlers
    for cron in ("61 * * * *", "every night", "* * * *"):
        with pytest.raises(InvalidSchedule, match="cron"):
            await handlers.add(ScheduleSpec(name="Bad", cron=cron), actor="user:admin")
    assert store.position == 0


async def test_change_and_remove(store: MemoryStore, clock: ManualClock) -> None:
    handlers = Process(store, clock).handlers
    added = await handlers.add(NIGHTLY, actor="user:admin")
    changed = await handlers.change(added.id, ScheduleSpec(name="Weekly", cron="0 3 * * 0", retention_days=90),
                                    actor="user:admin")
    assert (changed.name, changed.cron, changed.retention_days, changed.created_at) == ("Weekly", "0 3 * * 0", 90,
                                                                                       added.created_at)
    await handlers.remove(added.id, actor="user:admin")
    assert await handlers.all() == []
    with pytest.raises(BackupScheduleNotFound):
        await handlers.remove(added.id, actor="user:admin")
