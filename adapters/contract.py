"""The public event contract: what subscribers of `<prefix>.events.>` receive.

Every message body is a JSON `Envelope`: where the event sits in the global log
(`notification_id`), which aggregate it belongs to and at which version, what happened
(`aggregate`, `event`), when, who caused it (`actor`), and `data`.

`data` is an allowlist. Each domain event class that may be published has one entry in
`CONTRACT`, a Struct naming exactly the fields subscribers see; the relay builds it by
reading those attributes and nothing else, so a field that is not named here cannot reach
the stream. An event class without an entry is published with empty `data` (its envelope
still says what happened and when) and logged once as a warning. Events of aggregates that
hold secrets (password hashes, TOTP secrets, key hashes, tokens) must never name those
fields here; better still, such events should not carry them at all.

Evolution. Stored events evolve only by adding fields with defaults: never rename, retype or
reorder a stored field. The Structs below follow the same rule: a field added later gets a
default, so a consumer built against an older contract keeps decoding newer messages (unknown
fields are ignored) and a newer consumer decodes older messages. A new event type is a new
entry; a consumer that meets an `(aggregate, event)` pair it does not know should skip it.

Consumers order and deduplicate by `notification_id`: JetStream may redeliver, and a relay
restarted after its duplicate window has passed may publish a section of the log again.

This module is longer than our ~400 lines on purpose: most of it is the allowlist, one small
declared Struct per published event, which reads best as one list beside the envelope and the
code that builds `data` from it; split by aggregate, a reviewer would no longer see in one place
every field that can reach the stream.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from datetime import date, datetime, timezone
from types import MappingProxyType
from typing import Any, Generic, TypeVar
from uuid import UUID

import msgspec
import structlog
from eventsourcing.domain import DomainEventProtocol

from adapters.errors import AdapterError
from domain.backup import Backup, BackupRestore
from domain.alert import Alert, AlertDelivery, AlertRule, AlertTicks, PartHealth
from domain.backup_schedule import BackupSchedules
from domain.certificates import SslFiles
from domain.compliance import ComplianceExport
from domain.security import SecurityActivity
from domain.config import SystemConfig
from domain.control import ControlCommand
from domain.device import Device
from domain.exports import DataExport
from domain.identity import ApiKey, Roster, Session, User
from domain.meter import MeterDay
from domain.push import PushMonitor, PushRegistry, PushToken
from domain.rates import Tariff

log = structlog.get_logger(__name__)

DataT = TypeVar("DataT")

#: The `actor` of events that record none (bookkeeping events such as `MeterDay.Opened`).
NO_ACTOR = "system"


class ContractError(AdapterError):
    """A message or a contract entry that does not fit the published contract."""


class UnknownEvent(ContractError):
    """An `(aggregate, event)` pair that this version of the contract does not describe."""


class Envelope(msgspec.Struct, Generic[DataT], frozen=True, kw_only=True):
    """The body of every message on the events stream.

    `version` is the aggregate's version after the event (1 for the event that created it);
    `timestamp` is when the event happened, in UTC. `data` is the event type's contract
    Struct when publishing; `decode_envelope` gives it as a JSON object and `decode_data`
    turns it into the typed Struct.
    """

    notification_id: int
    originator_id: UUID
    version: int
    aggregate: str
    event: str
    timestamp: datetime
    actor: str
    data: DataT


class EventData(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every event's published fields; on its own, the empty `data` of an unlisted event."""


class DeviceAdded(EventData, frozen=True, kw_only=True):
    """A device was added: its canonical address and what it said about itself. A push-only device
    (`push_only`, device type `push`) has a `push:<uuid>` placeholder for an address and is never polled."""

    address: str
    alias: str
    model: str
    device_type: str
    mac: str
    outlets: list[str]
    push_only: bool = False


class DeviceRenamed(EventData, frozen=True, kw_only=True):
    alias: str


class DeviceRemoved(EventData, frozen=True, kw_only=True):
    """The device was removed; its history stays."""


