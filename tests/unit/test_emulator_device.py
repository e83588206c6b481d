"""The emulated device's rules, driven through its JSON interface with a fake clock (no sockets)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from adapters.emulator.device import (
    EmulatedDevice,
    UnknownProfile,
    available_profiles,
    load_profile,
)
from tests.kit import ManualClock

T0 = datetime(2026, 3, 8, 6, 0, tzinfo=timezone.utc)


def make(name: str, clock: ManualClock, **kwargs: Any) -> EmulatedDevice:
    return EmulatedDevice(load_profile(name), clock=clock.monotonic, seed=7, **kwargs)


def realtime(device: EmulatedDevice, child_id: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"emeter": {"get_realtime": {}}}
    if child_id is not None:
        request["context"] = {"child_ids": [child_id]}
    answer: dict[str, Any] = device.handle(request)["emeter"]["get_realtime"]
    assert answer["err_code"] == 0
    return answer


def sysinfo(device: EmulatedDevice) -> dict[str, Any]:
    info: dict[str, Any] = device.handle({"system": {"get_sysinfo": {}}})["system"]["get_sysinfo"]
    return info


def test_the_five_reference_profiles_are_bundled() -> None:
    assert {"HS100", "HS110", "HS300", "KP115", "KP303"} <= set(available_profiles())


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(UnknownProfile):
        load_profile("HS999")


def test_meter_devices_advertise_ene_in_their_feature_string() -> None:
    for name in available_profiles():
        profile = load_profile(name)
        assert ("ENE" in profile.sysinfo["feature"].split(":")) == (profile.meter is not None)


def test_energy_counter_integrates_power_over_time_times_speed() -> None:
    clock = ManualClock(T0)
    device = make("KP115", clock, speed=60.0)
    base = load_profile("KP115").base_load_w
    clock.advance(60.0)  # one simulated hour
    assert 0.75 * base <= device.energy_wh() <= 1.25 * base
    assert realtime(device)["total_wh"] == int(device.energy_wh())


def test_power_drifts_but_stays_within_bounds_of_the_base_load() -> None:
    clock = ManualClock(T0)
    device = make("KP115", clock)
    base = load_profile("KP115").base_load_w
    powers = []
    for _ in range(200):
        clock.advance(30.0)
        powers.append(realtime(device)["power_mw"] / 1000)
    assert all(0.75 * base <= p <= 1.25 * base for p in powers)
    assert len(set(powers)) > 1


def test_a_switched_off_plug_draws_nothing_and_counts_nothing() -> None:
    clock = ManualClock(T0)
    device = make("HS110", clock, speed=3600.0)
    device.set_relay(False)
    clock.advance(10.0)
    reading = realtime(device)
    assert reading["power"] == 0.0
    assert reading["current"] == 0.0
    assert reading["total"] == 0.0
    assert 225 <= reading["voltage"] <= 235


def test_legacy_firmware_reports_w_v_a_kwh_and_newer_firmware_milli_units() -> None:
    clock = ManualClock(T0)
    assert set(realtime(make("HS110", clock))) == {
        "power",
        "voltage",
        "current",
        "total",
        "err_code",
    }
    assert set(realtime(make("KP115", clock))) == {
        "power_mw",
        "voltage_mv",
        "current_ma",
        "total_wh",
        "err_code",
    }


def test_current_is_power_over_voltage() -> None:
    clock = ManualClock(T0)
    device = make("HS110", clock)
    clock.advance(5.0)
    reading = realtime(device)
    assert reading["current"] == pytest.approx(reading["power"] / reading["voltage"], rel=1e-4)


def test_scheduled_reboot_resets_the_counter_and_keeps_relays() -> None:
    clock = ManualClock(T0)
    device = make("HS300", clock, speed=3600.0, reboot_every=100.0)
    device.set_relay(False, outlet=1)
    clock.advance(90.0)
    before = device.energy_wh()
    clock.advance(20.0)
    assert device.reboots == 1
    assert device.energy_wh() < before
    assert [child["state"] for child in sysinfo(device)["children"]] == [1, 0, 1, 0, 1, 1]


def test_reboot_request_resets_the_counter() -> None:
    clock = ManualClock(T0)
    device = make("KP115", clock, speed=3600.0)
    clock.advance(10.0)
    assert realtime(device)["total_wh"] > 0
    assert device.handle({"system": {"reboot": {"delay": 1}}})["system"]["reboot"]["err_code"] == 0
    assert realtime(device)["total_wh"] == 0
    assert device.is_on()


def test_same_seed_gives_the_same_readings() -> None:
    first, second = ManualClock(T0), ManualClock(T0)
    a, b = make("HS110", first), make("HS110", second)
    for _ in range(5):
        first.advance(7.0)
        second.advance(7.0)
        assert realtime(a) == realtime(b)


def test_child_context_switches_only_that_outlet() -> None:
    clock = ManualClock(T0)
    device = make("KP303", clock)
    third = device.outlet_ids[2]
    answer = device.handle(
        {"context": {"child_ids": [third]}, "system": {"set_relay_state": {"state": 1}}}
    )
    assert answer == {"system": {"set_relay_state": {"err_code": 0}}}
    assert [child["state"] for child in sysinfo(device)["children"]] == [1, 1, 1]
    device.handle({"context": {"child_ids": [third]}, "system": {"set_relay_state": {"state": 0}}})
    assert [child["state"] for child in sysinfo(device)["children"]] == [1, 1, 0]


def test_strip_children_have_the_device_id_plus_two_digit_index() -> None:
    device = make("HS300", ManualClock(T0))
    ids = [child["id"] for child in sysinfo(device)["children"]]
    assert ids == [f"{device.device_id}{i:02d}" for i in range(6)]


def test_each_strip_outlet_meters_its_own_load() -> None:
    clock = ManualClock(T0)
    device = make("HS300", clock)
    clock.advance(1.0)
    readings = [realtime(device, child_id) for child_id in device.outlet_ids]
    assert [r["slot_id"] for r in readings] == list(range(6))
    assert readings[3]["power_mw"] == 0  # the printer outlet starts off
    assert readings[1]["power_mw"] > readings[2]["power_mw"]  # PC draws more than the lamp


def test_unknown_module_and_method_answer_like_the_firmware() -> None:
    device = make("HS100", ManualClock(T0))
    answer = device.handle({"smartlife.iot.dimmer": {"set_brightness": {}}, "system": {"fly": {}}})
    assert answer["smartlife.iot.dimmer"] == {"err_code": -1, "err_msg": "module not support"}
    assert answer["system"]["fly"] == {"err_code": -2, "err_msg": "member not support"}


def test_a_plug_without_meter_has_no_emeter_module() -> None:
    device = make("HS100", ManualClock(T0))
    assert device.handle({"emeter": {"get_realtime": {}}})["emeter"]["err_code"] == -1


def test_several_modules_in_one_request_all_answer() -> None:
    device = make("HS110", ManualClock(T0))
    answer = device.handle(
        {
            "system": {"get_sysinfo": {}},
            "emeter": {"get_realtime": {}, "get_daystat": {"year": 2024, "month": 1}},
            "time": {"get_time": {}, "get_timezone": {}},
        }
    )
    assert answer["system"]["get_sysinfo"]["model"] == "HS110(EU)"
    assert answer["emeter"]["get_daystat"] == {"day_list": [], "err_code": 0}
    assert answer["time"]["get_timezone"]["err_code"] == 0


def test_unknown_child_id_is_an_invalid_argument() -> None:
    device = make("HS300", ManualClock(T0))
    answer = device.handle({"context": {"child_ids": ["nope"]}, "emeter": {"get_realtime": {}}})
    assert answer["emeter"]["get_realtime"]["err_code"] == -3


def test_bad_relay_state_is_an_invalid_argument_and_changes_nothing() -> None:
    device = make("HS110", ManualClock(T0))
    answer = device.handle({"system": {"set_relay_state": {"state": "on"}}})
    assert answer["system"]["set_relay_state"]["err_code"] == -3
    assert device.is_on()


def test_alias_can_be_renamed_for_the_device_and_for_one_outlet() -> None:
    device = make("HS300", ManualClock(T0))
    device.handle({"system": {"set_dev_alias": {"alias": "Bench"}}})
    device.handle(
        {
            "context": {"child_ids": [device.outlet_ids[0]]},
            "system": {"set_dev_alias": {"alias": "Scope"}},
        }
    )
    info = sysinfo(device)
    assert info["alias"] == "Bench"
    assert info["children"][0]["alias"] == "Scope"


def test_second_device_of_a_model_gets_its_own_identity() -> None:
    profile = load_profile("HS110")
    first = EmulatedDevice(profile, serial=0)
    second = EmulatedDevice(profile, serial=1)
    assert first.mac != second.mac
    assert first.mac[:8] == second.mac[:8]
    assert first.device_id != second.device_id
    assert len(second.device_id) == 40
