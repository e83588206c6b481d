"""SVG badges of public devices, for status pages, and the device setting that makes a device public.

A badge is served for a device marked public (`PUT /api/device/{device}/public`). Any other
device, an unknown one, and a removed one get the same grey "N/A" badge of that kind: it names
no device and does not tell whether one exists. A bad duration or period is refused (422) before
any device is looked at, so the refusal tells nothing either.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated
from uuid import UUID

import anyio.to_thread
import msgspec
from litestar import Controller, Response, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from adapters.eventstore import StoreUnitOfWork
from api.badge_svg import BLUE, GREEN, GREY, RED, badge
from api.controllers.devices import resolve_device
from api.guards import NO_CREDENTIALS
from api.deps import DeviceDeps
from domain.access import Permission, Principal
from domain.errors import DeviceNotFound
from domain.publicity_handlers import PublicityHandlers, SetPublic
from domain.uptime import parse_period, uptime
from projections.device_as_of import device_events_until
from projections.devices import DeviceView
from projections.energy_queries import totals

SVG = "image/svg+xml"
CACHE = {"Cache-Control": "max-age=60"}


class Publicity(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Whether the device's badges are shown to anyone."""

    public: Annotated[bool, msgspec.Meta(description="true: badges show its name and state; false: N/A")]


class PublicityView(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    public: bool


def _svg(label: str, value: str, color: str) -> Response[bytes]:
    return Response(badge(label, value, color), media_type=SVG, headers=CACHE)


def _unavailable(kind: str) -> Response[bytes]:
    return _svg(kind, "N/A", GREY)


async def _public_device(deps: DeviceDeps, key: str) -> DeviceView | None:
    """The present, public device `key` names, or None (unknown, removed or private alike)."""
    try:
        view = await resolve_device(deps.reads, key)
    except DeviceNotFound:
        return None
    publicity = PublicityHandlers(StoreUnitOfWork(deps.store))
    return view if await publicity.is_public(view.device_id) else None


class BadgesController(Controller):
    path = "/api"
    tags = ["badges"]

    @put("/device/{device:str}/public", operation_id="setDevicePublic", opt={"permission": Permission.DEVICES_MANAGE})
    async def set_public(
        self, device: FromPath[str], data: JSONBody[Publicity], principal: NamedDependency[Principal],
        device_deps: NamedDependency[DeviceDeps],
    ) -> PublicityView:  # fmt: skip
        """Show the device's badges to anyone (`public: true`) or stop (`false`); recorded as an event with
        its actor. 404 unknown or removed device."""
        view = await resolve_device(device_deps.reads, device)
        publicity = PublicityHandlers(StoreUnitOfWork(device_deps.store))
        await publicity.set_public(SetPublic(device_id=view.device_id, public=data.public, actor=principal.actor))
        return PublicityView(device_id=view.device_id, public=data.public)

    @get("/badge/{device:str}/status", operation_id="getStatusBadge", opt={"public": True}, security=NO_CREDENTIALS,
         media_type=SVG)  # fmt: skip
    async def status(self, device: FromPath[str], device_deps: NamedDependency[DeviceDeps]) -> Response[bytes]:
        """SVG: a public device's name and `up` or `down`; any other device a grey `N/A`. Cached 60 s."""
        view = await _public_device(device_deps, device)
        if view is None:
            return _unavailable("status")
        return _svg(view.alias, "up" if view.online else "down", GREEN if view.online else RED)

    @get("/badge/{device:str}/uptime/{duration:str}", operation_id="getUptimeBadge", opt={"public": True},
         security=NO_CREDENTIALS, media_type=SVG)  # fmt: skip
    async def uptime(
        self, device: FromPath[str], duration: FromPath[str], device_deps: NamedDependency[DeviceDeps]
    ) -> Response[bytes]:
        """SVG: a public device's uptime over `duration` (`24h`, `7d`, `30d`, ...), as
        `GET /api/device/{device}/uptime`; any other device a grey `N/A`. 422 `INVALID_RANGE` for a bad duration."""
        span = parse_period(duration)
        view = await _public_device(device_deps, device)
        if view is None:
            return _unavailable("uptime")
        now = device_deps.clock.now()
        events = await anyio.to_thread.run_sync(device_events_until, device_deps.store, view.device_id, now)
        share = uptime(events, now - span, now).percentage
        if share is None:
            return _svg(f"{view.alias} uptime {duration}", "no data", GREY)
        color = GREEN if share >= 99 else BLUE if share >= 90 else RED
        return _svg(f"{view.alias} uptime {duration}", f"{share:.2f}%", color)

    @get("/badge/{device:str}/power", operation_id="getPowerBadge", opt={"public": True}, security=NO_CREDENTIALS,
         media_type=SVG)  # fmt: skip
    async def power(self, device: FromPath[str], device_deps: NamedDependency[DeviceDeps]) -> Response[bytes]:
        """SVG: a public device's latest power in watts; any other device a grey `N/A`."""
        view = await _public_device(device_deps, device)
        if view is None:
            return _unavailable("power")
        if view.current_power_w is None:
            return _svg(f"{view.alias} power", "no reading", GREY)
        return _svg(f"{view.alias} power", f"{view.current_power_w:.1f} W", BLUE)

    @get("/badge/{device:str}/cost/{period:str}", operation_id="getCostBadge", opt={"public": True},
         security=NO_CREDENTIALS, media_type=SVG)  # fmt: skip
    async def cost(
        self, device: FromPath[str], period: FromPath[str], device_deps: NamedDependency[DeviceDeps]
    ) -> Response[bytes]:
        """SVG: the cost of a public device's energy over the `period` (`24h`, `7d`, `30d`, ...) before now,
        priced as `/api/costs`; any other device a grey `N/A`. 422 `INVALID_RANGE` for a bad period."""
        span: timedelta = parse_period(period)
        view = await _public_device(device_deps, device)
        if view is None:
            return _unavailable("cost")
        now = device_deps.clock.now()
        async with device_deps.reads.pool.connection() as conn:
            [spent] = await totals(conn, view.device_id, [(now - span, now)])
        return _svg(f"{view.alias} cost {period}", f"{spent.cost:.2f}", BLUE)
