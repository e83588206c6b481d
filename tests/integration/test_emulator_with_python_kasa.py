"""The emulator speaks the real protocol: python-kasa and the KasaDriver test it on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from kasa import Device, DeviceConfig, Discover, KasaException, Module
from kasa.iot import IotPlug, IotStrip
from kasa.iot.iotstrip import IotStripPlug

from adapters.emulator import (
    DEFAULT_PROFILES,
    DeviceServer,
    EmulatedDevice,
    EmulatorFleet,
    FleetError,
    load_profile,
    loopback_hosts,
    run_emulator,
)
from adapters.kasa_driver import DeviceUnreachable, KasaDriver, OutletNotFound, UnsupportedDevice, snapshot_of
from domain.address import DeviceAddress, parse_address
from tests.harness import free_port

HS110, KP115, HS100, HS300, KP303 = range(5)


@pytest_asyncio.fixture
async def fleet() -> AsyncIterator[EmulatorFleet]:
    async with EmulatorFleet(DEFAULT_PROFILES, seed=11) as running:
        yield running


@pytest_asyncio.fixture
async def driver() -> AsyncIterator[KasaDriver]:
    kasa_driver = KasaDriver(timeout=2.0)
    yield kasa_driver
    await kasa_driver.close()


def address_of(fleet: EmulatorFleet, index: int) -> DeviceAddress:
    return parse_address(fleet.addresses[index])


async def connect(fleet: EmulatorFleet, index: int) -> Device:
    server = fleet.servers[index]
    return await Device.connect(
        config=DeviceConfig(host=server.host, port_override=server.port, timeout=2)
    )


@pytest.mark.asyncio
async def test_every_profile_connects_and_updates_through_python_kasa(fleet: EmulatorFleet) -> None:
    for index, emulated in enumerate(fleet.devices):
        device = await connect(fleet, index)
        try:
            await device.update()
            assert device.alias == emulated.alias
            assert device.model == emulated.model
            assert device.mac == emulated.mac
            assert device.is_on == emulated.is_on()
            assert device.rssi is not None and -90 < device.rssi < -20
            assert device.has_emeter == emulated.has_emeter
            assert len(device.children) == len(emulated.outlet_ids)
        finally:
            await device.disconnect()


@pytest.mark.asyncio
async def test_python_kasa_reads_the_energy_module_of_meter_plugs(fleet: EmulatorFleet) -> None:
    for index, volts in ((HS110, 230.0), (KP115, 120.0)):
        device = await connect(fleet, index)
        try:
            energy = device.modules[Module.Energy]
            power, voltage = energy.current_consumption, energy.voltage
            assert power is not None and power > 0
            assert voltage is not None
            assert voltage == pytest.approx(volts, rel=0.03)
            assert energy.current == pytest.approx(power / voltage, rel=0.05, abs=0.002)
            assert energy.consumption_total is not None and energy.consumption_total >= 0
        finally:
            await device.disconnect()


@pytest.mark.asyncio
async def test_python_kasa_reads_each_hs300_outlet_meter_through_child_context(
    fleet: EmulatorFleet,
) -> None:
    device = await connect(fleet, HS300)
    try:
        assert isinstance(device, IotStrip)
        children = [child for child in device.children if isinstance(child, IotStripPlug)]
        assert [child.child_id for child in children] == fleet.devices[HS300].outlet_ids
        powers = [child.modules[Module.Energy].current_consumption or 0.0 for child in children]
        for child, power in zip(children, powers, strict=True):
            assert power > 0 if child.is_on else power == 0
        assert device.modules[Module.Energy].current_consumption == pytest.approx(sum(powers))
    finally:
        await device.disconnect()


@pytest.mark.asyncio
async def test_python_kasa_copes_with_unknown_modules_and_methods(fleet: EmulatorFleet) -> None:
    device = await connect(fleet, HS100)
    try:
        answer = await device.protocol.query({"smartlife.iot.dimmer": {"set_brightness": {}}})
        assert answer["smartlife.iot.dimmer"]["err_code"] == -1
        assert isinstance(device, IotPlug)
        with pytest.raises(KasaException):
            await device._query_helper("system", "no_such_method")
        await device.update()
        assert device.alias == fleet.devices[HS100].alias
    finally:
        await device.disconnect()


@pytest.mark.asyncio
async def test_alias_set_through_python_kasa_is_what_the_next_update_reads(
    fleet: EmulatorFleet,
) -> None:
    device = await connect(fleet, KP115)
    try:
        await device.set_alias("Heat Pump")
        await device.update()
        assert device.alias == "Heat Pump"
    finally:
        await device.disconnect()


@pytest.mark.asyncio
async def test_every_profile_polls_through_the_driver_with_plausible_values(
    fleet: EmulatorFleet, driver: KasaDriver
) -> None:
    snapshots = [await driver.poll(address_of(fleet, i)) for i in range(len(fleet))]
    hs110, kp115, hs100, hs300, kp303 = snapshots

    assert [s.model for s in snapshots] == ["HS110", "KP115", "HS100", "HS300", "KP303"]
    assert [s.device_type for s in snapshots] == ["plug", "plug", "plug", "strip", "strip"]
    for snapshot, emulated in zip(snapshots, fleet.devices, strict=True):
        assert snapshot.alias == emulated.alias
        assert snapshot.mac == emulated.mac
        assert snapshot.firmware == emulated.firmware
        assert snapshot.rssi is not None

    assert hs110.has_emeter and hs110.is_on
    assert hs110.voltage_v == pytest.approx(230, rel=0.03)
    assert hs110.power_w is not None and 40 < hs110.power_w < 100
    assert kp115.voltage_v == pytest.approx(120, rel=0.03)
    assert kp115.total_wh is not None and kp115.total_wh >= 0

    assert not hs100.has_emeter and not hs100.is_on
    assert (hs100.power_w, hs100.voltage_v, hs100.current_a, hs100.total_wh) == (None,) * 4

    assert [o.index for o in hs300.outlets] == list(range(6))
    assert [o.outlet_id for o in hs300.outlets] == fleet.devices[HS300].outlet_ids
    assert hs300.power_w == pytest.approx(sum(o.power_w or 0 for o in hs300.outlets))
    assert hs300.current_a == pytest.approx(sum(o.current_a or 0 for o in hs300.outlets))
    assert hs300.voltage_v == pytest.approx(120, rel=0.03)
    assert hs300.is_on == any(o.is_on for o in hs300.outlets)

    assert not kp303.has_emeter and len(kp303.outlets) == 3
    assert kp303.power_w is None and all(o.power_w is None for o in kp303.outlets)
    assert [o.is_on for o in kp303.outlets] == [True, True, False]


@pytest.mark.asyncio
async def test_driver_reuses_one_connection_across_polls(
    fleet: EmulatorFleet, driver: KasaDriver
) -> None:
    address = address_of(fleet, HS300)
    for _ in range(3):
        await driver.poll(address)
    assert fleet.servers[HS300].connection_count == 1


@pytest.mark.asyncio
async def test_concurrent_polls_of_one_device_share_one_connection(
    fleet: EmulatorFleet, driver: KasaDriver
) -> None:
    address = address_of(fleet, KP115)
    first, second = await asyncio.gather(driver.poll(address), driver.poll(address))
    assert first.mac == second.mac
    assert fleet.servers[KP115].connection_count == 1


@pytest.mark.asyncio
async def test_relay_set_through_the_driver_is_what_the_next_poll_sees(
    fleet: EmulatorFleet, driver: KasaDriver
) -> None:
    address = address_of(fleet, HS100)
    after = await driver.set_relay(address, on=True)
    assert after.is_on
    assert (await driver.poll(address)).is_on
    assert fleet.devices[HS100].is_on()
    await driver.set_relay(address, on=False)
    assert not (await driver.poll(address)).is_on


@pytest.mark.asyncio
async def test_strip_outlet_control_switches_only_that_outlet(
    fleet: EmulatorFleet, driver: KasaDriver
) -> None:
    address = address_of(fleet, HS300)
    before = await driver.poll(address)
    after = await driver.set_relay(address, on=False, outlet_index=4)
    assert [o.is_on for o in after.outlets] == [
        False if o.index == 4 else o.is_on for o in before.outlets
    ]
    assert after.outlets[4].power_w == 0
    polled = await driver.poll(address)
    assert [o.is_on for o in polled.outlets] == [o.is_on for o in after.outlets]


@pytest.mark.asyncio
async def test_switching_a_whole_strip_switches_every_outlet(
    fleet: EmulatorFleet, driver: KasaDriver
) -> None:
    snapshot = await driver.set_relay(address_of(fleet, KP303), on=True)
    assert all(o.is_on for o in snapshot.outlets)


@pytest.mark.asyncio
async def test_outlet_index_the_device_lacks_is_refused(
    fleet: EmulatorFleet, driver: KasaDriver
) -> None:
    with pytest.raises(OutletNotFound):
        await driver.set_relay(address_of(fleet, KP303), on=True, outlet_index=3)
    with pytest.raises(OutletNotFound):
        await driver.set_relay(address_of(fleet, HS110), on=True, outlet_index=0)


@pytest.mark.asyncio
async def test_energy_counter_grows_when_time_runs_fast(driver: KasaDriver) -> None:
    async with EmulatorFleet(["KP115", "HS300"], speed=360_000.0, seed=3) as fast:
        plug, strip = address_of(fast, 0), address_of(fast, 1)
        first_plug, first_strip = await driver.poll(plug), await driver.poll(strip)
        await asyncio.sleep(0.05)
        second_plug, second_strip = await driver.poll(plug), await driver.poll(strip)
        await driver.close()
    assert first_plug.total_wh is not None and second_plug.total_wh is not None
    assert second_plug.total_wh > first_plug.total_wh
    assert first_strip.total_wh is not None and second_strip.total_wh is not None
    assert second_strip.total_wh > first_strip.total_wh
    outlet_before, outlet_after = first_strip.outlets[1].total_wh, second_strip.outlets[1].total_wh
    assert outlet_before is not None and outlet_after is not None
    assert outlet_after > outlet_before


@pytest.mark.asyncio
async def test_counter_reset_is_visible_to_the_client_after_reboot(driver: KasaDriver) -> None:
    async with EmulatorFleet(["HS110"], speed=360_000.0, seed=5) as fast:
        address = address_of(fast, 0)
        await asyncio.sleep(0.05)
        before = await driver.poll(address)
        fast.devices[0].reboot()
        after = await driver.poll(address)
        await driver.close()
    assert before.total_wh is not None and before.total_wh > 0
    assert after.total_wh is not None and after.total_wh < before.total_wh
    assert after.is_on == before.is_on


@pytest.mark.asyncio
async def test_reboot_sent_by_python_kasa_resets_the_counter(fleet: EmulatorFleet) -> None:
    emulated = fleet.devices[KP115]
    device = await connect(fleet, KP115)
    try:
        await device.reboot()
        assert emulated.reboots == 1
        await device.update()
        assert device.modules[Module.Energy].consumption_total == 0
    finally:
        await device.disconnect()


@pytest.mark.asyncio
async def test_closed_loopback_port_is_unreachable(driver: KasaDriver) -> None:
    with pytest.raises(DeviceUnreachable):
        await driver.poll(DeviceAddress(host="127.0.0.1", port=free_port()))


@pytest.mark.asyncio
async def test_silent_device_is_unreachable_after_the_timeout() -> None:
    # A listening socket nobody accepts from: the connection opens, no answer ever comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        async with KasaDriver(timeout=0.3) as driver:
            with pytest.raises(DeviceUnreachable):
                await driver.poll(DeviceAddress(host="127.0.0.1", port=silent.getsockname()[1]))


class Impostor(EmulatedDevice):
    """Speaks the wire protocol but answers every request with one fixed reply."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(load_profile("HS100"))
        self._answer = answer

    def handle(self, request: Any) -> dict[str, Any]:
        return self._answer


