"""The pure judgement of alert rules: whether a rule's condition holds, and when it fires or resolves.

Nothing here reads a clock. Time is what the log says: the alerts read model passes the judged
moment (`at`), the latest of the readings' `measured_at`, the alert ticks and the part-health
events it has applied, so a replay of the log judges every rule at the same moments.

A rule fires once its condition has held without a break for `for_s` seconds, and stays firing
(no repeat) until the condition stops holding, when it resolves. Changing what a rule judges
(threshold, duration, part, enabled) starts its judgement afresh; a new name or new targets do not.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal
from uuid import UUID

import msgspec

from domain.energy import MeterState

Kind = Literal["device_offline", "power_above", "power_below", "energy_per_day", "cost_per_day", "part_degraded"]
KINDS: tuple[Kind, ...] = ("device_offline", "power_above", "power_below", "energy_per_day", "cost_per_day",
                           "part_degraded")  # fmt: skip
DEVICE_KINDS = frozenset({"device_offline", "power_above", "power_below", "energy_per_day", "cost_per_day"})
THRESHOLD_KINDS = frozenset({"power_above", "power_below", "energy_per_day", "cost_per_day"})
Transition = Literal["fired", "resolved"]


class RuleSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a rule watches. `threshold` is watts (power), kWh (energy per day) or money in the tariff's
    currency (cost per day); `for_s` how long the condition must hold; `part` None means any part."""

    kind: Kind
    device_id: UUID | None = None
    threshold: float | None = None
    for_s: int = 0
    part: str | None = None


class DeviceFacts(msgspec.Struct, kw_only=True):
    """What the log says about one device, as far as alert rules care."""

    device_id: UUID
    mac: str = ""
    removed: bool = False
    online: bool = True
    offline_since: datetime | None = None
    power_w: float | None = None
    power_at: datetime | None = None
    day: date | None = None
    day_wh: float = 0.0
    day_cost: Decimal = Decimal(0)
    meter: MeterState | None = None


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    """A rule's judgement so far: since when its condition holds (None: it does not), whether it is
    firing, and how many times it has fired (which numbers its alerts)."""

    since: datetime | None = None
    firing: bool = False
    fired: int = 0


class Condition(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a condition holds now, since when if the facts know (else from now), and in words."""

    holds: bool
    since: datetime | None = None
    detail: str = ""


def condition(
    spec: RuleSpec, facts: DeviceFacts | None, degraded: dict[str, datetime], at: datetime,
    today: date | None = None,
) -> Condition:  # fmt: skip
    """Whether `spec`'s condition holds at `at`, given the device's facts and the degraded parts
    (name -> since). `today` is the local day of `at`: energy and cost of an earlier day count as
    none (None: the facts' day is today). A device the log does not know, or removed, holds no condition."""
    match spec.kind:
        case "part_degraded":
            parts = {p: s for p, s in degraded.items() if spec.part is None or p == spec.part}
            if not parts:
                return Condition(holds=False, detail=f"part {spec.part or 'every part'} running")
            name = min(parts, key=lambda p: (parts[p], p))
            return Condition(holds=True, since=parts[name], detail=f"part {name} degraded")
        case _ if facts is None or facts.removed:
            return Condition(holds=False, detail="device removed")
        case "device_offline":
            if facts.online:
                return Condition(holds=False, detail="device online")
            return Condition(holds=True, since=facts.offline_since, detail="device offline")
        case "power_above" | "power_below":
            limit = spec.threshold or 0.0
            power = facts.power_w
            if not facts.online or power is None:
                return Condition(holds=False, detail="no current power")
            beyond = power > limit if spec.kind == "power_above" else power < limit
            word = "above" if spec.kind == "power_above" else "below"
            detail = f"power {power:g} W {word if beyond else 'not ' + word} {limit:g} W"
            return Condition(holds=beyond, detail=detail)
        case "energy_per_day":
            limit = spec.threshold or 0.0
            current = facts.day is not None and (today is None or facts.day == today)
            kwh = facts.day_wh / 1000 if current else 0.0
            return Condition(holds=kwh > limit, detail=f"energy today {kwh:.3f} kWh, limit {limit:g} kWh")
        case "cost_per_day":
            cap = Decimal(str(spec.threshold or 0.0))
            current = facts.day is not None and (today is None or facts.day == today)
            cost = facts.day_cost if current else Decimal(0)
            return Condition(holds=cost > cap, detail=f"cost today {cost:.2f}, limit {cap}")
    return Condition(holds=False)


def judge(hold: Hold, now: Condition, at: datetime, for_s: int) -> tuple[Hold, Transition | None]:
    """The next judgement of a rule whose condition is `now` at `at`, and the transition it makes.

    A condition that holds starts its hold at the facts' `since` (else at `at`); once it has held
    `for_s` seconds the rule fires, once. A condition that stops holding ends the hold, and
    resolves a firing rule."""
    if now.holds:
        since = hold.since or now.since or at
        if not hold.firing and at - since >= timedelta(seconds=for_s):
            return Hold(since=since, firing=True, fired=hold.fired + 1), "fired"
        return Hold(since=since, firing=hold.firing, fired=hold.fired), None
    if hold.firing:
        return Hold(since=None, firing=False, fired=hold.fired), "resolved"
    return Hold(since=None, firing=False, fired=hold.fired), None
