"""The audit log's words: what each stored event did, to what and from where, in a sentence a person reads.

`describe` words one event from the public contract's data of it (`adapters.contract`),
so no secret can reach the log. `Names` holds what the events called users, keys and
devices (a `NameRow` each, kept by the audit projector in `wl_read.audit_names`), so
the words are those of the moment: a rename reads "renamed device Old to New".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import msgspec

from adapters.contract import (
    NO_ACTOR,
    AlertDeliveryAttempted,
    AlertDeliveryOpened,
    AlertFired,
    AlertResolved,
    AlertRuleCreated,
    AlertRuleUpdated,
    ApiKeyIssued,
    BackupRestoreRefused,
    ComplianceExportCompleted,
    ComplianceExportFailed,
    ComplianceExportRequested,
    DeviceAdded,
    DeviceRenamed,
    DeviceRestored,
    DeviceStateChanged,
    DeviceWentOffline,
    MeterDayOpened,
    PartHealthDegraded,
    PartHealthRecovered,
    ReadingRecorded,
    SecurityActivitySummarised,
    SslCertificateInstalled,
    SslCsrGenerated,
    SslFileDownloaded,
    SslKeyInstalled,
    RosterAdminAdded,
    RosterAdminRemoved,
    RosterFounded,
    SessionEnded,
    SessionRefreshed,
    SessionStarted,
    UserRegistered,
    UserRoleChanged,
    UserSignedIn,
    aggregate_name,
    event_data,
)

__all__ = ["NameRow", "Names", "describe", "name_new_ones", "referenced"]


class NameRow(msgspec.Struct, kw_only=True):
    """What the events called a user, a key or a device (by id); `owner` is a key's user."""

    id: UUID
    kind: str
    name: str
    owner: UUID | None = None


@dataclass
class Names:
    """The names a batch needs, loaded once and updated in memory as its events go by."""

    rows: dict[UUID, NameRow]
    changed: set[UUID]

    def name(self, ident: UUID | str | None, fallback: str) -> str:
        row = self.rows.get(ident) if isinstance(ident, UUID) else None
        return row.name if row else fallback

    def set(self, ident: UUID, kind: str, name: str, owner: UUID | None = None) -> None:
        self.rows[ident] = NameRow(id=ident, kind=kind, name=name, owner=owner)
        self.changed.add(ident)

    def device(self, ident: UUID) -> str:
        return f"device {self.name(ident, str(ident))}"

    def user(self, ident: UUID) -> str:
        return f"user {self.name(ident, str(ident))}"

    def actor(self, actor: str) -> tuple[str, str]:
        """The kind and words of an actor string (`user:<id>`, `key:<id>`, `cli:<login>`, `system:<part>`)."""
        kind, _, rest = actor.partition(":")
        ident = _uuid(rest)
        if kind == "user":
            return "user", self.user(ident) if ident else f"user {rest}"
        if kind == "key":
            row = self.rows.get(ident) if ident else None
            if row is None:
                return "key", f"API key {rest}"
            return "key", f"API key {row.name} of {self.user(row.owner)}" if row.owner else f"API key {row.name}"
        if kind == "cli":
            return "cli", f"command line ({rest})"
        if kind == "system" or actor == NO_ACTOR:
            return "system", f"system ({rest})" if rest else "system"
        return "other", actor


def _uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


def referenced(events: Sequence[object]) -> set[UUID]:
    """Every id a batch's words may need a name for."""
    ids: set[UUID] = set()
    for event in events:
        ids.add(getattr(event, "originator_id"))
        for attr in ("device_id", "user_id", "first_admin"):
            value = getattr(event, attr, None)
            if isinstance(value, UUID):
                ids.add(value)
        actor = getattr(event, "actor", None)
        if isinstance(actor, str) and (ident := _uuid(actor.partition(":")[2])) is not None:
            ids.add(ident)
    return ids


def _on_off(is_on: bool) -> str:
    return "on" if is_on else "off"


