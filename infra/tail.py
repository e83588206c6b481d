"""`wattledger tail`: a small NATS subscriber printing live readings and device status as they happen.

It reads JetStream only (no database): the devices' addresses and aliases come from the last
`Added` and `Renamed` message of each device still in the stream, then from those that arrive.
Human lines look like

    2026-05-01 10:30:00  127.0.0.1:9999 (Living Room)  45.2 W  on
    2026-05-01 10:30:07  127.0.0.1:9999 (Living Room)  offline

and `--json` prints each envelope, as published, one per line.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO
from uuid import UUID, uuid4

import structlog
from nats.aio.msg import Msg
from nats.js import api

from adapters.bus import StreamConfig, connect_nats
from adapters.contract import Envelope, decode_envelope
from adapters.fanout import device_of
from adapters.faults import NATS_FAULTS, report
from domain.address import parse_address
from domain.device import device_id_for
from domain.errors import InvalidAddress

log = structlog.get_logger(__name__)


def device_filter(device: str) -> UUID:
    """A device id, or the id of a device address (`host` or `host:port`). Raises InvalidAddress."""
    try:
        return UUID(device)
    except ValueError:
        return device_id_for(str(parse_address(device)))


def _named() -> api.ConsumerConfig:
    """A consumer with a name of its own: a NATS `reader` may create consumers only by name."""
    return api.ConsumerConfig(name=f"wattledger-tail-{uuid4().hex}")


def _when(value: Any) -> str:
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _power(watts: Any) -> str:
    return f"{watts:.1f} W" if isinstance(watts, (int, float)) else "- W"


def describe(envelope: Envelope[dict[str, Any]], names: dict[UUID, tuple[str, str]]) -> str | None:
    """One human line for a reading, a relay switch or a status change; None for other events."""
    device_id = device_of(envelope)
    if device_id is None:
        return None
    address, alias = names.get(device_id, (str(device_id), ""))
    who = f"{address} ({alias})" if alias else address
    data = envelope.data
    match (envelope.aggregate, envelope.event):
        case ("meter", "ReadingRecorded"):
            state = "on" if data.get("is_on") else "off"
            outlets = data.get("outlets") or []
            extra = "  " + " ".join(f"[{o.get('index')}:{'on' if o.get('is_on') else 'off'} {_power(o.get('power_w'))}]"
                                    for o in outlets) if outlets else ""  # fmt: skip
            return f"{_when(data.get('measured_at'))}  {who}  {_power(data.get('power_w'))}  {state}{extra}"
        case ("device", "StateChanged"):
            outlet = "" if data.get("outlet_index") is None else f" (outlet {data['outlet_index']})"
            return f"{_when(envelope.timestamp)}  {who}  switched {'on' if data.get('is_on') else 'off'}{outlet}"
        case ("device", "WentOffline"):
            return f"{_when(envelope.timestamp)}  {who}  offline"
        case ("device", "CameOnline"):
            return f"{_when(envelope.timestamp)}  {who}  online"
    return None


def _learn(envelope: Envelope[dict[str, Any]], names: dict[UUID, tuple[str, str]]) -> None:
    if envelope.aggregate != "device" or envelope.event not in ("Added", "Renamed"):
        return
    address, alias = names.get(envelope.originator_id, (str(envelope.originator_id), ""))
    names[envelope.originator_id] = (str(envelope.data.get("address") or address), str(envelope.data.get("alias") or alias))


BACKLOG_WAIT_S = 5.0
"""Longest pause between two messages of the device backlog before tail prints without the rest of it."""


async def _known_devices(js: Any, stream: StreamConfig) -> dict[UUID, tuple[str, str]]:
    """Address and alias of the devices whose `Added` / `Renamed` messages are still in the stream.

    The backlog ends at the message after which its consumer has nothing pending (or at once when
    it starts with nothing), not at a pause: on a busy machine a pause says nothing. NATS away
    while it is read is one warning, and tail goes on with the names it has (later ones arrive live).
    """
    names: dict[UUID, tuple[str, str]] = {}
    sub = await js.subscribe(f"{stream.subject_prefix}.events.device.*.*", stream=stream.name, ordered_consumer=True,
                             deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT, config=_named())  # fmt: skip
    try:
        info = await sub.consumer_info()
        if not info.num_pending and not sub.pending_msgs:
            return names
        while True:
            msg = await sub.next_msg(timeout=BACKLOG_WAIT_S)
            try:
                _learn(decode_envelope(msg.data), names)
            except Exception:  # not an envelope: nothing to learn
                pass
            if msg.metadata.num_pending == 0:
                break
    except NATS_FAULTS as exc:
        report("tail", exc, action="read device names")
    finally:
        await sub.unsubscribe()
    return names


async def run_tail(
    nats_url: str, stream: StreamConfig, stop: asyncio.Event, *, device: str | None = None, as_json: bool = False,
    out: TextIO | None = None, ready: Callable[[], None] | None = None,
) -> None:
    """Print live events until `stop` is set: readings and status lines, or (`as_json`) every envelope.

    `device` (id or address) narrows it to one device. Raises InvalidAddress for a device that is
    neither; messages that are not envelopes are skipped.
    """
    write = out or sys.stdout
    device_id = device_filter(device) if device else None
    nc = await connect_nats(nats_url, name="wattledger-tail")
    try:
        js = nc.jetstream()
        names = await _known_devices(js, stream)
        key = str(device_id) if device_id else "*"
        subject = f"{stream.subject_prefix}.events.*.{key}.>" if device_id else f"{stream.subject_prefix}.events.>"

        async def show(msg: Msg) -> None:
            try:
                envelope = decode_envelope(msg.data)
            except Exception:  # not an envelope
                return
            _learn(envelope, names)
            if device_id is not None and device_of(envelope) != device_id:
                return
            line = msg.data.decode() if as_json else describe(envelope, names)
            if line is not None:
                write.write(line + "\n")
                write.flush()

        sub = await js.subscribe(subject, stream=stream.name, cb=show, ordered_consumer=True,
                                 deliver_policy=api.DeliverPolicy.NEW, config=_named())  # fmt: skip
        if device_id is not None:
            # Commands are keyed by their own id, not the device's: follow them separately.
            command_sub = await js.subscribe(f"{stream.subject_prefix}.events.command.>", stream=stream.name, cb=show,
                                             ordered_consumer=True, deliver_policy=api.DeliverPolicy.NEW,
                                             config=_named())  # fmt: skip
        if ready is not None:
            ready()
        await stop.wait()
        await sub.unsubscribe()
        if device_id is not None:
            await command_sub.unsubscribe()
    finally:
        await nc.close()


__all__ = ["InvalidAddress", "describe", "device_filter", "run_tail"]