async def poll_impostor(answer: dict[str, Any], driver: KasaDriver) -> None:
    server = DeviceServer(Impostor(answer))
    await server.start()
    try:
        await driver.poll(parse_address(server.address))
    finally:
        await driver.close()
        await server.stop()


@pytest.mark.asyncio
async def test_answer_without_device_type_is_unreachable_as_a_protocol_error(
    driver: KasaDriver,
) -> None:
    with pytest.raises(DeviceUnreachable):
        await poll_impostor({"system": {"get_sysinfo": {"err_code": 0}}}, driver)


@pytest.mark.asyncio
async def test_a_camera_is_an_unsupported_device(driver: KasaDriver) -> None:
    camera = {"system": {"type": "IOT.IPCAMERA", "model": "KC100(US)"}}
    with pytest.raises(UnsupportedDevice):
        await poll_impostor({"system": {"get_sysinfo": {"system": camera}}}, driver)


@pytest.mark.asyncio
async def test_device_that_went_away_is_unreachable_then_polls_again_when_back(
    driver: KasaDriver,
) -> None:
    port = free_port()
    address = DeviceAddress(host="127.0.0.1", port=port)
    async with EmulatorFleet(["HS110"], port=port):
        assert (await driver.poll(address)).model == "HS110"
    with pytest.raises(DeviceUnreachable):
        await driver.poll(address)
    async with EmulatorFleet(["HS110"], port=port):
        assert (await driver.poll(address)).model == "HS110"
        await driver.close()