class DeviceRestored(EventData, frozen=True, kw_only=True):
    """A removed device was added again (same id), with what it says about itself now."""

    alias: str
    model: str
    device_type: str
    mac: str
    outlets: list[str]


class DeviceStateChanged(EventData, frozen=True, kw_only=True):
    """A relay was switched; `outlet_index` is None for a plug's only relay."""

    is_on: bool
    outlet_index: int | None


class DeviceWentOffline(EventData, frozen=True, kw_only=True):
    missed_polls: int


class DeviceCameOnline(EventData, frozen=True, kw_only=True):
    """The first good poll after the device went offline."""


class DeviceSessionThresholdSet(EventData, frozen=True, kw_only=True):
    """The power (W) at or above which the device is in a usage session; null: the setting's default."""

    threshold_w: float | None


class DevicePublicitySet(EventData, frozen=True, kw_only=True):
    """Whether the device's badges are shown to anyone."""

    public: bool


class PushMonitorOpened(EventData, frozen=True, kw_only=True):
    """A device now pushes instead of being polled; its token is never published."""

    device_id: UUID
    interval_s: int
    grace_s: int
    opened_at: datetime


class PushMonitorTokenRotated(EventData, frozen=True, kw_only=True):
    """The device's push token was replaced; the old one no longer works."""


class PushMonitorHeard(EventData, frozen=True, kw_only=True):
    at: datetime
    up: bool


class PushTokenIssued(EventData, frozen=True, kw_only=True):
    device_id: UUID


class PushTokenRevoked(EventData, frozen=True, kw_only=True):
    """The token no longer works."""


class PushRegistryOpened(EventData, frozen=True, kw_only=True):
    """The list of push devices was started."""


class PushRegistryDeviceAdded(EventData, frozen=True, kw_only=True):
    device_id: UUID


class MeterDayOpened(EventData, frozen=True, kw_only=True):
    """The readings stream of one device for one UTC day was started."""

    device_id: UUID
    day: date


class Outlet(msgspec.Struct, frozen=True, kw_only=True):
    """One child outlet of a power strip in a reading; meter fields are None without a meter."""

    outlet_id: str
    index: int
    alias: str
    is_on: bool
    power_w: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    total_wh: float | None = None


class ReadingRecorded(EventData, frozen=True, kw_only=True):
    """One poll of a device. `total_wh` is the device's cumulative counter (None without a meter)."""

    device_id: UUID
    measured_at: datetime
    is_on: bool
    power_w: float | None
    voltage_v: float | None
    current_a: float | None
    total_wh: float | None
    outlets: list[Outlet]
    rssi: int | None = None


class RosterFounded(EventData, frozen=True, kw_only=True):
    """First-run setup: the roster of active administrators was started with the first one."""

    first_admin: UUID


class RosterAdminAdded(EventData, frozen=True, kw_only=True):
    user_id: UUID


class RosterAdminRemoved(EventData, frozen=True, kw_only=True):
    user_id: UUID


class UserRegistered(EventData, frozen=True, kw_only=True):
    """A user was created (never with its password hash)."""

    username: str
    email: str | None
    full_name: str
    role: str


class UserProfileChanged(EventData, frozen=True, kw_only=True):
    email: str | None
    full_name: str


class UserRoleChanged(EventData, frozen=True, kw_only=True):
    role: str


class UserDeactivated(EventData, frozen=True, kw_only=True):
    """The user can no longer sign in; its sessions ended."""


class UserReactivated(EventData, frozen=True, kw_only=True):
    """The user can sign in again."""


class UserDeleted(EventData, frozen=True, kw_only=True):
    """The user was deleted; its history stays and its name stays taken."""


class UserPasswordChanged(EventData, frozen=True, kw_only=True):
    """The password changed; no hash is ever published."""


class UserTotpSetupStarted(EventData, frozen=True, kw_only=True):
    """Two-factor set-up started; the secret and the backup codes are never published."""


