"""The command executor against real JetStream and PostgreSQL: killed mid-command, restarted, expired commands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from uuid import UUID

from adapters.command_order import DeviceOrder
from adapters.emulator import EmulatorFleet
from adapters.eventstore import StoreUnitOfWork
from adapters.executor import CommandExecutor
from domain.address import DeviceAddress
from domain.commands import AddDevice
from domain.control import Action, ControlCommand, RequestControl, Status
from domain.control_handlers import ControlHandlers
from domain.ports import DeviceSwitch
from domain.readings import DeviceSnapshot
from infra.bootstrap import Runtime
from tests.harness import background
from tests.kit import ManualClock


class KilledAt(DeviceSwitch):
    """Switches through the real driver, then hangs where the process would have died: before
    (`after_switch=False`) or after the device call, never storing the outcome."""

    def __init__(self, inner: DeviceSwitch, *, after_switch: bool) -> None:
        self.inner = inner
        self.after_switch = after_switch
        self.reached = asyncio.Event()

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        return await self.inner.poll(address)

    async def set_relay(self, address: DeviceAddress, *, on: bool, outlet_index: int | None = None) -> DeviceSnapshot:
        if self.after_switch:
            await self.inner.set_relay(address, on=on, outlet_index=outlet_index)
        self.reached.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def set_alias(self, address: DeviceAddress, alias: str) -> None:
        await self.inner.set_alias(address, alias)


@asynccontextmanager
async def executor_task(
    runtime: Runtime, handlers: ControlHandlers, executor: CommandExecutor | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    executor = executor or CommandExecutor(runtime.js, handlers, stream=runtime.stream, ack_wait=1.0,
                                           on_saved=runtime.saved)  # fmt: skip
    task = asyncio.create_task(executor.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and task.exception() is not None:
        raise AssertionError("the executor ended by itself before the test was done with it") from task.exception()


async def _plug(runtime: Runtime, fleet: EmulatorFleet, model: str) -> tuple[UUID, list[int | None], bool]:
    device, server = next((d, s) for d, s in fleet if d.profile_name == model)
    added = await runtime.handlers().add_device(AddDevice(address=server.address, actor="test"))
    return added.device_id, device.relay_requests, device.is_on()


def outcomes(runtime: Runtime, command_id: UUID) -> list[str]:
    events = [runtime.app.mapper.to_domain_event(n) for n in runtime.app.recorder.select_notifications(1, 1000)]
    return [
        type(e).__name__ for e in events
        if e.originator_id == command_id and type(e).__name__ in ("ControlSucceeded", "ControlFailed")
    ]


async def _kill_and_restart(runtime: Runtime, fleet: EmulatorFleet, *, after_switch: bool) -> tuple[ControlCommand, UUID]:
    device_id, _, was_on = await _plug(runtime, fleet, "HS100" if after_switch else "HS110")
    dying = runtime.control()
    killer = KilledAt(runtime.driver, after_switch=after_switch)
    dying.switch = killer
    accepted = await runtime.control().request_control(
        RequestControl(device_id=device_id, action=Action.OFF if was_on else Action.ON, actor="test")
    )
    runtime.saved()
    async with executor_task(runtime, dying):
        await asyncio.wait_for(killer.reached.wait(), 15)
    # Killed: the attempt is stored, the outcome is not, the request is unacked.
    assert (await runtime.control().command(accepted.command_id)).status is Status.EXECUTING
    async with executor_task(runtime, runtime.control()):
        settled = await runtime.control().wait_outcome(accepted.command_id, 20)
    return settled, accepted.command_id


async def test_an_executor_killed_after_switching_is_settled_by_the_next_without_a_second_switch(
    runtime: Runtime, fleet: EmulatorFleet
) -> None:
    device, _ = next((d, s) for d, s in fleet if d.profile_name == "HS100")
    async with background(runtime, poll=False):
        settled, command_id = await _kill_and_restart(runtime, fleet, after_switch=True)
    assert settled.status is Status.SUCCEEDED
    assert outcomes(runtime, command_id) == ["ControlSucceeded"]
    assert device.relay_requests == [None]


async def test_an_executor_killed_before_switching_leaves_the_command_failed_not_run_twice(
    runtime: Runtime, fleet: EmulatorFleet
) -> None:
    device, _ = next((d, s) for d, s in fleet if d.profile_name == "HS110")
    async with background(runtime, poll=False):
        settled, command_id = await _kill_and_restart(runtime, fleet, after_switch=False)
    assert (settled.status, settled.reason) == (Status.FAILED, "state_not_confirmed")
    assert outcomes(runtime, command_id) == ["ControlFailed"]
    assert device.relay_requests == []


async def test_an_expired_command_is_never_executed(runtime: Runtime, fleet: EmulatorFleet) -> None:
    device_id, switched, _ = await _plug(runtime, fleet, "KP115")
    late = ControlHandlers(
        StoreUnitOfWork(runtime.app), runtime.driver, ManualClock(datetime.now(timezone.utc) - timedelta(minutes=2)),
        runtime.config(), deadline_s=30,
    )  # fmt: skip
    accepted = await late.request_control(RequestControl(device_id=device_id, action=Action.TOGGLE, actor="test"))
    async with background(runtime, poll=False), executor_task(runtime, runtime.control()):
        runtime.saved()
        settled = await runtime.control().wait_outcome(accepted.command_id, 15)
    assert (settled.status, settled.reason) == (Status.FAILED, "expired")
    device = next(d for d, _ in fleet if d.profile_name == "KP115")
    assert device.relay_requests == [] == switched


async def _killed_after_switching(runtime: Runtime, fleet: EmulatorFleet) -> UUID:
    """A command to the HS100 whose executor died after switching it, its attempt stored and its request
    unacked: its id. The acks are waited for a minute, so no redelivery can settle it within a test."""
    device_id, _, was_on = await _plug(runtime, fleet, "HS100")
    dying = runtime.control()
    killer = KilledAt(runtime.driver, after_switch=True)
    dying.switch = killer
    slow = CommandExecutor(runtime.js, dying, stream=runtime.stream, ack_wait=60.0, on_saved=runtime.saved)
    accepted = await runtime.control().request_control(
        RequestControl(device_id=device_id, action=Action.OFF if was_on else Action.ON, actor="test")
    )
    runtime.saved()
    async with executor_task(runtime, dying, slow):
        await asyncio.wait_for(killer.reached.wait(), 15)
    return accepted.command_id


def _sweeping(runtime: Runtime) -> CommandExecutor:
    """The runtime's executor, whose sweep settles a command attempted more than half a second ago."""
    executor = runtime.executor()
    executor._settle_after = 0.5
    return executor


