"""Control use cases: record a request, execute it at most once, settle it after a crash; and
the system configuration the requests obey.

`ControlHandlers.request_control` only records `ControlRequested` (a device known to be offline
fails at once). The executor calls `execute` for each request it receives: it records
`ControlAttempted` before touching the device (a version check, so two executors cannot both
claim one command), switches, reads back and records the outcome. A command found attempted
without an outcome was interrupted (the executor died): `execute` reads the device and
records `ControlSucceeded` if it shows the desired state, else `ControlFailed
(state_not_confirmed)`; it never switches it again.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

from domain.address import DeviceAddress, parse_address
from domain.commands import Stored
from domain.config import CONFIG_ID, ConfigValues, SystemConfig, effective
from domain.control import (
    Action,
    ChangeConfig,
    ControlAccepted,
    ControlCommand,
    Reason,
    RenameOnDevice,
    RequestControl,
    confirmed,
    fingerprint,
    idempotent_command_id,
    resolve_toggle,
)
from domain.device import Device
from domain.errors import (
    CommandNotFound,
    ConcurrencyConflict,
    DeviceControlDisabled,
    DeviceError,
    DeviceNotFound,
    DevicePushOnly,
    DeviceTimeout,
    DeviceUnreachable,
    IdempotencyKeyReused,
    OutletNotFound,
)
from domain.ports import Clock, DeviceSwitch, EventStore
from domain.readings import DeviceSnapshot
from domain.retry import ATTEMPTS, retrying
from domain.text import check_optional_text, check_text, clean_text

EXECUTOR_ACTOR = "system:executor"
DEFAULT_DEADLINE_S = 30.0


def resolve_outlet(device: Device, outlet: int | str | None) -> int | None:
    """The outlet index a request names: an index or a strip outlet's child id.

    None means the plug's relay, or every outlet of a strip; a plug also takes index 0 (its
    only relay). Raises OutletNotFound for anything the device lacks.
    """
    if outlet is None:
        return None
    if isinstance(outlet, str) and not outlet.isdigit():
        if outlet in device.outlets:
            return device.outlets.index(outlet)
        raise OutletNotFound(f"device {device.address} has no outlet {outlet!r}")
    index = int(outlet)
    if not device.outlets:
        if index == 0:
            return None
        raise OutletNotFound(f"device {device.address} is a plug with one relay (outlet 0), not {index}")
    if not 0 <= index < len(device.outlets):
        raise OutletNotFound(f"device {device.address} has outlets 0..{len(device.outlets) - 1}, not {index}")
    return index


def _states(snapshot: DeviceSnapshot) -> dict[int, bool]:
    return {o.index: o.is_on for o in snapshot.outlets}


def _reason_of(error: Exception) -> Reason:
    if isinstance(error, DeviceTimeout):
        return Reason.TIMEOUT
    if isinstance(error, DeviceUnreachable):
        return Reason.DEVICE_OFFLINE
    return Reason.REFUSED


class ConfigHandlers:
    """Reads and changes the system configuration; `defaults` are the process's settings."""

    def __init__(self, store: EventStore, defaults: ConfigValues) -> None:
        self.store = store
        self.defaults = defaults

    async def current(self) -> ConfigValues:
        return effective(self.defaults, await self.store.aggregate(CONFIG_ID, SystemConfig))

    async def change(self, command: ChangeConfig) -> tuple[ConfigValues, int]:
        """Record the changed fields as one `ConfigChanged`; the effective configuration and the position.

        Raises InvalidConfig naming a bad field (nothing stored); a second concurrent writer
        conflict reaches the caller as ConcurrencyConflict.
        """

        async def attempt() -> tuple[ConfigValues, int]:
            config = await self.store.aggregate(CONFIG_ID, SystemConfig) or SystemConfig(actor=command.actor)
            config.change(command.changes, actor=command.actor)
            position = await self.store.save(config)
            return effective(self.defaults, config), position

        return await retrying(attempt)