class UserTotpEnabled(EventData, frozen=True, kw_only=True):
    """Two-factor authentication is now asked for at sign-in."""


class UserTotpDisabled(EventData, frozen=True, kw_only=True):
    """Two-factor authentication is no longer asked for."""


class UserTotpReset(EventData, frozen=True, kw_only=True):
    """An administrator (the `actor`) removed the user's two-factor authentication; nothing secret is published."""


class UserTotpCodeAccepted(EventData, frozen=True, kw_only=True):
    """A TOTP code was accepted (sign-in, enabling or disabling two-factor)."""


class UserBackupCodeUsed(EventData, frozen=True, kw_only=True):
    """A backup code was spent."""


class ApiKeyRevoked(EventData, frozen=True, kw_only=True):
    """The key no longer works."""


class UserSignedIn(EventData, frozen=True, kw_only=True):
    session_id: UUID


class SessionStarted(EventData, frozen=True, kw_only=True):
    user_id: UUID
    ip: str
    user_agent: str
    expires_at: datetime


class SessionRefreshed(EventData, frozen=True, kw_only=True):
    generation: int


class SessionEnded(EventData, frozen=True, kw_only=True):
    """`reason`: logout, evicted, revoked, reuse_detected, user_disabled or expired."""

    reason: str


class ApiKeyIssued(EventData, frozen=True, kw_only=True):
    """A key was issued (never with its hash): `prefix` is its first characters, as lists show them."""

    user_id: UUID
    name: str
    scope: str
    prefix: str
    expires_at: datetime | None


class RelayState(msgspec.Struct, frozen=True, kw_only=True):
    """One strip outlet's confirmed relay state in a control outcome."""

    index: int
    outlet_id: str
    is_on: bool


class ControlRequested(EventData, frozen=True, kw_only=True):
    """A control request was recorded (`originator_id` is the command id); `outlet` None: the plug's
    relay or every outlet of a strip. The executor runs it before `deadline` or fails it `expired`."""

    device_id: UUID
    outlet: int | None
    action: str
    idempotency_key: str | None
    deadline: datetime


class ControlAttempted(EventData, frozen=True, kw_only=True):
    """An executor claimed the command and is about to switch the device to `desired`."""

    device_id: UUID
    outlet: int | None
    action: str
    desired: bool
    executor: str


class ControlSucceeded(EventData, frozen=True, kw_only=True):
    """The device was read back in the wanted state: `is_on` of the relay switched; `outlets` of a strip."""

    device_id: UUID
    outlet: int | None
    action: str
    is_on: bool
    outlets: list[RelayState]


class ControlFailed(EventData, frozen=True, kw_only=True):
    """`reason`: device_offline, timeout, refused, state_not_confirmed or expired; `detail` says more."""

    device_id: UUID
    outlet: int | None
    action: str
    reason: str
    detail: str


class SystemConfigInitialised(EventData, frozen=True, kw_only=True):
    """The system configuration was first changed (its defaults are the process's settings)."""


class ConfigChanged(EventData, frozen=True, kw_only=True):
    """The fields changed, with their new values; a field not changed is null."""

    polling_interval: float | None = None
    data_retention_days: int | None = None
    allow_device_control: bool | None = None
    require_https: bool | None = None
    offline_after: int | None = None
    poll_timeout: float | None = None
    poll_concurrency: int | None = None


class TariffOpened(EventData, frozen=True, kw_only=True):
    """The tariff was set up, with its first rate version following."""


class TariffRateSet(EventData, frozen=True, kw_only=True):
    """A rate version: prices are decimal strings; it applies from `effective_from` on."""

    version_number: int
    rate_type: str
    currency: str
    timezone: str
    effective_from: datetime
    rate_structure: dict[str, str | None]
    time_of_use_rates: list[dict[str, Any]]
    weekend_time_of_use_rates: list[dict[str, Any]]
    billing_cycle_day: int
    daily_charge: str


