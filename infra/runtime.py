"""The object graph of one process: `Runtime` holds every long-lived object and builds the
parts (poller, executor, responder, services, live fan-out, export jobs) from them.

`infra.bootstrap.open_runtime` opens the connections and builds a `Runtime`; nothing here
connects by itself. Also the settings' energy rules and the list of every read model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from nats.aio.client import Client
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from adapters.alert_delivery import Senders, knows_apprise_url
from projections.alert_dispatch import AlertDispatcher
from adapters.bus import StreamConfig
from adapters.command_order import DeviceOrder
from adapters.compliance import ComplianceFiles, ComplianceJobs
from adapters.data_exports import ExportFileStore
from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger
from adapters.executor import CommandExecutor
from adapters.history import EventFilter
from adapters.fanout import DeviceEntry, FanOut, LiveOptions
from adapters.identity import RandomSecrets, TokenService
from adapters.jobs import BackgroundTasks, LoggedNotes, every
from adapters.kasa_driver import KasaDriver
from adapters.leases import Leases
from adapters.nats_commands import CommandResponder
from adapters.poller import Poller
from adapters.ratelimits import PgRateCounters
from adapters.relay import Relay
from adapters.tls_files import TlsFiles
from adapters.backup_jobs import BackupJobs
from adapters.backup_schedules import ScheduleRunner
from api.controllers.alerts import AlertDeps
from api.controllers.backups import BackupDeps
from api.deps import ApiDeps, api_deps
from api.edge import EdgePolicy
from api.errors import status_of
from api.metrics import BasicCredentials, ProcessMetrics
from api.ratelimit_rules import RateLimits
from api.security import RefusalTally, summarise_every
from domain.alert_handlers import AlertHandlers
from domain.authentication import authenticate_headers
from domain.certificates import CertificateHandlers
from domain.compliance_handlers import ComplianceHandlers
from domain.compliance_jobs import ComplianceExports
from domain.config import ConfigValues
from domain.control_handlers import ConfigHandlers, ControlHandlers
from domain.energy_handlers import EnergyHandlers
from domain.export_handlers import ExportHandlers
from domain.export_jobs import DataExportJobs
from domain.handlers import CommandHandlers
from domain.identity_handlers import IdentityHandlers
from domain.ports import Clock
from domain.security import SecurityHandlers
from infra.read_models import all_projectors, energy_rules, energy_settings
from infra.settings import Settings
from infra.supervisor import Supervisor
from projections.chain import chain_link
from projections.commands import interrupted_commands
from projections.devices import TABLE as DEVICES_TABLE
from projections.devices import active_devices
from projections.engine import ProjectionEngine
from projections.exports import ExportReadModel
from projections.retention import ReadingRetention

__all__ = ["Runtime", "all_projectors", "energy_rules", "energy_settings"]



@dataclass
class Runtime:
    """Every long-lived object of one process; built by `open_runtime`, closed by it too."""

    settings: Settings
    database_url: str
    nats_url: str
    app: WattLedger
    engine: ProjectionEngine
    read_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    driver: KasaDriver
    nc: Client
    js: JetStreamContext
    stream: StreamConfig
    relay: Relay
    identity: IdentityHandlers
    tokens: TokenService
    wakers: list[Callable[[], None]] = field(default_factory=list)
    rate_counters: PgRateCounters | None = None
    fanout: FanOut | None = None
    exports: DataExportJobs | None = None
    backups: BackupJobs | None = None
    supervisor: Supervisor | None = None
    refusals: RefusalTally | None = None
    clock: Clock = field(default_factory=SystemClock)
    metrics: ProcessMetrics = field(default_factory=ProcessMetrics)
    """This process's Prometheus registry: its API and its poller feed it, `/metrics` serves it."""

    def saved(self) -> None:
        """Something was stored: nudge the in-process relay and projectors."""
        for wake in self.wakers:
            wake()

    async def known_devices(self) -> Sequence[tuple[UUID, str]]:
        async with self.read_pool.connection() as conn:
            return await active_devices(conn)

    def poller(self) -> Poller:
        """This process's poller, sharing the devices with other pollers through leases."""
        interval = self.settings.polling_interval
        leases = Leases(
            self.read_pool,
            devices_table=DEVICES_TABLE,
            ttl=max(3.0, min(self.settings.poll_lease, 3 * interval)),
        )
        return Poller(
            self.handlers(cache=True),
            self.driver,
            leases,
            interval=interval,
            timeout=self.settings.poll_timeout + 1.0,
            concurrency=self.settings.poll_concurrency,
            suspect_concurrency=self.settings.poll_suspect_concurrency,
            offline_after=self.settings.offline_after,
            grace=self.settings.poll_stop_grace,
            on_saved=self.saved,
            observe=self.metrics.polled,
            freeze_heap_every=3600.0,
        )

    def config_defaults(self) -> ConfigValues:
        """The system configuration before any change is recorded: this process's settings."""
        s = self.settings
        return ConfigValues(
            polling_interval=s.polling_interval, offline_after=s.offline_after,
            poll_timeout=s.poll_timeout, poll_concurrency=s.poll_concurrency,
        )  # fmt: skip

    def config(self) -> ConfigHandlers:
        return ConfigHandlers(StoreUnitOfWork(self.app), self.config_defaults())

    def retention(self) -> ReadingRetention:
        """The sweep of raw readings older than the configured `data_retention_days` (with the projectors)."""
        config = self.config()

        async def days() -> int:
            return (await config.current()).data_retention_days

        return ReadingRetention(self.read_pool, days, self.clock)

    def control(self) -> ControlHandlers:
        """Control requests, their execution and device renames, over this process's store and driver."""
        return ControlHandlers(
            StoreUnitOfWork(self.app), self.driver, self.clock, self.config(),
            deadline_s=self.settings.control_deadline,
        )  # fmt: skip

    def executor(self) -> CommandExecutor:
        """The command executor, sharing the requests with every other executor through one durable consumer."""
        async def interrupted(attempted_before: datetime) -> list[UUID]:
            async with self.read_pool.connection() as conn:
                return await interrupted_commands(conn, attempted_before)

        # A live executor's device call ends within the driver's timeout, and its read-back within another.
        settle_after = 3 * (self.settings.poll_timeout + 1.0)
        return CommandExecutor(
            self.js, self.control(), stream=self.stream, ack_wait=self.settings.executor_ack_wait,
            on_saved=self.saved, interrupted=interrupted, settle_after=settle_after, order=DeviceOrder(self.read_pool),
        )  # fmt: skip

    def handlers(self, *, cache: bool = False) -> CommandHandlers:
        """The write side over this process's store and driver; `cache` for a single writer (the poller)."""
        return CommandHandlers(StoreUnitOfWork(self.app, cache=cache), self.driver, self.clock)

    def responder(self) -> CommandResponder:
        """NATS request/reply commands (`<prefix>.cmd.device.*`) over the same handlers as REST."""
        return CommandResponder(
            self.nc,
            self.handlers(),
            lambda headers: authenticate_headers(headers, self.tokens, self.identity),
            subject_prefix=self.stream.subject_prefix,
            discovery_target=self.settings.discovery_target,
            discovery_port=self.settings.discovery_port,
            status_of=status_of,
            on_saved=self.saved,
            control=self.control(),
        )

    def alert_handlers(self) -> AlertHandlers:
        """Alert rules and what the alerts part records, target secrets sealed by the identity's secret box."""
        return AlertHandlers(StoreUnitOfWork(self.app), self.clock, self.identity.box, RandomSecrets(),
                             knows_apprise_url)  # fmt: skip

    def alert_dispatcher(self) -> AlertDispatcher:
        """The `alerts` part: ticks, part health, alerts recorded and delivered (`adapters.alert_delivery`)."""
        return AlertDispatcher(
            self.alert_handlers(), StoreUnitOfWork(self.app), self.read_pool, Senders(self.identity.box, self.clock),
            self.clock, parts=self.supervisor.status if self.supervisor is not None else None, on_saved=self.saved,
        )  # fmt: skip

    def services(self) -> ApiDeps:
        """What the HTTP API depends on, each controller's share apart (`api.deps`)."""
        deps = self._services()
        alerts = AlertDeps(reads=deps.reads, handlers=self.alert_handlers(), dispatcher=self.alert_dispatcher())
        basic = self.settings.metrics_basic_auth
        return dataclasses.replace(deps, alerts=alerts, metrics_basic=BasicCredentials(basic) if basic else None)

    def _services(self) -> ApiDeps:
        return api_deps(
            app=self.app,
            read_pool=self.read_pool,
            commands=self.handlers(),
            identity=self.identity,
            tokens=self.tokens,
            discovery_target=self.settings.discovery_target,
            discovery_port=self.settings.discovery_port,
            stream_name=self.stream.name,
            fanout=self.live_fanout(),
            zone=self.settings.zone,
            energy_rules=energy_rules(self.settings),
            exports=self.data_exports(),
            on_saved=self.saved,
            edge=self.edge(),
            control=self.control(),
            config=self.config(),
            host=self.settings.host,
            energy=EnergyHandlers(StoreUnitOfWork(self.app), self.clock, energy_settings(self.settings)),
            clock=self.clock,
            parts=self.supervisor.status if self.supervisor is not None else list,
            refusals=self.refusal_tally(),
            metrics=self.metrics,
            backups=self.backup_deps(),
            compliance=ComplianceJobs(
                self.compliance_exports(), self.compliance_files(), BackgroundTasks("compliance-export"), self.clock
            ),
            tls=self.tls_files(),
        )

    def tls_files(self) -> TlsFiles:
        """The HTTPS certificate and key in the data directory, each action recorded in the log."""
        max_bytes = int(self.settings.max_upload_size_mb * 1024 * 1024)
        return TlsFiles(self.settings.ssl_dir, CertificateHandlers(StoreUnitOfWork(self.app)), max_bytes=max_bytes)

    def backup_jobs(self) -> BackupJobs:
        """This process's backups (one at a time), under WATTLEDGER_BACKUP_PASSPHRASE when set."""
        if self.backups is None:
            from infra import backups as wiring

            self.backups = wiring.backup_jobs(self.settings, self.app, self.database_url, self.clock,
                                               os.environ.get(wiring.PASSPHRASE_ENV))  # fmt: skip
        return self.backups

    def backup_deps(self) -> BackupDeps:
        """The backup routes' share: the jobs, the schedules, and where restore uploads wait within the limit."""
        from infra import backups as wiring

        return BackupDeps(
            jobs=self.backup_jobs(), schedules=wiring.schedule_handlers(self.app, self.clock),
            quarantine=wiring.backups_dir(self.settings) / "incoming",
            max_upload_bytes=int(self.settings.max_upload_size_mb * 1024 * 1024),
        )  # fmt: skip

    def backup_schedules(self) -> ScheduleRunner:
        """The loop that runs due backup schedules (each once across every API process)."""
        from infra import backups as wiring  # infra.backups takes the read models from this module

        return wiring.schedule_runner(self.app, self.backup_jobs(), self.clock)

    def refusal_tally(self) -> RefusalTally:
        """This process's count of refused sign-ins and permissions (recorded once a minute by `run_parts`)."""
        if self.refusals is None:
            self.refusals = RefusalTally(self.clock.now)
        return self.refusals

    def security_summaries(self) -> Awaitable[None]:
        return summarise_every(self.refusal_tally(), SecurityHandlers(StoreUnitOfWork(self.app)), on_saved=self.saved)

    def data_exports(self) -> DataExportJobs:
        """This process's data export jobs (created on first use; `run_parts` sweeps them with the API)."""
        if self.exports is None:
            s = self.settings
            catalog = ExportReadModel(self.read_pool)
            handlers = ExportHandlers(StoreUnitOfWork(self.app), catalog, self.clock, limit=s.exports_per_hour)
            files = ExportFileStore(self.app, catalog, s.exports_dir, energy_rules(s))
            self.exports = DataExportJobs(
                handlers, catalog, files, BackgroundTasks("data-export", concurrency=2), LoggedNotes("exports"),
                retention=timedelta(days=s.export_retention_days), on_saved=self.saved,
            )  # fmt: skip
        return self.exports

    async def export_sweeps(self) -> None:
        """Sweep this process's data exports every minute (stale jobs resumed, expired files removed)."""
        await every("exports", 60.0, self.data_exports().sweep)

    def compliance_files(self) -> ComplianceFiles:
        """Where compliance exports are written and their jobs' states kept."""
        return ComplianceFiles(self.settings.compliance_dir, self.database_url, self.app, chain_link, self.clock)

    def compliance_exports(self) -> ComplianceExports[EventFilter]:
        """The compliance export use case over this process's store and files."""
        return ComplianceExports(
            ComplianceHandlers(StoreUnitOfWork(self.app)), self.compliance_files(), LoggedNotes("compliance")
        )

    def live_fanout(self) -> FanOut:
        """This process's one live fan-out (created on first use, started by `run_parts` with the API)."""
        if self.fanout is None:
            s = self.settings
            options = LiveOptions(queue_size=s.live_queue, heartbeat=s.live_heartbeat,
                                  auth_timeout=s.live_auth_timeout, recheck=s.live_recheck)  # fmt: skip
            self.fanout = FanOut(self.nc, self.js, self.stream, directory=self.device_directory, options=options)
        return self.fanout

    async def device_directory(self) -> dict[UUID, DeviceEntry]:
        """Address and alias of every device the read model knows, removed ones too."""
        async with self.read_pool.connection() as conn:
            cur = await conn.execute(f"SELECT device_id, address, alias FROM {DEVICES_TABLE}")
            return {r[0]: DeviceEntry(address=r[1], alias=r[2]) for r in await cur.fetchall()}

    def edge(self) -> EdgePolicy:
        """The settings' rate limits and CORS origins, over the counters every API process shares."""
        s = self.settings
        limits = RateLimits(
            ip=s.rate_limit_ip, user=s.rate_limit_user, key=s.rate_limit_key,
            login=s.rate_limit_login, login_ip=s.rate_limit_login_ip,
        ) if s.rate_limits else RateLimits()  # fmt: skip
        return EdgePolicy(limits=limits, counters=self.rate_counters, cors_origins=s.cors_origins)
