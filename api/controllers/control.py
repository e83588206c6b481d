"""Control: switch a device's relay as a recorded command, and read the commands back."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from api.controllers.devices import resolve_device
from api.deps import DeviceDeps
from domain.control import Action, ControlAccepted, ControlOutcome, RequestControl, outcome_of
from domain.errors import CommandNotFound
from domain.access import Permission, Principal
from projections.commands import CommandView, device_commands, find_command

MAX_WAIT_S = 30.0
"""The longest `?wait=true` holds a request (the deadline bounds it too)."""
SETTLED_VISIBLE_S = 5.0
"""How long a settled answer waits for each read model to show it (then `X-Read-Models-Pending`)."""

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


async def settle_view(deps: DeviceDeps, accepted: ControlAccepted, *, wait: bool) -> Response[ControlOutcome]:
    """The command's state: 200 once it has an outcome, else 202. With `wait`, first wait for the outcome
    (up to its deadline, at most MAX_WAIT_S) and for the read models to show it."""
    control = deps.control
    deps.reads.on_saved()
    timeout = 0.0
    if wait:
        first = await control.command(accepted.command_id)
        timeout = min(MAX_WAIT_S, max((first.deadline - deps.clock.now()).total_seconds(), 0.0) + 1.0)
    command = await control.wait_outcome(accepted.command_id, timeout)
    if command.settled and wait:
        # A read right after the answer shows the confirmed state and the command in the device's list.
        newest = await deps.reads.newest()
        for read_model in ("devices", "commands"):
            await deps.reads.wait_projected(newest, projector=read_model, timeout=SETTLED_VISIBLE_S)
    return Response(outcome_of(command), status_code=200 if command.settled else 202)


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
        device_deps: NamedDependency[DeviceDeps],
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
        view = await resolve_device(device_deps.reads, device)
        accepted = await device_deps.control.request_control(
            RequestControl(
                device_id=view.device_id, action=data.action, outlet=data.outlet,
                idempotency_key=idempotency_key, actor=principal.actor,
            )
        )  # fmt: skip
        asynchronous = respond_async(prefer) if wait is None else not wait
        answer = await settle_view(device_deps, accepted, wait=not asynchronous)
        if asynchronous and answer.status_code == 202 and respond_async(prefer):
            answer.headers["Preference-Applied"] = "respond-async"
        return answer

    @get("/commands/{command_id:uuid}", operation_id="getCommand", opt={"permission": Permission.DEVICES_VIEW})
    async def show(self, command_id: FromPath[UUID], device_deps: NamedDependency[DeviceDeps]) -> CommandView:
        """One control command with its state and outcome. 404 `COMMAND_NOT_FOUND`."""
        async with device_deps.reads.pool.connection() as conn:
            view = await find_command(conn, command_id)
        if view is None:
            # Recorded but maybe not projected yet: wait for the read model once.
            newest = await device_deps.reads.newest()
            await device_deps.reads.wait_projected(newest, projector="commands", timeout=2.0)
            async with device_deps.reads.pool.connection() as conn:
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
        device_deps: NamedDependency[DeviceDeps],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> CommandPage:
        """A device's control commands, newest first: `limit` (1-500, 50) from `offset`, and the `total`."""
        view = await resolve_device(device_deps.reads, device)
        async with device_deps.reads.pool.connection() as conn:
            page, total = await device_commands(conn, view.device_id, limit=limit, offset=offset)
        return CommandPage(commands=page, total=total, limit=limit, offset=offset)
