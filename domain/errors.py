"""Domain errors: every rule the domain refuses is one of these."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises."""

    code = "DOMAIN_ERROR"


class InvalidAddress(DomainError):
    """A device address that is not `host` or `host:port`."""

    code = "INVALID_ADDRESS"


class DeviceAlreadyExists(DomainError):
    """The address is already a known device."""

    code = "DEVICE_EXISTS"


class DeviceNotFound(DomainError):
    """No device has that id or address."""

    code = "DEVICE_NOT_FOUND"


class DeviceRemoved(DomainError):
    """The device was removed; it takes no further changes until added again."""

    code = "DEVICE_REMOVED"