def describe(event: object, names: Names) -> tuple[str, str, str | None]:
    """What an event did in words, to what, and from where (if the event knows): `(action, target, source)`.

    Updates `names` with what the event names (a new user, key or device alias) after
    describing it, so a rename reads "renamed device Old to New".
    """
    ident: UUID = getattr(event, "originator_id")
    data = event_data(event)  # type: ignore[arg-type]
    match data:
        case DeviceAdded():
            names.set(ident, "device", data.alias)
            return f"added device {data.alias} ({data.address}, {data.model})", names.device(ident), None
        case DeviceRenamed():
            target = names.device(ident)
            names.set(ident, "device", data.alias)
            return f"renamed {target} to {data.alias}", target, None
        case DeviceRestored():
            names.set(ident, "device", data.alias)
            return f"added {names.device(ident)} again ({data.model})", names.device(ident), None
        case DeviceStateChanged():
            target = names.device(ident)
            where = target if data.outlet_index is None else f"outlet {data.outlet_index} of {target}"
            return f"switched {where} {_on_off(data.is_on)}", target, None
        case DeviceWentOffline():
            target = names.device(ident)
            return f"marked {target} offline after {data.missed_polls} missed polls", target, None
        case MeterDayOpened():
            target = names.device(data.device_id)
            return f"opened the readings of {target} for {data.day.isoformat()}", target, None
        case ReadingRecorded():
            target = names.device(data.device_id)
            power = "no power reading" if data.power_w is None else f"{data.power_w:g} W"
            return f"recorded a reading of {target} ({power}, {_on_off(data.is_on)})", target, None
        case RosterFounded():
            return f"completed first-run setup with administrator {names.user(data.first_admin)}", "the roster", None
        case RosterAdminAdded():
            return f"counted {names.user(data.user_id)} as an active administrator", "the roster", None
        case RosterAdminRemoved():
            return f"no longer counted {names.user(data.user_id)} as an active administrator", "the roster", None
        case UserRegistered():
            names.set(ident, "user", data.username)
            return f"created {names.user(ident)} with role {data.role}", names.user(ident), None
        case UserRoleChanged():
            return f"changed the role of {names.user(ident)} to {data.role}", names.user(ident), None
        case UserSignedIn():
            return f"signed in {names.user(ident)} (session {data.session_id})", names.user(ident), None
        case SessionStarted():
            target = f"session of {names.user(data.user_id)}"
            return f"started a {target} from {data.ip} ({data.user_agent or 'no user agent'})", target, data.ip
        case SessionRefreshed():
            return f"refreshed a session (generation {data.generation})", f"session {ident}", None
        case SessionEnded():
            return f"ended a session ({data.reason})", f"session {ident}", None
        case ComplianceExportRequested():
            filters = ", ".join(f"{k}={v}" for k, v in sorted(data.filters.items())) or "no filters"
            return f"requested a {data.format} compliance export ({filters})", f"compliance export {ident}", None
        case ComplianceExportCompleted():
            upto = f" up to position {data.last_position}" if data.last_position is not None else ""
            return f"completed compliance export {ident}: {data.count} events{upto}", f"compliance export {ident}", None
        case ComplianceExportFailed():
            return f"failed compliance export {ident}: {data.reason}", f"compliance export {ident}", None
        case SslCsrGenerated():
            return f"generated a key and a signing request for {data.subject}", "the HTTPS certificate", None
        case SslCertificateInstalled():
            until = data.valid_until.date().isoformat()
            return f"installed the HTTPS certificate {data.subject} (issued by {data.issuer}, valid until {until})", \
                "the HTTPS certificate", None
        case SslKeyInstalled():
            return "installed the HTTPS private key", "the HTTPS certificate", None
        case SslFileDownloaded():
            return f"downloaded {data.filename}", "the HTTPS certificate", None
        case SecurityActivitySummarised():
            refused = sum(c.count for c in data.counts) + data.others
            by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(_by_kind(data).items()))
            return f"counted {refused} refused requests from {len(data.counts)} sources ({by_kind})", \
                "security", None
        case BackupRestoreRefused():
            return f"refused to restore a backup archive (SHA-256 {data.sha256[:12]}, {data.size} bytes): " \
                f"{data.reason}", "backups", None
        case ApiKeyIssued():
            names.set(ident, "key", data.name, owner=data.user_id)
            target = f"API key {data.name}"
            return f"issued {target} ({data.scope}) for {names.user(data.user_id)}", target, None
        case AlertRuleCreated() | AlertRuleUpdated():
            verb = "created" if isinstance(data, AlertRuleCreated) else "changed"
            names.set(ident, "alertrule", data.name)
            state = "" if data.enabled else ", disabled"
            return f"{verb} alert rule {data.name} ({_rule_words(data, names)}{state})", f"alert rule {data.name}", None
        case AlertFired():
            target = f"alert rule {data.rule_name}"
            return f"fired alert {data.number} of {target}: {data.detail}", target, None
        case AlertResolved():
            return f"resolved alert {ident}: {data.detail}", f"alert {ident}", None
        case AlertDeliveryOpened():
            return f"began delivering the {data.phase} notice of alert {data.alert_id} to target {data.target_id}", \
                f"alert {data.alert_id}", None
        case AlertDeliveryAttempted():
            outcome = "delivered" if data.ok else "gave up on" if data.gave_up else "failed to deliver"
            why = "" if data.ok else f" ({data.error})"
            return f"{outcome} an alert notice, attempt {data.attempt}{why}", f"alert delivery {ident}", None
        case PartHealthDegraded():
            return f"saw part {data.part} degraded: {data.error}", f"part {data.part}", None
        case PartHealthRecovered():
            return f"saw part {data.part} running again", f"part {data.part}", None
    return _plain(event, ident, names)


