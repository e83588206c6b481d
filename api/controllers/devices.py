"""Devices: list, add by address, show, remove, discover."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from api.services import Services
from domain.address import parse_address
from domain.commands import AddDevice, DiscoverDevices, RemoveDevice
from domain.errors import DeviceNotFound, InvalidAddress
from domain.identity import Permission, Principal
from projections.devices import DeviceView, find_device, list_devices

Alias = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]*$")]


class AddDeviceRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A device to add by address: `host` or `host:port`."""

    ip: Annotated[str, msgspec.Meta(min_length=1, max_length=261, description="host or host:port")]
    alias: Alias | None = None


class DeviceAccepted(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    device_ip: str
    status: str = "accepted"


class DeviceRemovedView(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    device_id: UUID
    device_ip: str


class DiscoverRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Cloud credentials are accepted for compatibility; local legacy devices need none."""

    username: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    password: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class DiscoverResult(msgspec.Struct, frozen=True, kw_only=True):
    discovered: int
    added: list[str]
    already_known: list[str]
    unreachable: list[str]


async def resolve_device(services: Services, key: str) -> DeviceView:
    """A present device by id or address (any spelling of the address)."""
    async with services.read_pool.connection() as conn:
        view = await find_device(conn, key, services.zone)
        if view is None:
            try:
                view = await find_device(conn, str(parse_address(key)), services.zone)
            except InvalidAddress:
                view = None
    if view is None:
        raise DeviceNotFound(f"no device {key!r}")
    return view


class DevicesController(Controller):
    path = "/api"
    tags = ["devices"]

    @get("/devices", operation_id="listDevices", opt={"permission": Permission.DEVICES_VIEW})
    async def list_all(self, services: NamedDependency[Services]) -> list[DeviceView]:
        """Every device with its latest reading, in the order they were added."""
        async with services.read_pool.connection() as conn:
            return await list_devices(conn, services.zone)

    @post("/devices/manual", operation_id="addDevice", status_code=201, opt={"permission": Permission.DEVICES_MANAGE})
    async def add(
        self,
        data: JSONBody[AddDeviceRequest],
        principal: NamedDependency[Principal],
        services: NamedDependency[Services],
    ) -> Response[DeviceView | DeviceAccepted]:
        """Add a device by address. The device is contacted first: its first reading is stored
        with the add, so it shows at once. 400 bad address, 409 already added, 422 unreachable."""
        added = await services.commands.add_device(
            AddDevice(address=data.ip, alias=data.alias, actor=principal.actor)
        )
        if await services.wait_projected(added.position):
            view = await resolve_device(services, str(added.device_id))
            return Response(view, status_code=201)
        return Response(DeviceAccepted(device_id=added.device_id, device_ip=added.address), status_code=202)

    @get("/device/{device:str}", operation_id="getDevice", opt={"permission": Permission.DEVICES_VIEW})
    async def show(self, device: FromPath[str], services: NamedDependency[Services]) -> DeviceView:
        """One device by id or address, e.g. `127.0.0.1:9999` or its UUID."""
        return await resolve_device(services, device)

    @delete(
        "/devices/{device:str}", operation_id="removeDevice", status_code=200,
        opt={"permission": Permission.DEVICES_MANAGE},
    )  # fmt: skip
    async def remove(
        self, device: FromPath[str], principal: NamedDependency[Principal], services: NamedDependency[Services]
    ) -> DeviceRemovedView:
        """Remove a device: it is no longer polled or listed; its history stays in the event log."""
        view = await resolve_device(services, device)
        stored = await services.commands.remove_device(
            RemoveDevice(device_id=view.device_id, actor=principal.actor)
        )
        await services.wait_projected(stored.position)
        return DeviceRemovedView(message="Device removed", device_id=view.device_id, device_ip=view.device_ip)

    @post("/discover", operation_id="discoverDevices", status_code=200, opt={"permission": Permission.DEVICES_MANAGE})
    async def discover(
        self,
        principal: NamedDependency[Principal],
        services: NamedDependency[Services],
        data: JSONBody[DiscoverRequest | None] = None,
    ) -> DiscoverResult:
        """Discover devices at the configured discovery target and add the new ones
        (contacted concurrently, a bounded number at a time)."""
        found = await services.commands.discover_devices(
            DiscoverDevices(
                target=services.discovery_target, port=services.discovery_port, actor=principal.actor
            )
        )
        if found.position:
            await services.wait_projected(found.position)
        return DiscoverResult(
            discovered=found.discovered,
            added=found.added,
            already_known=found.already_known,
            unreachable=found.unreachable,
        )
