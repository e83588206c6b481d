"""Readings to import: checked as a whole before anything is stored, then grouped by timestamp.

A strip's reading names its outlet (index or id); readings of several outlets
at one timestamp become one recorded reading, as a poll of the strip would be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Annotated

import msgspec

from domain.errors import InvalidReadings
from domain.readings import (
    MAX_CHANNEL_POWER_W,
    MAX_COUNTER_WH,
    MAX_CURRENT_A,
    MAX_VOLTAGE_V,
    DeviceSnapshot,
    OutletReading,
)

MAX_READINGS = 10_000
FUTURE_SLACK = timedelta(minutes=5)
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)


Watts = Annotated[float, msgspec.Meta(le=MAX_CHANNEL_POWER_W, description="0 to WATTLEDGER_MAX_POWER_W")]
Counter = Annotated[float, msgspec.Meta(lt=MAX_COUNTER_WH, description="the meter's counter in Wh, 0 to 1e9")]
Volts = Annotated[float, msgspec.Meta(ge=-MAX_VOLTAGE_V, le=MAX_VOLTAGE_V)]
Amperes = Annotated[float, msgspec.Meta(le=MAX_CURRENT_A, description="0 to 1000")]


class ImportedReading(msgspec.Struct, frozen=True, kw_only=True):
    """One reading as a client sends it; every field but `timestamp` is optional. A strip's reading is
    one outlet's (`outlet`), so `power_w` is at most WATTLEDGER_MAX_POWER_W in every reading."""

    timestamp: Annotated[str, msgspec.Meta(max_length=64)]
    power_w: Watts | None = None
    total_wh: Counter | None = None
    voltage: Volts | None = None
    current: Amperes | None = None
    is_on: bool | None = None
    outlet: Annotated[int, msgspec.Meta(ge=0, le=1024)] | Annotated[str, msgspec.Meta(max_length=64)] | None = None


class DeviceShape(msgspec.Struct, frozen=True, kw_only=True):
    """What an import needs to know about the device: its identity and its outlets' ids in index order."""

    alias: str
    model: str
    device_type: str
    mac: str
    outlets: tuple[str, ...] = ()


class Checked(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    outlet: int | None
    reading: ImportedReading


def _measure(value: float | None, where: str, most: float, *, negative: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise InvalidReadings(f"{where} must be a finite number")
    if not negative and value < 0:
        raise InvalidReadings(f"{where} must not be negative")
    if abs(value) > most:
        raise InvalidReadings(f"{where} must be at most {most:g}")


def _outlet(value: int | str | None, device: DeviceShape, where: str) -> int | None:
    if not device.outlets:
        if value is not None:
            raise InvalidReadings(f"{where}.outlet: device {device.alias!r} has no outlets")
        return None
    if value is None:
        raise InvalidReadings(f"{where}.outlet is required for a power strip (an outlet index or id)")
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(device.outlets):
            return value
    elif isinstance(value, str) and value in device.outlets:
        return device.outlets.index(value)
    raise InvalidReadings(f"{where}.outlet: unknown outlet {value!r}")


def check_readings(
    readings: Sequence[ImportedReading], device: DeviceShape, now: datetime, *,
    max_power_w: float = MAX_CHANNEL_POWER_W,
) -> list[Checked]:
    """Every reading checked, in the order given; raises InvalidReadings naming the first bad one.

    Refused: more than MAX_READINGS, a timestamp that is not ISO 8601 with an
    offset, before 2000 or more than 5 minutes ahead of `now`, non-finite or
    negative power, counter, current, non-finite voltage, an unknown outlet; and
    numbers no meter measures: power above `max_power_w` (one plug, or one outlet of
    a strip), a counter of 1e9 Wh or more, voltage beyond ±1000 V, current above 1000 A.
    """
    if len(readings) > MAX_READINGS:
        raise InvalidReadings(f"at most {MAX_READINGS} readings a request, got {len(readings)}")
    if not readings:
        raise InvalidReadings("readings must hold at least one reading")
    checked: list[Checked] = []
    for number, reading in enumerate(readings):
        where = f"readings[{number}]"
        try:
            at = datetime.fromisoformat(reading.timestamp)
        except ValueError:
            raise InvalidReadings(f"{where}.timestamp must be an ISO 8601 time") from None
        if at.tzinfo is None:
            raise InvalidReadings(f"{where}.timestamp must name its UTC offset (e.g. Z)")
        try:
            at = at.astimezone(timezone.utc)
        except OverflowError:
            raise InvalidReadings(f"{where}.timestamp is before 2000") from None
        if at < EARLIEST:
            raise InvalidReadings(f"{where}.timestamp is before 2000")
        if at > now + FUTURE_SLACK:
            raise InvalidReadings(f"{where}.timestamp is more than 5 minutes in the future")
        _measure(reading.power_w, f"{where}.power_w", max_power_w)
        _measure(reading.total_wh, f"{where}.total_wh", math.nextafter(MAX_COUNTER_WH, 0))
        _measure(reading.current, f"{where}.current", MAX_CURRENT_A)
        _measure(reading.voltage, f"{where}.voltage", MAX_VOLTAGE_V, negative=True)
        checked.append(Checked(at=at, outlet=_outlet(reading.outlet, device, where), reading=reading))
    return checked


def _is_on(reading: ImportedReading) -> bool:
    return reading.is_on if reading.is_on is not None else (reading.power_w or 0.0) > 0


def _snapshot(
    device: DeviceShape,
    *,
    is_on: bool,
    power_w: float | None,
    voltage_v: float | None = None,
    current_a: float | None = None,
    total_wh: float | None = None,
    outlets: tuple[OutletReading, ...] = (),
) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias=device.alias, model=device.model, device_type="strip" if device.outlets else "plug", mac=device.mac,
        firmware="", is_on=is_on, has_emeter=True, power_w=power_w, voltage_v=voltage_v, current_a=current_a,
        total_wh=total_wh, outlets=outlets,
    )  # fmt: skip


def snapshots(checked: Sequence[Checked], device: DeviceShape) -> list[tuple[datetime, DeviceSnapshot]]:
    """One snapshot per timestamp, in time order; of equal timestamps (and outlet) the first given wins."""
    by_time: dict[datetime, dict[int | None, ImportedReading]] = {}
    for item in checked:
        by_time.setdefault(item.at, {}).setdefault(item.outlet, item.reading)
    result: list[tuple[datetime, DeviceSnapshot]] = []
    for at in sorted(by_time):
        parts = by_time[at]
        if not device.outlets:
            r = parts[None]
            result.append((at, _snapshot(
                device, is_on=_is_on(r), power_w=r.power_w, voltage_v=r.voltage, current_a=r.current,
                total_wh=r.total_wh,
            )))  # fmt: skip
            continue
        outlets = tuple(
            OutletReading(
                outlet_id=device.outlets[index], index=index, alias=device.outlets[index], is_on=_is_on(r),
                power_w=r.power_w, voltage_v=r.voltage, current_a=r.current, total_wh=r.total_wh,
            )
            for index, r in sorted((i, r) for i, r in parts.items() if i is not None)
        )  # fmt: skip
        powers = [o.power_w for o in outlets if o.power_w is not None]
        result.append((at, _snapshot(
            device, is_on=any(o.is_on for o in outlets), power_w=sum(powers) if powers else None, outlets=outlets,
        )))  # fmt: skip
    return result