@pytest.mark.asyncio
async def test_discovery_on_loopback_finds_every_emulated_device() -> None:
    hosts = loopback_hosts(5, first=42)
    async with (
        EmulatorFleet(DEFAULT_PROFILES, host=hosts, discovery_port=0) as fleet,
        KasaDriver(timeout=2.0) as driver,
    ):
        port = fleet.discovery_port
        assert port is not None
        found = await driver.discover("127.255.255.255", port=port, timeout=0.6)
        assert found == [DeviceAddress(host=h, port=port) for h in hosts]
        assert fleet.addresses == [str(a) for a in found]
        snapshots = [await driver.poll(address) for address in found]
        assert [s.model for s in snapshots] == ["HS110", "KP115", "HS100", "HS300", "KP303"]


@pytest.mark.asyncio
async def test_unicast_discovery_finds_just_that_device() -> None:
    hosts = loopback_hosts(2, first=60)
    async with (
        EmulatorFleet(["HS110", "KP303"], host=hosts, discovery_port=0) as fleet,
        KasaDriver(timeout=2.0) as driver,
    ):
        port = fleet.discovery_port
        assert port is not None
        assert await driver.discover(hosts[1], port=port, timeout=1.0) == [
            DeviceAddress(host=hosts[1], port=port)
        ]


