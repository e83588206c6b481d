"""Push devices over fake ports: tokens found by digest, rotation, readings in a push, silence."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from domain.commands import MissedPolls, RecordPolls
from domain.device import Device
from domain.energy_handlers import EnergyHandlers
from domain.errors import DeviceNotFound, InvalidRequest
from domain.handlers import CommandHandlers
from domain.imports import ImportedReading
from domain.meter import MeterDay
from domain.push import PushMonitor, PushRegistry, PushToken
from domain.push_handlers import PushHandlers
from adapters.identity import RandomSecrets
from tests.kit import ManualClock, MemoryStore, NoDevices, plug

T0 = datetime(2026, 3, 8, 6, 0, tzinfo=timezone.utc)


def push_side() -> tuple[PushHandlers, MemoryStore, ManualClock, Device]:
    store = MemoryStore()
    clock = ManualClock(T0)
    device = Device.from_snapshot("10.0.0.9", plug(), alias="meter", actor="test")
    store.put(device)
    handlers = PushHandlers(store, clock, RandomSecrets(), EnergyHandlers(store, clock))
    return handlers, store, clock, device


async def test_an_unknown_token_is_not_found_and_stores_nothing() -> None:
    handlers, store, _, device = push_side()
    await handlers.open_push(device.id, interval_s=60, grace_s=30, actor="admin")
    before = len(store.all_events())
    with pytest.raises(DeviceNotFound):
        await handlers.push("not-a-token", "up")
    assert len(store.all_events()) == before


async def test_no_event_holds_the_token_or_its_digest() -> None:
    handlers, store, _, device = push_side()
    opened = await handlers.open_push(device.id, interval_s=60, grace_s=30, actor="admin")
    digest = RandomSecrets().digest(opened.token)
    stored = repr([vars(e) for e in store.all_events()])
    assert opened.token not in stored and digest not in stored


async def test_after_rotation_the_old_token_is_not_found_and_the_new_one_works() -> None:
    handlers, store, _, device = push_side()
    first = await handlers.open_push(device.id, interval_s=60, grace_s=30, actor="admin")
    second = await handlers.rotate_token(device.id, actor="admin")
    assert second.token != first.token
    with pytest.raises(DeviceNotFound):
        await handlers.push(first.token, "up")
    taken = await handlers.push(second.token, "up")
    assert taken.device_id == device.id
    assert len(store.of_type(PushToken.Revoked)) == 1


async def test_a_push_with_a_reading_stores_it_as_a_reading_recorded() -> None:
    handlers, store, clock, device = push_side()
    opened = await handlers.open_push(device.id, interval_s=60, grace_s=30, actor="admin")
    clock.advance(60)
    at = clock.now().isoformat()
    taken = await handlers.push(opened.token, "up", [ImportedReading(timestamp=at, power_w=42.5, total_wh=1200.0)])
    assert taken.recorded == 1
    recorded = [e for e in store.of_type(MeterDay.ReadingRecorded) if e.measured_at == clock.now()]
    assert [e.power_w for e in recorded] == [42.5]


async def test_down_and_up_pushes_are_the_devices_offline_and_online_events() -> None:
    handlers, store, _, device = push_side()
    opened = await handlers.open_push(device.id, interval_s=60, grace_s=30, actor="admin")
    await handlers.push(opened.token, "down")
    await handlers.push(opened.token, "down")
    await handlers.push(opened.token, "up")
    assert len(store.of_type(Device.WentOffline, device.id)) == 1
    assert len(store.of_type(Device.CameOnline, device.id)) == 1
    assert len(store.of_type(PushMonitor.Heard)) == 3


async def test_a_silent_push_device_goes_offline_once_and_a_push_brings_it_back() -> None:
    handlers, store, clock, device = push_side()
    opened = await handlers.open_push(device.id, interval_s=60, grace_s=30, actor="admin")
    clock.advance(90)
    assert await handlers.mark_all_silent() == 0
    clock.advance(1)
    for _ in range(3):
        await handlers.mark_all_silent()
        clock.advance(600)
    offline = store.of_type(Device.WentOffline, device.id)
    assert [e.missed_polls for e in offline] == [1]
    await handlers.push(opened.token, "up")
    assert await handlers.mark_all_silent() == 0
    assert len(store.of_type(Device.CameOnline, device.id)) == 1
    await handlers.rotate_token(device.id, actor="admin")
    assert len(store.of_type(PushRegistry.DeviceAdded)) == 1


async def test_a_device_that_does_not_push_is_never_marked_silent() -> None:
    handlers, store, clock, device = push_side()
    clock.advance(days=2)
    assert await handlers.mark_all_silent() == 0
    assert await handlers.mark_silent([device.id]) == 0
    assert store.of_type(Device.WentOffline) == []


async def test_an_interval_out_of_range_is_refused_and_stores_nothing() -> None:
    handlers, store, _, device = push_side()
    before = len(store.all_events())
    with pytest.raises(InvalidRequest):
        await handlers.open_push(device.id, interval_s=1, grace_s=30, actor="admin")
    assert len(store.all_events()) == before


async def test_missed_polls_never_mark_a_push_device_offline() -> None:
    handlers, store, clock, device = push_side()
    other = Device.from_snapshot("10.0.0.10", plug(), alias="polled", actor="test")
    store.put(other)
    await handlers.open_push(device.id, interval_s=60, grace_s=30, actor="admin")
    polls = CommandHandlers(store, NoDevices(), clock)
    missed = (MissedPolls(device_id=device.id, count=5), MissedPolls(device_id=other.id, count=5))
    await polls.record_polls(RecordPolls(results=(), offline=missed, actor="system:poller"))
    assert store.of_type(Device.WentOffline, device.id) == []
    assert len(store.of_type(Device.WentOffline, other.id)) == 1


async def test_a_push_only_device_stores_nothing_for_bad_input_and_is_never_marked_by_missed_polls() -> None:
    store = MemoryStore()
    clock = ManualClock(T0)
    handlers = PushHandlers(store, clock, RandomSecrets(), EnergyHandlers(store, clock))
    bad: list[tuple[str, str | None, int, int]] = [
        ("meter\x00", None, 60, 60), ("meter", "esp\u200b", 60, 60), ("meter", None, 9, 60), ("meter", None, 60, -1),
    ]
    for alias, model, interval_s, grace_s in bad:
        with pytest.raises(InvalidRequest):  # InvalidText is one
            await handlers.add_push_device(
                alias=alias, model=model, interval_s=interval_s, grace_s=grace_s, actor="admin"
            )
    assert store.all_events() == []

    opened = await handlers.add_push_device(alias="meter", model=None, interval_s=60, grace_s=30, actor="admin")
    device = await store.device(opened.device_id)
    assert device is not None and device.push_only and device.device_type == "push" and device.model == "push meter"
    assert (await handlers.push(opened.token, "up")).device_id == device.id
    await CommandHandlers(store, NoDevices(), clock).record_polls(
        RecordPolls(offline=(MissedPolls(device_id=device.id, count=9),), actor="system:poller")
    )
    assert store.of_type(Device.WentOffline) == []
    clock.advance(seconds=91)
    assert await handlers.mark_all_silent() > 0
    assert len(store.of_type(Device.WentOffline)) == 1