class ComplianceExportRequested(EventData, frozen=True, kw_only=True):
    """A compliance export of the event history was asked for: its format and filters."""

    format: str
    filters: dict[str, Any]


class ComplianceExportCompleted(EventData, frozen=True, kw_only=True):
    """What the export holds: the count, positions, the chain link it ends on, each file's SHA-256."""

    count: int
    first_position: int | None
    last_position: int | None
    chain_position: int | None
    chain_hash: str | None
    files: dict[str, str]


class ComplianceExportFailed(EventData, frozen=True, kw_only=True):
    reason: str


class SecurityCount(EventData, frozen=True, kw_only=True):
    kind: str
    source: str
    count: int


class SecurityActivitySummarised(EventData, frozen=True, kw_only=True):
    """Refusals one API process answered over a window: failed sign-ins, lockouts and refused
    permissions per client address, the busiest first; `others` counts those not listed."""

    window_start: datetime
    window_end: datetime
    counts: list[SecurityCount]
    others: int


class DataExportRequested(EventData, frozen=True, kw_only=True):
    """A data export of device readings was asked for: by whom, of what, in which shape."""

    owner_id: UUID
    owner: str
    export_type: str
    format: str
    devices: list[UUID]
    start: datetime
    end: datetime
    fields: list[str]
    aggregation: str
    timezone: str


class DataExportCompleted(EventData, frozen=True, kw_only=True):
    file_size: int
    record_count: int
    sha256: str
    expires_at: datetime


class DataExportFailed(EventData, frozen=True, kw_only=True):
    error: str


class DataExportDownloaded(EventData, frozen=True, kw_only=True):
    pass


class DataExportDeleted(EventData, frozen=True, kw_only=True):
    """`reason`: `deleted` by its owner or an admin, or `expired` by the retention sweep."""

    reason: str


class BackupRequested(EventData, frozen=True, kw_only=True):
    """A backup archive was asked for: `manual` or `scheduled`, and its options."""

    kind: str
    options: dict[str, Any]


class BackupCompleted(EventData, frozen=True, kw_only=True):
    """What the archive holds: its file, the events' range and the hash chain link it ends on."""

    filename: str
    size: int
    sha256: str
    count: int
    first_position: int | None
    last_position: int | None
    chain_position: int | None
    chain_hash: str | None


class BackupFailed(EventData, frozen=True, kw_only=True):
    reason: str


class BackupDeleted(EventData, frozen=True, kw_only=True):
    """`reason`: `deleted` by an admin, or `pruned` by a schedule's retention."""

    reason: str


class BackupSchedulesOpened(EventData, frozen=True, kw_only=True):
    pass


class BackupScheduleSet(EventData, frozen=True, kw_only=True):
    """A backup schedule was added or changed."""

    schedule_id: UUID
    name: str
    cron: str
    enabled: bool
    retention_days: int
    compression: str


class BackupScheduleRemoved(EventData, frozen=True, kw_only=True):
    schedule_id: UUID


class BackupScheduleFired(EventData, frozen=True, kw_only=True):
    """A schedule came due and one process took it: the moment it was due."""

    schedule_id: UUID
    due_at: datetime


class BackupRestored(EventData, frozen=True, kw_only=True):
    """This store was restored from an archive: which one, and what it held."""

    backup_id: UUID | None
    filename: str
    sha256: str
    count: int
    last_position: int | None
    chain_position: int | None
    chain_hash: str | None


class BackupRestoreRefused(EventData, frozen=True, kw_only=True):
    """A restore was refused before anything was written: the uploaded archive's SHA-256 and size, and why."""

    sha256: str
    size: int
    reason: str


class SslFilesOpened(EventData, frozen=True, kw_only=True):
    """The first action on the HTTPS files was recorded."""


class SslCsrGenerated(EventData, frozen=True, kw_only=True):
    """A key and a signing request were made; `key_fingerprint` is the SHA-256 of the public key."""

    subject: str
    key_fingerprint: str


