"""Domain errors: every rule the domain refuses is one of these, each with its own code.

Errors come in a few kinds (invalid request, unauthenticated, forbidden, not found,
conflict, unprocessable, unavailable); the edge maps a kind to a status (`api.errors`) and
answers with the error's `code`, so a code is written here and nowhere else.

One module, longer than most, on purpose: it is the catalogue of every refusal the domain can
give, small classes read as one list (a test checks that refusals sharing a code answer alike),
and splitting it by area would scatter the codes that clients match on.
"""

from __future__ import annotations

from datetime import datetime


class DomainError(Exception):
    """Base of every error the domain raises."""

    code = "DOMAIN_ERROR"


class InvalidRequest(DomainError):
    """The request itself is wrong; repeating it cannot succeed."""

    code = "INVALID_REQUEST"


class Unauthenticated(DomainError):
    """The caller did not prove who it is: no, wrong, expired or ended credentials."""

    code = "UNAUTHENTICATED"


class Forbidden(DomainError):
    """The caller is known but may not do this."""

    code = "FORBIDDEN"


class NotFound(DomainError):
    """The thing asked for does not exist."""

    code = "NOT_FOUND"


class Conflict(DomainError):
    """The request collides with the current state or with another writer."""

    code = "CONFLICT"


class Unprocessable(DomainError):
    """The request is well formed but cannot be carried out (e.g. the device does not answer)."""

    code = "UNPROCESSABLE"


class Unavailable(DomainError):
    """A part the system depends on is down; the same request may succeed later."""

    code = "SERVICE_UNAVAILABLE"


class InvalidText(InvalidRequest):
    """Free text holding a character no text field may hold (`domain.text`); `field` names the field."""

    code = "INVALID_TEXT"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidAddress(InvalidRequest):
    """A device address that is not `host` or `host:port`."""

    code = "INVALID_ADDRESS"


class DeviceAlreadyExists(Conflict):
    """The address is already a known device."""

    code = "DEVICE_EXISTS"


class ConcurrencyConflict(Conflict):
    """Another writer changed the same aggregate first; reload and decide again."""

    code = "CONFLICT"


class DeviceNotFound(NotFound):
    """No device has that id or address."""

    code = "DEVICE_NOT_FOUND"


class DeviceRemoved(NotFound):
    """The device was removed; it takes no further changes until added again."""

    code = "DEVICE_NOT_FOUND"


class OutletNotFound(NotFound):
    """A command named an outlet the device does not have."""

    code = "OUTLET_NOT_FOUND"


class DeviceError(Unprocessable):
    """Base of every failure reported by a device driver."""

    code = "DEVICE_ERROR"


class DeviceUnreachable(DeviceError):
    """No usable answer: connection refused, timeout, or a protocol error."""

    code = "DEVICE_UNREACHABLE"


class NoKasaDevice(DeviceUnreachable):
    """Adding a device found no Kasa device answering at the address.

    One answer whatever went wrong (refused, silent, another service, garbage), so that adding
    devices cannot tell open ports from closed ones nor show what they answered. `reason` says
    what did go wrong, for the server's log only.
    """

    MESSAGE = "no Kasa device answered at this address"

    def __init__(self, reason: str) -> None:
        super().__init__(self.MESSAGE)
        self.reason = reason


class UnsupportedDevice(DeviceError):
    """The device answered but is not a supported plug or strip."""

    code = "UNSUPPORTED_DEVICE"


class AuthenticationRequired(Unauthenticated):
    """No credentials came with a request that needs them (`Authorization: Bearer` or `X-API-Key`)."""

    code = "AUTHENTICATION_REQUIRED"


class InvalidCredentials(Unauthenticated):
    """Unknown user name or wrong password (the message never says which)."""

    code = "INVALID_CREDENTIALS"


class TotpRequired(Unauthenticated):
    """The password was right and the account has two-factor authentication: send a code as well."""

    code = "TOTP_REQUIRED"


class InvalidTotpCode(Unauthenticated):
    """A TOTP or backup code that does not match, or that was already used."""

    code = "INVALID_TOTP_CODE"


