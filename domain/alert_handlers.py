"""The alert use cases: rules created, changed and deleted; the alerts part's records (ticks, part
health, alerts fired and resolved, delivery attempts).

Secrets of targets (a webhook's signing secret, an apprise URL) are sealed by the secret box before
they reach an event and are shown only in the answer that created them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import msgspec

from domain.alert import Alert, AlertDelivery, AlertRule, AlertTicks, PartHealth, Phase, delivery_id
from domain.alert_rules import DEVICE_KINDS, KINDS, THRESHOLD_KINDS, Kind
from domain.errors import AlertRuleNotFound, ConcurrencyConflict, DeviceNotFound, InvalidAlertRule
from domain.ports import Clock, EventStore, SecretBox, SecretMaker
from domain.retry import retrying
from domain.text import check_text

ALERTS_ACTOR = "system:alerts"
MAX_TARGETS = 10
MAX_FOR_S = 7 * 86_400
URL_MAX = 2000


class NewTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A target as a request gives it. `target_id` names a target the rule has already, whose secret
    (or apprise URL) is kept when none is given."""

    type: Literal["webhook", "apprise"]
    url: str | None = None
    secret: str | None = None
    target_id: str | None = None


class RuleChange(msgspec.Struct, frozen=True, kw_only=True):
    """A new rule (every field) or a change (only the fields given; the others stay)."""

    name: str | None = None
    kind: Kind | None = None
    device_id: UUID | None = None
    threshold: float | None = None
    for_s: int | None = None
    part: str | None = None
    enabled: bool | None = None
    targets: Sequence[NewTarget] | None = None