class SslCertificateInstalled(EventData, frozen=True, kw_only=True):
    """A certificate was installed: what it says, its SHA-256, and the public key it certifies."""

    subject: str
    issuer: str
    valid_from: datetime
    valid_until: datetime
    fingerprint: str
    key_fingerprint: str


class SslKeyInstalled(EventData, frozen=True, kw_only=True):
    """A private key was installed; only its public key's SHA-256 is told."""

    key_fingerprint: str


class SslFileDownloaded(EventData, frozen=True, kw_only=True):
    filename: str


class AlertRuleCreated(EventData, frozen=True, kw_only=True):
    """An alert rule was made; its targets (and their sealed secrets) are never published."""

    name: str
    kind: str
    device_id: UUID | None
    threshold: float | None
    for_s: int
    part: str | None
    enabled: bool


class AlertRuleUpdated(EventData, frozen=True, kw_only=True):
    """An alert rule changed (its targets may have too; they are never published)."""

    name: str
    threshold: float | None
    for_s: int
    part: str | None
    enabled: bool


class AlertRuleDeleted(EventData, frozen=True, kw_only=True):
    """The rule is gone; a firing alert of it resolves."""


class AlertFired(EventData, frozen=True, kw_only=True):
    """The `number`th firing of a rule."""

    rule_id: UUID
    number: int
    rule_name: str
    kind: str
    device_id: UUID | None
    part: str | None
    fired_at: datetime
    detail: str


class AlertResolved(EventData, frozen=True, kw_only=True):
    resolved_at: datetime
    detail: str


class AlertDeliveryOpened(EventData, frozen=True, kw_only=True):
    """The first attempt to deliver one phase (`fired`, `resolved`, `test`) of an alert to one target."""

    alert_id: UUID
    rule_id: UUID
    target_id: str
    phase: str


class AlertDeliveryAttempted(EventData, frozen=True, kw_only=True):
    """One attempt; `next_at` is when the next one is due, null when it succeeded or was given up."""

    attempt: int
    ok: bool
    status: int | None
    error: str | None
    next_at: datetime | None
    gave_up: bool


class AlertTicksOpened(EventData, frozen=True, kw_only=True):
    """The alert ticks of one UTC day (ISO date) were started."""

    day: str


class AlertTicksTicked(EventData, frozen=True, kw_only=True):
    """The minute that time-based alert rules are judged at."""

    at: datetime


class PartHealthOpened(EventData, frozen=True, kw_only=True):
    part: str


class PartHealthDegraded(EventData, frozen=True, kw_only=True):
    part: str
    at: datetime
    error: str


class PartHealthRecovered(EventData, frozen=True, kw_only=True):
    part: str
    at: datetime


def _event_fields(event_cls: type) -> set[str]:
    if dataclasses.is_dataclass(event_cls):
        return {f.name for f in dataclasses.fields(event_cls)}
    names: set[str] = set()
    for klass in event_cls.__mro__:
        names.update(getattr(klass, "__annotations__", {}))
    return names


def _contract(entries: Mapping[type[Any], type[EventData]]) -> Mapping[type[Any], type[EventData]]:
    """Check that every entry names only fields its event declares, then freeze the mapping."""
    for event_cls, data_cls in entries.items():
        unknown = set(data_cls.__struct_fields__) - _event_fields(event_cls)
        if unknown:
            raise ContractError(f"{data_cls.__name__} names fields {event_cls.__qualname__} lacks: {sorted(unknown)}")
    return MappingProxyType(dict(entries))