class AccountDisabled(Unauthenticated):
    """The account is deactivated: it can neither sign in nor use its sessions and keys."""

    code = "ACCOUNT_DISABLED"


class TokenInvalid(Unauthenticated):
    """A token that is malformed, forged, of the wrong type, or names an unknown session."""

    code = "TOKEN_INVALID"


class TokenExpired(Unauthenticated):
    """A genuine token past its expiry time."""

    code = "TOKEN_EXPIRED"


class SessionEnded(Unauthenticated):
    """The token's session was ended (logout, eviction, revocation, disabled user)."""

    code = "SESSION_ENDED"


class RefreshTokenReused(SessionEnded):
    """A refresh token older than the session's current one was presented: the session is now ended."""

    code = "TOKEN_REUSED"


class ApiKeyInvalid(Unauthenticated):
    """An API key that is malformed, unknown, wrong, revoked or expired."""

    code = "INVALID_API_KEY"


class InsufficientPermissions(Forbidden):
    """The caller lacks a permission; `required` names it (None: a read-only key tried to write)."""

    code = "INSUFFICIENT_PERMISSIONS"

    def __init__(self, message: str, *, required: str | None = None) -> None:
        super().__init__(message)
        self.required = required


class SessionRequired(Forbidden):
    """Account security (password, two-factor, issuing keys) is changed from a signed-in session, not with a key;
    sessions and keys are managed from a session or with an `admin`-scope key."""

    code = "SESSION_REQUIRED"


class StepUpRequired(Forbidden):
    """The change needs proof that the account's owner asks for it: the current password or a current TOTP code."""

    code = "STEP_UP_REQUIRED"


class UserNotFound(NotFound):
    code = "USER_NOT_FOUND"


class SessionNotFound(NotFound):
    code = "SESSION_NOT_FOUND"


class ApiKeyNotFound(NotFound):
    code = "API_KEY_NOT_FOUND"


class InvalidUsername(InvalidRequest):
    code = "INVALID_USERNAME"


class InvalidEmail(InvalidRequest):
    code = "INVALID_EMAIL"


class SetupAlreadyDone(Conflict):
    """First-run setup happened already (also: another setup won a race)."""

    code = "SETUP_ALREADY_DONE"


class SetupRequired(Conflict):
    """No administrator exists yet: first-run setup comes first."""

    code = "SETUP_REQUIRED"


class UserExists(Conflict):
    """The user name is taken (names of deleted users stay taken: their audit trail keeps them)."""

    code = "USER_EXISTS"


class LastAdmin(Conflict):
    """The change would leave no active administrator."""

    code = "LAST_ADMIN"


class TotpAlreadyEnabled(Conflict):
    code = "TOTP_ALREADY_ENABLED"


class TotpNotSetUp(Conflict):
    """Verifying a code before two-factor set-up was started."""

    code = "TOTP_NOT_SET_UP"


class TotpNotEnabled(Conflict):
    code = "TOTP_NOT_ENABLED"


class PasswordPolicy(Unprocessable):
    """A new password that breaks the policy; the message says which rule."""

    code = "PASSWORD_POLICY"


class WrongPassword(Unprocessable):
    """The current password given to confirm a change is wrong."""

    code = "WRONG_PASSWORD"


class DeviceTimeout(DeviceUnreachable):
    """The device did not answer within the time allowed."""

    code = "DEVICE_TIMEOUT"


class DevicePushOnly(Conflict):
    """The device only pushes its state: it has no address to reach and no relay to switch or rename on."""

    code = "DEVICE_PUSH_ONLY"


class DeviceControlDisabled(Forbidden):
    """The system configuration has `allow_device_control` off: nothing may be switched."""

    code = "DEVICE_CONTROL_DISABLED"


class CommandNotFound(NotFound):
    code = "COMMAND_NOT_FOUND"


class CommandSettled(Conflict):
    """The control command was already claimed or has its outcome: it is never executed twice."""

    code = "COMMAND_SETTLED"


class IdempotencyKeyReused(Unprocessable):
    """An `Idempotency-Key` already used by this caller for a different request."""

    code = "IDEMPOTENCY_KEY_REUSED"


