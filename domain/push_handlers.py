"""The push device use cases: adding a device that only pushes, opening a device to pushes, rotating
its token, taking a push, and marking silent push devices offline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal
from uuid import UUID

import msgspec

from domain.device import Device
from domain.energy_handlers import EnergyHandlers, ImportReadings
from domain.errors import DeviceNotFound, InvalidRequest
from domain.imports import ImportedReading
from domain.ports import Clock, EventStore, SecretMaker
from domain.push import (
    MAX_GRACE_S, MAX_INTERVAL_S, MIN_INTERVAL_S, PUSH_REGISTRY_ID, PushMonitor, PushRegistry, PushToken, push_monitor_id, push_token_id,
)  # fmt: skip
from domain.retry import retrying
from domain.text import check_text

PUSH_ACTOR = "system:push"
DEFAULT_PUSH_MODEL = "push meter"


def check_timing(interval_s: int, grace_s: int) -> None:
    """Raises InvalidRequest for an interval or grace out of range."""
    if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S or not 0 <= grace_s <= MAX_GRACE_S:
        raise InvalidRequest(
            f"interval_s is {MIN_INTERVAL_S} to {MAX_INTERVAL_S} seconds and grace_s 0 to {MAX_GRACE_S}"
        )


class PushOpened(msgspec.Struct, frozen=True, kw_only=True):
    """A push device's new token: shown here once, stored only as the id its digest gives."""

    device_id: UUID
    token: str
    interval_s: int
    grace_s: int
    position: int