class ShownSecret(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook's signing secret, shown in the answer that made it and never again."""

    target_id: str
    secret: str


class RuleSaved(msgspec.Struct, frozen=True, kw_only=True):
    rule_id: UUID
    position: int
    secrets: list[ShownSecret] = []


async def _any_url(url: str) -> bool:
    return True


class AlertHandlers:
    """The write side of alerts. `accepts_apprise` says whether an apprise URL names a service apprise knows."""

    def __init__(
        self, store: EventStore, clock: Clock, box: SecretBox, secrets: SecretMaker,
        accepts_apprise: Callable[[str], Awaitable[bool]] = _any_url,
    ) -> None:  # fmt: skip
        self.store = store
        self.clock = clock
        self.box = box
        self.secrets = secrets
        self.accepts_apprise = accepts_apprise

    # ---- rules ----

    async def create_rule(self, change: RuleChange, *, actor: str) -> RuleSaved:
        """Record a new rule. Raises InvalidAlertRule (nothing recorded) for a rule its kind cannot
        judge or a bad target, InvalidText for a bad name, DeviceNotFound for an unknown device."""
        if change.kind is None or change.name is None:
            raise InvalidAlertRule("a rule needs a name and a kind")
        for_s = _checked(change.kind, change.device_id, change.threshold, change.for_s or 0, change.part)
        name = check_text(change.name.strip(), field="name", max_length=200)
        if not name:
            raise InvalidAlertRule("a rule needs a name")
        if change.device_id is not None:
            await self._check_device(change.device_id)
        targets, shown = await self._targets(change.targets or (), [])
        rule = AlertRule(
            name=name, kind=change.kind, device_id=change.device_id, threshold=change.threshold, for_s=for_s,
            part=change.part, enabled=True if change.enabled is None else change.enabled, targets=targets,
            actor=actor,
        )  # fmt: skip
        position = await self.store.save(rule)
        return RuleSaved(rule_id=rule.id, position=position, secrets=shown)

    async def update_rule(self, rule_id: UUID, change: RuleChange, *, actor: str) -> RuleSaved:
        """Change the fields given. The kind and the device cannot change (make a new rule). Raises
        AlertRuleNotFound, InvalidAlertRule (nothing recorded) as `create_rule` does, and also when
        the change names another kind or device."""

        async def attempt() -> RuleSaved:
            rule = await self._rule(rule_id)
            if change.kind not in (None, rule.kind) or change.device_id not in (None, rule.device_id):
                raise InvalidAlertRule("a rule's kind and device do not change: make a new rule")
            threshold = rule.threshold if change.threshold is None else change.threshold
            part = rule.part if change.part is None else change.part
            for_s = _checked(rule.kind, rule.device_id, threshold, rule.for_s if change.for_s is None else change.for_s,
                             part)  # fmt: skip
            name = rule.name if change.name is None else check_text(change.name.strip(), field="name", max_length=200)
            if not name:
                raise InvalidAlertRule("a rule needs a name")
            targets, shown = (
                (rule.targets, []) if change.targets is None else await self._targets(change.targets, rule.targets)
            )
            rule.update(name=name, threshold=threshold, for_s=for_s, part=part,
                        enabled=rule.enabled if change.enabled is None else change.enabled, targets=targets,
                        actor=actor)  # fmt: skip
            return RuleSaved(rule_id=rule.id, position=await self.store.save(rule), secrets=shown)

        return await retrying(attempt)

    async def delete_rule(self, rule_id: UUID, *, actor: str) -> int:
        """Delete a rule: a firing alert of it resolves. Raises AlertRuleNotFound."""

        async def attempt() -> int:
            rule = await self._rule(rule_id)
            rule.delete(actor=actor)
            return await self.store.save(rule)

        return await retrying(attempt)

    async def rule(self, rule_id: UUID) -> AlertRule:
        """A present rule as the log holds it now. Raises AlertRuleNotFound."""
        return await self._rule(rule_id)

    async def _rule(self, rule_id: UUID) -> AlertRule:
        try:
            rule = await self.store.aggregate(rule_id, AlertRule)
        except TypeError:
            rule = None
        if rule is None or rule.deleted:
            raise AlertRuleNotFound(f"no alert rule with id {rule_id}")
        return rule

    async def _check_device(self, device_id: UUID) -> None:
        try:
            device = await self.store.device(device_id)
        except TypeError:
            device = None
        if device is None or device.removed:
            raise DeviceNotFound(f"no device with id {device_id}")

    async def _targets(
        self, given: Sequence[NewTarget], before: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[ShownSecret]]:
        """The targets to record, secrets sealed, and the webhook secrets made here to show once."""
        if len(given) > MAX_TARGETS:
            raise InvalidAlertRule(f"a rule has at most {MAX_TARGETS} targets")
        known = {t["target_id"]: t for t in before}
        targets: list[dict[str, Any]] = []
        shown: list[ShownSecret] = []
        for target in given:
            kept = known.get(target.target_id or "")
            if kept is not None and kept["type"] != target.type:
                raise InvalidAlertRule(f"target {target.target_id} is a {kept['type']} target")
            target_id = kept["target_id"] if kept is not None else uuid4().hex
            if target.type == "webhook":
                url = target.url or (kept["url"] if kept is not None else None)
                if url is None:
                    raise InvalidAlertRule("a webhook target needs a url")
                _check_webhook_url(url)
                if target.secret is not None:
                    secret = check_text(target.secret, field="secret", max_length=500)
                    if len(secret) < 16:
                        raise InvalidAlertRule("a webhook secret has at least 16 characters")
                    sealed = self.box.seal(secret)
                elif kept is not None:
                    sealed = kept["sealed"]
                else:
                    secret = self.secrets.key_secret()
                    sealed = self.box.seal(secret)
                    shown.append(ShownSecret(target_id=target_id, secret=secret))
                targets.append({"target_id": target_id, "type": "webhook", "url": url, "hint": url, "sealed": sealed})
            else:
                if target.url is not None:
                    apprise_url = check_text(target.url, field="url", max_length=URL_MAX)
                    if "://" not in apprise_url or not await self.accepts_apprise(apprise_url):
                        raise InvalidAlertRule("the apprise url names no service apprise knows")
                    sealed, hint = self.box.seal(apprise_url), apprise_url.split("://", 1)[0] + "://…"
                elif kept is not None:
                    sealed, hint = kept["sealed"], kept["hint"]
                else:
                    raise InvalidAlertRule("an apprise target needs a url")
                targets.append({"target_id": target_id, "type": "apprise", "url": None, "hint": hint, "sealed": sealed})
        return targets, shown

    # ---- what the alerts part records ----

    async def tick(self) -> bool:
        """Record this minute in the log (once, whichever process ticks first); whether this call did."""
        at = self.clock.now().astimezone(timezone.utc)

        async def attempt() -> bool:
            ticks = await self.store.aggregate(AlertTicks.create_id(at.date().isoformat()), AlertTicks)
            if ticks is None:
                ticks = AlertTicks(day=at.date().isoformat())
            if not ticks.tick(at):
                return False
            await self.store.save(ticks)
            return True

        try:
            return await retrying(attempt)
        except ConcurrencyConflict:
            return False  # another process ticked this minute

    async def observe_part(self, part: str, *, degraded: bool, error: str | None) -> bool:
        """Record a part's change between running and degraded; whether anything was recorded."""
        at = self.clock.now()

        async def attempt() -> bool:
            health = await self.store.aggregate(PartHealth.create_id(part), PartHealth)
            if health is None:
                if not degraded:
                    return False
                health = PartHealth(part=part)
            before = health.degraded
            health.observe(degraded, at, error)
            if health.degraded == before:
                return False
            await self.store.save(health)
            return True

        return await retrying(attempt)

    async def record_fired(
        self, *, rule_id: UUID, number: int, rule_name: str, kind: str, device_id: UUID | None, part: str | None,
        fired_at: datetime, detail: str,
    ) -> bool:  # fmt: skip
        """Record the `number`th firing of a rule as an `Alert`, once; whether this call recorded it."""
        alert = Alert(rule_id=rule_id, number=number, rule_name=rule_name, kind=kind, device_id=device_id, part=part,
                      fired_at=fired_at, detail=detail, actor=ALERTS_ACTOR)  # fmt: skip
        if await self.store.aggregate(alert.id, Alert) is not None:
            return False
        try:
            await self.store.save(alert)
        except ConcurrencyConflict:
            return False
        return True

    async def record_resolved(self, alert_id: UUID, resolved_at: datetime, detail: str) -> bool:
        """Record an alert's resolution, once; whether this call recorded it. False for an alert not recorded yet."""

        async def attempt() -> bool:
            alert = await self.store.aggregate(alert_id, Alert)
            if alert is None or alert.resolved_at is not None:
                return False
            alert.resolve(resolved_at, detail, actor=ALERTS_ACTOR)
            await self.store.save(alert)
            return True

        return await retrying(attempt)

    async def record_attempt(
        self, *, alert: UUID, rule_id: UUID, target_id: str, phase: Phase, ok: bool, status: int | None,
        error: str | None, retry_in: timedelta | None, actor: str = ALERTS_ACTOR,
    ) -> AlertDelivery:  # fmt: skip
        """Record one delivery attempt; `retry_in` None means no further attempt (gave up, unless ok)."""
        at = self.clock.now()

        async def attempt() -> AlertDelivery:
            delivery = await self.store.aggregate(delivery_id(alert, target_id, phase), AlertDelivery)
            if delivery is None:
                delivery = AlertDelivery(alert_id=alert, rule_id=rule_id, target_id=target_id, phase=phase, actor=actor)
            delivery.attempted(ok=ok, status=status, error=error, next_at=None if ok or retry_in is None else at + retry_in,
                               gave_up=not ok and retry_in is None, actor=actor)  # fmt: skip
            await self.store.save(delivery)
            return delivery

        return await retrying(attempt)


def _checked(kind: str, device_id: UUID | None, threshold: float | None, for_s: int, part: str | None) -> int:
    """`for_s` if a rule of `kind` with these parameters can be judged; raises InvalidAlertRule if not."""
    if kind not in KINDS:
        raise InvalidAlertRule(f"kind is one of {', '.join(KINDS)}")
    if kind in DEVICE_KINDS and device_id is None:
        raise InvalidAlertRule(f"a {kind} rule needs a device_id")
    if kind not in DEVICE_KINDS and device_id is not None:
        raise InvalidAlertRule(f"a {kind} rule watches no device")
    if kind in THRESHOLD_KINDS and (threshold is None or not 0 <= threshold < 1e9):
        raise InvalidAlertRule(f"a {kind} rule needs a threshold from 0")
    if kind not in THRESHOLD_KINDS and threshold is not None:
        raise InvalidAlertRule(f"a {kind} rule takes no threshold")
    if kind != "part_degraded" and part is not None:
        raise InvalidAlertRule("only a part_degraded rule names a part")
    if part is not None:
        check_text(part, field="part", max_length=100)
    if not 0 <= for_s <= MAX_FOR_S:
        raise InvalidAlertRule(f"for_minutes is 0 to {MAX_FOR_S // 60}")
    return for_s


def _check_webhook_url(url: str) -> None:
    check_text(url, field="url", max_length=URL_MAX)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidAlertRule("a webhook url is http:// or https:// with a host")
