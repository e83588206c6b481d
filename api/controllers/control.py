"""Control: switch a device's relay as a recorded command, and read the commands back."""

from __future__ import annotations

import asyncio
from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from api.controllers.devices import resolve_device
from api.services import Services
from domain.control import Action, ControlAccepted, ControlOutcome, RequestControl, outcome_of
from domain.control_handlers import ControlHandlers
from domain.errors import CommandNotFound, Unavailable
from domain.identity import Permission, Principal
from projections.commands import CommandView, device_commands, find_command
from projections.engine import TRACKING

MAX_WAIT_S = 30.0
"""The longest `?wait=true` holds a request (the deadline bounds it too)."""

Outlet = Annotated[int, msgspec.Meta(ge=0, le=64)] | Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
IdempotencyKey = Annotated[
    str | None, HeaderParameter(name="Idempotency-Key", min_length=1, max_length=255, required=False)
]
Prefer = Annotated[str | None, HeaderParameter(name="Prefer", max_length=1024, required=False)]


def respond_async(prefer: str | None) -> bool:
    """Whether a `Prefer` header (RFC 7240) asks for `respond-async`."""
    if not prefer:
        return False
    return any(item.split(";")[0].strip().lower() == "respond-async" for item in prefer.split(","))


class ControlRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`outlet`: a strip outlet's index (from 0) or child id; left out, the plug or every outlet of a strip."""

    action: Action
    outlet: Outlet | None = None


class CommandPage(msgspec.Struct, frozen=True, kw_only=True):
    commands: list[CommandView]
    total: int
    limit: int
    offset: int


def control_handlers(services: Services) -> ControlHandlers:
    if services.control is None:
        raise Unavailable("device control is not served by this process")
    return services.control


async def settle_view(services: Services, accepted: ControlAccepted, *, wait: bool) -> Response[ControlOutcome]:
    """The command's state: 200 once it has an outcome, else 202. With `wait`, first wait for the outcome
    (up to its deadline, at most MAX_WAIT_S) and for the read models to show it."""
    control = control_handlers(services)
    services.on_saved()
    timeout = 0.0
    if wait:
        first = await control.command(accepted.command_id)
        timeout = min(MAX_WAIT_S, max((first.deadline - services.clock.now()).total_seconds(), 0.0) + 1.0)
    command = await control.wait_outcome(accepted.command_id, timeout)
    if command.settled and wait:
        newest = await asyncio.to_thread(services.event_log.max_id)
        await projected(services, newest, timeout=2.0)
    return Response(outcome_of(command), status_code=200 if command.settled else 202)


async def projected(services: Services, position: int, *, timeout: float) -> bool:
    """Wait (polling every 10 ms) until the devices read model holds `position`, so a read right after
    the answer shows the confirmed state. False if it did not within `timeout`."""
    services.on_saved()
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while True:
        async with services.read_pool.connection() as conn:
            cur = await conn.execute(f"SELECT position FROM {TRACKING} WHERE name = 'devices'")
            row = await cur.fetchone()
        if row is not None and row[0] >= position:
            return True
        if loop.time() >= until:
            return False
        await asyncio.sleep(0.01)


class ControlController(Controller):
    path = "/api"
    tags = ["control"]

    @post(
        "/device/{device:str}/control", operation_id="controlDevice", status_code=202,
        opt={"permission": Permission.DEVICES_CONTROL},
    )  # fmt: skip
    async def control(
        self,
        device: FromPath[str],
        data: JSONBody[ControlRequest],
        principal: NamedDependency[Principal],
        services: NamedDependency[Services],
        idempotency_key: IdempotencyKey = None,
        prefer: Prefer = None,
        wait: FromQuery[bool | None] = None,
    ) -> Response[ControlOutcome]:
        """Switch a plug, one strip outlet, or a whole strip: `on`, `off` or `toggle` (against the state
        read at execution time). Waits for the outcome (up to the command's deadline, at most 30 s) and
        answers 200 with it, or 202 with the command if it did not come in time. `Prefer: respond-async`
        (RFC 7240) or `?wait=false` answers 202 at once with the recorded command (`Preference-Applied`
        says so); `?wait=true` always waits. A repeated `Idempotency-Key` with the same
        request returns the first command and switches nothing again; with another request, 422
        `IDEMPOTENCY_KEY_REUSED`. 403 `DEVICE_CONTROL_DISABLED` when control is turned off, 404
        `DEVICE_NOT_FOUND` / `OUTLET_NOT_FOUND`. A device known to be offline fails at once (`device_offline`)."""
        view = await resolve_device(services, device)
        accepted = await control_handlers(services).request_control(
            RequestControl(
                device_id=view.device_id, action=data.action, outlet=data.outlet,
                idempotency_key=idempotency_key, actor=principal.actor,
            )
        )  # fmt: skip
        asynchronous = respond_async(prefer) if wait is None else not wait
        answer = await settle_view(services, accepted, wait=not asynchronous)
        if asynchronous and answer.status_code == 202 and respond_async(prefer):
            answer.headers["Preference-Applied"] = "respond-async"
        return answer

    @get("/commands/{command_id:uuid}", operation_id="getCommand", opt={"permission": Permission.DEVICES_VIEW})
    async def show(self, command_id: FromPath[UUID], services: NamedDependency[Services]) -> CommandView:
        """One control command with its state and outcome. 404 `COMMAND_NOT_FOUND`."""
        async with services.read_pool.connection() as conn:
            view = await find_command(conn, command_id)
        if view is None:
            # Recorded but maybe not projected yet: wait for the read model once.
            newest = await asyncio.to_thread(services.event_log.max_id)
            await services.wait_projected(newest, projector="commands", timeout=2.0)
            async with services.read_pool.connection() as conn:
                view = await find_command(conn, command_id)
        if view is None:
            raise CommandNotFound(f"no command {command_id}")
        return view

    @get(
        "/devices/{device:str}/commands", operation_id="listDeviceCommands",
        opt={"permission": Permission.DEVICES_VIEW},
    )  # fmt: skip
    async def for_device(
        self,
        device: FromPath[str],
        services: NamedDependency[Services],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> CommandPage:
        """A device's control commands, newest first: `limit` (1-500, 50) from `offset`, and the `total`."""
        view = await resolve_device(services, device)
        async with services.read_pool.connection() as conn:
            page, total = await device_commands(conn, view.device_id, limit=limit, offset=offset)
        return CommandPage(commands=page, total=total, limit=limit, offset=offset)
