"""The Device aggregate: identity, name and observed state of one plug, strip or relay board."""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import DeviceRemoved
from domain.readings import DeviceSnapshot

DEVICE_NAMESPACE = uuid5(NAMESPACE_URL, "https://wattledger.invalid/device")

PUSH_ADDRESS_PREFIX = "push:"
"""The address of a push-only device is this prefix and a random UUID: `parse_address` refuses any
text of that shape (its port is not a number), so it names no host and meets no polled device."""

PUSH_DEVICE_TYPE = "push"


def device_id_for(address: str) -> UUID:
    """A device's id is derived from its canonical address, so two adds of one address collide."""
    return uuid5(DEVICE_NAMESPACE, address)


def is_push_address(address: str) -> bool:
    """Whether an address is a push-only device's placeholder: nothing polls or switches it."""
    return address.startswith(PUSH_ADDRESS_PREFIX)


def push_address() -> str:
    """A new push-only device's address: unique, and never one a network device can have."""
    return f"{PUSH_ADDRESS_PREFIX}{uuid4()}"


def _identity(snapshot: DeviceSnapshot, alias: str | None) -> dict[str, Any]:
    """What a device says about itself, with the user's alias in place of its own when given."""
    return {
        "alias": alias or snapshot.alias,
        "model": snapshot.model,
        "device_type": snapshot.device_type,
        "mac": snapshot.mac,
        "outlets": [o.outlet_id for o in snapshot.outlets],
    }


class Device(Aggregate):
    """A device at one address. Every event records who caused it (`actor`)."""

    class Added(Aggregate.Created):
        address: str
        alias: str
        model: str
        device_type: str
        mac: str
        outlets: list[str]
        actor: str
        push_only: bool = False
        """A meter that pushes its state and readings instead of being polled (added after the first
        release: an older `Added` reads as False)."""

    class Renamed(Aggregate.Event):
        alias: str
        actor: str

    class Removed(Aggregate.Event):
        actor: str

    class Restored(Aggregate.Event):
        alias: str
        model: str
        device_type: str
        mac: str
        outlets: list[str]
        actor: str

    class StateChanged(Aggregate.Event):
        is_on: bool
        outlet_index: int | None
        actor: str

    class WentOffline(Aggregate.Event):
        missed_polls: int
        actor: str

    class CameOnline(Aggregate.Event):
        actor: str

    class SessionThresholdSet(Aggregate.Event):
        """Power at or above which the device (or any of its outlets) is in a usage session; None: the default."""

        threshold_w: float | None
        actor: str

    class PublicitySet(Aggregate.Event):
        """Whether the device's badges show its name and state to anyone (`public`) or a blank "N/A"."""

        public: bool
        actor: str

    @staticmethod
    def create_id(address: str, **_: object) -> UUID:
        return device_id_for(address)

    @event(Added)
    def __init__(
        self,
        *,
        address: str,
        alias: str,
        model: str,
        device_type: str,
        mac: str,
        outlets: list[str],
        actor: str,
        push_only: bool = False,
    ) -> None:
        # The library asks every keyword-only argument of a new aggregate; the default serves
        # only an `Added` stored before `push_only` existed, replayed.
        self.address = address
        self.push_only = push_only
        self.alias = alias
        self.model = model
        self.device_type = device_type
        self.mac = mac
        self.outlets = list(outlets)
        self.removed = False
        self.online = True
        self.public = False
        self.relays: dict[int | None, bool] = {}

    @classmethod
    def from_snapshot(cls, address: str, snapshot: DeviceSnapshot, *, alias: str | None, actor: str) -> Device:
        """Add a device as first seen by a poll; `alias` overrides the device's own name."""
        device = cls(address=address, **_identity(snapshot, alias), actor=actor, push_only=False)
        device.observe_relays(snapshot, actor=actor)
        return device

    @classmethod
    def push_only_device(cls, *, alias: str, model: str, actor: str) -> Device:
        """Add a meter that only pushes: no network address (see `push_address`), no relay, no MAC."""
        return cls(
            address=push_address(), alias=alias, model=model, device_type=PUSH_DEVICE_TYPE, mac="", outlets=[],
            actor=actor, push_only=True,
        )  # fmt: skip

    def check_present(self) -> None:
        if self.removed:
            raise DeviceRemoved(f"device {self.address} was removed")

    def rename(self, alias: str, *, actor: str) -> None:
        self.check_present()
        if alias != self.alias:
            self._renamed(alias=alias, actor=actor)

    @event(Renamed)
    def _renamed(self, alias: str, actor: str) -> None:
        self.alias = alias

    def remove(self, *, actor: str) -> None:
        self.check_present()
        self._removed(actor=actor)

    @event(Removed)
    def _removed(self, actor: str) -> None:
        self.removed = True

    def restore(self, snapshot: DeviceSnapshot, *, alias: str | None, actor: str) -> None:
        """Add a removed device again: same id, history kept."""
        self._restored(**_identity(snapshot, alias), actor=actor)
        self.observe_relays(snapshot, actor=actor)

    @event(Restored)
    def _restored(
        self, alias: str, model: str, device_type: str, mac: str, outlets: list[str], actor: str
    ) -> None:
        self.alias = alias
        self.model = model
        self.device_type = device_type
        self.mac = mac
        self.outlets = list(outlets)
        self.removed = False
        self.online = True

    def observe_relays(self, snapshot: DeviceSnapshot, *, actor: str) -> None:
        """Record a StateChanged for every relay whose state differs from the last one known."""
        if snapshot.outlets:
            states: dict[int | None, bool] = {o.index: o.is_on for o in snapshot.outlets}
        else:
            states = {None: snapshot.is_on}
        for index, is_on in states.items():
            if self.relays.get(index) is not is_on:
                self._state_changed(is_on=is_on, outlet_index=index, actor=actor)

    @event(StateChanged)
    def _state_changed(self, is_on: bool, outlet_index: int | None, actor: str) -> None:
        self.relays[outlet_index] = is_on

    def went_offline(self, missed_polls: int, *, actor: str) -> None:
        """Mark the device offline once; repeated misses change nothing."""
        if self.online and not self.removed:
            self._went_offline(missed_polls=missed_polls, actor=actor)

    @event(WentOffline)
    def _went_offline(self, missed_polls: int, actor: str) -> None:
        self.online = False

    def came_online(self, *, actor: str) -> None:
        if not self.online and not self.removed:
            self._came_online(actor=actor)

    @event(CameOnline)
    def _came_online(self, actor: str) -> None:
        self.online = True

    def set_session_threshold(self, threshold_w: float | None, *, actor: str) -> None:
        """Set (None: clear) the device's usage-session threshold. Raises DeviceRemoved for a removed device."""
        self.check_present()
        self._session_threshold_set(threshold_w=threshold_w, actor=actor)

    @event(SessionThresholdSet)
    def _session_threshold_set(self, threshold_w: float | None, actor: str) -> None:
        self.session_threshold_w = threshold_w

    def set_public(self, public: bool, *, actor: str) -> None:
        """Show the device's badges to anyone, or stop; setting what is set records nothing.
        Raises DeviceRemoved for a removed device."""
        self.check_present()
        if public != getattr(self, "public", False):
            self._publicity_set(public=public, actor=actor)

    @event(PublicitySet)
    def _publicity_set(self, public: bool, actor: str) -> None:
        self.public = public
