"""The backups' wiring: the read models' part of a restore, the settings an archive keeps, the jobs and
the schedules' runner."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import structlog

from adapters.backup_jobs import BackupJobs, RestoreTools, fingerprint
from adapters.backup_schedules import SYSTEM_ACTOR, Croniter, ScheduleRunner
from adapters.eventstore import StoreUnitOfWork, WattLedger
from adapters.identity import derive_box_key
from domain.backup_schedule import Schedule
from domain.backup_schedule_handlers import ScheduleHandlers
from domain.ports import Clock
from infra.read_models import all_projectors
from infra.settings import Settings, mask_secrets
from projections.chain import ChainProjector, chain_link, link, verify
from projections.checkpoints import CheckpointRefused, export_newest, import_exported, newest
from projections.engine import ProjectionEngine
from projections.rebuild import rebuild_from_checkpoints

log = structlog.get_logger(__name__)

PASSPHRASE_ENV = "WATTLEDGER_BACKUP_PASSPHRASE"


def backups_dir(settings: Settings) -> Path:
    """Where archives are kept: in the data directory, which nothing serves."""
    return settings.data_dir / "backups"


def restore_tools(settings: Settings) -> RestoreTools:
    """A restore's replay of every read model and its check of the hash chain, for these settings."""

    projectors = all_projectors(settings)
    carried = [p.name for p in projectors if p.name != ChainProjector.name]

    def rebuild(app: WattLedger, database_url: str) -> None:
        """The chain from the first event, then the other read models from the checkpoints the archive
        carried where each passes its checks (the chain after it included), else from the first event."""
        engine = ProjectionEngine(app, database_url, projectors)
        try:
            engine.setup()
            with psycopg.connect(database_url) as conn:
                resumable = any(newest(conn, name) for name in carried)
            if not resumable:
                events = engine.rebuild_many(list(engine.projectors))
                log.info("backup.read_models_replayed", events=events, checkpoints=0)
                return
            if ChainProjector.name in engine.projectors:
                engine.rebuild_many([ChainProjector.name])
            try:
                events, used = rebuild_from_checkpoints(engine, carried)
            except CheckpointRefused as refused:
                log.warning("backup.checkpoints_refused", reason=str(refused))
                events, used = engine.rebuild_many(carried), {}
            log.info("backup.read_models_replayed", events=events, checkpoints=len(used))
        finally:
            engine.close()

    def verify_chain(database_url: str) -> str | None:
        with psycopg.connect(database_url) as conn:
            found = verify(conn)
        if found.problem is not None:
            return f"position {found.problem.position} {found.problem.kind}: {found.problem.detail}"
        if found.unchained:
            return f"{found.unchained} events were not chained"
        return None

    return RestoreTools(
        link=link, chain_head=chain_link, rebuild=rebuild, verify_chain=verify_chain,
        export_checkpoints=lambda url, up_to: export_newest(url, up_to, carried),
        import_checkpoints=lambda url, messages: len(import_exported(url, messages)),
    )  # fmt: skip


def settings_record(settings: Settings) -> dict[str, Any]:
    """The settings as an archive keeps them: every field, URLs without passwords, no secret key."""
    values: dict[str, Any] = msgspec.to_builtins(settings, enc_hook=str)
    values.pop("secret_key", None)
    for name in ("database_url", "nats_url", "nats_relay_url"):
        if isinstance(values.get(name), str):
            values[name] = mask_secrets(values[name])
    return values


def key_fingerprint(settings: Settings) -> str | None:
    return fingerprint(derive_box_key(settings.secret_key) if settings.secret_key else None)


def backup_jobs(
    settings: Settings, app: WattLedger, database_url: str, clock: Clock, passphrase: str | None
) -> BackupJobs:
    return BackupJobs(
        app, database_url, backups_dir(settings), restore_tools(settings), clock, passphrase=passphrase or None,
        config=settings_record(settings), secret_key_fingerprint=key_fingerprint(settings),
    )  # fmt: skip


def scheduled_backup(jobs: BackupJobs) -> Callable[[Schedule], Awaitable[None]]:
    """A schedule's run: one archive made as `scheduled`, then that schedule's archives past retention pruned."""

    async def backup(schedule: Schedule) -> None:
        actor = f"{SYSTEM_ACTOR}:{schedule.id}"
        await jobs.create(kind="scheduled", actor=actor, compression=schedule.compression, schedule_id=schedule.id)
        await jobs.prune(schedule.id, schedule.retention_days, actor=actor)

    return backup


def schedule_handlers(app: WattLedger, clock: Clock) -> ScheduleHandlers:
    return ScheduleHandlers(StoreUnitOfWork(app), Croniter(), clock)


def schedule_runner(app: WattLedger, jobs: BackupJobs, clock: Clock) -> ScheduleRunner:
    """The loop an API process runs: due schedules claimed once across processes, their backups made here."""
    return ScheduleRunner(schedule_handlers(app, clock), scheduled_backup(jobs), clock)
