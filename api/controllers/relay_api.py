"""The relay command and data API (the uHaveControl device API) over Kasa plugs and strips.

A Kasa device's relays are a plug's one relay (id `"0"`, named by the device's alias) or a
strip's outlets (id: the outlet's child id, also taken as its index; name: its alias). Kasa
devices have no GPIOs or ADCs, so those lists are empty. Commands become control commands
(one per relay) run by the executor, exactly as `POST /api/device/{device}/control`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from api.controllers.devices import resolve_device
from api.errors import VALIDATION_STATUS, error_body
from api.deps import DeviceDeps
from domain.control import Action, RequestControl
from domain.errors import InvalidPayload, InvalidType
from domain.access import Permission, Principal
from projections.devices import DeviceView, relay_times

PLUG_RELAY_ID = "0"
SEED_RELAY_PREFIX = "255."
"""The relay API's own id form: `255.<n>` is relay n of the device, counted from 0."""
ID_FORMS = (f'the id GET /api/devices/{{device}}/data/ lists ("{PLUG_RELAY_ID}" for a plug; an outlet\'s id or '
            f'index for a strip) or "{SEED_RELAY_PREFIX}<n>" for relay n, counted from 0')
MODE = "On/Off Switch"
COLOR = {True: "Green", False: "Red"}
"""The colour a relay shows in the relay API: one fixed colour per state."""
TYPES = ("all", "relay", "relay_c", "gpio", "gpio_c", "adc", "adc_c")
_LISTS = {"relay": "Relays", "relay_c": "Relay_Cs", "gpio": "GPIOs", "gpio_c": "GPIO_Cs", "adc": "ADCs", "adc_c": "ADC_Cs"}

RelayName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class RelaySwitch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One relay to set: by `id` (wins when both are given) or by `relay` name; `state` 1 on, 0 off."""

    state: Literal[0, 1]
    id: RelayName | None = None
    relay: RelayName | None = None


class CommandPayload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename={
    "output": "Output", "relays": "Relays",
}):  # fmt: skip
    output: str
    relays: Annotated[list[RelaySwitch], msgspec.Meta(min_length=1, max_length=64)]


class DeviceCommand(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    payload: CommandPayload


class CommandSent(msgspec.Struct, frozen=True, kw_only=True):
    status: str = "Command sent successfully"


def _relays(view: DeviceView) -> list[tuple[str, str, int | None, bool | None]]:
    """(id, name, outlet index, state) of every relay of the device."""
    if not view.outlets:
        return [(PLUG_RELAY_ID, view.alias, None, view.is_on)]
    return [(o.outlet_id, o.alias, o.index, o.is_on) for o in view.outlets]


def _position(relay_id: str) -> int | None:
    """n of a relay id in the relay API's `255.<n>` form; None for any other id."""
    number = relay_id.removeprefix(SEED_RELAY_PREFIX)
    return int(number) if number != relay_id and number.isascii() and number.isdigit() else None


def _outlet_of(view: DeviceView, switch: RelaySwitch) -> int | None:
    """The outlet a relay entry names; raises InvalidPayload for none or one the device lacks."""
    relays = _relays(view)
    if switch.id is not None:
        for relay_id, _, index, _ in relays:
            if switch.id == relay_id or (index is not None and switch.id == str(index)):
                return index
        position = _position(switch.id)
        if position is not None and position < len(relays):
            return relays[position][2]
        raise InvalidPayload(f"device {view.device_ip} has no relay with id {switch.id!r}; a relay id is {ID_FORMS}")
    if switch.relay is not None:
        for _, name, index, _ in relays:
            if switch.relay == name:
                return index
        raise InvalidPayload(f"device {view.device_ip} has no relay named {switch.relay!r}")
    raise InvalidPayload("each relay needs an id or a relay name")


