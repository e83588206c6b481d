"""A process's Prometheus registry: its own per instance, polls counted by a few reasons."""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

from prometheus_client.parser import text_string_to_metric_families

from api.metrics import ProcessMetrics, Reading, exposition, failure_reason
from domain.errors import DeviceError, DeviceTimeout, DeviceUnreachable, UnsupportedDevice
from projections.device_metrics import ChannelSample, DeviceSample


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def empty_reading(**changes: object) -> Reading:
    fields: dict[str, object] = {"devices": [], "events_stored": 0, "relay_lag": 0, "projector_lag": {},
                                 "live_clients": 0, "part_restarts": {}}  # fmt: skip
    return Reading(**{**fields, **changes})  # type: ignore[arg-type]


def test_poll_failures_fall_into_a_few_reasons() -> None:
    assert failure_reason(TimeoutError()) == "timeout"
    assert failure_reason(DeviceTimeout("slow")) == "timeout"
    assert failure_reason(DeviceUnreachable("gone")) == "unreachable"
    assert failure_reason(ConnectionRefusedError()) == "unreachable"
    assert failure_reason(UnsupportedDevice("a bulb")) == "unsupported"
    assert failure_reason(DeviceError("odd")) == "device"
    assert failure_reason(KeyError("bug")) == "error"


def test_each_process_metrics_has_its_own_registry() -> None:
    first, second = ProcessMetrics(), ProcessMetrics()
    first.polled(0.2, None)
    first.polled(3.0, DeviceTimeout("slow"))
    first.polled(0.1, DeviceTimeout("slow"))
    ours, theirs = samples(exposition(first, empty_reading())), samples(exposition(second, empty_reading()))
    assert ours[("wattledger_poll_duration_seconds_count", ())] == 3
    assert ours[("wattledger_poll_duration_seconds_bucket", (("le", "0.25"),))] == 2
    assert ours[("wattledger_poll_failures_total", (("reason", "timeout"),))] == 2
    assert ours[("wattledger_poller_in_process", ())] == 1
    assert theirs[("wattledger_poll_duration_seconds_count", ())] == 0
    assert theirs[("wattledger_poller_in_process", ())] == 0


def test_a_strip_has_a_series_per_outlet_and_unknown_values_are_left_out() -> None:
    device_id = uuid4()
    strip = DeviceSample(
        device_id=device_id, alias='Desk "strip"\n', model="HS300", online=False, today_kwh=1.5,
        cost_today=Decimal("0.75"), channels=[
            ChannelSample(outlet="", power_w=30.0, voltage_v=None, current_a=None, total_wh=12.0, is_on=True),
            ChannelSample(outlet="o1", power_w=None, voltage_v=None, current_a=None, total_wh=None, is_on=False),
        ],
    )  # fmt: skip
    got = samples(exposition(ProcessMetrics(), empty_reading(
        devices=[strip], projector_lag={"devices": 4}, part_restarts={"relay": 2}
    )))  # fmt: skip
    names = (("alias", 'Desk "strip"\n'), ("device_id", str(device_id)), ("model", "HS300"))
    assert got[("wattledger_device_power_watts", (*names, ("outlet", "")))] == 30.0
    assert ("wattledger_device_power_watts", (*names, ("outlet", "o1"))) not in got
    assert ("wattledger_device_voltage_volts", (*names, ("outlet", ""))) not in got
    assert got[("wattledger_device_relay_on", (*names, ("outlet", "o1")))] == 0.0
    assert got[("wattledger_device_up", names)] == 0.0
    assert got[("wattledger_device_cost_today", names)] == 0.75
    assert got[("wattledger_projector_lag_events", (("projector", "devices"),))] == 4
    assert got[("wattledger_part_restarts_total", (("part", "relay"),))] == 2
