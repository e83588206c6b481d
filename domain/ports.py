"""What the command handlers need from the outside world, as protocols.

Adapters implement these (the eventsourcing store, the python-kasa driver, the
system clock); tests subclass them with fakes. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Protocol, TypeVar
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate

from domain.address import DeviceAddress
from domain.device import Device
from domain.meter import MeterDay
from domain.readings import DeviceSnapshot

A = TypeVar("A", bound=Aggregate)


class EventStore(Protocol):
    """Loads aggregates and stores the new events of several aggregates in one transaction.

    `save` raises `ConcurrencyConflict` when another writer stored a version first;
    an implementation that keeps aggregates between calls forgets every aggregate
    of a failed save, so the next load reads the store again.
    """

    async def device(self, device_id: UUID) -> Device | None: ...

    async def meter_day(self, device_id: UUID, day: date) -> MeterDay | None:
        """The meter day as of its latest snapshot and the events after it (None: no reading that day)."""
        ...

    async def recorded_times(self, meter_id: UUID) -> frozenset[datetime]:
        """The timestamps of every reading stored in the meter day stream `meter_id` (see `MeterDay.recall`)."""
        ...

    async def aggregate(self, aggregate_id: UUID, kind: type[A]) -> A | None:
        """The aggregate with this id, or None if there is none. Raises TypeError if it is not a `kind`."""
        ...

    async def save(self, *aggregates: Aggregate) -> int:
        """Store every pending event; returns the notification id of the last one (0: none)."""
        ...


class DeviceDriver(Protocol):
    """Talks to devices. Failures raise the domain's `DeviceError` subclasses."""

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot: ...

    async def discover(self, target: str, *, port: int | None = None) -> list[DeviceAddress]: ...


class DeviceSwitch(Protocol):
    """Switches relays and renames devices. Failures raise `DeviceError` subclasses
    (`DeviceTimeout` when the device did not answer in time, `OutletNotFound` for a bad index)."""

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        """The device's state read now."""
        ...

    async def set_relay(self, address: DeviceAddress, *, on: bool, outlet_index: int | None = None) -> DeviceSnapshot:
        """Switch a plug, one strip outlet or (index None) every outlet; the state read right after."""
        ...

    async def set_alias(self, address: DeviceAddress, alias: str) -> None:
        """Store a new name on the device itself."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class PasswordHasher(Protocol):
    """Slow, salted password hashing (argon2). Async: hashing takes tens of milliseconds of CPU."""

    async def hash(self, password: str) -> str: ...

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether `password` matches; False (never an error) for a malformed hash."""
        ...


class SecretBox(Protocol):
    """Symmetric encryption of small secrets kept in events (TOTP secrets)."""

    def seal(self, plain: str) -> str: ...

    def open(self, sealed: str) -> str: ...


class TotpVerifier(Protocol):
    """Time-based one-time passwords (RFC 6238)."""

    def new_secret(self) -> str:
        """A new random base32 secret."""
        ...

    def provisioning_uri(self, secret: str, *, username: str) -> str:
        """The `otpauth://` URI an authenticator app scans."""
        ...

    def matching_step(self, secret: str, code: str, at: datetime) -> int | None:
        """The time step whose code `code` is, within one step of `at`; None if it matches none."""
        ...


class SecretMaker(Protocol):
    """Random high-entropy secrets (API keys, backup codes) and their fast one-way digest."""

    def key_secret(self) -> str: ...

    def backup_codes(self, count: int) -> list[str]: ...

    def digest(self, secret: str) -> str:
        """SHA-256 of the secret (hex): enough for secrets too random to guess."""
        ...


class IdentityReader(Protocol):
    """What per-request authentication reads and the activity it notes (no events), and a user's keys.

    Authentication never trusts a read model, which may lag the log or be stuck behind
    an event it cannot hold: it asks the event store itself which version each session,
    key and user is at now.
    """

    async def versions(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, int]:
        """The version of each aggregate as stored now (its last event); ids with no event are left out."""
        ...

    async def touch_session(self, session_id: UUID, at: datetime) -> None:
        """Note the session's last activity (kept at minute precision)."""
        ...

    async def touch_key(self, key_id: UUID, at: datetime) -> None:
        """Note the key's last use (kept at minute precision)."""
        ...

    async def api_key_ids(self, user_id: UUID) -> list[UUID]:
        """The ids of the user's keys not revoked, as the identity read model lists them (to revoke them all)."""
        ...


class AccessClaims(msgspec.Struct, frozen=True, kw_only=True):
    """What a genuine, unexpired access token says: whose session it is and when it stops."""

    user_id: UUID
    session_id: UUID
    expires_at: datetime


class TokenVerifier(Protocol):
    """Checks the access tokens the token service signed (signature, type, expiry)."""

    async def verify_access(self, token: str) -> AccessClaims:
        """The claims of a genuine, unexpired access token. Raises TokenExpired, TokenInvalid."""
        ...
