"""Poll and switch Kasa IOT plugs and strips with python-kasa, as DeviceSnapshots.

Only the legacy IOT protocol (XOR on TCP 9999) is spoken: HS1xx, KP1xx, HS300,
KP303 and the like. A connected python-kasa `Device` is kept per address and
reused by the next call; any failure drops it, closes its connection and
raises DeviceUnreachable, so the next call starts afresh.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from kasa import Device, DeviceConfig, Discover, EmeterStatus, KasaException, Module, UnsupportedDeviceError
from kasa.iot import IotPlug, IotStrip
from kasa.iot.iotstrip import IotStripPlug
from kasa.json import dumps as json_dumps

from domain.address import KASA_PORT, DeviceAddress
from domain.errors import DeviceError, DeviceTimeout, DeviceUnreachable, OutletNotFound, UnsupportedDevice
from domain.ports import DeviceDriver, DeviceSwitch
from domain.readings import DeviceSnapshot, OutletReading
from domain.text import clean_text

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
# Errors python-kasa lets through when a device answers with an unexpected shape.
_MALFORMED_ANSWER = (KeyError, TypeError, ValueError)


DriverError = DeviceError
"""Base of every error the Kasa driver raises (the domain's device errors)."""


class _Meter:
    """The meter values of one plug or outlet, None without a meter."""

    __slots__ = ("current_a", "power_w", "total_wh", "voltage_v")

    def __init__(self, status: EmeterStatus | None) -> None:
        self.power_w: float | None = None
        self.voltage_v: float | None = None
        self.current_a: float | None = None
        self.total_wh: float | None = None
        if status is None:
            return
        self.power_w = _float(status.power)
        self.voltage_v = _float(status.voltage)
        self.current_a = _float(status.current)
        total_kwh = _float(status.total)
        # kWh * 1000 in floating point leaves noise like 62.00000000000001.
        self.total_wh = None if total_kwh is None else round(total_kwh * 1000, 6)

    @classmethod
    def of(cls, device: Device) -> _Meter:
        energy = device.modules.get(Module.Energy)
        return cls(None if energy is None else energy.status)


def _float(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def _strip_snapshot(outlets: tuple[OutletReading, ...], common: dict[str, Any]) -> DeviceSnapshot:
    """A strip's reading from its outlets': on if any is, power, current and energy summed, voltage averaged."""
    return DeviceSnapshot(
        device_type="strip",
        is_on=any(o.is_on for o in outlets),
        power_w=_sum([o.power_w for o in outlets]),
        voltage_v=_mean([o.voltage_v for o in outlets]),
        current_a=_sum([o.current_a for o in outlets]),
        total_wh=_sum([o.total_wh for o in outlets]),
        outlets=outlets,
        **common,
    )


_DIGITS = 6
"""Decimals a strip's sums and means keep: below any meter's resolution, above float noise
(outlets of 0.1 W and 0.2 W sum to 0.3 W, not 0.30000000000000004)."""


def _sum(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(math.fsum(present), _DIGITS) if present else None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(math.fsum(present) / len(present), _DIGITS) if present else None


def snapshot_of(device: Device) -> DeviceSnapshot:
    """Map an updated python-kasa IotPlug or IotStrip to a DeviceSnapshot."""
    if not isinstance(device, (IotPlug, IotStrip)):
        raise UnsupportedDevice(f"{type(device).__name__} at {device.host} is not a plug or strip")
    has_emeter = bool(device.has_emeter)
    # What a device says about itself is free text from outside: kept without the characters text may not hold.
    common = {
        "alias": clean_text(device.alias or ""),
        "model": clean_text(device.model),
        "mac": clean_text(device.mac),
        "firmware": clean_text(str(device.sys_info["sw_ver"])),
        "has_emeter": has_emeter,
        "rssi": device.rssi,
    }
    if isinstance(device, IotStrip):
        outlets = tuple(
            _outlet_reading(index, child, has_emeter) for index, child in enumerate(device.children)
        )
        return _strip_snapshot(outlets, common)
    meter = _Meter.of(device)
    return DeviceSnapshot(
        device_type="plug",
        is_on=bool(device.is_on),
        power_w=meter.power_w,
        voltage_v=meter.voltage_v,
        current_a=meter.current_a,
        total_wh=meter.total_wh,
        **common,
    )


class _Reading:
    """The short read of a connected plug or strip: its sysinfo and the meter's realtime values.

    `update()` asks every module python-kasa knows (schedules, usage statistics, cloud,
    time, ...) and a strip's outlets the same; a reading needs the state and the meter. The
    requests are encoded once; what the device does not change (model, MAC, whether it
    meters) is taken from the python-kasa device connected before.
    """

    __slots__ = ("_device", "_emeter", "_has_emeter", "_identity", "_mac", "_outlets", "_request")

    def __init__(self, device: IotPlug | IotStrip) -> None:
        self._device = device
        self._mac = _raw_mac(device.sys_info)
        self._identity = (clean_text(device.model), clean_text(device.mac))
        self._has_emeter = bool(device.has_emeter)
        self._emeter = emeter = device.emeter_type
        query: dict[str, object] = {"system": {"get_sysinfo": {}}}
        self._outlets: tuple[str, ...] = ()
        if isinstance(device, IotStrip):
            if device.has_emeter:
                self._outlets = tuple(
                    json_dumps({"context": {"child_ids": [child.child_id]}, emeter: {"get_realtime": {}}})
                    for child in device.children
                    if isinstance(child, IotStripPlug)
                )
        elif device.has_emeter:
            query[emeter] = {"get_realtime": {}}
        self._request = json_dumps(query)

    async def read(self) -> DeviceSnapshot:
        device = self._device
        protocol = device.protocol
        answer = await protocol.query(self._request)
        sysinfo = answer["system"]["get_sysinfo"]
        if _raw_mac(sysinfo) != self._mac:
            raise KasaException("another device answers at this address")
        model, mac = self._identity
        common: dict[str, Any] = {
            "alias": clean_text(sysinfo.get("alias") or ""),
            "model": model,
            "mac": mac,
            "firmware": clean_text(str(sysinfo["sw_ver"])),
            "has_emeter": self._has_emeter,
            "rssi": None if sysinfo.get("rssi") is None else int(sysinfo["rssi"]),
        }
        emeter = self._emeter
        if isinstance(device, IotStrip):
            children = sysinfo["children"]
            meters: list[EmeterStatus | None] = [None] * len(children)
            if self._outlets:
                if len(self._outlets) != len(children):
                    raise KasaException("the strip's outlets changed")
                for index, request in enumerate(self._outlets):
                    meters[index] = _status((await protocol.query(request))[emeter]["get_realtime"])
            outlets = tuple(
                _outlet_of(index, child, meters[index]) for index, child in enumerate(children)
            )
            return _strip_snapshot(outlets, common)
        meter = _Meter(_status(answer[emeter]["get_realtime"]) if self._has_emeter else None)
        return DeviceSnapshot(
            device_type="plug",
            is_on=bool(sysinfo["relay_state"]),
            power_w=meter.power_w,
            voltage_v=meter.voltage_v,
            current_a=meter.current_a,
            total_wh=meter.total_wh,
            **common,
        )


def _raw_mac(sysinfo: dict[str, object]) -> object:
    return sysinfo.get("mac", sysinfo.get("mic_mac"))


def _status(realtime: dict[str, float]) -> EmeterStatus:
    """The meter's realtime answer; one with an error code is a malformed answer."""
    if realtime.get("err_code", 0) != 0:
        raise ValueError(f"the meter answered {realtime}")
    return EmeterStatus(realtime)


def _outlet_of(index: int, child: dict[str, object], status: EmeterStatus | None) -> OutletReading:
    meter = _Meter(status) if status is not None else None
    return OutletReading(
        outlet_id=clean_text(str(child["id"])),
        index=index,
        alias=clean_text(str(child.get("alias") or "")),
        is_on=bool(child["state"]),
        power_w=meter.power_w if meter else None,
        voltage_v=meter.voltage_v if meter else None,
        current_a=meter.current_a if meter else None,
        total_wh=meter.total_wh if meter else None,
    )


def _outlet_reading(index: int, child: Device, has_emeter: bool) -> OutletReading:
    meter = _Meter.of(child) if has_emeter else None
    return OutletReading(
        outlet_id=clean_text(child.child_id if isinstance(child, IotStripPlug) else child.device_id),
        index=index,
        alias=clean_text(child.alias or ""),
        is_on=bool(child.is_on),
        power_w=meter.power_w if meter else None,
        voltage_v=meter.voltage_v if meter else None,
        current_a=meter.current_a if meter else None,
        total_wh=meter.total_wh if meter else None,
    )


class KasaDriver(DeviceDriver, DeviceSwitch):
    """Talks to Kasa IOT devices; one cached connection per address.

    Calls for one address run one at a time; calls for different addresses run
    concurrently. `timeout` bounds each whole call (connect, query, update)
    and also each query python-kasa makes. Call `close()` when done.
    """

    def __init__(self, *, timeout: float = 5.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._timeout = timeout
        self._devices: dict[DeviceAddress, Device] = {}
        self._locks: dict[DeviceAddress, asyncio.Lock] = {}
        self._readings: dict[DeviceAddress, _Reading] = {}

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        """Read the device's state and meter now."""

        async def read(device: Device, fresh: bool) -> DeviceSnapshot:
            if fresh:
                return snapshot_of(device)
            reading = self._readings.get(address)
            if reading is None:
                if not isinstance(device, (IotPlug, IotStrip)):
                    return snapshot_of(device)
                reading = self._readings[address] = _Reading(device)
            return await reading.read()

        return await self._with_device(address, read)

    async def set_relay(
        self, address: DeviceAddress, *, on: bool, outlet_index: int | None = None
    ) -> DeviceSnapshot:
        """Switch a plug, one strip outlet (`outlet_index`, from 0) or a whole strip.

        Returns the state read right after the switch. Raises OutletNotFound for
        an index the device lacks, or for any index on a plug.
        """

        async def switch(device: Device, fresh: bool) -> DeviceSnapshot:
            if outlet_index is None:
                target = device
            else:
                if not isinstance(device, IotStrip):
                    raise OutletNotFound(f"{address} is a plug; it has no outlet {outlet_index}")
                children = device.children
                if not 0 <= outlet_index < len(children):
                    raise OutletNotFound(
                        f"{address} has outlets 0..{len(children) - 1}, not {outlet_index}"
                    )
                target = children[outlet_index]
            await target.set_state(on)
            await device.update()
            return snapshot_of(device)

        return await self._with_device(address, switch)

    async def set_alias(self, address: DeviceAddress, alias: str) -> None:
        """Store a new name on the device (a strip's own name, not an outlet's)."""

        async def rename(device: Device, fresh: bool) -> None:
            await device.set_alias(alias)

        await self._with_device(address, rename)

    async def discover(
        self, target: str, *, port: int | None = None, timeout: float = 3.0
    ) -> list[DeviceAddress]:
        """Find Kasa IOT plugs and strips answering legacy UDP discovery at `target`.

        `target` is an IPv4 address: a unicast address asks that one device, a
        broadcast address (255.255.255.255, a subnet's x.x.x.255, 127.255.255.255
        for loopback) asks every device that hears it. `port` is the discovery
        port (default 9999); python-kasa assumes a device serves TCP on the same
        port number, so the addresses returned carry it. Waits up to `timeout`
        seconds (less for a unicast target that answers). Devices that are not
        IOT plugs or strips (bulbs, newer KLAP/AES models) are left out. Never
        raises for silence: no answer gives an empty list.
        """
        try:
            ip = ipaddress.ip_address(target)
        except ValueError:
            raise ValueError(f"discovery target must be an IP address, got {target!r}") from None
        if ip.version != 4:
            raise ValueError("python-kasa discovery works over IPv4 only")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"port must be 1..65535, got {port}")
        try:
            found = await Discover.discover(
                target=str(ip),
                port=port,
                discovery_timeout=timeout,  # type: ignore[arg-type]
                discovery_packets=3,
                timeout=self._timeout,  # type: ignore[arg-type]
            )
        except (KasaException, OSError) as exc:
            raise DriverError(f"discovery on {target} failed: {exc}") from exc
        addresses: list[DeviceAddress] = []
        for host, device in found.items():
            try:
                if isinstance(device, (IotPlug, IotStrip)):
                    addresses.append(DeviceAddress(host=host, port=device.port or KASA_PORT))
                else:
                    kind = type(device).__name__
                    log.info("kasa_discovery_skipped", host=host, device_class=kind)
            finally:
                await device.disconnect()
        return sorted(addresses, key=lambda a: (ipaddress.ip_address(a.host), a.port))

    async def close(self) -> None:
        """Close every cached connection."""
        devices = list(self._devices.items())
        self._devices.clear()
        self._readings.clear()
        for address, device in devices:
            await self._disconnect(address, device)

    async def __aenter__(self) -> KasaDriver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _with_device(
        self,
        address: DeviceAddress,
        action: Callable[[Device, bool], Awaitable[_T]],
    ) -> _T:
        lock = self._locks.get(address)
        if lock is None:
            lock = self._locks[address] = asyncio.Lock()
        async with lock:
            try:
                async with asyncio.timeout(self._timeout):
                    device = self._devices.get(address)
                    fresh = device is None
                    if device is None:
                        device = await Device.connect(
                            config=DeviceConfig(
                                host=address.host,
                                port_override=address.port,
                                timeout=self._timeout,  # type: ignore[arg-type]
                            )
                        )
                        self._devices[address] = device
                    return await action(device, fresh)
            except OutletNotFound:
                raise
            except (UnsupportedDevice, UnsupportedDeviceError) as exc:
                await self._drop(address)
                raise UnsupportedDevice(f"{address}: {exc}") from exc
            except TimeoutError as exc:
                await self._drop(address)
                raise DeviceTimeout(f"{address}: no answer within {self._timeout:g} s") from exc
            except (KasaException, OSError, *_MALFORMED_ANSWER) as exc:
                await self._drop(address)
                log.debug("kasa_device_unreachable", address=str(address), error=repr(exc))
                raise DeviceUnreachable(f"{address}: {str(exc) or type(exc).__name__}") from exc
            except BaseException:
                # Cancelled mid-query: the connection may hold half an answer.
                await asyncio.shield(self._drop(address))
                raise

    async def _drop(self, address: DeviceAddress) -> None:
        self._readings.pop(address, None)
        device = self._devices.pop(address, None)
        if device is not None:
            await self._disconnect(address, device)

    async def _disconnect(self, address: DeviceAddress, device: Device) -> None:
        try:
            await device.disconnect()
        except (KasaException, OSError) as exc:
            log.debug("kasa_disconnect_failed", address=str(address), error=repr(exc))
