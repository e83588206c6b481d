"""Devices: list, add by address, show, remove, discover."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, cast
from uuid import UUID

import anyio.to_thread
import msgspec
import structlog
from litestar import Controller, MediaType, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import ValidationException
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from api.deps import DeviceDeps
from api.read_side import ReadSide
from domain.address import parse_address
from domain.commands import AddDevice, DiscoverDevices, RemoveDevice
from domain.control import RenameOnDevice
from domain.device import device_id_for
from domain.errors import DeviceNotFound, InvalidAddress, InvalidRange, NoKasaDevice
from domain.access import Permission, Principal
from projections.device_as_of import device_as_of
from projections.devices import DeviceView, find_device

log = structlog.get_logger(__name__)

Alias = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, description="no control or format characters (400 INVALID_TEXT)")
]


class AddDeviceRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A device to add by address: `host` or `host:port`."""

    ip: Annotated[str, msgspec.Meta(min_length=1, max_length=261, description="host or host:port")]
    alias: Alias | None = None


class DeviceAccepted(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    device_ip: str
    status: str = "accepted"


class DeviceUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The new name, stored on the device itself and in the log."""

    alias: Alias


class DeviceRemovedView(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    device_id: UUID
    device_ip: str


class DiscoverRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The Kasa Monitor API's optional cloud credentials, which discovery has no use for: devices on the
    local network take none. Sending them is refused (422) rather than ignored."""

    username: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    password: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class DiscoverResult(msgspec.Struct, frozen=True, kw_only=True):
    discovered: int
    added: list[str]
    already_known: list[str]
    unreachable: list[str]


async def resolve_device(reads: ReadSide, key: str) -> DeviceView:
    """A present device by id or address (any spelling of the address)."""
    async with reads.reading() as conn:
        view = await find_device(conn, key, reads.zone, reads.clock.now())
        if view is None:
            try:
                view = await find_device(conn, str(parse_address(key)), reads.zone, reads.clock.now())
            except InvalidAddress:
                view = None
    if view is None:
        raise DeviceNotFound(f"no device {key!r}")
    return view


def as_of_time(text: str | None) -> datetime | None:
    """The `as_of` query value as a UTC time, or None without one.
    Raises InvalidRange (422) unless it is ISO 8601 with its UTC offset."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRange("as_of must be an ISO 8601 time, e.g. 2026-01-15T10:30:00Z") from None
    if moment.tzinfo is None:
        raise InvalidRange("as_of must name its UTC offset (e.g. Z)")
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        raise InvalidRange("as_of is out of range") from None


def device_key_of(key: str) -> UUID:
    """The device id a path segment names: a UUID, or the id derived from an address (any spelling).
    Raises DeviceNotFound for a segment that is neither."""
    try:
        return UUID(key)
    except ValueError:
        pass
    try:
        return device_id_for(str(parse_address(key)))
    except InvalidAddress:
        raise DeviceNotFound(f"no device {key!r}") from None


async def device_at(deps: DeviceDeps, key: str, moment: datetime) -> DeviceView:
    """The device `key` names as it was at `moment` (a future moment: now); DeviceNotFound if it was not
    there then."""
    device_id = device_key_of(key)
    moment = min(moment, deps.clock.now())
    view = await anyio.to_thread.run_sync(
        device_as_of, deps.store, device_id, moment, deps.reads.zone, deps.energy_rules
    )
    if view is None:
        raise DeviceNotFound(f"no device {key!r} at {moment.isoformat()}")
    return view


MAX_PAGE = 1000
"""The most devices one page of `GET /api/devices` holds."""


class DevicesController(Controller):
    path = "/api"
    tags = ["devices"]

    @get("/devices", operation_id="listDevices", opt={"permission": Permission.DEVICES_VIEW})
    async def list_all(
        self,
        device_deps: NamedDependency[DeviceDeps],
        limit: Annotated[int | None, QueryParameter(ge=1, le=MAX_PAGE)] = None,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> Response[list[DeviceView]]:
        """Every device with its latest reading, in the order they were added; `limit` and `offset`
        give one page of them. `X-Total-Count` tells how many there are in all. A `limit` out of
        1 to 1000 or an `offset` out of 0 to 1,000,000 answers 422 and nothing else."""
        async with device_deps.reads.reading() as conn:
            views, body = await device_deps.listing.current(conn, device_deps.reads.zone, device_deps.reads.clock.now())
        headers = {"X-Total-Count": str(len(views))}
        if limit is None and offset == 0:
            # The list as it was encoded once for this state of the read model: sent as it is.
            return cast("Response[list[DeviceView]]", Response(body, media_type=MediaType.JSON, headers=headers))
        end = len(views) if limit is None else offset + limit
        return Response(views[offset:end], headers=headers)

    @post("/devices/manual", operation_id="addDevice", status_code=201, opt={"permission": Permission.DEVICES_MANAGE})
    async def add(
        self,
        data: JSONBody[AddDeviceRequest],
        principal: NamedDependency[Principal],
        device_deps: NamedDependency[DeviceDeps],
    ) -> Response[DeviceView | DeviceAccepted]:
        """Add a device by address. The device is contacted first: its first reading is stored
        with the add, so it shows at once. 400 bad address, 409 already added, 422 `DEVICE_UNREACHABLE`
        "no Kasa device answered at this address" whatever kept it from answering (the reason is logged)."""
        try:
            added = await device_deps.commands.add_device(
                AddDevice(address=data.ip, alias=data.alias, actor=principal.actor)
            )
        except NoKasaDevice as exc:
            log.warning("devices.add_unreachable", address=data.ip, reason=exc.reason, actor=principal.actor)
            raise
        if await device_deps.reads.wait_projected(added.position):
            view = await resolve_device(device_deps.reads, str(added.device_id))
            return Response(view, status_code=201)
        return Response(DeviceAccepted(device_id=added.device_id, device_ip=added.address), status_code=202)

    @get("/device/{device:str}", operation_id="getDevice", opt={"permission": Permission.DEVICES_VIEW})
    async def show(
        self, device: FromPath[str], device_deps: NamedDependency[DeviceDeps], as_of: FromQuery[str | None] = None
    ) -> DeviceView:
        """One device by id or address, e.g. `127.0.0.1:9999` or its UUID.

        With `as_of` (ISO 8601 with its offset) the device as it was then, folded from the events
        stored up to that time, with its latest reading at or before it (today's and this month's
        energy as of then). 422 `INVALID_RANGE` for a bad time; 404 `DEVICE_NOT_FOUND` if it had not
        been added yet, or was removed, at that time."""
        moment = as_of_time(as_of)
        if moment is None:
            return await resolve_device(device_deps.reads, device)
        return await device_at(device_deps, device, moment)

    @patch("/device/{device:str}", operation_id="updateDevice", opt={"permission": Permission.DEVICES_MANAGE})
    async def update(
        self,
        device: FromPath[str],
        data: JSONBody[DeviceUpdate],
        principal: NamedDependency[Principal],
        device_deps: NamedDependency[DeviceDeps],
    ) -> DeviceView:
        """Rename a device: on the device itself first (python-kasa), then in the log (a push-only
        device: in the log only). 404 unknown or removed device; 422 `DEVICE_UNREACHABLE` when the
        device does not take the name (nothing stored)."""
        view = await resolve_device(device_deps.reads, device)
        stored = await device_deps.control.rename_on_device(
            RenameOnDevice(device_id=view.device_id, alias=data.alias, actor=principal.actor)
        )
        await device_deps.reads.wait_projected(stored.position)
        return await resolve_device(device_deps.reads, str(view.device_id))

    @delete(
        "/devices/{device:str}", operation_id="removeDevice", status_code=200,
        opt={"permission": Permission.DEVICES_MANAGE},
    )  # fmt: skip
    async def remove(
        self, device: FromPath[str], principal: NamedDependency[Principal], device_deps: NamedDependency[DeviceDeps]
    ) -> DeviceRemovedView:
        """Remove a device: it is no longer polled or listed; its history stays in the event log."""
        view = await resolve_device(device_deps.reads, device)
        stored = await device_deps.commands.remove_device(
            RemoveDevice(device_id=view.device_id, actor=principal.actor)
        )
        await device_deps.reads.wait_projected(stored.position)
        return DeviceRemovedView(message="Device removed", device_id=view.device_id, device_ip=view.device_ip)

    @post("/discover", operation_id="discoverDevices", status_code=200, opt={"permission": Permission.DEVICES_MANAGE})
    async def discover(
        self,
        principal: NamedDependency[Principal],
        device_deps: NamedDependency[DeviceDeps],
        data: JSONBody[DiscoverRequest | None] = None,
    ) -> DiscoverResult:
        """Discover devices at the configured discovery target and add the new ones
        (contacted concurrently, a bounded number at a time). A body may be left out or `{}`; cloud
        credentials (`username`, `password`) are refused with 422: nothing here would use them."""
        given = [name for name in ("username", "password") if data is not None and getattr(data, name) is not None]
        if given:
            reason = "cloud credentials are not used: devices are discovered on the local network and take none"
            raise ValidationException(f"{', '.join(given)}: {reason}; send the request without them",
                                      extra=[{"key": name, "message": reason, "source": "body"} for name in given])  # fmt: skip
        found = await device_deps.commands.discover_devices(
            DiscoverDevices(
                target=device_deps.discovery.target, port=device_deps.discovery.port, actor=principal.actor
            )
        )
        if found.position:
            await device_deps.reads.wait_projected(found.position)
        return DiscoverResult(
            discovered=found.discovered,
            added=found.added,
            already_known=found.already_known,
            unreachable=found.unreachable,
        )
