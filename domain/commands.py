"""Every state change of the system is one of these commands, handled in `domain.handlers`.

Entry points (REST, NATS request/reply, the CLI, the poller) build a command,
naming the actor who asks for it, and hand it to the same handler.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from domain.address import parse_address
from domain.device import device_id_for
from domain.readings import DeviceSnapshot


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="command"):
    """Base of every command; `actor` is who asks (a user, an API key, `system:<part>`)."""

    actor: str


class AddDevice(Command, frozen=True, kw_only=True, tag="add_device"):
    """Contact the device at `address` and add it with its first reading; `alias` overrides its name."""

    address: str
    alias: str | None = None


class RemoveDevice(Command, frozen=True, kw_only=True, tag="remove_device"):
    device_id: UUID


class RenameDevice(Command, frozen=True, kw_only=True, tag="rename_device"):
    device_id: UUID
    alias: str


class DiscoverDevices(Command, frozen=True, kw_only=True, tag="discover_devices"):
    """Discover devices at `target` and add the ones not yet known."""

    target: str
    port: int | None = None


class PollResult(msgspec.Struct, frozen=True, kw_only=True):
    """A good poll of one known device."""

    device_id: UUID
    measured_at: datetime
    snapshot: DeviceSnapshot


class MissedPolls(msgspec.Struct, frozen=True, kw_only=True):
    """A device that has failed `count` polls in a row and is now to be marked offline."""

    device_id: UUID
    count: int


class RecordPolls(Command, frozen=True, kw_only=True, tag="record_polls"):
    """Store what a poller saw: readings, relay changes, devices gone offline."""

    results: tuple[PollResult, ...] = ()
    offline: tuple[MissedPolls, ...] = ()


def device_key(key: str) -> UUID:
    """A device id from its id or any spelling of its address (raises InvalidAddress)."""
    try:
        return UUID(key)
    except ValueError:
        return device_id_for(str(parse_address(key)))


class DeviceAdded(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    address: str
    position: int


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """The notification id of the last event a command stored (0: it stored nothing)."""

    position: int


class PollsRecorded(msgspec.Struct, frozen=True, kw_only=True):
    recorded: int
    position: int


class Discovered(msgspec.Struct, frozen=True, kw_only=True):
    discovered: int
    added: list[str]
    already_known: list[str]
    unreachable: list[str]
    position: int