#: Event class -> the Struct of the fields published for it. Nothing else is published.
CONTRACT: Mapping[type[Any], type[EventData]] = _contract(
    {
        Device.Added: DeviceAdded,
        Device.Renamed: DeviceRenamed,
        Device.Removed: DeviceRemoved,
        Device.Restored: DeviceRestored,
        Device.StateChanged: DeviceStateChanged,
        Device.WentOffline: DeviceWentOffline,
        Device.CameOnline: DeviceCameOnline,
        Device.SessionThresholdSet: DeviceSessionThresholdSet,
        Device.PublicitySet: DevicePublicitySet,
        PushMonitor.Opened: PushMonitorOpened,
        PushMonitor.TokenRotated: PushMonitorTokenRotated,
        PushMonitor.Heard: PushMonitorHeard,
        PushToken.Issued: PushTokenIssued,
        PushToken.Revoked: PushTokenRevoked,
        PushRegistry.Opened: PushRegistryOpened,
        PushRegistry.DeviceAdded: PushRegistryDeviceAdded,
        MeterDay.Opened: MeterDayOpened,
        MeterDay.ReadingRecorded: ReadingRecorded,
        # Identity: secrets (password hashes, TOTP secrets, backup code and key hashes) are never listed.
        Roster.Founded: RosterFounded,
        Roster.AdminAdded: RosterAdminAdded,
        Roster.AdminRemoved: RosterAdminRemoved,
        User.Registered: UserRegistered,
        User.ProfileChanged: UserProfileChanged,
        User.RoleChanged: UserRoleChanged,
        User.Deactivated: UserDeactivated,
        User.Reactivated: UserReactivated,
        User.Deleted: UserDeleted,
        User.PasswordChanged: UserPasswordChanged,
        User.TotpSetupStarted: UserTotpSetupStarted,
        User.TotpEnabled: UserTotpEnabled,
        User.TotpDisabled: UserTotpDisabled,
        User.TotpReset: UserTotpReset,
        User.TotpCodeAccepted: UserTotpCodeAccepted,
        User.BackupCodeUsed: UserBackupCodeUsed,
        User.SignedIn: UserSignedIn,
        Session.Started: SessionStarted,
        Session.Refreshed: SessionRefreshed,
        Session.Ended: SessionEnded,
        ApiKey.Issued: ApiKeyIssued,
        ApiKey.Revoked: ApiKeyRevoked,
        Tariff.Opened: TariffOpened,
        Tariff.RateSet: TariffRateSet,
        ControlCommand.ControlRequested: ControlRequested,
        ControlCommand.ControlAttempted: ControlAttempted,
        ControlCommand.ControlSucceeded: ControlSucceeded,
        ControlCommand.ControlFailed: ControlFailed,
        SystemConfig.Initialised: SystemConfigInitialised,
        SystemConfig.ConfigChanged: ConfigChanged,
        ComplianceExport.Requested: ComplianceExportRequested,
        ComplianceExport.Completed: ComplianceExportCompleted,
        ComplianceExport.Failed: ComplianceExportFailed,
        DataExport.Requested: DataExportRequested,
        DataExport.Completed: DataExportCompleted,
        DataExport.Failed: DataExportFailed,
        DataExport.Downloaded: DataExportDownloaded,
        DataExport.Deleted: DataExportDeleted,
        Backup.Requested: BackupRequested,
        Backup.Completed: BackupCompleted,
        Backup.Failed: BackupFailed,
        Backup.Deleted: BackupDeleted,
        BackupRestore.Restored: BackupRestored,
        BackupRestore.Refused: BackupRestoreRefused,
        BackupSchedules.Opened: BackupSchedulesOpened,
        BackupSchedules.Set: BackupScheduleSet,
        BackupSchedules.Removed: BackupScheduleRemoved,
        BackupSchedules.Fired: BackupScheduleFired,
        SecurityActivity.Summarised: SecurityActivitySummarised,
        SslFiles.Opened: SslFilesOpened,
        SslFiles.CsrGenerated: SslCsrGenerated,
        SslFiles.CertificateInstalled: SslCertificateInstalled,
        SslFiles.KeyInstalled: SslKeyInstalled,
        SslFiles.FileDownloaded: SslFileDownloaded,
        # Alert rules: their targets hold sealed secrets and are never listed.
        AlertRule.Created: AlertRuleCreated,
        AlertRule.Updated: AlertRuleUpdated,
        AlertRule.Deleted: AlertRuleDeleted,
        Alert.Fired: AlertFired,
        Alert.Resolved: AlertResolved,
        AlertDelivery.Opened: AlertDeliveryOpened,
        AlertDelivery.Attempted: AlertDeliveryAttempted,
        AlertTicks.Opened: AlertTicksOpened,
        AlertTicks.Ticked: AlertTicksTicked,
        PartHealth.Opened: PartHealthOpened,
        PartHealth.Degraded: PartHealthDegraded,
        PartHealth.Recovered: PartHealthRecovered,
    }
)


