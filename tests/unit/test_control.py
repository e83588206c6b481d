"""Control commands over fake ports: recorded, attempted at most once, settled by reading back after a crash."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import UUID

import pytest

from adapters.contract import decode_data, decode_envelope, encode_envelope
from domain.config import ConfigValues, SystemConfig, check_changes
from domain.control import Action, ChangeConfig, ControlCommand, RequestControl, Status
from domain.control_handlers import ConfigHandlers, ControlHandlers
from domain.device import Device
from domain.errors import (
    DeviceControlDisabled,
    DeviceNotFound,
    DeviceTimeout,
    IdempotencyKeyReused,
    InvalidConfig,
    OutletNotFound,
)
from domain.readings import DeviceSnapshot, OutletReading
from tests.kit import FakeSwitch, ManualClock, MemoryStore, plug

T0 = datetime(2026, 3, 8, 6, 0, tzinfo=timezone.utc)

STRIP = DeviceSnapshot(
    alias="Strip", model="HS300", device_type="strip", mac="CC:DD", firmware="1", is_on=True, has_emeter=True,
    outlets=tuple(OutletReading(outlet_id=f"ID{i:02d}", index=i, alias=f"Outlet {i}", is_on=i == 0) for i in range(3)),
)


def setup(snapshot: DeviceSnapshot, *, online: bool = True) -> tuple[ControlHandlers, MemoryStore, FakeSwitch, UUID]:
    store = MemoryStore()
    device = Device.from_snapshot("10.0.0.5:9999", snapshot, alias=None, actor="test")
    if not online:
        device.went_offline(3, actor="test")
    store.put(device)
    switch = FakeSwitch(snapshot)
    clock = ManualClock(T0, step=timedelta(seconds=1))
    handlers = ControlHandlers(store, switch, clock, ConfigHandlers(store, ConfigValues()), deadline_s=30)
    return handlers, store, switch, device.id


async def request(handlers: ControlHandlers, device_id: UUID, action: Action, **extra: object) -> UUID:
    accepted = await handlers.request_control(
        RequestControl(device_id=device_id, action=action, actor="user:u1", **extra)  # type: ignore[arg-type]
    )
    return accepted.command_id


async def test_on_off_and_toggle_of_a_plug_are_confirmed_by_reading_back() -> None:
    handlers, _, switch, device_id = setup(plug(is_on=False))
    for action, expected in ((Action.ON, True), (Action.OFF, False), (Action.TOGGLE, True)):
        done = await handlers.execute(await request(handlers, device_id, action), executor="x")
        assert done is not None and done.status is Status.SUCCEEDED and done.is_on is expected
    assert switch.switches == [(True, None), (False, None), (True, None)]


async def test_a_strip_outlet_is_named_by_index_or_child_id_and_switched_alone() -> None:
    handlers, _, switch, device_id = setup(STRIP)
    done = await handlers.execute(await request(handlers, device_id, Action.ON, outlet="ID02"), executor="x")
    assert done is not None and done.status is Status.SUCCEEDED
    assert [o["is_on"] for o in done.outlets] == [True, False, True]
    with pytest.raises(OutletNotFound):
        await request(handlers, device_id, Action.ON, outlet=3)
    with pytest.raises(OutletNotFound):
        await request(handlers, device_id, Action.ON, outlet="nope")


async def test_an_offline_device_fails_at_once_and_is_never_switched() -> None:
    handlers, _, switch, device_id = setup(plug(), online=False)
    command_id = await request(handlers, device_id, Action.OFF)
    control = await handlers.command(command_id)
    assert (control.status, control.reason) == (Status.FAILED, "device_offline")
    assert await handlers.execute(command_id, executor="x") is control or switch.switches == []
    assert switch.switches == []


async def test_an_expired_command_is_failed_and_never_executed() -> None:
    handlers, _, switch, device_id = setup(plug())
    command_id = await request(handlers, device_id, Action.OFF)
    handlers.clock = ManualClock(T0 + timedelta(minutes=5), step=timedelta(seconds=1))
    done = await handlers.execute(command_id, executor="x")
    assert done is not None and (done.status, done.reason) == (Status.FAILED, "expired")
    assert switch.switches == []


async def test_an_interrupted_attempt_is_settled_by_reading_back_never_switched_again() -> None:
    handlers, store, switch, device_id = setup(plug(is_on=False))
    command_id = await request(handlers, device_id, Action.ON)
    control = await handlers.command(command_id)
    control.attempt(desired=True, executor="dead", actor="system:executor")
    await store.save(control)
    switch._set(True, None)  # the dead executor's switch took; its outcome was never stored
    done = await handlers.execute(command_id, executor="next")
    assert done is not None and done.status is Status.SUCCEEDED and switch.switches == []
    other = await request(handlers, device_id, Action.OFF)
    lost = await handlers.command(other)
    lost.attempt(desired=False, executor="dead", actor="system:executor")
    await store.save(lost)
    settled = await handlers.execute(other, executor="next")
    assert settled is not None and (settled.status, settled.reason) == (Status.FAILED, "state_not_confirmed")
    assert switch.switches == []


async def test_two_executors_cannot_both_claim_one_command() -> None:
    handlers, store, switch, device_id = setup(plug(is_on=False))
    command_id = await request(handlers, device_id, Action.ON)
    rival = await handlers.command(command_id)
    rival.attempt(desired=True, executor="rival", actor="system:executor")
    original_save = store.save

    async def rival_first(*aggregates: object) -> int:
        store.save = original_save  # type: ignore[method-assign]
        await original_save(rival)
        return await original_save(*aggregates)  # type: ignore[arg-type]

    store.save = rival_first  # type: ignore[method-assign]
    assert await handlers.execute(command_id, executor="me") is None
    assert switch.switches == []


async def test_a_timeout_that_did_not_take_fails_with_timeout() -> None:
    handlers, _, switch, device_id = setup(plug(is_on=False))
    switch.fail_with = DeviceTimeout("no answer")
    done = await handlers.execute(await request(handlers, device_id, Action.ON), executor="x")
    assert done is not None and (done.status, done.reason) == (Status.FAILED, "timeout")
    assert len(switch.switches) == 1


async def test_an_idempotency_key_returns_the_first_command_and_refuses_another_request() -> None:
    handlers, store, _, device_id = setup(plug())
    first = await request(handlers, device_id, Action.ON, idempotency_key="k1")
    saves = store.saves
    assert await request(handlers, device_id, Action.ON, idempotency_key="k1") == first
    assert store.saves == saves
    with pytest.raises(IdempotencyKeyReused):
        await request(handlers, device_id, Action.OFF, idempotency_key="k1")
    other = await handlers.request_control(
        RequestControl(device_id=device_id, action=Action.ON, actor="user:u2", idempotency_key="k1")
    )
    assert other.command_id != first and other.created


async def test_control_turned_off_in_the_configuration_refuses_every_request() -> None:
    handlers, store, _, device_id = setup(plug())
    await handlers.config.change(ChangeConfig(changes={"allow_device_control": False}, actor="user:admin"))
    with pytest.raises(DeviceControlDisabled):
        await request(handlers, device_id, Action.ON)
    await handlers.config.change(ChangeConfig(changes={"allow_device_control": True}, actor="user:admin"))
    await request(handlers, device_id, Action.ON)
    with pytest.raises(DeviceNotFound):
        await request(handlers, UUID(int=1), Action.ON)


def test_configuration_values_are_checked_and_name_the_field() -> None:
    assert check_changes({"polling_interval": 5, "offline_after": 4.0}) == {"polling_interval": 5.0, "offline_after": 4}
    for changes, field in (
        ({"polling_interval": 0}, "polling_interval"), ({"poll_concurrency": 2.5}, "poll_concurrency"),
        ({"allow_device_control": 1}, "allow_device_control"), ({"offline_after": True}, "offline_after"),
        ({"colour": "red"}, "colour"),
    ):
        with pytest.raises(InvalidConfig) as refused:
            check_changes(changes)
        assert refused.value.field == field and field in str(refused.value)


def test_a_config_change_records_only_the_fields_that_changed() -> None:
    config = SystemConfig(actor="a")
    assert config.change({"polling_interval": 10, "require_https": False}, actor="a")
    assert not config.change({"polling_interval": 10.0}, actor="a")
    changed = [e for e in config.collect_events() if isinstance(e, SystemConfig.ConfigChanged)]
    assert len(changed) == 1 and changed[0].polling_interval == 10.0 and changed[0].offline_after is None
    assert config.effective(ConfigValues(polling_interval=60)).polling_interval == 10.0


async def test_control_events_publish_their_contract_fields() -> None:
    handlers, store, _, device_id = setup(STRIP)
    command_id = await request(handlers, device_id, Action.TOGGLE, outlet=1)
    await handlers.execute(command_id, executor="x")
    events = store.events[command_id]
    names = [type(e).__name__ for e in events]
    assert names == ["ControlRequested", "ControlAttempted", "ControlSucceeded"]
    for position, stored in enumerate(events, 1):
        envelope = decode_envelope(encode_envelope(position, stored))
        assert envelope.aggregate == "command" and envelope.originator_id == command_id
        data = decode_data(envelope)
        assert getattr(data, "device_id") == device_id and getattr(data, "outlet") == 1
    assert decode_envelope(encode_envelope(3, events[-1])).data["outlets"][1] == {
        "index": 1, "outlet_id": "ID01", "is_on": True,
    }
    assert isinstance(events[0], ControlCommand.ControlRequested)


def test_the_executor_has_a_command_of_its_own() -> None:
    from infra.cli import build_parser

    assert build_parser().parse_args(["execute"]).command == "execute"
