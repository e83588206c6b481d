"""Domain errors: every rule the domain refuses is one of these, each with its own code.

Errors come in a few kinds (invalid request, not found, conflict, unprocessable,
unavailable); the HTTP edge maps a kind to a status and answers with the error's
`code`, so a code is written here and nowhere else.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises."""

    code = "DOMAIN_ERROR"


class InvalidRequest(DomainError):
    """The request itself is wrong; repeating it cannot succeed."""

    code = "INVALID_REQUEST"


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


class UnsupportedDevice(DeviceError):
    """The device answered but is not a supported plug or strip."""

    code = "UNSUPPORTED_DEVICE"


STATUS_OF_KIND: dict[type[DomainError], int] = {
    InvalidRequest: 400,
    NotFound: 404,
    Conflict: 409,
    Unprocessable: 422,
    Unavailable: 503,
}
"""The status (HTTP numbering, used by REST and by NATS replies alike) of each kind of error."""


def status_of(error: DomainError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS_OF_KIND:
            return STATUS_OF_KIND[kind]
    return 500
