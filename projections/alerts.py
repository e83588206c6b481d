"""The alerts read model: rules, what the log says about each device, and every alert with its deliveries.

Rules are judged here, from events only (`domain.alert_rules`), so replaying the log gives the same
alert history. The judged moment is the latest time the log has carried so far: a reading's
`measured_at`, an alert tick's `at` (one a minute, recorded by the alerts part), a part-health
event's `at`. A reading judges its device's rules; a tick judges every rule; a part-health event
judges the part rules. A device that goes offline is offline from the judged moment of its
`WentOffline`. Energy per day is the energy fold of the readings (as the devices read model folds
them) by local day of the installation's zone; cost per day prices each share at the tariff's
unit price in force (a tiered tariff at its first tier).

An alert this read model judged fired is recorded in the log by the alerts part as `Alert.Fired`
(and `Alert.Resolved`); those events, and every `AlertDelivery.Attempted`, mark the rows they
concern, so the alerts part finds what is left to record and to deliver here, after a restart too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import psycopg
from psycopg.rows import tuple_row

from domain.alert import Alert, AlertDelivery, AlertRule, AlertTicks, PartHealth, alert_id
from domain.alert_rules import DEVICE_KINDS, DeviceFacts, Hold, RuleSpec, condition, judge
from domain.calendar import LocalCalendar, Period
from domain.device import Device
from domain.energy import DEVICE_CHANNEL, DeviceFold, EnergyRules, Interval, Share, reading_of, split, step
from domain.meter import MeterDay
from domain.rates import RateVersion, Tariff, in_force, unit_price, version_of
from projections.tables import READ_SCHEMA, Table

ALERTS_SCHEMA = READ_SCHEMA
STATE_KEY = "alerts"
_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
_LATEST = datetime.max.replace(tzinfo=timezone.utc)
_COSTS = 4096
"""Costs of energies a batch remembers at one price (see `_Batch.cost`)."""


class RuleRow(msgspec.Struct, kw_only=True):
    """A rule as the log last described it, with its judgement so far."""

    rule_id: UUID
    name: str
    kind: str
    device_id: UUID | None
    threshold: float | None
    for_s: int
    part: str | None
    enabled: bool
    deleted: bool = False
    targets: list[dict[str, Any]] = msgspec.field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    actor: str
    hold: Hold = msgspec.field(default_factory=Hold)
    alert_id: UUID | None = None

    def spec(self) -> RuleSpec:
        return msgspec.convert({"kind": self.kind, "device_id": self.device_id, "threshold": self.threshold,
                                "for_s": self.for_s, "part": self.part}, RuleSpec)  # fmt: skip


class StateRow(msgspec.Struct, kw_only=True):
    """The judged moment, the tariff's versions and the degraded parts (name -> since)."""

    name: str
    now: datetime | None = None
    rates: list[RateVersion] = msgspec.field(default_factory=list)
    degraded: dict[str, datetime] = msgspec.field(default_factory=dict)


class AlertRow(msgspec.Struct, kw_only=True):
    """One firing of a rule; `recorded` once `Alert.Fired` is in the log, `resolution_recorded` once
    `Alert.Resolved` is; `settled` once it is resolved and every target of the rule has each phase
    delivered or given up (a deleted rule's alert once its resolution is recorded)."""

    alert_id: UUID
    rule_id: UUID
    number: int
    rule_name: str
    kind: str
    device_id: UUID | None
    part: str | None
    fired_at: datetime
    detail: str
    resolved_at: datetime | None = None
    resolved_detail: str | None = None
    recorded: bool = False
    resolution_recorded: bool = False
    settled: bool = False


class DeliveryRow(msgspec.Struct, kw_only=True):
    delivery_id: UUID
    alert_id: UUID
    rule_id: UUID
    target_id: str
    phase: str
    attempts: int = 0
    ok: bool = False
    gave_up: bool = False
    status: int | None = None
    error: str | None = None
    last_attempt_at: datetime | None = None
    next_at: datetime | None = None


