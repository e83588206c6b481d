"""Push devices (Uptime Kuma's push monitors): a device that reports itself at `/api/push/{token}`.

A device is opened to pushes (a polled device that also pushes) or added as a push-only device
(a meter no one polls: `POST /api/devices/push`). Either way it gets a token, shown once in the
answer and stored only as the id its digest gives; opening it again, or rotating, gives a new
token and the old one stops working at once. The push route is public: the token is the
credential. An unknown or revoked token answers 404 `DEVICE_NOT_FOUND`, as any unknown device does.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

import msgspec
from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from adapters.identity import RandomSecrets
from api.controllers.devices import Alias, resolve_device
from api.deps import DeviceDeps, EnergyDeps
from api.guards import NO_CREDENTIALS
from domain.access import Permission, Principal
from domain.imports import ImportedReading
from domain.push import MAX_GRACE_S, MAX_INTERVAL_S, MIN_INTERVAL_S
from domain.push_handlers import PushHandlers, PushOpened

Status = Literal["up", "down"]


class PushSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How often the device promises to push, and how long after a missed push it still counts as online."""

    interval_s: Annotated[int, msgspec.Meta(ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)] = 60
    grace_s: Annotated[int, msgspec.Meta(ge=0, le=MAX_GRACE_S)] = 60


class PushDeviceRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A meter that pushes its state and readings and is never polled: its name, what it is, and
    how often it promises to push."""

    alias: Alias
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    interval_s: Annotated[int, msgspec.Meta(ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)] = 60
    grace_s: Annotated[int, msgspec.Meta(ge=0, le=MAX_GRACE_S)] = 60


class PushTokenView(msgspec.Struct, frozen=True, kw_only=True):
    """The device's push token: shown here once, never again."""

    device_id: UUID
    token: str
    push_path: str
    interval_s: int
    grace_s: int


class PushBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Readings taken with the push, as `POST /api/devices/{device}/readings` takes them."""

    readings: Annotated[list[ImportedReading], msgspec.Meta(max_length=10_000)] = []


class PushAnswer(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    recorded: int


def _handlers(energy_deps: EnergyDeps) -> PushHandlers:
    energy = energy_deps.energy
    return PushHandlers(energy.store, energy.clock, RandomSecrets(), energy)


def _view(opened: PushOpened) -> PushTokenView:
    return PushTokenView(
        device_id=opened.device_id, token=opened.token, push_path=f"/api/push/{opened.token}",
        interval_s=opened.interval_s, grace_s=opened.grace_s,
    )  # fmt: skip


class PushController(Controller):
    path = "/api"
    tags = ["push"]

    @put("/device/{device:str}/push", operation_id="openDevicePush", opt={"permission": Permission.DEVICES_MANAGE})
    async def open_push(
        self, device: FromPath[str], principal: NamedDependency[Principal], device_deps: NamedDependency[DeviceDeps],
        energy_deps: NamedDependency[EnergyDeps], data: JSONBody[PushSettings | None] = None,
    ) -> PushTokenView:  # fmt: skip
        """Let a device push its state (and readings) at `/api/push/{token}`; the token is in this answer only.
        Opening a device that pushes already replaces its token. 404 unknown or removed device."""
        view = await resolve_device(device_deps.reads, device)
        settings = data or PushSettings()
        opened = await _handlers(energy_deps).open_push(
            view.device_id, interval_s=settings.interval_s, grace_s=settings.grace_s, actor=principal.actor
        )
        return _view(opened)

    @post("/devices/push", operation_id="addPushDevice", status_code=201, opt={"permission": Permission.DEVICES_MANAGE})
    async def add_push_device(
        self, data: JSONBody[PushDeviceRequest], principal: NamedDependency[Principal],
        device_deps: NamedDependency[DeviceDeps], energy_deps: NamedDependency[EnergyDeps],
    ) -> PushTokenView:  # fmt: skip
        """Add a meter that pushes instead of being polled: no address is contacted, nothing polls it,
        and it cannot be switched (control answers 409 `DEVICE_PUSH_ONLY`). Its `device_type` is
        `push`. 201 with its token, shown here once, once the device is listed (or after a few
        seconds, with `X-Read-Models-Pending`). 422 `VALIDATION_ERROR` for a missing or too
        long alias or an interval or grace out of range, 400 `INVALID_TEXT` for a control character
        in the alias or model; nothing is stored on any of them."""
        opened = await _handlers(energy_deps).add_push_device(
            alias=data.alias, model=data.model, interval_s=data.interval_s, grace_s=data.grace_s,
            actor=principal.actor,
        )  # fmt: skip
        await device_deps.reads.wait_projected(opened.position)
        return _view(opened)

    @post(
        "/device/{device:str}/push/token", operation_id="rotateDevicePushToken", status_code=200,
        opt={"permission": Permission.DEVICES_MANAGE},
    )  # fmt: skip
    async def rotate(
        self, device: FromPath[str], principal: NamedDependency[Principal], device_deps: NamedDependency[DeviceDeps],
        energy_deps: NamedDependency[EnergyDeps],
    ) -> PushTokenView:  # fmt: skip
        """A new push token; the old one answers 404 from now on. 404 for a device that does not push."""
        view = await resolve_device(device_deps.reads, device)
        return _view(await _handlers(energy_deps).rotate_token(view.device_id, actor=principal.actor))

    @get("/push/{token:str}", operation_id="pushHeartbeat", opt={"public": True}, security=NO_CREDENTIALS)
    async def heartbeat(
        self, token: FromPath[str], energy_deps: NamedDependency[EnergyDeps], status: FromQuery[Status] = "up",
        msg: Annotated[str, QueryParameter(max_length=1000)] = "",
        ping: Annotated[float | None, QueryParameter(ge=0, le=1e9)] = None,
    ) -> PushAnswer:  # fmt: skip
        """The device is up (`status=up`, the default) or down. `msg` and `ping` are taken as Uptime Kuma
        sends them and not stored. 404 `DEVICE_NOT_FOUND` for an unknown or rotated-away token."""
        taken = await _handlers(energy_deps).push(token, status)
        return PushAnswer(ok=True, recorded=taken.recorded)

    @post("/push/{token:str}", operation_id="pushWithReadings", status_code=200, opt={"public": True},
          security=NO_CREDENTIALS)  # fmt: skip
    async def push(
        self, token: FromPath[str], energy_deps: NamedDependency[EnergyDeps], status: FromQuery[Status] = "up",
        msg: Annotated[str, QueryParameter(max_length=1000)] = "",
        ping: Annotated[float | None, QueryParameter(ge=0, le=1e9)] = None,
        data: JSONBody[PushBody | None] = None,
    ) -> PushAnswer:  # fmt: skip
        """As the GET, with readings in the body stored as the device's readings (`ReadingRecorded`).
        422 `INVALID_READINGS` names the first bad reading and nothing is stored."""
        readings = data.readings if data is not None else []
        taken = await _handlers(energy_deps).push(token, status, readings)
        return PushAnswer(ok=True, recorded=taken.recorded)
