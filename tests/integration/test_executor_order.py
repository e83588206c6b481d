"""Two command executors against real JetStream, PostgreSQL and an emulated plug: one device's commands
run in the order they were requested, whichever executor takes each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from uuid import UUID

import pytest

from adapters.command_order import DeviceOrder
from adapters.emulator import EmulatorFleet
from adapters.executor import CommandExecutor
from domain.address import DeviceAddress
from domain.commands import AddDevice
from domain.control import Action, ControlCommand, RequestControl, Status
from domain.control_handlers import ControlHandlers
from domain.ports import Clock, DeviceSwitch
from domain.readings import DeviceSnapshot
from infra.bootstrap import Runtime
from tests.harness import background
from tests.kit import ManualClock, eventually

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock() -> Clock:
    """A clock that stands still: no command reaches its deadline while the test holds it back."""
    return ManualClock(NOW)


class Switches(DeviceSwitch):
    """The real driver, noting who switched what; with a gate, each switch first waits for it to open."""

    def __init__(self, inner: DeviceSwitch, name: str, log: list[tuple[str, bool]], gate: asyncio.Event | None = None):
        self.inner = inner
        self.name = name
        self.log = log
        self.gate = gate
        self.reached = asyncio.Event()

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        return await self.inner.poll(address)

    async def set_relay(self, address: DeviceAddress, *, on: bool, outlet_index: int | None = None) -> DeviceSnapshot:
        self.reached.set()
        if self.gate is not None:
            await self.gate.wait()
        self.log.append((self.name, on))
        return await self.inner.set_relay(address, on=on, outlet_index=outlet_index)

    async def set_alias(self, address: DeviceAddress, alias: str) -> None:
        await self.inner.set_alias(address, alias)


class Watched(ControlHandlers):
    """The control handlers, noting every command they are asked to load."""

    asked: list[UUID]

    async def command(self, command_id: UUID) -> ControlCommand:
        self.asked.append(command_id)
        return await super().command(command_id)


@asynccontextmanager
async def running(executor: CommandExecutor) -> AsyncIterator[None]:
    task = asyncio.create_task(executor.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and task.exception() is not None:
        raise AssertionError("an executor ended by itself before the test was done with it") from task.exception()


async def test_a_later_command_taken_by_another_executor_waits_for_the_earlier_one_of_its_device(
    runtime: Runtime, fleet: EmulatorFleet
) -> None:
    plug, server = next((d, s) for d, s in fleet if d.profile_name == "HS100")
    device_id = (await runtime.handlers().add_device(AddDevice(address=server.address, actor="test"))).device_id
    log: list[tuple[str, bool]] = []
    gate = asyncio.Event()
    first_switch = Switches(runtime.driver, "first", log, gate)
    first_handlers = runtime.control()
    first_handlers.switch = first_switch
    second_handlers = Watched(
        runtime.control().store, Switches(runtime.driver, "second", log), runtime.clock, runtime.config()
    )
    second_handlers.asked = []
    order = DeviceOrder(runtime.read_pool)
    # One command at a time: while it holds the first command it takes no other request.
    first = CommandExecutor(runtime.js, first_handlers, stream=runtime.stream, concurrency=1, name="first",
                            on_saved=runtime.saved, order=order)  # fmt: skip
    second = CommandExecutor(runtime.js, second_handlers, stream=runtime.stream, name="second",
                             on_saved=runtime.saved, order=order)  # fmt: skip
    control = runtime.control()

    async def queue_is_empty() -> bool:
        async with runtime.read_pool.connection() as conn:
            return await (await conn.execute("SELECT count(*) FROM wl_ops.command_queue")).fetchone() == (0,)

    async with background(runtime, poll=False):
        on = await control.request_control(RequestControl(device_id=device_id, action=Action.ON, actor="test"))
        runtime.saved()
        async with running(first):
            await asyncio.wait_for(first_switch.reached.wait(), 15)
            async with running(second):
                off = await control.request_control(RequestControl(device_id=device_id, action=Action.OFF, actor="test"))
                runtime.saved()
                await eventually(
                    lambda: second_handlers.asked.count(on.command_id) >= 2,
                    what="the second executor waiting for the first command of the device",
                )
                assert log == []
                gate.set()
                settled_off = await control.wait_outcome(off.command_id, 20)
                await eventually(queue_is_empty, what="both commands out of the queue once settled")
        settled_on = await control.command(on.command_id)

    assert log == [("first", True), ("second", False)]
    assert (settled_on.status, settled_off.status) == (Status.SUCCEEDED, Status.SUCCEEDED)
    assert plug.is_on() is False
