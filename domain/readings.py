"""What a poll of a device saw: plain values, shared by the driver, the store and projections."""

from __future__ import annotations

from typing import Literal

import msgspec

DeviceType = Literal["plug", "strip"]

MAX_CHANNEL_POWER_W = 100_000.0
"""No meter (a plug, or one outlet of a strip) draws more; `WATTLEDGER_MAX_POWER_W` is at most this."""
MAX_COUNTER_WH = 1e9
"""A meter's energy counter stays below 1 GWh (a 3.7 kW plug at full load for thirty years)."""
MAX_VOLTAGE_V = 1_000.0
MAX_CURRENT_A = 1_000.0


def bounded(value: float | None, ceiling: float) -> float | None:
    """A measurement as the read side takes it: None unless finite and at most `ceiling` either way.

    Readings are stored as devices and clients reported them; one no meter can measure (left by
    old data or a faulty device) is treated as unknown rather than summed into statistics."""
    if value is None or not -ceiling <= value <= ceiling:
        return None
    return value


class OutletReading(msgspec.Struct, frozen=True, kw_only=True):
    """One child outlet of a power strip, as polled. Meter fields are None without a meter."""

    outlet_id: str
    index: int
    alias: str
    is_on: bool
    power_w: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    total_wh: float | None = None


class DeviceSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One good poll of a device.

    For a strip the top-level meter fields sum its outlets (voltage is the mean)
    and `is_on` is true when any outlet is on. `total_wh` is the device's
    cumulative energy counter, None where the device has no meter.
    """

    alias: str
    model: str
    device_type: DeviceType
    mac: str
    firmware: str
    is_on: bool
    has_emeter: bool
    rssi: int | None = None
    power_w: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    total_wh: float | None = None
    outlets: tuple[OutletReading, ...] = ()