@pytest.mark.asyncio
async def test_python_kasa_discover_single_gets_a_working_device() -> None:
    hosts = loopback_hosts(2, first=70)
    async with EmulatorFleet(["KP115", "HS300"], host=hosts, discovery_port=0) as fleet:
        device = await Discover.discover_single(
            hosts[1], port=fleet.discovery_port, discovery_timeout=1, timeout=2
        )
        assert device is not None
        try:
            await device.update()
            assert device.model == "HS300"
            assert device.alias == fleet.devices[1].alias
        finally:
            await device.disconnect()


@pytest.mark.asyncio
async def test_discovery_with_nobody_answering_finds_nothing(driver: KasaDriver) -> None:
    assert await driver.discover("127.0.0.99", port=free_port(), timeout=0.3) == []


@pytest.mark.asyncio
async def test_fleet_refuses_non_loopback_hosts_and_discovery_on_a_shared_host() -> None:
    with pytest.raises(FleetError):
        EmulatorFleet(["HS110"], host="0.0.0.0")
    with pytest.raises(FleetError):
        EmulatorFleet(["HS110", "HS100"], host="127.0.0.1", discovery_port=0)


@pytest.mark.asyncio
async def test_fleet_on_a_taken_port_fails_and_leaves_nothing_open() -> None:
    async with EmulatorFleet(["HS100"]) as first:
        port = first.servers[0].port
        with pytest.raises(FleetError):
            await EmulatorFleet(["HS100"], port=port).start()


@pytest.mark.asyncio
async def test_fleet_serves_ipv6_loopback(driver: KasaDriver) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        fleet = EmulatorFleet(["KP115"], host="::1")
        await fleet.start()
    except FleetError:
        pytest.skip("IPv6 loopback not available")
    try:
        snapshot = await driver.poll(parse_address(fleet.addresses[0]))
        assert snapshot.model == "KP115"
        await driver.close()
    finally:
        await fleet.stop()


