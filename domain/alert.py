"""Alerts in the domain: rules, the alerts they raise, each delivery of an alert, and the facts that
time-based rules are judged by.

An `AlertRule` is an aggregate whose creation, changes and deletion are events with their actor.
Its notification targets carry their secrets sealed (a webhook's signing secret, an apprise URL);
the public event contract never lists them. An `Alert` is one firing of one rule: its id is derived
from the rule and the firing's number, so recording it twice is impossible. Every attempt to deliver
an alert to a target is an `AlertDelivery.Attempted` event on a stream whose id is derived from the
alert, the target and the phase (fired, resolved, test). `AlertTicks` holds one `Ticked` event per
minute (one stream per UTC day): the clock that "for N minutes" rules are judged by, kept in the log
so a replay judges them alike. `PartHealth` records when a supervised part became degraded and when
it recovered.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import AlertRuleNotFound

ALERT_RULE_NAMESPACE = uuid5(NAMESPACE_URL, "https://wattledger.invalid/alert-rule")
ALERT_NAMESPACE = uuid5(NAMESPACE_URL, "https://wattledger.invalid/alert")
ALERT_DELIVERY_NAMESPACE = uuid5(NAMESPACE_URL, "https://wattledger.invalid/alert-delivery")
ALERT_TICKS_NAMESPACE = uuid5(NAMESPACE_URL, "https://wattledger.invalid/alert-ticks")
PART_HEALTH_NAMESPACE = uuid5(NAMESPACE_URL, "https://wattledger.invalid/part-health")

Phase = Literal["fired", "resolved", "test"]


def alert_id(rule_id: UUID, number: int) -> UUID:
    """The id of the `number`th firing (from 1) of a rule: the same in every replay of the log."""
    return uuid5(ALERT_NAMESPACE, f"{rule_id}:{number}")


def delivery_id(alert: UUID, target_id: str, phase: Phase) -> UUID:
    """The one delivery stream of an alert's phase to a target: what makes delivery idempotent."""
    return uuid5(ALERT_DELIVERY_NAMESPACE, f"{alert}:{target_id}:{phase}")


def ticks_id(day: date) -> UUID:
    return uuid5(ALERT_TICKS_NAMESPACE, day.isoformat())


def part_health_id(part: str) -> UUID:
    return uuid5(PART_HEALTH_NAMESPACE, part)


class AlertRule(Aggregate):
    """One alert rule: what to watch (`kind` and its parameters) and whom to tell (`targets`).

    `targets` are dicts with `target_id`, `type` (`webhook` or `apprise`), `hint` (what may be shown:
    a webhook's URL, an apprise URL's scheme) and `sealed` (the webhook's secret or the apprise URL,
    sealed by the secret box); a webhook has its `url` too.
    """

    class Created(Aggregate.Created):
        name: str
        kind: str
        device_id: UUID | None
        threshold: float | None
        for_s: int
        part: str | None
        enabled: bool
        targets: list[dict[str, Any]]
        actor: str

    class Updated(Aggregate.Event):
        name: str
        threshold: float | None
        for_s: int
        part: str | None
        enabled: bool
        targets: list[dict[str, Any]]
        actor: str

    class Deleted(Aggregate.Event):
        actor: str

    @event(Created)
    def __init__(
        self, *, name: str, kind: str, device_id: UUID | None, threshold: float | None, for_s: int,
        part: str | None, enabled: bool, targets: list[dict[str, Any]], actor: str,
    ) -> None:  # fmt: skip
        self.name, self.kind, self.device_id = name, kind, device_id
        self.threshold, self.for_s, self.part, self.enabled = threshold, for_s, part, enabled
        self.targets = targets
        self.deleted = False

    def check_present(self) -> None:
        if self.deleted:
            raise AlertRuleNotFound(f"no alert rule with id {self.id}")

    def update(
        self, *, name: str, threshold: float | None, for_s: int, part: str | None, enabled: bool,
        targets: list[dict[str, Any]], actor: str,
    ) -> None:  # fmt: skip
        self.check_present()
        self._updated(name=name, threshold=threshold, for_s=for_s, part=part, enabled=enabled, targets=targets,
                      actor=actor)  # fmt: skip

    @event(Updated)
    def _updated(
        self, name: str, threshold: float | None, for_s: int, part: str | None, enabled: bool,
        targets: list[dict[str, Any]], actor: str,
    ) -> None:  # fmt: skip
        self.name, self.threshold, self.for_s, self.part, self.enabled = name, threshold, for_s, part, enabled
        self.targets = targets

    def delete(self, *, actor: str) -> None:
        self.check_present()
        self._deleted(actor=actor)

    @event(Deleted)
    def _deleted(self, actor: str) -> None:
        self.deleted = True