class PushTaken(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    recorded: int
    position: int


class PushHandlers:
    """The write side of push devices."""

    def __init__(self, store: EventStore, clock: Clock, secrets: SecretMaker, energy: EnergyHandlers) -> None:
        self.store = store
        self.clock = clock
        self.secrets = secrets
        self.energy = energy

    async def open_push(self, device_id: UUID, *, interval_s: int, grace_s: int, actor: str) -> PushOpened:
        """Let a present device push, with a new token; opening it again rotates the token.
        Raises DeviceNotFound, InvalidRequest for an interval or grace out of range."""
        check_timing(interval_s, grace_s)
        token = self.secrets.key_secret()
        digest = self.secrets.digest(token)

        async def attempt() -> PushOpened:
            device = await self.store.device(device_id)
            if device is None or device.removed:
                raise DeviceNotFound(f"no device with id {device_id}")
            new = PushToken.issue(digest, device_id=device_id, actor=actor)
            monitor = await self.store.aggregate(push_monitor_id(device_id), PushMonitor)
            if monitor is None:
                monitor = PushMonitor(
                    device_id=device_id, interval_s=interval_s, grace_s=grace_s, token_id=new.id,
                    opened_at=self.clock.now(), actor=actor,
                )  # fmt: skip
                registry = await self.store.aggregate(PUSH_REGISTRY_ID, PushRegistry) or PushRegistry(actor=actor)
                registry.add(device_id)
                position = await self.store.save(monitor, new, registry)
            else:
                old = await self.store.aggregate(monitor.token_id, PushToken)
                monitor.rotate(new.id, actor=actor)
                if old is not None:
                    old.revoke(actor=actor)
                position = await self.store.save(monitor, new, *([old] if old is not None else []))
            return PushOpened(
                device_id=device_id, token=token, interval_s=monitor.interval_s, grace_s=monitor.grace_s,
                position=position,
            )  # fmt: skip

        return await retrying(attempt)

    async def add_push_device(
        self, *, alias: str, model: str | None, interval_s: int, grace_s: int, actor: str
    ) -> PushOpened:
        """Add a meter that only pushes (`Device.push_only_device`): no address is contacted and no
        poller ever polls it. The device, its monitor, its first token and its place in the push
        registry are stored in one transaction; the token is in the answer only.
        Raises InvalidText (alias or model) and InvalidRequest (interval or grace out of range),
        storing nothing."""
        check_text(alias, field="alias")
        if model is not None:
            check_text(model, field="model")
        check_timing(interval_s, grace_s)
        token = self.secrets.key_secret()
        digest = self.secrets.digest(token)

        async def attempt() -> PushOpened:
            device = Device.push_only_device(alias=alias, model=model or DEFAULT_PUSH_MODEL, actor=actor)
            new = PushToken.issue(digest, device_id=device.id, actor=actor)
            monitor = PushMonitor(
                device_id=device.id, interval_s=interval_s, grace_s=grace_s, token_id=new.id,
                opened_at=self.clock.now(), actor=actor,
            )  # fmt: skip
            registry = await self.store.aggregate(PUSH_REGISTRY_ID, PushRegistry) or PushRegistry(actor=actor)
            registry.add(device.id)
            position = await self.store.save(device, monitor, new, registry)
            return PushOpened(
                device_id=device.id, token=token, interval_s=interval_s, grace_s=grace_s, position=position
            )

        return await retrying(attempt)

    async def rotate_token(self, device_id: UUID, *, actor: str) -> PushOpened:
        """A new token for a push device; the old one stops working in the same transaction.
        Raises DeviceNotFound for a device that does not push."""
        monitor = await self.store.aggregate(push_monitor_id(device_id), PushMonitor)
        if monitor is None:
            raise DeviceNotFound(f"device {device_id} does not push")
        return await self.open_push(device_id, interval_s=monitor.interval_s, grace_s=monitor.grace_s, actor=actor)

    async def push(
        self, token: str, status: Literal["up", "down"], readings: Sequence[ImportedReading] = ()
    ) -> PushTaken:
        """Take one push: readings stored as `ReadingRecorded`, then the device up or down.
        Raises DeviceNotFound for an unknown or revoked token (the same answer for both), and
        InvalidReadings (nothing stored) for a bad reading."""
        found = await self.store.aggregate(push_token_id(self.secrets.digest(token)), PushToken)
        if found is None or found.revoked:
            raise DeviceNotFound("no push device has this token")
        device_id = found.device_id
        recorded = 0
        if readings:
            imported = await self.energy.import_readings(
                ImportReadings(device_id=device_id, readings=tuple(readings), actor=PUSH_ACTOR)
            )
            recorded = imported.recorded

        async def attempt() -> int:
            device = await self.store.device(device_id)
            monitor = await self.store.aggregate(push_monitor_id(device_id), PushMonitor)
            if device is None or device.removed or monitor is None:
                raise DeviceNotFound("no push device has this token")
            monitor.hear(self.clock.now(), up=status == "up")
            if status == "up":
                device.came_online(actor=PUSH_ACTOR)
            else:
                device.went_offline(0, actor=PUSH_ACTOR)
            return await self.store.save(device, monitor)

        return PushTaken(device_id=device_id, recorded=recorded, position=await retrying(attempt))

    async def mark_silent(self, device_ids: Sequence[UUID]) -> int:
        """Mark offline, once, each push device among `device_ids` whose last push is older than its
        interval plus grace; a device already offline records nothing. Returns the last position (0: none)."""
        now = self.clock.now()
        position = 0
        for device_id in device_ids:

            async def attempt(device_id: UUID = device_id) -> int:
                monitor = await self.store.aggregate(push_monitor_id(device_id), PushMonitor)
                device = await self.store.device(device_id)
                if monitor is None or device is None or not device.online or device.removed:
                    return 0
                missed = monitor.missed_pushes(now)
                if not missed:
                    return 0
                device.went_offline(missed, actor=PUSH_ACTOR)
                return await self.store.save(device)

            position = max(position, await retrying(attempt))
        return position

    async def mark_all_silent(self) -> int:
        """`mark_silent` over every device ever opened to pushes."""
        registry = await self.store.aggregate(PUSH_REGISTRY_ID, PushRegistry)
        return await self.mark_silent(registry.device_ids) if registry is not None else 0
