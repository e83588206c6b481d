"""Seeding event histories for tests that need stored events but do not test the write path."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from uuid import UUID

from adapters.eventstore import PollResult, WattLedger
from domain.address import DeviceAddress, parse_address
from domain.device import device_id_for
from domain.readings import DeviceSnapshot


def seed_device(
    app: WattLedger,
    address: str | DeviceAddress,
    snapshot: DeviceSnapshot,
    *,
    measured_at: datetime,
    alias: str | None = None,
    actor: str = "test",
) -> UUID:
    """Store an added device with its first reading; returns the device id."""
    parsed = parse_address(address) if isinstance(address, str) else address
    app.add_device(parsed, snapshot, alias=alias, actor=actor, measured_at=measured_at)
    return device_id_for(str(parsed))


def seed_polls(
    app: WattLedger,
    results: Iterable[PollResult],
    offline: Mapping[UUID, int] | None = None,
    *,
    actor: str = "test",
) -> int:
    """Store poll results (and missed polls) as the poller would; returns readings recorded."""
    return app.record_polls(list(results), dict(offline or {}), actor=actor)