async def test_a_restarted_executor_settles_an_interrupted_command_without_waiting_for_redelivery(
    runtime: Runtime, fleet: EmulatorFleet
) -> None:
    """With an ack wait of a minute the redelivery cannot be what settles it within the test: the sweep does."""
    device = next(d for d, _ in fleet if d.profile_name == "HS100")
    async with background(runtime, poll=False):
        command_id = await _killed_after_switching(runtime, fleet)
        restarted = _sweeping(runtime)
        async with executor_task(runtime, runtime.control(), restarted):
            settled = await runtime.control().wait_outcome(command_id, 20)
    assert settled.status is Status.SUCCEEDED
    assert restarted.settled_interrupted == 1
    assert outcomes(runtime, command_id) == ["ControlSucceeded"]
    assert device.relay_requests == [None]


class HeldOrder(DeviceOrder):
    """The device queue, whose removal of a settled command waits until the test lets it go, as a slow
    database round trip does."""

    def __init__(self, order: DeviceOrder) -> None:
        super().__init__(order._pool)
        self.leaving = asyncio.Event()
        self.release = asyncio.Event()

    async def leave(self, command_id: UUID) -> None:
        self.leaving.set()
        await self.release.wait()
        await super().leave(command_id)


async def test_a_sweep_stopped_while_the_queue_entry_is_removed_still_counts_what_it_settled(
    runtime: Runtime, fleet: EmulatorFleet
) -> None:
    async with background(runtime, poll=False):
        command_id = await _killed_after_switching(runtime, fleet)
        restarted = _sweeping(runtime)
        assert restarted._order is not None
        held = restarted._order = HeldOrder(restarted._order)
        async with executor_task(runtime, runtime.control(), restarted):
            settled = await runtime.control().wait_outcome(command_id, 20)
            await asyncio.wait_for(held.leaving.wait(), 15)
            assert restarted.settled_interrupted == 1, "settled by the sweep, whose queue removal is still pending"
    assert settled.status is Status.SUCCEEDED
