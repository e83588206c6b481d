"""Adding a device: contact it first, then store it with its first reading."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from adapters.eventstore import WattLedger
from adapters.kasa_driver import KasaDriver
from domain.address import DeviceAddress


async def contact_and_add(
    app: WattLedger, driver: KasaDriver, address: DeviceAddress, *, alias: str | None, actor: str
) -> int:
    """Poll the device at `address` and add it with that reading; nothing is stored if it does not answer.

    Raises DeviceUnreachable / UnsupportedDevice from the driver, DeviceAlreadyExists from the store.
    Returns the notification id of the last event stored.
    """
    snapshot = await driver.poll(address)
    return await asyncio.to_thread(
        app.add_device, address, snapshot, alias=alias, actor=actor, measured_at=datetime.now(timezone.utc)
    )
