"""The live events as clients see them: each stream message decoded once into a `LiveEvent`, and translated
once into the Kasa Monitor API's WebSocket shapes (`device_update`, `device_status`) plus `command_update`.

`seed_message` makes the translation; the device's address comes from the fan-out's directory
(`DeviceEntry`). `device_of` names the device an event is about, for the fan-out's index.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec

from adapters.contract import Envelope

__all__ = [
    "COMMAND_EVENTS", "DEVICE_AGGREGATES", "IDENTITY_AGGREGATES", "DeviceEntry", "LiveEvent", "device_of",
    "seed_message",
]

DEVICE_AGGREGATES = frozenset({"device", "meter", "command"})
"""What `DEVICES_VIEW` may see: devices, their readings, and the control commands run on them."""

COMMAND_EVENTS = {"ControlRequested": "requested", "ControlSucceeded": "succeeded", "ControlFailed": "failed"}
IDENTITY_AGGREGATES = frozenset({"session", "apikey", "user"})

_ENCODER = msgspec.json.Encoder()


class DeviceEntry(msgspec.Struct, frozen=True, kw_only=True):
    address: str
    alias: str


class LiveEvent:
    """One message of the stream, decoded once and shared by every subscriber it is offered to."""

    __slots__ = ("envelope", "raw", "device_id", "address", "_seed", "_object")

    def __init__(self, envelope: Envelope[dict[str, Any]], raw: bytes, address: str | None = None) -> None:
        self.envelope = envelope
        self.raw = raw
        self.device_id = device_of(envelope)
        self.address = address
        self._seed: bytes | None | Literal[False] = False
        self._object: dict[str, Any] | None | Literal[False] = False

    @property
    def notification_id(self) -> int:
        return self.envelope.notification_id

    def seed(self) -> bytes | None:
        """The message for WebSocket and socket.io clients (JSON), or None for an event they are not sent."""
        if self._seed is False:
            message = self.seed_object()
            self._seed = _ENCODER.encode(message) if message is not None else None
        return self._seed

    def seed_object(self) -> dict[str, Any] | None:
        """`seed()` as a JSON object (for socket.io's `emit`), built once."""
        if self._object is False:
            self._object = seed_message(self.envelope, self.address)
        return self._object


def device_of(envelope: Envelope[dict[str, Any]]) -> UUID | None:
    """The device an event is about: a device event's aggregate, a reading's or a command's `device_id`."""
    if envelope.aggregate == "device":
        return envelope.originator_id
    if envelope.aggregate == "meter" or envelope.event in COMMAND_EVENTS:
        raw = envelope.data.get("device_id")
        try:
            return UUID(str(raw)) if raw is not None else None
        except ValueError:
            return None
    return None


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


def seed_message(envelope: Envelope[dict[str, Any]], address: str | None) -> dict[str, Any] | None:
    """An event in the Kasa Monitor API's WebSocket shapes, or None for events those clients do not get.

    `device_update` for readings (`is_on`, `current_power_w`, `voltage`, `current`, `total_wh`,
    `timestamp`, and `outlets` for strips) and for relay switches; `device_status` for a device
    going offline or coming back; `command_update` for control commands.
    """
    device_id = device_of(envelope)
    if device_id is None:
        return None
    head = {"device_ip": address or str(device_id), "device_id": str(device_id)}
    data = envelope.data
    match (envelope.aggregate, envelope.event):
        case ("meter", "ReadingRecorded"):
            update: dict[str, Any] = {
                "is_on": data.get("is_on"),
                "current_power_w": data.get("power_w"),
                "voltage": data.get("voltage_v"),
                "current": data.get("current_a"),
                "total_wh": data.get("total_wh"),
                "timestamp": data.get("measured_at"),
            }
            outlets = data.get("outlets") or []
            if outlets:
                update["outlets"] = [
                    {
                        "outlet_id": o.get("outlet_id"), "index": o.get("index"), "alias": o.get("alias"),
                        "is_on": o.get("is_on"), "current_power_w": o.get("power_w"), "voltage": o.get("voltage_v"),
                        "current": o.get("current_a"), "total_wh": o.get("total_wh"),
                    }
                    for o in outlets
                ]  # fmt: skip
            return {"event": "device_update", **head, "data": update}
        case ("device", "StateChanged"):
            return {
                "event": "device_update", **head,
                # The seed's fields of every `device_update`: the power is not known at a switch
                # (null); the next reading's update carries it.
                "data": {"is_on": data.get("is_on"), "current_power_w": None,
                         "outlet_index": data.get("outlet_index"), "timestamp": _iso(envelope.timestamp)},
            }  # fmt: skip
        case ("device", "WentOffline" | "CameOnline"):
            status = "offline" if envelope.event == "WentOffline" else "online"
            return {"event": "device_status", **head, "status": status, "timestamp": _iso(envelope.timestamp)}
        case (_, event) if event in COMMAND_EVENTS:
            command: dict[str, Any] = {
                "event": "command_update", **head, "command_id": str(envelope.originator_id),
                "status": COMMAND_EVENTS[event], "outlet": data.get("outlet"), "action": data.get("action"),
                "timestamp": _iso(envelope.timestamp),
            }  # fmt: skip
            for extra in ("is_on", "reason"):
                if extra in data:
                    command[extra] = data[extra]
            return command
    return None
