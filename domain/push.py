"""Push devices: a meter that reports itself (Uptime Kuma's push monitors) instead of being polled.

A device's `PushMonitor` holds how often it promises to push and when it was last heard. Its token
is a `PushToken` whose id is derived from the token's digest, so a push finds it by the token alone
and no event holds the token or its digest; rotating revokes the old token in the same transaction
that issues the new one. What a push says (up, down, readings) lands on the device as a polled
device's state does: `Device.CameOnline` / `Device.WentOffline` and `MeterDay.ReadingRecorded`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

PUSH_MONITOR_NAMESPACE = uuid5(NAMESPACE_URL, "https://wattledger.invalid/push-monitor")
PUSH_TOKEN_NAMESPACE = uuid5(NAMESPACE_URL, "https://wattledger.invalid/push-token")
PUSH_REGISTRY_ID = uuid5(NAMESPACE_URL, "https://wattledger.invalid/push-registry")

MIN_INTERVAL_S = 10
MAX_INTERVAL_S = 86_400
MAX_GRACE_S = 86_400


def push_monitor_id(device_id: UUID) -> UUID:
    return uuid5(PUSH_MONITOR_NAMESPACE, str(device_id))


def push_token_id(token_digest: str) -> UUID:
    """The id of the token whose digest is given: the only way from a token to its device."""
    return uuid5(PUSH_TOKEN_NAMESPACE, token_digest)


class PushToken(Aggregate):
    """One push token of one device; a revoked token is never valid again."""

    class Issued(Aggregate.Created):
        device_id: UUID
        actor: str

    class Revoked(Aggregate.Event):
        actor: str

    @event(Issued)
    def __init__(self, *, device_id: UUID, actor: str) -> None:
        self.device_id = device_id
        self.revoked = False

    @classmethod
    def issue(cls, token_digest: str, *, device_id: UUID, actor: str) -> PushToken:
        """A new token, its id derived from its digest (which no event holds)."""
        return cls._create(cls.Issued, id=push_token_id(token_digest), device_id=device_id, actor=actor)

    def revoke(self, *, actor: str) -> None:
        if not self.revoked:
            self._revoked(actor=actor)

    @event(Revoked)
    def _revoked(self, actor: str) -> None:
        self.revoked = True


class PushMonitor(Aggregate):
    """When a push device was last heard and how long it may stay silent before it counts as offline."""

    class Opened(Aggregate.Created):
        device_id: UUID
        interval_s: int
        grace_s: int
        token_id: UUID
        opened_at: datetime
        actor: str

    class TokenRotated(Aggregate.Event):
        token_id: UUID
        actor: str

    class Heard(Aggregate.Event):
        at: datetime
        up: bool

    @staticmethod
    def create_id(device_id: UUID, **_: object) -> UUID:
        return push_monitor_id(device_id)

    @event(Opened)
    def __init__(
        self, *, device_id: UUID, interval_s: int, grace_s: int, token_id: UUID, opened_at: datetime, actor: str
    ) -> None:
        self.device_id = device_id
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.token_id = token_id
        self.last_heard = opened_at

    def rotate(self, token_id: UUID, *, actor: str) -> None:
        self._token_rotated(token_id=token_id, actor=actor)

    @event(TokenRotated)
    def _token_rotated(self, token_id: UUID, actor: str) -> None:
        self.token_id = token_id

    def hear(self, at: datetime, *, up: bool) -> None:
        self._heard(at=at, up=up)

    @event(Heard)
    def _heard(self, at: datetime, up: bool) -> None:
        self.last_heard = max(self.last_heard, at)

    def deadline(self) -> datetime:
        """The moment after which silence means offline: the last push, plus the interval and the grace."""
        return self.last_heard + timedelta(seconds=self.interval_s + self.grace_s)

    def missed_pushes(self, now: datetime) -> int:
        """Pushes missed by `now`; 0 while the deadline has not passed."""
        if now <= self.deadline():
            return 0
        return max(1, int((now - self.last_heard).total_seconds() // self.interval_s))


class PushRegistry(Aggregate):
    """Every device that was ever opened to pushes: the ones whose silence is watched."""

    class Opened(Aggregate.Created):
        actor: str

    class DeviceAdded(Aggregate.Event):
        device_id: UUID

    @staticmethod
    def create_id(**_: object) -> UUID:
        return PUSH_REGISTRY_ID

    @event(Opened)
    def __init__(self, *, actor: str) -> None:
        self.device_ids: list[UUID] = []

    def add(self, device_id: UUID) -> None:
        if device_id not in self.device_ids:
            self._device_added(device_id=device_id)

    @event(DeviceAdded)
    def _device_added(self, device_id: UUID) -> None:
        self.device_ids.append(device_id)
