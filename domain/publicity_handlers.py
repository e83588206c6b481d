"""Making a device's badges public or private: a device setting, recorded as an event with its actor."""

from __future__ import annotations

from uuid import UUID

import msgspec

from domain.commands import Stored
from domain.errors import DeviceNotFound
from domain.ports import EventStore
from domain.retry import retrying


class SetPublic(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    public: bool
    actor: str


class PublicityHandlers:
    """A device's publicity, set and read from its events, over the event store port."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def is_public(self, device_id: UUID) -> bool:
        """Whether a present device's badges are shown; False for an unknown or removed one."""
        device = await self.store.device(device_id)
        return device is not None and not device.removed and bool(getattr(device, "public", False))

    async def set_public(self, command: SetPublic) -> Stored:
        """Raises DeviceNotFound / DeviceRemoved. Setting what is already set stores nothing (position 0)."""

        async def attempt() -> Stored:
            device = await self.store.device(command.device_id)
            if device is None:
                raise DeviceNotFound(f"no device with id {command.device_id}")
            device.set_public(command.public, actor=command.actor)
            if not device.pending_events:
                return Stored(position=0)
            return Stored(position=await self.store.save(device))

        return await retrying(attempt)
