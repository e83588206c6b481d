"""The live fan-out with no subscriber reads only what it keeps for itself from each message."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import pytest
from nats.aio.msg import Msg

from adapters.bus import StreamConfig
from adapters.fanout import DeviceEntry, FanOut, LiveEvent

DEVICE = uuid.UUID("00000000-0000-4000-8000-000000000001")


@dataclass
class _Msg:
    data: bytes
    subject: str = "wl.events.x"


def _message(nid: int, aggregate: str, event: str, data: Any) -> Msg:
    """A message as nats-py hands it over: the fan-out reads its `data` and `subject` only."""
    return cast(Msg, _Msg(msgspec.json.encode({
        "notification_id": nid, "originator_id": str(DEVICE), "version": nid, "aggregate": aggregate,
        "event": event, "timestamp": f"2026-05-01T00:00:{nid:02d}Z", "actor": "system", "data": data,
    })))  # fmt: skip


async def _nothing() -> dict[uuid.UUID, DeviceEntry]:
    return {}


def _fanout() -> FanOut:
    return FanOut(cast(Any, None), cast(Any, None), StreamConfig(), directory=_nothing)


async def test_with_no_subscriber_an_events_data_is_not_decoded_but_it_is_counted_once() -> None:
    fanout = _fanout()
    # `data` that is not a JSON object fails the full envelope's decoding: here it is never looked at.
    await fanout._on_message(_message(1, "meter_day", "ReadingRecorded", 5))
    await fanout._on_message(_message(1, "meter_day", "ReadingRecorded", 5))
    await fanout._on_message(_message(2, "meter_day", "ReadingRecorded", 5))
    assert (fanout.delivered, fanout.position) == (2, 2)
    assert fanout.last_event_at is not None and fanout.last_event_at.second == 2


async def test_with_no_subscriber_a_device_added_still_enters_the_directory() -> None:
    fanout = _fanout()
    await fanout._on_message(_message(3, "device", "Added", {"address": "127.0.0.9", "alias": "Kettle"}))
    assert fanout.directory[DEVICE] == DeviceEntry(address="127.0.0.9", alias="Kettle")
    assert fanout.delivered == 1


async def test_with_a_subscriber_every_event_is_decoded_and_offered(caplog: pytest.LogCaptureFixture) -> None:
    fanout = _fanout()
    subscriber = fanout.subscribe(queue_size=10)
    subscriber.watch_all(events=True)
    await fanout._on_message(_message(4, "meter_day", "ReadingRecorded", 5))
    assert fanout.delivered == 0  # the whole envelope is read, and this one is not one: skipped
    await fanout._on_message(_message(5, "device", "Renamed", {"alias": "Lamp"}))
    item = await subscriber.next()
    assert isinstance(item, LiveEvent) and item.envelope.notification_id == 5
    assert fanout.delivered == 1