def _rule_words(data: AlertRuleCreated | AlertRuleUpdated, names: Names) -> str:
    kind = data.kind if isinstance(data, AlertRuleCreated) else "rule"
    watched = f" of {names.device(data.device_id)}" if isinstance(data, AlertRuleCreated) and data.device_id else ""
    limit = f" beyond {data.threshold:g}" if data.threshold is not None else ""
    held = f" for {data.for_s // 60} min" if data.for_s else ""
    part = f" of part {data.part}" if data.part else ""
    return f"{kind}{watched}{part}{limit}{held}"


_PLAIN: dict[tuple[str, str], str] = {
    ("device", "Removed"): "removed {device}",
    ("device", "CameOnline"): "saw {device} come back online",
    ("user", "ProfileChanged"): "changed the profile of {user}",
    ("user", "Deactivated"): "deactivated {user}",
    ("user", "Reactivated"): "reactivated {user}",
    ("user", "Deleted"): "deleted {user}",
    ("user", "PasswordChanged"): "changed the password of {user}",
    ("user", "TotpSetupStarted"): "started two-factor set-up for {user}",
    ("user", "TotpEnabled"): "turned two-factor authentication on for {user}",
    ("user", "TotpDisabled"): "turned two-factor authentication off for {user}",
    ("user", "TotpCodeAccepted"): "accepted a two-factor code of {user}",
    ("user", "BackupCodeUsed"): "spent a backup code of {user}",
    ("apikey", "Revoked"): "revoked {key}",
    ("alertrule", "Deleted"): "deleted {alertrule}",
    ("alertticks", "Ticked"): "ticked the alert clock",
    ("alertticks", "Opened"): "started the alert clock for a new day",
    ("parthealth", "Opened"): "began keeping the health of a supervised part",
}


def _by_kind(data: SecurityActivitySummarised) -> dict[str, int]:
    totals: dict[str, int] = {}
    for c in data.counts:
        totals[c.kind] = totals.get(c.kind, 0) + c.count
    return totals


def _plain(event: object, ident: UUID, names: Names) -> tuple[str, str, str | None]:
    """Events whose words need no data: from the table above, or a generic sentence."""
    aggregate, kind = aggregate_name(type(event)), type(event).__name__
    targets = {
        "device": names.device(ident), "user": names.user(ident),
        "key": f"API key {names.name(ident, str(ident))}", "alertrule": f"alert rule {names.name(ident, str(ident))}",
    }  # fmt: skip
    target = {"device": targets["device"], "user": targets["user"], "apikey": targets["key"],
              "alertrule": targets["alertrule"]}.get(aggregate, f"{aggregate} {ident}")  # fmt: skip
    template = _PLAIN.get((aggregate, kind))
    if template is None:
        return f"recorded {kind} on {target}", target, None
    return template.format(**targets), target, None


def name_new_ones(events: Sequence[object], names: Names) -> None:
    """Name the users, keys and devices a batch creates before its words are written: first-run
    setup names its administrator (as actor and as roster member) before registering it."""
    for event in events:
        ident: UUID = getattr(event, "originator_id")
        if ident in names.rows:
            continue
        match event_data(event):  # type: ignore[arg-type]
            case UserRegistered(username=username):
                names.set(ident, "user", username)
            case ApiKeyIssued(name=name, user_id=owner):
                names.set(ident, "key", name, owner=owner)
            case DeviceAdded(alias=alias):
                names.set(ident, "device", alias)