def _stamp(at: datetime | None) -> str:
    return (at or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RelayApiController(Controller):
    path = "/api/devices"
    tags = ["relay api"]

    @post(
        "/{device:str}/command", operation_id="sendDeviceCommand", status_code=200,
        opt={"permission": Permission.DEVICES_CONTROL, VALIDATION_STATUS: 400},
    )  # fmt: skip
    async def command(
        self,
        device: FromPath[str],
        data: JSONBody[DeviceCommand],
        principal: NamedDependency[Principal],
        device_deps: NamedDependency[DeviceDeps],
    ) -> Response[Any]:
        """Set one or several relays: `{"payload": {"Output": "Relay", "Relays": [{"id"?, "relay"?, "state"}]}}`;
        `id` as the data API lists it or `255.<n>` (relay n from 0). Every relay is checked before anything
        is recorded. 200 `{"status": "Command sent successfully"}`; 400 for any bad payload, as the relay
        API answers (`VALIDATION_ERROR`, or `INVALID_PAYLOAD` for an unknown relay); 403 (scope, or `DEVICE_CONTROL_DISABLED`);
        404 `DEVICE_NOT_FOUND`; 500 `COMMAND_NOT_SENT` when the device is offline."""
        if data.payload.output != "Relay":
            raise InvalidPayload(f"Output {data.payload.output!r} is not supported; Kasa devices have only Relay")
        view = await resolve_device(device_deps.reads, device)
        targets = [(_outlet_of(view, switch), switch.state) for switch in data.payload.relays]
        control = device_deps.control
        await control.check_enabled()
        failed: list[str] = []
        for outlet, state in targets:
            accepted = await control.request_control(
                RequestControl(
                    device_id=view.device_id, action=Action.ON if state else Action.OFF, outlet=outlet,
                    actor=principal.actor,
                )
            )  # fmt: skip
            recorded = await control.command(accepted.command_id)
            if recorded.settled:
                failed.append(recorded.detail or "the command failed")
        device_deps.reads.on_saved()
        if failed:
            detail = f"Failed to send command to device: {failed[0]}"
            return Response(error_body(500, detail, "COMMAND_NOT_SENT"), status_code=500)
        return Response(CommandSent(), status_code=200)

    @get("/{device:str}/data", operation_id="getDeviceData",
         opt={"permission": Permission.DEVICES_VIEW, VALIDATION_STATUS: 400})  # fmt: skip
    async def data(
        self,
        device: FromPath[str],
        device_deps: NamedDependency[DeviceDeps],
        component: Annotated[str, QueryParameter(name="type", max_length=16)] = "all",
    ) -> dict[str, Any]:
        """The device's relays (state and configuration) in the relay API's shape, each relay's `color`
        green when on and red when off; `type` is one of all, relay, relay_c, gpio, gpio_c, adc, adc_c
        (400 `INVALID_TYPE` otherwise). GPIO and ADC lists are empty: Kasa devices have none."""
        if component not in TYPES:
            raise InvalidType(f"type must be one of {', '.join(TYPES)}")
        view = await resolve_device(device_deps.reads, device)
        async with device_deps.reads.pool.connection() as conn:
            since = await relay_times(conn, view.device_id)
        lists: dict[str, list[dict[str, Any]]] = {
            "Relays": [], "Relay_Cs": [], "GPIOs": [], "GPIO_Cs": [], "ADCs": [], "ADC_Cs": [],
        }  # fmt: skip
        for relay_id, name, index, is_on in _relays(view):
            changed = since.get("plug" if index is None else str(index))
            lists["Relays"].append({
                "id": relay_id, "name": name, "state": "1" if is_on else "0", "text": "On" if is_on else "Off",
                "stateTime": _stamp(changed or view.last_seen), "mode": MODE, "color": COLOR[bool(is_on)],
            })  # fmt: skip
            lists["Relay_Cs"].append({"id": relay_id, "name": name, "mode": MODE, "index": index})
        body: dict[str, Any] = {"s_time": _stamp(view.last_seen), "status": "online" if view.online else "offline"}
        if component == "all":
            body.update(lists)
        else:
            key = _LISTS[component]
            body[key] = lists[key]
        return body
