"""Control commands as aggregates: a request to switch a relay, its one attempt and its outcome.

A `ControlCommand` lives through `ControlRequested` → `ControlAttempted` → `ControlSucceeded`
or `ControlFailed`. The attempt is recorded before the device is touched, with the state it
is to reach (`desired`: a toggle is resolved against the state read at execution time), so
a command is attempted at most once: whoever stores `ControlAttempted` first owns it, and a
command found attempted without an outcome is settled by reading the device, never by
switching it again. Pure: no I/O.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
from eventsourcing.domain import Aggregate, event

from domain.commands import Command
from domain.errors import CommandSettled

COMMAND_NAMESPACE = uuid5(NAMESPACE_URL, "https://wattledger.invalid/control-command")


class Action(StrEnum):
    ON = "on"
    OFF = "off"
    TOGGLE = "toggle"


class Status(StrEnum):
    REQUESTED = "requested"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Reason(StrEnum):
    """Why a command failed."""

    DEVICE_OFFLINE = "device_offline"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    STATE_NOT_CONFIRMED = "state_not_confirmed"
    EXPIRED = "expired"


def idempotent_command_id(actor: str, key: str) -> UUID:
    """The id of the command an `Idempotency-Key` names: keys are scoped per principal (actor)."""
    return uuid5(COMMAND_NAMESPACE, f"{actor}\n{key}")


def fingerprint(device_id: UUID, outlet: int | None, action: str) -> str:
    """What a repeated request must match to be the same command."""
    return f"{device_id}/{'all' if outlet is None else outlet}/{action}"


def relay_states(outlets: list[dict[str, Any]]) -> dict[int, bool]:
    return {int(o["index"]): bool(o["is_on"]) for o in outlets}


class ControlCommand(Aggregate):
    """One control request of one relay (a plug's, one strip outlet's, or all of a strip's)."""

    class ControlRequested(Aggregate.Created):
        command_id: UUID
        device_id: UUID
        outlet: int | None
        action: str
        actor: str
        idempotency_key: str | None
        fingerprint: str
        deadline: datetime

    class ControlAttempted(Aggregate.Event):
        device_id: UUID
        outlet: int | None
        action: str
        desired: bool
        executor: str
        actor: str

    class ControlSucceeded(Aggregate.Event):
        device_id: UUID
        outlet: int | None
        action: str
        is_on: bool
        outlets: list[dict[str, Any]]
        actor: str

    class ControlFailed(Aggregate.Event):
        device_id: UUID
        outlet: int | None
        action: str
        reason: str
        detail: str
        actor: str

    @staticmethod
    def create_id(command_id: UUID, **_: object) -> UUID:
        return command_id

    @event(ControlRequested)
    def __init__(
        self,
        *,
        command_id: UUID,
        device_id: UUID,
        outlet: int | None,
        action: str,
        actor: str,
        idempotency_key: str | None,
        fingerprint: str,
        deadline: datetime,
    ) -> None:
        self.device_id = device_id
        self.outlet = outlet
        self.action = Action(action)
        self.requested_by = actor
        self.idempotency_key = idempotency_key
        self.fingerprint = fingerprint
        self.deadline = deadline
        self.status = Status.REQUESTED
        self.desired: bool | None = None
        self.is_on: bool | None = None
        self.outlets: list[dict[str, Any]] = []
        self.reason: str | None = None
        self.detail: str | None = None

    @property
    def settled(self) -> bool:
        return self.status in (Status.SUCCEEDED, Status.FAILED)

    def expired(self, now: datetime) -> bool:
        return now >= self.deadline

    def _check_open(self) -> None:
        if self.settled:
            raise CommandSettled(f"command {self.id} already {self.status.value}")

    def attempt(self, *, desired: bool, executor: str, actor: str) -> None:
        """Claim the command for one execution. Raises CommandSettled unless it is still only requested."""
        if self.status is not Status.REQUESTED:
            raise CommandSettled(f"command {self.id} is already {self.status.value}")
        self._attempted(
            device_id=self.device_id, outlet=self.outlet, action=self.action.value,
            desired=desired, executor=executor, actor=actor,
        )  # fmt: skip

    @event(ControlAttempted)
    def _attempted(
        self, device_id: UUID, outlet: int | None, action: str, desired: bool, executor: str, actor: str
    ) -> None:
        self.status = Status.EXECUTING
        self.desired = desired

    def succeed(self, *, is_on: bool, outlets: list[dict[str, Any]], actor: str) -> None:
        """Record the confirmed state. Raises CommandSettled if an outcome is already recorded."""
        self._check_open()
        self._succeeded(
            device_id=self.device_id, outlet=self.outlet, action=self.action.value,
            is_on=is_on, outlets=outlets, actor=actor,
        )  # fmt: skip

    @event(ControlSucceeded)
    def _succeeded(
        self, device_id: UUID, outlet: int | None, action: str, is_on: bool, outlets: list[dict[str, Any]], actor: str
    ) -> None:
        self.status = Status.SUCCEEDED
        self.is_on = is_on
        self.outlets = list(outlets)

    def fail(self, reason: Reason, detail: str, *, actor: str) -> None:
        """Record the failure. Raises CommandSettled if an outcome is already recorded."""
        self._check_open()
        self._failed(
            device_id=self.device_id, outlet=self.outlet, action=self.action.value,
            reason=reason.value, detail=detail, actor=actor,
        )  # fmt: skip

    @event(ControlFailed)
    def _failed(self, device_id: UUID, outlet: int | None, action: str, reason: str, detail: str, actor: str) -> None:
        self.status = Status.FAILED
        self.reason = reason
        self.detail = detail


def confirmed(desired: bool, outlet: int | None, is_on: bool, outlets: dict[int, bool]) -> bool:
    """Whether a device read back shows the state a command wanted.

    A plug (no outlets) must show `is_on`; one strip outlet must show its own state; a whole
    strip must show every outlet in the desired state.
    """
    if not outlets:
        return is_on is desired
    if outlet is None:
        return all(state is desired for state in outlets.values())
    return outlets.get(outlet) is desired


def resolve_toggle(action: Action, outlet: int | None, is_on: bool, outlets: dict[int, bool]) -> bool:
    """The state an action wants, given the state read from the device now.

    A toggle of a whole strip turns it off if any outlet is on, else on.
    """
    if action is Action.ON:
        return True
    if action is Action.OFF:
        return False
    if not outlets:
        return not is_on
    if outlet is None:
        return not any(outlets.values())
    return not outlets.get(outlet, False)


class RequestControl(Command, frozen=True, kw_only=True, tag="request_control"):
    """Switch a device's relay: `outlet` is a strip outlet's index or child id (None: the plug, or every
    outlet of a strip); `idempotency_key` makes a repeated request return the first command."""

    device_id: UUID
    action: Action
    outlet: int | str | None = None
    idempotency_key: str | None = None


class RenameOnDevice(Command, frozen=True, kw_only=True, tag="rename_on_device"):
    """Store a new name on the device itself, then in the log."""

    device_id: UUID
    alias: str


class ChangeConfig(Command, frozen=True, kw_only=True, tag="change_config"):
    changes: dict[str, Any]


class ControlAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded control request: `created` is False when an Idempotency-Key named an earlier one."""

    command_id: UUID
    created: bool
    position: int


class ControlOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """A command as it stands, as REST and NATS replies show it (`status`: requested, executing,
    succeeded, failed; `is_on` and `outlets` once confirmed; `reason` and `detail` once failed)."""

    command_id: UUID
    device_id: UUID
    outlet: int | None
    action: str
    status: str
    deadline: datetime
    is_on: bool | None = None
    outlets: list[dict[str, Any]] = msgspec.field(default_factory=list)
    reason: str | None = None
    detail: str | None = None


def outcome_of(control: ControlCommand) -> ControlOutcome:
    return ControlOutcome(
        command_id=control.id, device_id=control.device_id, outlet=control.outlet, action=control.action.value,
        status=control.status.value, deadline=control.deadline, is_on=control.is_on, outlets=list(control.outlets),
        reason=control.reason, detail=control.detail,
    )  # fmt: skip
