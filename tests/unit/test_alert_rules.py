"""The pure judgement of alert rules: conditions per kind, and firing once per hold until resolved."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

from hypothesis import given
from hypothesis import strategies as st

from domain.alert import AlertDelivery, AlertTicks, PartHealth, alert_id, delivery_id
from domain.alert_rules import Condition, DeviceFacts, Hold, RuleSpec, condition, judge

T0 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
DEVICE = uuid4()


def facts(**kw: object) -> DeviceFacts:
    return DeviceFacts(device_id=DEVICE, **kw)  # type: ignore[arg-type]


def test_an_offline_device_holds_from_when_it_went_offline() -> None:
    spec = RuleSpec(kind="device_offline", device_id=DEVICE, for_s=300)
    gone = facts(online=False, offline_since=T0)
    hold, fired = judge(Hold(), condition(spec, gone, {}, T0 + timedelta(minutes=4)), T0 + timedelta(minutes=4), 300)
    assert fired is None and hold.since == T0
    hold, fired = judge(hold, condition(spec, gone, {}, T0 + timedelta(minutes=5)), T0 + timedelta(minutes=5), 300)
    assert fired == "fired" and hold.fired == 1
    back = facts(online=True)
    hold, resolved = judge(hold, condition(spec, back, {}, T0 + timedelta(minutes=6)), T0 + timedelta(minutes=6), 300)
    assert resolved == "resolved" and not hold.firing and hold.fired == 1


def test_power_rules_watch_only_a_device_that_is_online_and_measured() -> None:
    above = RuleSpec(kind="power_above", device_id=DEVICE, threshold=1000.0)
    below = RuleSpec(kind="power_below", device_id=DEVICE, threshold=5.0)
    assert condition(above, facts(power_w=1500.0), {}, T0).holds
    assert not condition(above, facts(power_w=999.0), {}, T0).holds
    assert condition(below, facts(power_w=1.0), {}, T0).holds
    assert not condition(below, facts(power_w=1.0, online=False), {}, T0).holds
    assert not condition(below, facts(power_w=None), {}, T0).holds
    assert not condition(above, None, {}, T0).holds
    assert not condition(RuleSpec(kind="device_offline", device_id=DEVICE), facts(online=False, removed=True), {},
                         T0).holds  # fmt: skip


def test_energy_and_cost_per_day_compare_today_against_the_limit() -> None:
    energy = RuleSpec(kind="energy_per_day", device_id=DEVICE, threshold=2.0)
    cost = RuleSpec(kind="cost_per_day", device_id=DEVICE, threshold=0.5)
    today = facts(day=T0.date(), day_wh=2500.0, day_cost=Decimal("0.75"))
    assert condition(energy, today, {}, T0).holds and condition(cost, today, {}, T0).holds
    assert not condition(energy, facts(day=T0.date(), day_wh=1999.0), {}, T0).holds
    assert not condition(cost, facts(day=T0.date(), day_cost=Decimal("0.50")), {}, T0).holds
    tomorrow = T0.date() + timedelta(days=1)
    assert not condition(energy, today, {}, T0 + timedelta(days=1), tomorrow).holds
    assert not condition(cost, today, {}, T0 + timedelta(days=1), tomorrow).holds


def test_a_part_rule_names_one_part_or_watches_every_part() -> None:
    one = RuleSpec(kind="part_degraded", part="poller")
    every = RuleSpec(kind="part_degraded")
    degraded = {"relay": T0}
    assert not condition(one, None, degraded, T0).holds
    assert condition(every, None, degraded, T0) == Condition(holds=True, since=T0, detail="part relay degraded")
    assert condition(one, None, {"poller": T0}, T0).holds


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=600)), max_size=60),
       st.integers(min_value=0, max_value=900))  # fmt: skip
def test_a_rule_fires_once_per_unbroken_hold_of_for_s_and_resolves_when_it_breaks(
    steps: list[tuple[bool, int]], for_s: int
) -> None:
    hold = Hold()
    at = T0
    since: datetime | None = None
    firing = False
    fired = resolved = 0
    for holds, gap in steps:
        at += timedelta(seconds=gap)
        hold, transition = judge(hold, Condition(holds=holds), at, for_s)
        if holds:
            since = since or at
            expected = None if firing or at - since < timedelta(seconds=for_s) else "fired"
        else:
            expected = "resolved" if firing else None
            since = None
        assert transition == expected
        firing = hold.firing
        fired += transition == "fired"
        resolved += transition == "resolved"
        assert fired - resolved == int(firing)
        assert hold.fired == fired
        assert hold.since == since


def test_replaying_the_same_observations_gives_the_same_history() -> None:
    observations = [(True, 0), (True, 120), (True, 200), (False, 10), (True, 5), (True, 400), (False, 1)]

    def history() -> list[tuple[datetime, str]]:
        hold, at = Hold(), T0
        out: list[tuple[datetime, str]] = []
        for holds, gap in observations:
            at += timedelta(seconds=gap)
            hold, transition = judge(hold, Condition(holds=holds), at, 300)
            if transition:
                out.append((at, transition))
        return out

    assert history() == history()
    assert [t for _, t in history()] == ["fired", "resolved", "fired", "resolved"]


def test_ids_of_alerts_and_deliveries_are_derived_so_recording_twice_is_impossible() -> None:
    rule = uuid4()
    assert alert_id(rule, 1) == alert_id(rule, 1) != alert_id(rule, 2)
    assert delivery_id(alert_id(rule, 1), "t", "fired") != delivery_id(alert_id(rule, 1), "t", "resolved")
    delivery = AlertDelivery(alert_id=alert_id(rule, 1), rule_id=rule, target_id="t", phase="fired", actor="x")
    assert delivery.id == delivery_id(alert_id(rule, 1), "t", "fired")


def test_ticks_keep_one_per_minute_and_part_health_records_changes_only() -> None:
    ticks = AlertTicks(day=T0.date().isoformat())
    assert ticks.tick(T0) and not ticks.tick(T0 + timedelta(seconds=30)) and ticks.tick(T0 + timedelta(minutes=1))
    health = PartHealth(part="relay")
    health.observe(True, T0, "boom")
    health.observe(True, T0, "boom")
    health.observe(False, T0, None)
    names = [type(e).__name__ for e in health.collect_events()]
    assert names == ["Opened", "Degraded", "Recovered"]


def test_the_webhook_signature_is_the_hmac_of_timestamp_dot_body_as_the_readme_checks_it() -> None:
    import hashlib
    import hmac

    from adapters.alert_delivery import sign, signature_matches

    body, timestamp, secret = b'{"phase":"fired"}', "1767225600", "s" * 32
    expected = "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert sign(secret, timestamp, body) == expected
    assert signature_matches(secret, timestamp, body, expected)
    assert not signature_matches(secret, "1767225601", body, expected)
    assert not signature_matches(secret, timestamp, body + b" ", expected)