class InvalidPayload(InvalidRequest):
    """A relay command payload that names no relay the device has, or an output it lacks."""

    code = "INVALID_PAYLOAD"


class InvalidType(InvalidRequest):
    """A data API `type` that is not one of its component types."""

    code = "INVALID_TYPE"


class InvalidConfig(Unprocessable):
    """A system configuration value out of range; `field` names it."""

    code = "INVALID_CONFIG"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidReadings(Unprocessable):
    """Readings to import that break a rule; the message names the first bad item and field."""

    code = "INVALID_READINGS"


class InvalidRate(Unprocessable):
    """A rate structure that cannot price energy; `field` names the first bad field."""

    code = "INVALID_RATE"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidRange(Unprocessable):
    """A time range, period, aggregation or time zone a query cannot use."""

    code = "INVALID_RANGE"


class RateNotFound(NotFound):
    """No rate version is in force at the time asked about."""

    code = "RATE_NOT_FOUND"


class InvalidCursor(InvalidRequest):
    """A pagination cursor that was not given out by this API, or was given out for other filters."""

    code = "INVALID_CURSOR"


class PageLimitExceeded(Unprocessable):
    """A page `limit` beyond the most one page may hold."""

    code = "LIMIT_TOO_LARGE"


class ComplianceExportNotFound(NotFound):
    code = "EXPORT_NOT_FOUND"


class ComplianceExportSettled(Conflict):
    """The export already completed or failed: its outcome is recorded once."""

    code = "EXPORT_SETTLED"


class ComplianceExportNotReady(Conflict):
    """The export's files are not there to download: still running, or failed."""

    code = "EXPORT_NOT_READY"


class TooManyRequests(DomainError):
    """The caller used up an allowance; the same request succeeds after `retry_after`."""

    code = "RATE_LIMIT_EXCEEDED"


class DataExportLimit(TooManyRequests):
    """The user requested `limit` data exports within the last hour already."""

    code = "RATE_LIMIT_EXCEEDED"

    def __init__(self, message: str, *, limit: int, retry_after: datetime) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after


class DataExportNotFound(NotFound):
    code = "DATA_EXPORT_NOT_FOUND"


class DataExportAccessDenied(Forbidden):
    """Another user's data export: only its owner and admins may see, download or delete it."""

    code = "ACCESS_DENIED"

    def __init__(self, message: str, *, owner: str) -> None:
        super().__init__(message)
        self.owner = owner


class DataExportNotReady(Conflict):
    """The export's file is not there: still being written, failed, deleted or expired."""

    code = "DATA_EXPORT_NOT_READY"


class DataExportGone(DataExportNotReady):
    """The export was deleted or expired; its file is gone."""

    code = "DATA_EXPORT_GONE"


class InvalidExport(InvalidRequest):
    """A data export request naming an unknown device, field, format, aggregation, zone or a bad range."""

    code = "INVALID_EXPORT"


class BackupNotFound(NotFound):
    code = "BACKUP_NOT_FOUND"


class BackupSettled(Conflict):
    """The backup already completed or failed, or its archive was already deleted."""

    code = "BACKUP_SETTLED"


class BackupRefused(Unprocessable):
    """An archive that cannot be restored: wrong passphrase, damaged, truncated or from a newer version."""

    code = "BACKUP_REFUSED"


class BackupBusy(Conflict):
    """Another backup or restore is running in this process."""

    code = "BACKUP_BUSY"


class BackupScheduleNotFound(NotFound):
    code = "BACKUP_SCHEDULE_NOT_FOUND"


class InvalidSchedule(InvalidRequest):
    """A cron expression that does not parse, or a schedule past the limit."""

    code = "INVALID_SCHEDULE"


class AlertRuleNotFound(NotFound):
    code = "ALERT_RULE_NOT_FOUND"


class InvalidAlertRule(InvalidRequest):
    """An alert rule whose kind lacks what it needs (a device, a threshold, a part) or names a target badly."""

    code = "INVALID_ALERT_RULE"