@pytest.mark.asyncio
async def test_run_emulator_serves_until_cancelled_then_closes(driver: KasaDriver) -> None:
    ready: asyncio.Future[EmulatorFleet] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_emulator(["HS110", "HS300"], port=0, speed=10.0, seed=1, on_ready=ready.set_result)
    )
    running = await ready
    addresses = [parse_address(a) for a in running.addresses]
    assert (await driver.poll(addresses[1])).model == "HS300"
    await driver.close()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(DeviceUnreachable):
        await driver.poll(addresses[0])


@pytest.mark.asyncio
async def test_a_poll_of_a_connected_device_asks_only_its_state_and_meter_and_reads_what_an_update_reads(
    fleet: EmulatorFleet, driver: KasaDriver
) -> None:
    asked: list[set[str]] = []
    for index, emulated in enumerate(fleet.devices):
        answer = emulated.handle

        def recording(request: Any, answer: Any = answer) -> Any:
            asked.append(set(request) - {"context"})
            return answer(request)

        emulated.handle = recording  # type: ignore[method-assign]
        address = address_of(fleet, index)
        await driver.poll(address)
        asked.clear()
        short = await driver.poll(address)
        assert all(modules <= {"system", "emeter"} for modules in asked), asked
        assert len(asked) == 1 + (len(emulated.outlet_ids) if emulated.has_emeter and emulated.outlet_ids else 0)

        device = await connect(fleet, index)
        try:
            await device.update()
            full = snapshot_of(device)
        finally:
            await device.disconnect()
        for field in ("alias", "model", "mac", "firmware", "has_emeter", "device_type", "is_on"):
            assert getattr(short, field) == getattr(full, field), field
        for value, expected in ((short.power_w, full.power_w), (short.voltage_v, full.voltage_v),
                                (short.total_wh, full.total_wh)):  # fmt: skip
            assert (value is None) == (expected is None)
            assert value is None or value == pytest.approx(expected, rel=0.05, abs=0.5)
        assert [(o.outlet_id, o.index, o.alias, o.is_on) for o in short.outlets] == [
            (o.outlet_id, o.index, o.alias, o.is_on) for o in full.outlets
        ]
        assert [o.power_w is None for o in short.outlets] == [o.power_w is None for o in full.outlets]


@pytest.mark.asyncio
async def test_a_rename_and_a_switch_behind_the_drivers_back_show_in_its_next_poll(
    fleet: EmulatorFleet, driver: KasaDriver
) -> None:
    for index in (HS110, KP303):
        address = address_of(fleet, index)
        before = await driver.poll(address)
        emulated = fleet.devices[index]
        emulated.handle({"system": {"set_dev_alias": {"alias": "Moved"}}})
        emulated.set_relay(not before.is_on, outlet=None if index == HS110 else 0)
        after = await driver.poll(address)
        assert after.alias == "Moved"
        if index == HS110:
            assert after.is_on != before.is_on
        else:
            assert after.outlets[0].is_on != before.outlets[0].is_on
        assert fleet.servers[index].connection_count == 1


@pytest.mark.asyncio
async def test_a_meter_that_answers_an_error_is_unreachable_and_the_next_poll_connects_afresh(
    fleet: EmulatorFleet, driver: KasaDriver
) -> None:
    address = address_of(fleet, KP115)
    await driver.poll(address)
    emulated = fleet.devices[KP115]
    answer = emulated.handle

    def broken_meter(request: Any) -> Any:
        result = answer(request)
        if "emeter" in request:
            result["emeter"] = {"get_realtime": {"err_code": -1, "err_msg": "module not support"}}
        return result

    emulated.handle = broken_meter  # type: ignore[method-assign]
    with pytest.raises(DeviceUnreachable):
        await driver.poll(address)
    emulated.handle = answer  # type: ignore[method-assign]
    assert (await driver.poll(address)).power_w is not None
    assert fleet.servers[KP115].connection_count == 1


@pytest.mark.asyncio
async def test_another_device_at_a_polled_address_misses_one_poll_and_is_read_afresh_at_the_next(
    fleet: EmulatorFleet, driver: KasaDriver
) -> None:
    address = address_of(fleet, HS110)
    await driver.poll(address)
    fleet.devices[HS110]._sysinfo["mac"] = "50:C7:BF:00:00:01"
    with pytest.raises(DeviceUnreachable, match="another device"):
        await driver.poll(address)
    assert (await driver.poll(address)).mac == "50:C7:BF:00:00:01"