RULES = Table(f"{ALERTS_SCHEMA}.alert_rules", RuleRow, key="rule_id")
FACTS = Table(f"{ALERTS_SCHEMA}.alert_facts", DeviceFacts, key="device_id")
STATE = Table(f"{ALERTS_SCHEMA}.alert_state", StateRow, key="name")
ALERTS = Table(
    f"{ALERTS_SCHEMA}.alerts", AlertRow, key="alert_id",
    indexes=(f"CREATE INDEX alerts_open ON {ALERTS_SCHEMA}.alerts (settled, fired_at)",
             f"CREATE INDEX alerts_fired ON {ALERTS_SCHEMA}.alerts (fired_at DESC)"),
)  # fmt: skip
DELIVERIES = Table(
    f"{ALERTS_SCHEMA}.alert_deliveries", DeliveryRow, key="delivery_id",
    indexes=(f"CREATE INDEX alert_deliveries_alert ON {ALERTS_SCHEMA}.alert_deliveries (alert_id)",),
)  # fmt: skip

_RELEVANT = (
    AlertRule.Event, Alert.Event, AlertDelivery.Event, AlertTicks.Ticked, PartHealth.Degraded, PartHealth.Recovered,
    Tariff.RateSet, MeterDay.ReadingRecorded, Device.Added, Device.Restored, Device.Removed, Device.WentOffline,
    Device.CameOnline,
)  # fmt: skip


def _device_of(event: object) -> UUID | None:
    if isinstance(event, MeterDay.ReadingRecorded):
        return event.device_id
    if isinstance(event, Device.Event):
        return event.originator_id
    return None


class _Meter:
    """A device's facts in a batch, with the fold of its plug readings (None before the first).

    While the fold folds, `facts.meter` is behind: `settle` brings it up to date, before a
    strip's reading folds the meter by `step` and before the batch is written. A reading of
    another MAC than the fold's (the device restored with another) settles it and starts another,
    as `step` starts another meter's state."""

    __slots__ = ("facts", "fold")

    def __init__(self, facts: DeviceFacts) -> None:
        self.facts = facts
        self.fold: DeviceFold | None = None

    def settle(self) -> None:
        if self.fold is not None:
            self.facts.meter = self.fold.state()
            self.fold = None