class Alert(Aggregate):
    """One firing of a rule, recorded once the alerts read model judged it fired: `Fired`, then `Resolved`."""

    class Fired(Aggregate.Created):
        rule_id: UUID
        number: int
        rule_name: str
        kind: str
        device_id: UUID | None
        part: str | None
        fired_at: datetime
        detail: str
        actor: str

    class Resolved(Aggregate.Event):
        resolved_at: datetime
        detail: str
        actor: str

    @staticmethod
    def create_id(rule_id: UUID, number: int, **_: object) -> UUID:
        return alert_id(rule_id, number)

    @event(Fired)
    def __init__(
        self, *, rule_id: UUID, number: int, rule_name: str, kind: str, device_id: UUID | None, part: str | None,
        fired_at: datetime, detail: str, actor: str,
    ) -> None:  # fmt: skip
        self.rule_id, self.number, self.rule_name, self.kind = rule_id, number, rule_name, kind
        self.resolved_at: datetime | None = None

    def resolve(self, resolved_at: datetime, detail: str, *, actor: str) -> None:
        """Record the resolution once; resolving a resolved alert records nothing."""
        if self.resolved_at is None:
            self._resolved(resolved_at=resolved_at, detail=detail, actor=actor)

    @event(Resolved)
    def _resolved(self, resolved_at: datetime, detail: str, actor: str) -> None:
        self.resolved_at = resolved_at


class AlertDelivery(Aggregate):
    """The attempts to deliver one phase of one alert to one target; the last one that succeeded ends it."""

    class Opened(Aggregate.Created):
        alert_id: UUID
        rule_id: UUID
        target_id: str
        phase: str
        actor: str

    class Attempted(Aggregate.Event):
        attempt: int
        ok: bool
        status: int | None
        error: str | None
        next_at: datetime | None
        gave_up: bool
        actor: str

    @staticmethod
    def create_id(alert_id: UUID, target_id: str, phase: Phase, **_: object) -> UUID:
        return delivery_id(alert_id, target_id, phase)

    @event(Opened)
    def __init__(self, *, alert_id: UUID, rule_id: UUID, target_id: str, phase: Phase, actor: str) -> None:
        self.attempts = 0
        self.done = False
        self.next_at: datetime | None = None

    def attempted(
        self, *, ok: bool, status: int | None, error: str | None, next_at: datetime | None, gave_up: bool, actor: str
    ) -> None:
        self._attempted(attempt=self.attempts + 1, ok=ok, status=status, error=error, next_at=next_at,
                        gave_up=gave_up, actor=actor)  # fmt: skip

    @event(Attempted)
    def _attempted(
        self, attempt: int, ok: bool, status: int | None, error: str | None, next_at: datetime | None, gave_up: bool,
        actor: str,
    ) -> None:  # fmt: skip
        self.attempts = attempt
        self.done = ok or gave_up
        self.next_at = next_at


class AlertTicks(Aggregate):
    """The minutes of one UTC day as the alerts part's clock saw them: at most one `Ticked` per minute."""

    class Opened(Aggregate.Created):
        day: str

    class Ticked(Aggregate.Event):
        at: datetime

    @staticmethod
    def create_id(day: str, **_: object) -> UUID:
        return ticks_id(date.fromisoformat(day))

    @event(Opened)
    def __init__(self, *, day: str) -> None:
        self.last: datetime | None = None

    def tick(self, at: datetime) -> bool:
        """Record `at` unless a tick of the same minute or later is recorded already; whether it was."""
        if self.last is not None and at.replace(second=0, microsecond=0) <= self.last.replace(second=0, microsecond=0):
            return False
        self._ticked(at=at)
        return True

    @event(Ticked)
    def _ticked(self, at: datetime) -> None:
        self.last = at


class PartHealth(Aggregate):
    """Whether one supervised part is degraded, as its supervising process last recorded it."""

    class Opened(Aggregate.Created):
        part: str

    class Degraded(Aggregate.Event):
        part: str
        at: datetime
        error: str

    class Recovered(Aggregate.Event):
        part: str
        at: datetime

    @staticmethod
    def create_id(part: str, **_: object) -> UUID:
        return part_health_id(part)

    @event(Opened)
    def __init__(self, *, part: str) -> None:
        self.part = part
        self.degraded = False

    def observe(self, degraded: bool, at: datetime, error: str | None) -> None:
        """Record a change of state only: a part seen degraded twice is one `Degraded`."""
        if degraded and not self.degraded:
            self._degraded(part=self.part, at=at, error=error or "")
        elif not degraded and self.degraded:
            self._recovered(part=self.part, at=at)

    @event(Degraded)
    def _degraded(self, part: str, at: datetime, error: str) -> None:
        self.degraded = True

    @event(Recovered)
    def _recovered(self, part: str, at: datetime) -> None:
        self.degraded = False
