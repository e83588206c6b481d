"""The `alerts` part: the loop over the alerts read model that records alerts and delivers them.

The loop (`AlertDispatcher.run`, the `alerts` part) does, every second or so:

- records this minute as an alert tick while any rule is enabled (`AlertHandlers.tick`);
- records each supervised part of this process that became degraded or recovered (`PartHealth`);
- records each alert the alerts read model judged fired or resolved as `Alert.Fired` / `Alert.Resolved`
  (the relay then publishes them on `<prefix>.events.alert.<id>.Fired|Resolved`: the NATS delivery);
- delivers each recorded phase of each alert to each target of its rule, and records every attempt
  as `AlertDelivery.Attempted`. A failed attempt is retried after a delay that doubles from
  `backoff` to `backoff_max`; after `max_attempts` it is recorded as given up.

What is left to do is read from the read model, so it survives a restart; before sending, the
delivery's own stream in the log is read, so a delivery that succeeded is never sent again even if
the read model lags. A webhook receiver may still see a delivery twice (the process may stop between
sending and recording): it deduplicates by the `X-WattLedger-Delivery` header.

The senders (`adapters.alert_delivery`) sign webhooks, call apprise and turn what those libraries
raise into failed attempts. The database faults of `adapters.faults`, and a write another process made first
(`ConcurrencyConflict`), end a pass, which the next one repeats.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import uuid5

import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from adapters.alert_delivery import Notice, Outcome, Senders
from adapters.faults import DATABASE_FAULTS, describe, report
from domain.alert import AlertDelivery, Phase, delivery_id
from domain.alert_handlers import AlertHandlers
from domain.errors import ConcurrencyConflict
from domain.ports import Clock, EventStore
from projections.alerts import AlertRow, RuleRow, any_rules, open_alerts

log = structlog.get_logger(__name__)


class PartState(msgspec.Struct, frozen=True, kw_only=True):
    """One supervised part as its supervisor reports it (`api.deps.PartStatus` fits)."""

    name: str
    state: str
    last_error: str | None = None


def notice_of(alert: AlertRow, target_id: str, phase: Phase) -> Notice:
    return Notice(
        delivery_id=delivery_id(alert.alert_id, target_id, phase), phase=phase, alert_id=alert.alert_id,
        rule_id=alert.rule_id, rule_name=alert.rule_name, kind=alert.kind, device_id=alert.device_id,
        part=alert.part, fired_at=alert.fired_at, resolved_at=alert.resolved_at,
        detail=(alert.resolved_detail or "") if phase == "resolved" else alert.detail,
    )  # fmt: skip


class AlertDispatcher:
    """The `alerts` part: see the module docstring."""

    def __init__(
        self, handlers: AlertHandlers, store: EventStore, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        senders: Senders, clock: Clock, *, parts: Callable[[], list[Any]] | None = None, interval: float = 1.0,
        backoff: float = 30.0, backoff_max: float = 3600.0, max_attempts: int = 20,
        on_saved: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        self.handlers = handlers
        self.store = store
        self.pool = pool
        self.senders = senders
        self.clock = clock
        self.parts = parts
        self.interval = interval
        self.backoff, self.backoff_max, self.max_attempts = backoff, backoff_max, max_attempts
        self.on_saved = on_saved
        self._ticked: datetime | None = None
        self._parts_seen: dict[str, bool] = {}

    async def run(self) -> None:
        """Pass after pass until cancelled. A database fault is one warning line, and a write another
        process made first (a conflict) one debug line: the next pass does what is still left."""
        while True:
            try:
                await self.pass_once()
            except DATABASE_FAULTS as exc:
                report("alerts", exc)
            except ConcurrencyConflict as exc:
                log.debug("alerts.conflict", error=describe(exc))
            await asyncio.sleep(self.interval)

    async def pass_once(self) -> int:
        """One pass (see the module docstring); returns the events it recorded."""
        recorded = await self.tick_if_due() + await self.watch_parts()
        async with self.pool.connection() as conn:
            work = await open_alerts(conn)
        for item in work:
            recorded += await self._advance(item.alert, item.targets, item.deliveries)
        if recorded:
            self.on_saved()
        return recorded

    async def tick_if_due(self) -> int:
        """Record this minute as a tick when it was not yet (and any rule is enabled)."""
        minute = self.clock.now().replace(second=0, microsecond=0)
        if self._ticked is not None and minute <= self._ticked:
            return 0
        async with self.pool.connection() as conn:
            if not await any_rules(conn):
                return 0
        self._ticked = minute
        return int(await self.handlers.tick())

    async def watch_parts(self) -> int:
        """Record each part that turned degraded or running since the last look."""
        if self.parts is None:
            return 0
        recorded = 0
        for part in self.parts():
            degraded = part.state == "degraded"
            if self._parts_seen.get(part.name) is degraded:
                continue
            recorded += await self.handlers.observe_part(part.name, degraded=degraded, error=part.last_error)
            self._parts_seen[part.name] = degraded
        return recorded

    async def _advance(self, alert: AlertRow, targets: list[dict[str, Any]], deliveries: dict[tuple[str, str], Any]) -> int:
        recorded = 0
        if not alert.recorded:
            return int(await self.handlers.record_fired(
                rule_id=alert.rule_id, number=alert.number, rule_name=alert.rule_name, kind=alert.kind,
                device_id=alert.device_id, part=alert.part, fired_at=alert.fired_at, detail=alert.detail,
            ))  # fmt: skip
        if alert.resolved_at is not None and not alert.resolution_recorded:
            recorded += await self.handlers.record_resolved(alert.alert_id, alert.resolved_at,
                                                            alert.resolved_detail or "")  # fmt: skip
        phases: list[Phase] = ["fired", "resolved"] if alert.resolution_recorded else ["fired"]
        now = self.clock.now()
        for phase in phases:
            for target in targets:
                row = deliveries.get((target["target_id"], phase))
                if row is not None and (row.ok or row.gave_up or (row.next_at is not None and row.next_at > now)):
                    continue
                recorded += await self.deliver(alert, target, phase)
        return recorded

    async def deliver(self, alert: AlertRow, target: dict[str, Any], phase: Phase) -> int:
        """Send one phase of an alert to one target unless the log says it is done or not due; record the attempt."""
        stream = await self.store.aggregate(delivery_id(alert.alert_id, target["target_id"], phase), AlertDelivery)
        if stream is not None and (stream.done or (stream.next_at is not None and stream.next_at > self.clock.now())):
            return 0
        outcome = await self.senders.send(target, notice_of(alert, target["target_id"], phase))
        attempts = (stream.attempts if stream is not None else 0) + 1
        retry_in = None if attempts >= self.max_attempts else timedelta(
            seconds=min(self.backoff * 2 ** (attempts - 1), self.backoff_max)
        )  # fmt: skip
        if outcome.ok:
            log.info("alert.delivered", alert_id=str(alert.alert_id), target=target["target_id"], phase=phase)
        else:
            log.warning("alert.delivery_failed", alert_id=str(alert.alert_id), target=target["target_id"],
                        phase=phase, attempt=attempts, error=outcome.error,
                        retry_in_s=retry_in.total_seconds() if retry_in else None)  # fmt: skip
        await self.handlers.record_attempt(
            alert=alert.alert_id, rule_id=alert.rule_id, target_id=target["target_id"], phase=phase, ok=outcome.ok,
            status=outcome.status, error=outcome.error, retry_in=retry_in,
        )  # fmt: skip
        return 1

    async def test(self, rule: RuleRow, *, actor: str) -> list[Outcome]:
        """Send a test notice to each target of a rule now, once (no retry); each attempt is recorded."""
        now = self.clock.now()
        test_id = uuid5(rule.rule_id, f"test:{now.astimezone(timezone.utc).isoformat()}")
        alert = AlertRow(alert_id=test_id, rule_id=rule.rule_id, number=0, rule_name=rule.name, kind=rule.kind,
                         device_id=rule.device_id, part=rule.part, fired_at=now, detail="a test notification")  # fmt: skip
        outcomes = []
        for target in rule.targets:
            outcome = await self.senders.send(target, notice_of(alert, target["target_id"], "test"))
            await self.handlers.record_attempt(
                alert=test_id, rule_id=rule.rule_id, target_id=target["target_id"], phase="test", ok=outcome.ok,
                status=outcome.status, error=outcome.error, retry_in=None, actor=actor,
            )  # fmt: skip
            outcomes.append(outcome)
        if outcomes:
            self.on_saved()
        return outcomes