def aggregate_name(event_cls: type[Any]) -> str:
    """The `aggregate` of an event: `device`, `meter`, else its aggregate's class name in lower case."""
    if issubclass(event_cls, MeterDay.Event):
        return "meter"
    if issubclass(event_cls, Device.Event):
        return "device"
    if issubclass(event_cls, ControlCommand.Event):
        return "command"
    owner = event_cls.__qualname__.rpartition(".")[0].rpartition(".")[2] or event_cls.__name__
    return owner.lower()


_BY_NAME: Mapping[tuple[str, str], type[EventData]] = MappingProxyType(
    {(aggregate_name(cls), cls.__name__): data for cls, data in CONTRACT.items()}
)


def data_type(aggregate: str, event: str) -> type[EventData] | None:
    """The Struct of an `(aggregate, event)` pair's `data`, or None if the contract has no such event."""
    return _BY_NAME.get((aggregate, event))


_warned: set[type[Any]] = set()
_warned_lock = threading.Lock()


def _warn_unlisted(event_cls: type[Any]) -> None:
    with _warned_lock:
        if event_cls in _warned:
            return
        _warned.add(event_cls)
    log.warning(
        "contract.event_not_listed",
        event_type=event_cls.__qualname__,
        module=event_cls.__module__,
        published="envelope without data",
    )


def event_data(event: DomainEventProtocol[Any]) -> EventData:
    """The published fields of one event: its contract Struct, or empty `EventData` if it has none.

    The lookup is by exact class: a subclass of a listed event may add fields and needs
    its own entry.
    """
    data_cls = CONTRACT.get(type(event))
    if data_cls is None:
        _warn_unlisted(type(event))
        return EventData()
    return msgspec.convert(event, data_cls, from_attributes=True)


def envelope_for(notification_id: int, event: DomainEventProtocol[Any]) -> Envelope[EventData]:
    """The envelope of one stored event at position `notification_id` of the log."""
    actor = getattr(event, "actor", None)
    timestamp: datetime = getattr(event, "timestamp")  # every aggregate event has one
    return Envelope(
        notification_id=notification_id,
        originator_id=event.originator_id,
        version=event.originator_version,
        aggregate=aggregate_name(type(event)),
        event=type(event).__name__,
        timestamp=timestamp.astimezone(timezone.utc),
        actor=NO_ACTOR if actor is None else str(actor),
        data=event_data(event),
    )


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Envelope[dict[str, Any]])


def encode_envelope(notification_id: int, event: DomainEventProtocol[Any]) -> bytes:
    """The JSON message body of one stored event, as published on the stream."""
    return _ENCODER.encode(envelope_for(notification_id, event))


def decode_envelope(raw: bytes) -> Envelope[dict[str, Any]]:
    """Any message body of the stream, with `data` as a JSON object (see `decode_data`)."""
    return _DECODER.decode(raw)


def decode_data(envelope: Envelope[dict[str, Any]]) -> EventData:
    """`data` as its event type's Struct, chosen by `aggregate` and `event`, to dispatch with `match`.

    Raises UnknownEvent for a pair this contract does not describe (skip those), and
    msgspec.ValidationError for data that does not fit its Struct.
    """
    data_cls = data_type(envelope.aggregate, envelope.event)
    if data_cls is None:
        raise UnknownEvent(f"no contract for {envelope.aggregate}.{envelope.event}")
    return msgspec.convert(envelope.data, data_cls)