class ControlHandlers:
    """Control requests, their execution and their settlement, over the store, a switch and a clock."""

    def __init__(
        self,
        store: EventStore,
        switch: DeviceSwitch,
        clock: Clock,
        config: ConfigHandlers,
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> None:
        self.store = store
        self.switch = switch
        self.clock = clock
        self.config = config
        self.deadline = timedelta(seconds=deadline_s)

    async def check_enabled(self) -> None:
        """Raises DeviceControlDisabled when the system configuration turned control off."""
        if not (await self.config.current()).allow_device_control:
            raise DeviceControlDisabled("device control is turned off in the system configuration")

    async def request_control(self, command: RequestControl) -> ControlAccepted:
        """Record a control request for the executor; a device known to be offline fails at once.

        Raises InvalidText (the idempotency key), DeviceControlDisabled, DeviceNotFound (unknown or
        removed), DevicePushOnly (a device that only pushes has no relay), OutletNotFound, and
        IdempotencyKeyReused when the caller's key already named a different request. The same key
        with the same request returns the first command (`created=False`), stores nothing.
        """
        check_optional_text(command.idempotency_key, field="idempotency_key")
        await self.check_enabled()
        device = await self.store.device(command.device_id)
        if device is None or device.removed:
            raise DeviceNotFound(f"no device with id {command.device_id}")
        if device.push_only:
            raise DevicePushOnly("this device only pushes its state: it has no relay to switch")
        outlet = resolve_outlet(device, command.outlet)
        wanted = fingerprint(device.id, outlet, command.action.value)
        key = command.idempotency_key
        command_id = idempotent_command_id(command.actor, key) if key else uuid4()

        async def attempt() -> ControlAccepted:
            if key:
                first = await self.store.aggregate(command_id, ControlCommand)
                if first is not None:
                    if first.fingerprint != wanted:
                        raise IdempotencyKeyReused(
                            "this Idempotency-Key was already used for a different request"
                        )
                    return ControlAccepted(command_id=command_id, created=False, position=0)
            control = ControlCommand(
                command_id=command_id, device_id=device.id, outlet=outlet, action=command.action.value,
                actor=command.actor, idempotency_key=key, fingerprint=wanted,
                deadline=self.clock.now() + self.deadline,
            )  # fmt: skip
            if not device.online:
                control.fail(Reason.DEVICE_OFFLINE, f"device {device.address} is offline", actor=command.actor)
            position = await self.store.save(control)
            return ControlAccepted(command_id=command_id, created=True, position=position)

        # Decided again, a keyed request finds what a concurrent one stored under its key; a fresh id finds nothing.
        return await retrying(attempt, attempts=ATTEMPTS if key else 1)

    async def command(self, command_id: UUID) -> ControlCommand:
        """The command from the event store; raises CommandNotFound."""
        found = await self.store.aggregate(command_id, ControlCommand)
        if found is None:
            raise CommandNotFound(f"no command {command_id}")
        return found

    async def wait_outcome(self, command_id: UUID, timeout: float) -> ControlCommand:
        """The command once it has an outcome, or as it stands after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        delay = 0.005
        while True:
            control = await self.command(command_id)
            if control.settled or loop.time() >= until:
                return control
            await asyncio.sleep(min(delay, max(until - loop.time(), 0.0)))
            delay = min(delay * 2, 0.05)

    async def execute(self, command_id: UUID, *, executor: str) -> ControlCommand | None:
        """Run one command at most once; returns it with its outcome, or None if another executor owns it.

        Settled commands are returned as they are. An expired one is failed `expired`, a device
        that is offline or removed `device_offline`, and any while control is turned off
        `refused`, without touching the device. A command attempted
        before without an outcome is settled by reading the device back, never switched again.
        Raises CommandNotFound; store failures reach the caller (nothing was switched unless
        `ControlAttempted` was stored, and then the next delivery settles it).
        """
        control = await self.command(command_id)
        if control.settled:
            return control
        device = await self.store.device(control.device_id)
        if control.desired is not None:
            return await self._settle_interrupted(control, device)
        if control.expired(self.clock.now()):
            return await self._fail(control, Reason.EXPIRED, "the deadline passed before the command could run")
        if device is None or device.removed or not device.online:
            return await self._fail(control, Reason.DEVICE_OFFLINE, "the device is offline or was removed")
        if device.push_only:
            return await self._fail(control, Reason.REFUSED, "the device only pushes: it has no relay to switch")
        if not (await self.config.current()).allow_device_control:
            return await self._fail(control, Reason.REFUSED, "device control was turned off before the command ran")
        address = parse_address(device.address)
        try:
            desired = await self._desired(control, address)
        except (DeviceError, OutletNotFound) as exc:
            return await self._fail(control, _reason_of(exc), str(exc))
        control.attempt(desired=desired, executor=executor, actor=EXECUTOR_ACTOR)
        try:
            await self.store.save(control)
        except ConcurrencyConflict:
            return None
        try:
            snapshot = await self.switch.set_relay(address, on=desired, outlet_index=control.outlet)
        except (DeviceError, OutletNotFound) as exc:
            return await self._after_failed_switch(control, address, exc)
        return await self._confirm(control, snapshot)

    async def _desired(self, control: ControlCommand, address: DeviceAddress) -> bool:
        if control.action is not Action.TOGGLE:
            return control.action is Action.ON
        snapshot = await self.switch.poll(address)
        return resolve_toggle(control.action, control.outlet, snapshot.is_on, _states(snapshot))

    async def _after_failed_switch(self, control: ControlCommand, address: DeviceAddress, error: Exception) -> ControlCommand:
        """A switch that raised may still have taken (a lost answer): one read decides."""
        try:
            snapshot = await self.switch.poll(address)
        except (DeviceError, OutletNotFound):
            return await self._fail(control, _reason_of(error), str(error))
        if self._matches(control, snapshot):
            return await self._succeed(control, snapshot)
        return await self._fail(control, _reason_of(error), str(error))

    async def _settle_interrupted(self, control: ControlCommand, device: Device | None) -> ControlCommand:
        """An attempt without an outcome: read the device back; it is never switched again."""
        if device is None or device.removed:
            return await self._fail(control, Reason.STATE_NOT_CONFIRMED, "interrupted; the device was removed")
        try:
            snapshot = await self.switch.poll(parse_address(device.address))
        except (DeviceError, OutletNotFound) as exc:
            return await self._fail(control, Reason.STATE_NOT_CONFIRMED, f"interrupted; reading back failed: {exc}")
        if self._matches(control, snapshot):
            return await self._succeed(control, snapshot)
        return await self._fail(control, Reason.STATE_NOT_CONFIRMED, "interrupted; the device does not show the state")

    def _matches(self, control: ControlCommand, snapshot: DeviceSnapshot) -> bool:
        assert control.desired is not None
        return confirmed(control.desired, control.outlet, snapshot.is_on, _states(snapshot))

    async def _confirm(self, control: ControlCommand, snapshot: DeviceSnapshot) -> ControlCommand:
        if self._matches(control, snapshot):
            return await self._succeed(control, snapshot)
        return await self._fail(control, Reason.STATE_NOT_CONFIRMED, "the device read back does not show the state")

    async def _succeed(self, control: ControlCommand, snapshot: DeviceSnapshot) -> ControlCommand:
        states = _states(snapshot)
        is_on = snapshot.is_on if control.outlet is None else states[control.outlet]
        outlets: list[dict[str, Any]] = [
            {"index": o.index, "outlet_id": o.outlet_id, "is_on": o.is_on} for o in snapshot.outlets
        ]
        control.succeed(is_on=is_on, outlets=outlets, actor=EXECUTOR_ACTOR)
        return await self._save_outcome(control)

    async def _fail(self, control: ControlCommand, reason: Reason, detail: str) -> ControlCommand:
        control.fail(reason, clean_text(detail)[:500], actor=EXECUTOR_ACTOR)
        return await self._save_outcome(control)

    async def _save_outcome(self, control: ControlCommand) -> ControlCommand:
        """Store the outcome; if another writer recorded one first, that one stands."""
        try:
            await self.store.save(control)
        except ConcurrencyConflict:
            return await self.command(control.id)
        return control

    async def rename_on_device(self, command: RenameOnDevice) -> Stored:
        """Rename on the device first (python-kasa), then record `Renamed`; a push-only device has
        no name of its own to change, so only `Renamed` is recorded.

        Raises InvalidText (the alias), DeviceNotFound (unknown or removed) and the switch's
        DeviceError (nothing stored).
        """
        check_text(command.alias, field="alias")
        device = await self.store.device(command.device_id)
        if device is None or device.removed:
            raise DeviceNotFound(f"no device with id {command.device_id}")
        if not device.push_only:
            await self.switch.set_alias(parse_address(device.address), command.alias)

        async def attempt() -> Stored:
            renamed = await self.store.device(command.device_id)
            if renamed is None:
                raise DeviceNotFound(f"no device with id {command.device_id}")
            renamed.rename(command.alias, actor=command.actor)
            return Stored(position=await self.store.save(renamed))

        return await retrying(attempt)
