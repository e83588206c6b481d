"""Alert rules and alerts: `/api/alerts/rules` (ALERTS_MANAGE), `/api/alerts` (DEVICES_VIEW), and a test-send.

A rule's targets are shown by id, type and a hint (a webhook's URL, an apprise URL's scheme); a
webhook secret made by the server is shown once, in the answer that made it, and apprise URLs are
never shown again. Each change answers once the alerts read model holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from adapters.alert_delivery import Outcome
from projections.alert_dispatch import AlertDispatcher
from api.read_side import ReadSide
from domain.access import Permission, Principal
from domain.alert_handlers import MAX_FOR_S, MAX_TARGETS, AlertHandlers, NewTarget, RuleChange, RuleSaved, ShownSecret
from domain.alert_rules import Kind
from domain.errors import AlertRuleNotFound
from projections.alerts import AlertRow, DeliveryRow, RuleRow, deliveries_of, find_rule, list_alerts, list_rules

ForMinutes = Annotated[float, msgspec.Meta(ge=0, le=MAX_FOR_S / 60)]
Threshold = Annotated[float, msgspec.Meta(ge=0, lt=1e9)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


@dataclass(frozen=True, kw_only=True)
class AlertDeps:
    """Alert rules' write side, the read model behind them, and the dispatcher a test-send goes through."""

    reads: ReadSide
    handlers: AlertHandlers
    dispatcher: AlertDispatcher


class TargetBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A webhook (`url`, and a `secret` of 16+ characters, else one is made and shown once) or an
    apprise URL (`url`). On a change, a `target_id` the rule has keeps its secret or URL when none is given."""

    type: Literal["webhook", "apprise"]
    url: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    secret: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    target_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class RuleBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new rule. `threshold` is W for power rules, kWh for `energy_per_day`, the tariff's currency for
    `cost_per_day`; `for_minutes` is how long the condition must hold; `part` (for `part_degraded`)
    names a supervised part, or every part when absent."""

    name: Name
    kind: Kind
    device_id: UUID | None = None
    threshold: Threshold | None = None
    for_minutes: ForMinutes = 0
    part: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    enabled: bool = True
    targets: Annotated[list[TargetBody], msgspec.Meta(max_length=MAX_TARGETS)] = []


class RulePatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The fields to change; `targets`, when given, replaces every target."""

    name: Name | None = None
    threshold: Threshold | None = None
    for_minutes: ForMinutes | None = None
    part: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    enabled: bool | None = None
    targets: Annotated[list[TargetBody], msgspec.Meta(max_length=MAX_TARGETS)] | None = None


class TargetView(msgspec.Struct, frozen=True, kw_only=True):
    target_id: str
    type: str
    hint: str


class RuleView(msgspec.Struct, frozen=True, kw_only=True):
    rule_id: UUID
    name: str
    kind: str
    device_id: UUID | None
    threshold: float | None
    for_minutes: float
    part: str | None
    enabled: bool
    firing: bool
    targets: list[TargetView]
    created_at: datetime
    updated_at: datetime


class RuleSavedView(msgspec.Struct, frozen=True, kw_only=True):
    """A rule as saved, with each webhook secret the server made (shown here only)."""

    rule: RuleView
    secrets: list[ShownSecret]


class RuleDeleted(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    rule_id: UUID


class DeliveryView(msgspec.Struct, frozen=True, kw_only=True):
    target_id: str
    phase: str
    attempts: int
    delivered: bool
    gave_up: bool
    status: int | None
    error: str | None
    next_attempt_at: datetime | None


class AlertView(msgspec.Struct, frozen=True, kw_only=True):
    alert_id: UUID
    rule_id: UUID
    rule_name: str
    kind: str
    device_id: UUID | None
    part: str | None
    state: Literal["firing", "resolved"]
    fired_at: datetime
    resolved_at: datetime | None
    detail: str
    resolved_detail: str | None
    deliveries: list[DeliveryView]


class AlertList(msgspec.Struct, frozen=True, kw_only=True):
    alerts: list[AlertView]
    count: int


class TestSent(msgspec.Struct, frozen=True, kw_only=True):
    rule_id: UUID
    results: list[Outcome]


def rule_view(row: RuleRow) -> RuleView:
    return RuleView(
        rule_id=row.rule_id, name=row.name, kind=row.kind, device_id=row.device_id, threshold=row.threshold,
        for_minutes=row.for_s / 60, part=row.part, enabled=row.enabled, firing=row.hold.firing,
        targets=[TargetView(target_id=t["target_id"], type=t["type"], hint=t["hint"]) for t in row.targets],
        created_at=row.created_at, updated_at=row.updated_at,
    )  # fmt: skip


def alert_view(row: AlertRow, deliveries: list[DeliveryRow]) -> AlertView:
    return AlertView(
        alert_id=row.alert_id, rule_id=row.rule_id, rule_name=row.rule_name, kind=row.kind, device_id=row.device_id,
        part=row.part, state="firing" if row.resolved_at is None else "resolved", fired_at=row.fired_at,
        resolved_at=row.resolved_at, detail=row.detail, resolved_detail=row.resolved_detail,
        deliveries=[
            DeliveryView(target_id=d.target_id, phase=d.phase, attempts=d.attempts, delivered=d.ok, gave_up=d.gave_up,
                         status=d.status, error=d.error, next_attempt_at=d.next_at)
            for d in deliveries
        ],
    )  # fmt: skip


def _targets(given: list[TargetBody] | None) -> list[NewTarget] | None:
    if given is None:
        return None
    return [NewTarget(type=t.type, url=t.url, secret=t.secret, target_id=t.target_id) for t in given]


async def _saved(deps: AlertDeps, saved: RuleSaved) -> RuleSavedView:
    await deps.reads.wait_projected(saved.position, projector="alerts")
    async with deps.reads.pool.connection() as conn:
        row = await find_rule(conn, saved.rule_id)
    if row is None:
        raise AlertRuleNotFound(f"no alert rule with id {saved.rule_id}")
    return RuleSavedView(rule=rule_view(row), secrets=saved.secrets)


class AlertsController(Controller):
    path = "/api/alerts"
    tags = ["alerts"]

    @get("/rules", operation_id="listAlertRules", opt={"permission": Permission.ALERTS_MANAGE})
    async def list_rules(self, alert_deps: NamedDependency[AlertDeps]) -> list[RuleView]:
        """Every alert rule, oldest first; targets by id, type and hint, never their secrets."""
        async with alert_deps.reads.pool.connection() as conn:
            return [rule_view(row) for row in await list_rules(conn)]

    @post("/rules", operation_id="createAlertRule", status_code=201, opt={"permission": Permission.ALERTS_MANAGE})
    async def create_rule(
        self, data: JSONBody[RuleBody], principal: NamedDependency[Principal], alert_deps: NamedDependency[AlertDeps]
    ) -> RuleSavedView:
        """Create a rule. 400/422 `INVALID_ALERT_RULE` (nothing recorded) for a kind without what it needs
        (a device for device kinds, a threshold for power, energy and cost) or a bad target; 404
        `DEVICE_NOT_FOUND` for an unknown device."""
        change = RuleChange(
            name=data.name, kind=data.kind, device_id=data.device_id, threshold=data.threshold,
            for_s=round(data.for_minutes * 60), part=data.part, enabled=data.enabled, targets=_targets(data.targets),
        )  # fmt: skip
        return await _saved(alert_deps, await alert_deps.handlers.create_rule(change, actor=principal.actor))

    @get("/rules/{rule_id:uuid}", operation_id="getAlertRule", opt={"permission": Permission.ALERTS_MANAGE})
    async def get_rule(self, rule_id: FromPath[UUID], alert_deps: NamedDependency[AlertDeps]) -> RuleView:
        """One rule. 404 `ALERT_RULE_NOT_FOUND`."""
        async with alert_deps.reads.pool.connection() as conn:
            row = await find_rule(conn, rule_id)
        if row is None:
            raise AlertRuleNotFound(f"no alert rule with id {rule_id}")
        return rule_view(row)

    @patch("/rules/{rule_id:uuid}", operation_id="updateAlertRule", opt={"permission": Permission.ALERTS_MANAGE})
    async def update_rule(
        self, rule_id: FromPath[UUID], data: JSONBody[RulePatch], principal: NamedDependency[Principal],
        alert_deps: NamedDependency[AlertDeps],
    ) -> RuleSavedView:  # fmt: skip
        """Change a rule; a change of its threshold, duration, part or `enabled` starts its judgement afresh
        (a firing alert of it resolves), a new name or new targets do not. 404
        `ALERT_RULE_NOT_FOUND`; `INVALID_ALERT_RULE` as on creation (nothing recorded)."""
        change = RuleChange(
            name=data.name, threshold=data.threshold,
            for_s=None if data.for_minutes is None else round(data.for_minutes * 60), part=data.part,
            enabled=data.enabled, targets=_targets(data.targets),
        )  # fmt: skip
        return await _saved(alert_deps, await alert_deps.handlers.update_rule(rule_id, change, actor=principal.actor))

    @delete("/rules/{rule_id:uuid}", operation_id="deleteAlertRule", status_code=200,
            opt={"permission": Permission.ALERTS_MANAGE})  # fmt: skip
    async def delete_rule(
        self, rule_id: FromPath[UUID], principal: NamedDependency[Principal], alert_deps: NamedDependency[AlertDeps]
    ) -> RuleDeleted:
        """Delete a rule; a firing alert of it resolves and is not delivered further. 404 `ALERT_RULE_NOT_FOUND`."""
        position = await alert_deps.handlers.delete_rule(rule_id, actor=principal.actor)
        await alert_deps.reads.wait_projected(position, projector="alerts")
        return RuleDeleted(message="Alert rule deleted", rule_id=rule_id)

    @post("/rules/{rule_id:uuid}/test", operation_id="testAlertRule", status_code=200,
          opt={"permission": Permission.ALERTS_MANAGE})  # fmt: skip
    async def test_rule(
        self, rule_id: FromPath[UUID], principal: NamedDependency[Principal], alert_deps: NamedDependency[AlertDeps]
    ) -> TestSent:
        """Send a test notification to every target of the rule now, once each, and say how each went
        (each attempt is recorded as a delivery of phase `test`). 404 `ALERT_RULE_NOT_FOUND`."""
        async with alert_deps.reads.pool.connection() as conn:
            row = await find_rule(conn, rule_id)
        if row is None:
            raise AlertRuleNotFound(f"no alert rule with id {rule_id}")
        return TestSent(rule_id=rule_id, results=await alert_deps.dispatcher.test(row, actor=principal.actor))

    @get("", operation_id="listAlerts", opt={"permission": Permission.DEVICES_VIEW})
    async def list_alerts(
        self, alert_deps: NamedDependency[AlertDeps], status: FromQuery[Literal["firing", "resolved"] | None] = None,
        rule_id: FromQuery[UUID | None] = None, limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> AlertList:  # fmt: skip
        """Firing and past alerts, newest first, each with its deliveries; `status` keeps one kind."""
        async with alert_deps.reads.pool.connection() as conn:
            rows = await list_alerts(conn, state=status, rule_id=rule_id, limit=limit)
            deliveries = await deliveries_of(conn, [r.alert_id for r in rows])
        by_alert: dict[UUID, list[DeliveryRow]] = {}
        for delivery in deliveries:
            by_alert.setdefault(delivery.alert_id, []).append(delivery)
        views = [alert_view(row, by_alert.get(row.alert_id, [])) for row in rows]
        return AlertList(alerts=views, count=len(views))