class _Batch:
    """One batch's rows, loaded once, changed in memory, written once."""

    def __init__(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        self.state = STATE.load(cur, [STATE_KEY]).get(STATE_KEY) or StateRow(name=STATE_KEY)
        cur.execute(f"{RULES.select} WHERE NOT deleted")
        self.rules = {row.rule_id: row for row in map(RULES.decode, cur.fetchall())}
        reading = MeterDay.ReadingRecorded
        # Readings (nearly every event) find their facts by the device id's int: a UUID hashes in
        # Python code, an int in C.
        read: dict[int, UUID] = {}
        others = []
        for e in events:
            if type(e) is reading:
                read[e.device_id.int] = e.device_id
            else:
                others.append(e)
        wanted_rules = {e.originator_id for e in others if isinstance(e, AlertRule.Event)} - set(self.rules)
        self.rules.update(RULES.load(cur, wanted_rules))
        devices = set(read.values())
        devices |= {d for e in others if (d := _device_of(e)) is not None}
        devices |= {r.device_id for r in self.rules.values() if r.device_id is not None}
        self.facts = FACTS.take(cur, devices)
        attempted = DELIVERIES.load(cur, {e.originator_id for e in others if isinstance(e, AlertDelivery.Attempted)})
        touched = {e.originator_id for e in others if isinstance(e, Alert.Event)}
        touched |= {e.alert_id for e in others if isinstance(e, AlertDelivery.Opened)}
        touched |= {row.alert_id for row in attempted.values()}
        open_ids = {r.alert_id for r in self.rules.values() if r.alert_id is not None}
        self.alerts = ALERTS.load(cur, open_ids | touched)
        cur.execute(f"{DELIVERIES.select} WHERE alert_id = ANY(%s)", (list(touched),))
        self.deliveries = {row.delivery_id: row for row in map(DELIVERIES.decode, cur.fetchall())}
        self.changed: dict[str, set[Any]] = {"rules": set(), "facts": set(), "alerts": set(), "deliveries": set()}
        self.meters: dict[int, _Meter] = {}
        """The devices read so far, by the id's int (see `_Meter`)."""
        self._watching: dict[UUID, list[RuleRow]] | None = None
        self._priced: tuple[int, datetime, datetime, Decimal] | None = None
        self._costs: dict[float | str, Decimal] = {}
        self._costs_at: Decimal | None = None

    def meter_of(self, device_id: UUID) -> _Meter | None:
        """The device's `_Meter`, made at its first reading in the batch (None while the device has no facts)."""
        facts = self.facts.get(device_id)
        if facts is None:
            return None
        meter = self.meters[device_id.int] = _Meter(facts)
        return meter

    def watching(self, device_id: UUID) -> list[RuleRow]:
        """The rules of the device, in the order of `rules` (a rule's device never changes)."""
        if self._watching is None:
            self._watching = {}
            for row in self.rules.values():
                if row.device_id is not None:
                    self._watching.setdefault(row.device_id, []).append(row)
        return self._watching.get(device_id, [])

    def rule_added(self, row: RuleRow) -> None:
        self.rules[row.rule_id] = row
        self._watching = None

    def price(self, moment: datetime) -> Decimal:
        """`_price` of the tariff's versions so far at `moment`.

        Readings come in time order: the answer is remembered with the span over which the
        version in force stays the same, unless its price changes by the hour (time of use)."""
        rates = self.state.rates
        priced = self._priced
        if priced is not None and priced[0] == len(rates) and priced[1] <= moment < priced[2]:
            return priced[3]
        price = _price(rates, moment)
        rate = in_force(rates, moment)
        if rate is None or rate.rate_type in ("simple", "tiered"):
            since = _EARLIEST if rate is None else rate.effective_from
            until = min((v.effective_from for v in rates if v.effective_from > moment), default=_LATEST)
            self._priced = (len(rates), since, until, price)
        return price

    def cost(self, wh: float, start: datetime) -> Decimal:
        """`Decimal(str(wh)) / 1000 * price`: the cost of `wh` used from `start` at the price then.

        Energies repeat (a counter rises by whole steps), so the costs at one price are
        remembered, as long as the price stays (and up to `_COSTS` of them)."""
        priced = self._priced  # `price`'s remembered answer, looked at here first: this runs for every reading
        if priced is not None and priced[0] == len(self.state.rates) and priced[1] <= start < priced[2]:
            price = priced[3]
        else:
            price = self.price(start)
        if price is not self._costs_at:
            self._costs, self._costs_at = {}, price
        key: float | str = wh if wh else str(wh)  # 0.0 and -0.0: equal floats, different decimals
        cost = self._costs.get(key)
        if cost is None:
            if len(self._costs) >= _COSTS:
                self._costs.clear()
            cost = self._costs[key] = Decimal(str(wh)) / 1000 * price
        return cost

    def write(self, cur: psycopg.Cursor[Any]) -> None:
        for meter in self.meters.values():
            meter.settle()
        cur.execute(STATE.upsert, STATE.values(self.state))
        _write(cur, RULES, self.rules, self.changed["rules"])
        _write(cur, FACTS, self.facts, self.changed["facts"])
        _write(cur, ALERTS, self.alerts, self.changed["alerts"])
        _write(cur, DELIVERIES, self.deliveries, self.changed["deliveries"])
        # Last: a write above that fails rolls the batch back, and the rows it changed are read afresh.
        FACTS.keep(self.facts[k] for k in self.changed["facts"])


def _write(cur: psycopg.Cursor[Any], table: Table[Any], rows: dict[Any, Any], keys: set[Any]) -> None:
    if keys:
        table.write(cur, [table.values(rows[k]) for k in sorted(keys, key=str)])


class AlertsProjector:
    """Judges alert rules from the log into `wl_read.alert_*` (see the module docstring)."""

    name = "alerts"
    version = 1
    tables = (RULES, FACTS, STATE, ALERTS, DELIVERIES)

    def __init__(self, zone: ZoneInfo | None = None, rules: EnergyRules | None = None) -> None:
        self.calendar = LocalCalendar(zone or ZoneInfo("UTC"))
        self.energy_rules = rules or EnergyRules()

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        reading = MeterDay.ReadingRecorded  # nearly every event: matched by its type before the rest
        relevant = [e for e in events if type(e) is reading or isinstance(e, _RELEVANT)]
        if not relevant:
            return
        batch = _Batch(cur, relevant)
        for event in relevant:
            if type(event) is reading:
                self._reading(batch, event)
            else:
                self._apply(batch, event)
        batch.write(cur)

    def _advance(self, batch: _Batch, at: datetime) -> datetime:
        now = batch.state.now
        if now is None or at > now:
            batch.state.now = now = at
        return now

    def _apply(self, batch: _Batch, event: object) -> None:
        state = batch.state
        match event:
            case AlertRule.Created():
                row = RuleRow(
                    rule_id=event.originator_id, name=event.name, kind=event.kind, device_id=event.device_id,
                    threshold=event.threshold, for_s=event.for_s, part=event.part, enabled=event.enabled,
                    targets=event.targets, created_at=event.timestamp, updated_at=event.timestamp, actor=event.actor,
                )  # fmt: skip
                batch.rule_added(row)
                batch.changed["rules"].add(row.rule_id)
                if state.now is not None:
                    self._judge(batch, row, state.now)
            case AlertRule.Updated():
                row = batch.rules[event.originator_id]
                judged = (event.threshold, event.for_s, event.part, event.enabled)
                restart = judged != (row.threshold, row.for_s, row.part, row.enabled)
                if restart:
                    self._end(batch, row, "rule changed")
                row.threshold, row.for_s, row.part, row.enabled = judged
                row.name, row.targets, row.updated_at, row.actor = event.name, event.targets, event.timestamp, event.actor
                batch.changed["rules"].add(row.rule_id)
                if restart and state.now is not None:
                    self._judge(batch, row, state.now)
            case AlertRule.Deleted():
                row = batch.rules[event.originator_id]
                self._end(batch, row, "rule deleted")
                row.deleted, row.updated_at, row.actor = True, event.timestamp, event.actor
            case AlertTicks.Ticked():
                now = self._advance(batch, event.at)
                for row in list(batch.rules.values()):
                    self._judge(batch, row, now)
            case PartHealth.Degraded():
                state.degraded[event.part] = event.at
                self._part_event(batch, event.at)
            case PartHealth.Recovered():
                state.degraded.pop(event.part, None)
                self._part_event(batch, event.at)
            case PartHealth.Opened():
                pass
            case Tariff.RateSet():
                state.rates.append(version_of(event))
            case Device.Added() | Device.Restored():
                facts = batch.facts.setdefault(event.originator_id, DeviceFacts(device_id=event.originator_id))
                facts.mac, facts.removed, facts.online, facts.offline_since = event.mac, False, True, None
                self._device_changed(batch, event.originator_id)
            case Device.Removed():
                if (removed := batch.facts.get(event.originator_id)) is not None:
                    removed.removed = True
                    self._device_changed(batch, event.originator_id)
            case Device.WentOffline():
                gone = batch.facts.get(event.originator_id)
                if gone is not None and gone.online:
                    gone.online, gone.offline_since = False, state.now or event.timestamp
                    self._device_changed(batch, event.originator_id)
            case Device.CameOnline():
                back = batch.facts.get(event.originator_id)
                if back is not None and not back.online:
                    back.online, back.offline_since = True, None
                    self._device_changed(batch, event.originator_id)
            case MeterDay.ReadingRecorded():
                self._reading(batch, event)
            case Alert.Fired():
                alert = batch.alerts.get(event.originator_id) or AlertRow(
                    alert_id=event.originator_id, rule_id=event.rule_id, number=event.number,
                    rule_name=event.rule_name, kind=event.kind, device_id=event.device_id, part=event.part,
                    fired_at=event.fired_at, detail=event.detail,
                )  # fmt: skip
                alert.recorded = True
                batch.alerts[alert.alert_id] = alert
                self._settle(batch, alert)
            case Alert.Resolved():
                ended = batch.alerts[event.originator_id]
                if ended.resolved_at is None:
                    ended.resolved_at, ended.resolved_detail = event.resolved_at, event.detail
                ended.resolution_recorded = True
                self._settle(batch, ended)
            case AlertDelivery.Opened():
                batch.deliveries[event.originator_id] = DeliveryRow(
                    delivery_id=event.originator_id, alert_id=event.alert_id, rule_id=event.rule_id,
                    target_id=event.target_id, phase=event.phase,
                )  # fmt: skip
                batch.changed["deliveries"].add(event.originator_id)
            case AlertDelivery.Attempted():
                delivery = batch.deliveries[event.originator_id]
                delivery.attempts, delivery.ok, delivery.gave_up = event.attempt, event.ok, event.gave_up
                delivery.status, delivery.error, delivery.next_at = event.status, event.error, event.next_at
                delivery.last_attempt_at = event.timestamp
                batch.changed["deliveries"].add(delivery.delivery_id)
                if (owner := batch.alerts.get(delivery.alert_id)) is not None:
                    self._settle(batch, owner)

    def _reading(self, batch: _Batch, event: MeterDay.ReadingRecorded) -> None:
        at = event.measured_at
        state = batch.state
        if (now := state.now) is None or at > now:  # `_advance`, written out: this runs for every reading
            state.now = now = at
        meter = batch.meters.get(event.device_id.int) or batch.meter_of(event.device_id)
        if meter is None:
            return
        facts = meter.facts
        if facts.power_at is not None and at <= facts.power_at:
            return
        period = self.calendar.period(at, "day")
        if facts.day != period.label:
            facts.day, facts.day_wh, facts.day_cost = period.label, 0.0, Decimal(0)
        if event.outlets:
            meter.settle()
            facts.meter, intervals = step(facts.meter, reading_of(event, facts.mac), self.energy_rules)
            self._count(batch, facts, intervals, period)
            facts.power_w = sum(o.power_w or 0.0 for o in event.outlets)
            batch.changed["facts"].add(event.device_id)
        else:
            fold = meter.fold
            if fold is None or fold.meter != facts.mac:
                meter.settle()
                fold = meter.fold = DeviceFold(facts.meter, facts.mac, self.energy_rules)
                batch.changed["facts"].add(event.device_id)  # every later reading changes the same row
            if (closed := fold.add(at, event.power_w, event.total_wh)) is not None:
                start, wh = closed
                if start >= period.start:
                    # Inside the reading's day (nearly every interval): the day's one share, as `split` gives.
                    facts.day_wh += wh
                    facts.day_cost += batch.cost(wh, start)
                else:
                    self._count(batch, facts, [Interval(channel=DEVICE_CHANNEL, start=start, end=at, wh=wh)], period)
            facts.power_w = event.power_w
        facts.power_at = at
        if batch.rules:
            for row in batch.watching(event.device_id):
                self._judge(batch, row, now)

    def _count(self, batch: _Batch, facts: DeviceFacts, intervals: list[Interval], period: Period) -> None:
        """Add the shares of `intervals` (closed by a reading in `period`) that fall in that day to its energy
        and cost."""
        day = period.label
        for interval in intervals:
            # An interval inside the reading's day (nearly every one) is that day's one share, as `split` gives.
            inside = period.start <= interval.start < period.end and interval.end <= period.end
            shares = [Share(period=period, wh=interval.wh)] if inside else split(interval, self.calendar.zone, "day")
            for share in shares:
                if share.period.label == day:
                    facts.day_wh += share.wh
                    facts.day_cost += batch.cost(share.wh, share.period.start
                                                 if interval.start < share.period.start else interval.start)  # fmt: skip

    def _device_changed(self, batch: _Batch, device_id: UUID, now: datetime | None = None) -> None:
        batch.changed["facts"].add(device_id)
        moment = now or batch.state.now
        if moment is None:
            return
        for row in batch.watching(device_id):
            self._judge(batch, row, moment)

    def _part_event(self, batch: _Batch, at: datetime) -> None:
        now = self._advance(batch, at)
        for row in list(batch.rules.values()):
            if row.kind == "part_degraded":
                self._judge(batch, row, now)

    def _judge(self, batch: _Batch, row: RuleRow, at: datetime) -> None:
        if row.deleted or not row.enabled:
            return
        facts = batch.facts.get(row.device_id) if row.device_id is not None else None
        degraded = batch.state.degraded
        now = condition(row.spec(), facts, degraded, at, self.calendar.period(at, "day").label)
        hold, transition = judge(row.hold, now, at, row.for_s)
        if hold != row.hold:
            row.hold = hold
            batch.changed["rules"].add(row.rule_id)
        if transition == "fired":
            alert = AlertRow(
                alert_id=alert_id(row.rule_id, hold.fired), rule_id=row.rule_id, number=hold.fired,
                rule_name=row.name, kind=row.kind, device_id=row.device_id, part=_fired_part(row, degraded),
                fired_at=at, detail=now.detail,
            )  # fmt: skip
            row.alert_id = alert.alert_id
            batch.alerts[alert.alert_id] = alert
            batch.changed["alerts"].add(alert.alert_id)
        elif transition == "resolved":
            self._resolve(batch, row, at, now.detail)

    def _end(self, batch: _Batch, row: RuleRow, why: str) -> None:
        """A changed or deleted rule starts afresh: its firing alert resolves at the judged moment."""
        if row.hold.firing:
            self._resolve(batch, row, batch.state.now or row.updated_at, why)
        row.hold = Hold(fired=row.hold.fired)
        batch.changed["rules"].add(row.rule_id)

    def _resolve(self, batch: _Batch, row: RuleRow, at: datetime, detail: str) -> None:
        if row.alert_id is not None and (alert := batch.alerts.get(row.alert_id)) is not None:
            if alert.resolved_at is None:
                alert.resolved_at, alert.resolved_detail = at, detail
                batch.changed["alerts"].add(alert.alert_id)
        row.alert_id = None
        batch.changed["rules"].add(row.rule_id)

    def _settle(self, batch: _Batch, alert: AlertRow) -> None:
        """Mark the alert settled once each target of its rule has every recorded phase done."""
        batch.changed["alerts"].add(alert.alert_id)
        rule = batch.rules.get(alert.rule_id)
        if rule is None or rule.deleted:
            alert.settled = alert.resolution_recorded  # a deleted rule's alerts are recorded, not delivered
            return
        phases = (["fired"] if alert.recorded else []) + (["resolved"] if alert.resolution_recorded else [])
        done = {(d.target_id, d.phase) for d in batch.deliveries.values()
                if d.alert_id == alert.alert_id and (d.ok or d.gave_up)}  # fmt: skip
        alert.settled = alert.resolution_recorded and all(
            (t["target_id"], phase) in done for t in rule.targets for phase in phases
        )


def _fired_part(row: RuleRow, degraded: dict[str, datetime]) -> str | None:
    if row.kind != "part_degraded":
        return None
    return row.part or (min(degraded, key=lambda p: (degraded[p], p)) if degraded else None)


def _price(rates: list[RateVersion], moment: datetime) -> Decimal:
    rate = in_force(rates, moment)
    if rate is None:
        return Decimal(0)
    if rate.rate_type == "tiered":
        return rate.tier1_rate or Decimal(0)
    return unit_price(rate, moment)


# ---- queries ----


async def _rows(conn: psycopg.AsyncConnection[Any], table: Table[Any], where: str, params: Sequence[Any]) -> list[Any]:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(f"{table.select} {where}", params)
        return [table.decode(record) for record in await cur.fetchall()]


async def list_rules(conn: psycopg.AsyncConnection[Any]) -> list[RuleRow]:
    """Every present rule, oldest first."""
    return await _rows(conn, RULES, "WHERE NOT deleted ORDER BY created_at, rule_id", ())


async def find_rule(conn: psycopg.AsyncConnection[Any], rule_id: UUID) -> RuleRow | None:
    """A present rule, or None."""
    found = await _rows(conn, RULES, "WHERE rule_id = %s AND NOT deleted", (rule_id,))
    return found[0] if found else None


async def list_alerts(
    conn: psycopg.AsyncConnection[Any], *, state: Literal["firing", "resolved"] | None, rule_id: UUID | None,
    limit: int,
) -> list[AlertRow]:  # fmt: skip
    """Alerts, newest first: `firing` (not resolved), `resolved`, or both; of one rule or of all."""
    where = ["TRUE"]
    params: list[Any] = []
    if state == "firing":
        where.append("resolved_at IS NULL")
    elif state == "resolved":
        where.append("resolved_at IS NOT NULL")
    if rule_id is not None:
        where.append("rule_id = %s")
        params.append(rule_id)
    params.append(limit)
    return await _rows(conn, ALERTS, f"WHERE {' AND '.join(where)} ORDER BY fired_at DESC, alert_id LIMIT %s", params)


async def deliveries_of(conn: psycopg.AsyncConnection[Any], alert_ids: Sequence[UUID]) -> list[DeliveryRow]:
    """The deliveries of these alerts, oldest first."""
    return await _rows(conn, DELIVERIES, "WHERE alert_id = ANY(%s) ORDER BY last_attempt_at NULLS FIRST, delivery_id",
                       (list(alert_ids),))  # fmt: skip


class Open(msgspec.Struct, frozen=True, kw_only=True):
    """An alert not settled yet, with its rule's targets and the deliveries made so far."""

    alert: AlertRow
    targets: list[dict[str, Any]]
    deliveries: dict[tuple[str, str], DeliveryRow]


async def open_alerts(conn: psycopg.AsyncConnection[Any], *, limit: int = 500) -> list[Open]:
    """The alerts whose recording or delivery is not finished, oldest first."""
    alerts = await _rows(conn, ALERTS, "WHERE NOT settled ORDER BY fired_at, alert_id LIMIT %s", (limit,))
    if not alerts:
        return []
    rules = {r.rule_id: r for r in await _rows(conn, RULES, "WHERE rule_id = ANY(%s)",
                                               (list({a.rule_id for a in alerts}),))}  # fmt: skip
    deliveries: dict[UUID, dict[tuple[str, str], DeliveryRow]] = {}
    for row in await deliveries_of(conn, [a.alert_id for a in alerts]):
        deliveries.setdefault(row.alert_id, {})[(row.target_id, row.phase)] = row
    return [
        Open(alert=a, targets=rules[a.rule_id].targets if a.rule_id in rules and not rules[a.rule_id].deleted else [],
             deliveries=deliveries.get(a.alert_id, {}))
        for a in alerts
    ]  # fmt: skip


async def any_rules(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether any enabled rule exists: alert ticks are recorded only then."""
    cur = await conn.execute(f"SELECT EXISTS (SELECT 1 FROM {RULES.name} WHERE enabled AND NOT deleted)")
    row = await cur.fetchone()
    return bool(row and row[0])
