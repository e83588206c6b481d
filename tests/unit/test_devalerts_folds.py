"""A plug's readings folded in a `DeviceFold`, as the devices and alerts read models fold a batch, give what
`step` gives reading by reading: the same intervals, the same state, the same rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.calendar import LocalCalendar
from domain.device import Device
from domain.energy import DEVICE_CHANNEL, Channel, DeviceFold, EnergyRules, MeterState, Reading, Sample, step
from domain.meter import MeterDay
from domain.rates import RateVersion, TouPeriod
from domain.readings import OutletReading
from projections import alerts
from projections.devices import DEVICES, DeviceRow, DevicesProjector

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 10, 31, 22, 45, tzinfo=timezone.utc)
"""A quarter of an hour before local midnight in Berlin, on the last day of a month."""
RULES = EnergyRules()

measures = st.none() | st.sampled_from([0.0, -0.0, 1.0, 2.5, 1e9, -5.0, float("nan"), float("inf")]) | st.floats(
    min_value=0, max_value=1e6, allow_nan=False
)
# Mostly forward, sometimes back (late or duplicate readings), sometimes past the gap power is integrated over.
steps = st.sampled_from([0, -30, 1, 30, 60, 60, 60, 179, 180, 600, 4000])


@st.composite
def plug_readings(draw: st.DrawFn) -> list[tuple[datetime, float | None, float | None]]:
    at, readings = T0, []
    for _ in range(draw(st.integers(min_value=1, max_value=40))):
        at += timedelta(seconds=draw(steps))
        readings.append((at, draw(measures), draw(measures)))
    return readings


states = st.sampled_from([
    None,
    MeterState(meter="AA", at=T0 - timedelta(minutes=1),
               channels={DEVICE_CHANNEL: Channel(at=T0 - timedelta(minutes=1), power_w=50.0, counted_wh=10.0)}),
    MeterState(meter="AA", at=T0 + timedelta(minutes=5), channels={"o1": Channel(at=T0, counted_wh=3.0)}),
    MeterState(meter="BB", at=T0, channels={DEVICE_CHANNEL: Channel(at=T0, counted_wh=10.0)}),
])  # fmt: skip


@given(states, plug_readings())
def test_a_fold_gives_the_intervals_and_the_state_that_step_gives(
    state: MeterState | None, readings: list[tuple[datetime, float | None, float | None]]
) -> None:
    fold = DeviceFold(state, "AA", RULES)
    stepped = state
    for at, power_w, total_wh in readings:
        closed = fold.add(at, power_w, total_wh)
        sample = Sample(channel=DEVICE_CHANNEL, power_w=power_w, total_wh=total_wh)
        stepped, intervals = step(stepped, Reading(meter="AA", at=at, samples=(sample,)), RULES)
        assert [(i.start, i.end, i.wh) for i in intervals] == ([] if closed is None else [(closed[0], at, closed[1])])
    assert msgspec.json.encode(fold.state()) == msgspec.json.encode(stepped)


def test_a_fold_that_folded_nothing_leaves_the_state_it_was_given() -> None:
    state = MeterState(meter="AA", at=T0, channels={DEVICE_CHANNEL: Channel(at=T0, counted_wh=10.0)})
    fold = DeviceFold(state, "AA", RULES)
    assert fold.add(T0, 5.0, 20.0) is None
    assert fold.state() is state


# ---- the devices read model: one batch against each event applied alone through `step` ----


class Recording:
    """A cursor that reads no rows and keeps the rows written."""

    def __init__(self) -> None:
        self.written: list[tuple[Any, ...]] = []

    def execute(self, query: str, params: Any = None) -> None:
        pass

    def fetchall(self) -> list[Any]:
        return []

    def executemany(self, query: str, rows: Sequence[tuple[Any, ...]]) -> None:
        self.written.extend(rows)


def plain(values: tuple[Any, ...]) -> bytes:
    return msgspec.json.encode([getattr(v, "obj", v) for v in values])


def added(device_id: UUID, mac: str) -> Device.Added:
    return Device.Added(  # type: ignore[call-arg]
        originator_id=device_id, originator_version=1, timestamp=T0 - timedelta(hours=1), originator_topic="t",
        address=f"10.0.0.{mac}", alias="Lamp", model="HS110", device_type="plug", mac=mac, outlets=[], actor="t",
    )  # fmt: skip


def restored(device_id: UUID, mac: str, at: datetime) -> Device.Restored:
    return Device.Restored(  # type: ignore[call-arg]
        originator_id=device_id, originator_version=3, timestamp=at, alias="Lamp", model="HS110",
        device_type="plug", mac=mac, outlets=[], actor="t",
    )  # fmt: skip


def reading(device_id: UUID, at: datetime, power_w: float | None, total_wh: float | None, *, is_on: bool = True,
            outlets: list[OutletReading] | None = None) -> MeterDay.ReadingRecorded:  # fmt: skip
    return MeterDay.ReadingRecorded(  # type: ignore[call-arg]
        originator_id=uuid4(), originator_version=2, timestamp=at + timedelta(seconds=1), device_id=device_id,
        measured_at=at, is_on=is_on, power_w=power_w, voltage_v=230.0, current_a=0.2, total_wh=total_wh,
        outlets=outlets or [], actor="t",
    )  # fmt: skip


def fleet_log() -> list[object]:
    """Two plugs across Berlin's midnight and month end: gaps, a reset, late readings, a strip's reading
    in between, and one plug restored with another MAC."""
    one, other = UUID(int=1), UUID(int=2)
    events: list[object] = [added(one, "A1"), added(other, "B2")]
    total = {one: 100.0, other: 5.0}
    for minute in range(0, 70):
        at = T0 + timedelta(minutes=minute)
        for device_id in (one, other):
            total[device_id] += 1.5 if minute != 30 else -90.0
            gap = minute % 17 == 0
            events.append(reading(device_id, at + timedelta(minutes=4) if gap else at,
                                  40.0, None if minute % 11 == 0 else total[device_id], is_on=minute % 9 != 0))
        if minute == 25:
            events.append(reading(one, at - timedelta(seconds=30), 10.0, 1.0))  # late: changes nothing
        if minute == 40:
            outlet = OutletReading(outlet_id="o0", index=0, alias="P0", is_on=True, power_w=3.0, total_wh=7.0)
            events.append(reading(other, at + timedelta(seconds=20), 3.0, 7.0, outlets=[outlet]))
        if minute == 50:
            events.append(restored(one, "C3", at + timedelta(seconds=10)))
    return events


def test_a_batch_of_plug_readings_writes_the_rows_each_reading_folded_by_step_gives() -> None:
    events = fleet_log()
    projector = DevicesProjector(BERLIN, RULES)
    cur = Recording()
    projector.apply_batch(cur, events)  # type: ignore[arg-type]
    rows = stepped_rows(events)
    assert sorted(map(plain, cur.written)) == sorted(plain(DEVICES.values(row)) for row in rows.values())
    assert {row.today for row in rows.values()} == {T0.astimezone(BERLIN).date() + timedelta(days=1)}
    assert all(row.meter is not None for row in rows.values())


# ---- the alerts read model: the price remembered over the span it holds for ----


def version(number: int, rate_type: str, effective: datetime, **fields: Any) -> RateVersion:
    return RateVersion(version=number, rate_type=rate_type, currency="EUR", timezone="Europe/Berlin",  # type: ignore[arg-type]
                       effective_from=effective, **fields)  # fmt: skip


TARIFF = [
    version(1, "simple", T0, rate_per_kwh=Decimal("0.30")),
    version(2, "tiered", T0 + timedelta(hours=2), tier1_rate=Decimal("0.1234")),
    version(3, "time_of_use", T0 + timedelta(hours=5), time_of_use_rates=(
        TouPeriod(start_hour=7, end_hour=22, rate=Decimal("0.31"), label="day"),
        TouPeriod(start_hour=22, end_hour=7, rate=Decimal("0.17"), label="night"))),
    version(4, "simple", T0 + timedelta(hours=2), rate_per_kwh=Decimal("0.5")),  # same start, later version
    version(5, "simple", T0 + timedelta(hours=30)),  # no price: none
]  # fmt: skip


@settings(max_examples=60)
@given(st.integers(min_value=0, max_value=len(TARIFF)),
       st.lists(st.integers(min_value=-120, max_value=48 * 60), min_size=1, max_size=60),
       st.sampled_from([1.0, 0.0, -0.0, 2.5, 1e-9, 1234.5678]))  # fmt: skip
def test_the_batch_prices_and_costs_energy_as_the_tariff_in_force_then_does(
    versions: int, minutes: list[int], wh: float
) -> None:
    batch = object.__new__(alerts._Batch)
    batch.state = alerts.StateRow(name=alerts.STATE_KEY, rates=TARIFF[:versions])
    batch._priced, batch._costs, batch._costs_at = None, {}, None
    for minute in sorted(minutes):  # readings come in time order, mostly
        moment = T0 + timedelta(minutes=minute)
        expected = Decimal(str(wh)) / 1000 * alerts._price(batch.state.rates, moment)
        assert batch.price(moment) == alerts._price(batch.state.rates, moment)
        cost = batch.cost(wh, moment)
        assert (cost, str(cost)) == (expected, str(expected))
    batch.state.rates.append(version(6, "simple", T0 - timedelta(days=1), rate_per_kwh=Decimal("9")))
    later = T0 + timedelta(hours=20)
    assert batch.price(later) == alerts._price(batch.state.rates, later)


@pytest.mark.parametrize("wh", [0.0, -0.0])
def test_a_remembered_cost_of_no_energy_keeps_the_sign_of_its_zero(wh: float) -> None:
    batch = object.__new__(alerts._Batch)
    batch.state = alerts.StateRow(name=alerts.STATE_KEY, rates=TARIFF[:1])
    batch._priced, batch._costs, batch._costs_at = None, {}, None
    batch.cost(-wh, T0)
    assert str(batch.cost(wh, T0)) == str(Decimal(str(wh)) / 1000 * Decimal("0.30"))


# ---- the alerts read model: one batch against what each reading folded by `step` gives ----


def stepped_rows(events: list[object]) -> dict[UUID, DeviceRow]:
    """The devices rows of `events`, each applied alone: outside a batch every reading folds the meter by `step`."""
    calendar = LocalCalendar(BERLIN)
    rows: dict[UUID, DeviceRow] = {}
    for event in events:
        if isinstance(event, Device.Added):
            rows[event.originator_id] = DeviceRow.added(event)
        elif isinstance(event, MeterDay.ReadingRecorded):
            rows[event.device_id].apply(event, calendar, RULES)
        elif isinstance(event, Device.Restored):
            rows[event.originator_id].apply(event, calendar, RULES)
    return rows


def test_a_batch_of_readings_leaves_each_devices_meter_and_energy_today_as_step_gives_them() -> None:
    events = fleet_log()
    batch = alerts._Batch(Recording(), events)  # type: ignore[arg-type]
    projector = alerts.AlertsProjector(BERLIN, RULES)
    for event in events:
        if isinstance(event, MeterDay.ReadingRecorded):
            projector._reading(batch, event)
        else:
            projector._apply(batch, event)
    batch.write(Recording())  # type: ignore[arg-type]
    rows = stepped_rows(events)
    assert rows.keys() == batch.facts.keys()
    for device_id, row in rows.items():
        facts = batch.facts[device_id]
        assert msgspec.json.encode(facts.meter) == msgspec.json.encode(row.meter)
        assert (facts.day, facts.day_wh) == (row.today, row.today_wh)
