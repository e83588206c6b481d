"""What each group of HTTP handlers depends on, one small typed set per area, and `ApiDeps`, all of
them together as the composition root builds them (`api_deps`) and `create_app` provides them.

Each set holds exactly what its controllers use; nothing in it is optional, since an API process
always serves all of it. The key a set is provided under (`DEPENDENCY_KEYS`) is the name of the
handler parameter that takes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from adapters.compliance import ComplianceJobs
from adapters.eventlog import EventLog
from adapters.eventstore import WattLedger
from adapters.fanout import FanOut
from adapters.identity import TokenService
from api.controllers.alerts import AlertDeps
from api.controllers.backups import BackupDeps
from adapters.tls_files import TlsFiles
from api.device_listing import DeviceListing
from api.edge import EdgePolicy
from api.metrics import BasicCredentials, ProcessMetrics
from api.read_side import ReadSide
from api.security import RefusalTally
from domain.control_handlers import ConfigHandlers, ControlHandlers
from domain.energy import EnergyRules
from domain.energy_handlers import EnergyHandlers
from domain.export_jobs import DataExportJobs
from domain.handlers import CommandHandlers
from domain.identity_handlers import IdentityHandlers
from domain.ports import Clock

VERSION = "0.1.0"


class PartStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One supervised part of this process: `running`, `degraded` (failed within the last minute or
    waiting to restart) or `stopped`; its restarts and the last error, as one line."""

    name: str
    state: str
    restarts: int
    last_error: str | None = None
    last_failure_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Discovery:
    """Where discovery broadcasts (`target`) and on which port (None: python-kasa's own)."""

    target: str = "255.255.255.255"
    port: int | None = None


@dataclass(frozen=True, kw_only=True)
class DeviceDeps:
    """Devices, their control and the relay API: the write side over the driver, control requests,
    a device as it was at a past moment (folded from `store`), discovery."""

    reads: ReadSide
    store: WattLedger
    commands: CommandHandlers
    control: ControlHandlers
    clock: Clock
    energy_rules: EnergyRules
    discovery: Discovery
    listing: DeviceListing = field(default_factory=DeviceListing)


@dataclass(frozen=True, kw_only=True)
class ConfigDeps:
    """The stored configuration and the defaults this host reports beside it."""

    reads: ReadSide
    config: ConfigHandlers
    host: str
    discovery: Discovery


@dataclass(frozen=True, kw_only=True)
class EnergyDeps:
    """Energy and rates: readings import, session thresholds, rates, and the read models behind them."""

    reads: ReadSide
    energy: EnergyHandlers
    clock: Clock


@dataclass(frozen=True, kw_only=True)
class IdentityDeps:
    """Sign-in, sessions, users, API keys and two-factor: the use cases and the tokens they are carried in."""

    reads: ReadSide
    identity: IdentityHandlers
    tokens: TokenService


@dataclass(frozen=True, kw_only=True)
class HistoryDeps:
    """The stored event history and the audit trail, read from `store` in SQL."""

    reads: ReadSide
    store: WattLedger


@dataclass(frozen=True, kw_only=True)
class ExportDeps:
    """Data exports of readings and compliance exports of the event log, and what they are read from."""

    reads: ReadSide
    store: WattLedger
    exports: DataExportJobs
    compliance: ComplianceJobs
    clock: Clock
    energy_rules: EnergyRules


@dataclass(frozen=True, kw_only=True)
class LiveDeps:
    """Live clients (WebSocket, socket.io, SSE): this process's fan-out and the credentials they bring."""

    reads: ReadSide
    fanout: FanOut
    identity: IdentityHandlers
    tokens: TokenService


@dataclass(frozen=True, kw_only=True)
class SystemDeps:
    """Health and status: this process's parts and fan-out, the stream the relay feeds, the start time."""

    reads: ReadSide
    fanout: FanOut
    clock: Clock
    stream_name: str
    parts: Callable[[], list[PartStatus]] = list
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class ApiDeps:
    """Every set above, what the app enforces around every route (`edge`, `refusals`), and this
    process's request and poll metrics."""

    reads: ReadSide
    devices: DeviceDeps
    config: ConfigDeps
    energy: EnergyDeps
    identity: IdentityDeps
    history: HistoryDeps
    exports: ExportDeps
    live: LiveDeps
    system: SystemDeps
    edge: EdgePolicy
    refusals: RefusalTally
    metrics: ProcessMetrics
    tls: TlsFiles | None = None
    backups: BackupDeps | None = None
    alerts: AlertDeps | None = None
    metrics_basic: BasicCredentials | None = None
    """The basic auth credentials `/metrics` also takes (None: none)."""

    def provided(self) -> dict[str, object]:
        """Each set under the handler parameter name that takes it."""
        return {key: getattr(self, name) for key, name in DEPENDENCY_KEYS.items()}


DEPENDENCY_KEYS = {
    "device_deps": "devices",
    "config_deps": "config",
    "energy_deps": "energy",
    "identity_deps": "identity",
    "history_deps": "history",
    "export_deps": "exports",
    "live_deps": "live",
    "system_deps": "system",
    "backup_deps": "backups",
    "alert_deps": "alerts",
}
"""Handler parameter name -> the `ApiDeps` field it is given."""


def api_deps(
    *,
    app: WattLedger,
    read_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
    commands: CommandHandlers,
    identity: IdentityHandlers,
    tokens: TokenService,
    control: ControlHandlers,
    config: ConfigHandlers,
    energy: EnergyHandlers,
    exports: DataExportJobs,
    compliance: ComplianceJobs,
    fanout: FanOut,
    edge: EdgePolicy,
    refusals: RefusalTally,
    metrics: ProcessMetrics,
    clock: Clock,
    zone: ZoneInfo,
    energy_rules: EnergyRules,
    on_saved: Callable[[], None],
    stream_name: str,
    host: str,
    discovery_target: str = "255.255.255.255",
    discovery_port: int | None = None,
    parts: Callable[[], list[PartStatus]] = list,
    backups: BackupDeps | None = None,
    tls: TlsFiles | None = None,
) -> ApiDeps:
    """Every set, each holding its share of these parts."""
    reads = ReadSide(pool=read_pool, log=EventLog(app), zone=zone, clock=clock, on_saved=on_saved)
    discovery = Discovery(target=discovery_target, port=discovery_port)
    return ApiDeps(
        reads=reads,
        devices=DeviceDeps(reads=reads, store=app, commands=commands, control=control, clock=clock,
                           energy_rules=energy_rules, discovery=discovery),
        config=ConfigDeps(reads=reads, config=config, host=host, discovery=discovery),
        energy=EnergyDeps(reads=reads, energy=energy, clock=clock),
        identity=IdentityDeps(reads=reads, identity=identity, tokens=tokens),
        history=HistoryDeps(reads=reads, store=app),
        exports=ExportDeps(reads=reads, store=app, exports=exports, compliance=compliance, clock=clock,
                           energy_rules=energy_rules),
        live=LiveDeps(reads=reads, fanout=fanout, identity=identity, tokens=tokens),
        system=SystemDeps(reads=reads, fanout=fanout, clock=clock, stream_name=stream_name, parts=parts),
        edge=edge,
        refusals=refusals,
        metrics=metrics,
        backups=backups,
        tls=tls,
    )  # fmt: skip
