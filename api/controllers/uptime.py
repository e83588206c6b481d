"""`GET /api/device/{device}/uptime`: a device's uptime and outages, from its events in the log."""

from __future__ import annotations

import anyio.to_thread
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from api.controllers.devices import resolve_device
from api.deps import DeviceDeps
from domain.access import Permission
from domain.uptime import Uptime, parse_period, uptime
from projections.device_as_of import device_events_until


async def device_uptime(deps: DeviceDeps, device: str, period: str) -> Uptime:
    """The uptime of a present device over the `period` before now (the injected clock's).
    Raises DeviceNotFound and InvalidRange."""
    span = parse_period(period)
    view = await resolve_device(deps.reads, device)
    now = deps.clock.now()
    events = await anyio.to_thread.run_sync(device_events_until, deps.store, view.device_id, now)
    return uptime(events, now - span, now)


class UptimeController(Controller):
    path = "/api/device"
    tags = ["devices"]

    @get("/{device:str}/uptime", operation_id="getDeviceUptime", opt={"permission": Permission.DEVICES_VIEW})
    async def show(
        self, device: FromPath[str], device_deps: NamedDependency[DeviceDeps], period: FromQuery[str] = "24h"
    ) -> Uptime:
        """The share of `period` (`24h`, `7d`, `30d`, any whole hours, days or weeks up to 366 days) before
        now that the device was online, and each outage in it (`end` null: still offline), read from its
        `WentOffline` / `CameOnline` events. Time before it was added or while it was removed is not
        counted (`watched_seconds`); `percentage` is null when none of the period was. 404 unknown
        device; 422 `INVALID_RANGE` for a bad period."""
        return await device_uptime(device_deps, device, period)
