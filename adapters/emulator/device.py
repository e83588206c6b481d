"""An emulated Kasa IOT device: its identity from a profile, its relays, and what tests look at.

The load and energy model is `load.py`, the IOT request handling `iot.py`, the bundled
profiles `profiles.py`; `EmulatedDevice` puts them together. The device answers decoded
IOT JSON requests (`{"module": {"method": {args}}}`, optionally with
`"context": {"child_ids": [...]}` for one outlet of a strip) the way the firmware does, so
python-kasa's `IotPlug` and `IotStrip` work against it unchanged. It does no I/O; `server.py`
puts it on the network.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable

from adapters.emulator.iot import (
    INVALID_ARGUMENT,
    METHOD_NOT_SUPPORTED,
    MODULE_NOT_SUPPORTED,
    IotRequests,
    Result,
)
from adapters.emulator.load import Outlet
from adapters.emulator.profiles import (
    DeviceProfile,
    MeterFormat,
    MeterProfile,
    OutletProfile,
    UnknownProfile,
    available_profiles,
    load_profile,
)

__all__ = [
    "INVALID_ARGUMENT",
    "METHOD_NOT_SUPPORTED",
    "MODULE_NOT_SUPPORTED",
    "DeviceProfile",
    "EmulatedDevice",
    "MeterFormat",
    "MeterProfile",
    "OutletProfile",
    "Result",
    "UnknownProfile",
    "available_profiles",
    "load_profile",
]


def _derived_hex(seed: str, length: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest().upper()[:length]


class EmulatedDevice(IotRequests):
    """One emulated device. Not thread-safe: drive it from one event loop.

    `speed` multiplies elapsed time for the load model and the energy counter
    (3600 makes a real second count as an hour). `reboot_every` (real seconds)
    reboots the device periodically: energy counters return to 0, relays keep
    their state. `seed` makes the load drift reproducible; `clock` is a
    monotonic clock in seconds, replaceable in tests.
    """

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        serial: int = 0,
        speed: float = 1.0,
        reboot_every: float | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(speed=speed, reboot_every=reboot_every, seed=seed, clock=clock)
        self._profile = profile
        now = self._last
        self._relay_requests: list[int | None] = []

        sysinfo = copy.deepcopy(profile.sysinfo)
        for dynamic in ("children", "relay_state", "on_time"):
            sysinfo.pop(dynamic, None)
        if serial:
            oui = sysinfo["mac"][:8]
            tail = _derived_hex(f"{sysinfo['mac']}/{serial}", 6)
            sysinfo["mac"] = f"{oui}:{tail[0:2]}:{tail[2:4]}:{tail[4:6]}"
            sysinfo["deviceId"] = _derived_hex(f"{sysinfo['deviceId']}/{serial}", 40)
            sysinfo["alias"] = f"{sysinfo['alias']} {serial + 1}"
        self._sysinfo = sysinfo
        self._alias: str = sysinfo["alias"]
        self._led_off = int(sysinfo.get("led_off", 0))
        self._base_rssi = int(sysinfo.get("rssi", -60))

        device_id: str = sysinfo["deviceId"]
        if profile.outlets:
            self._outlets = [
                Outlet(
                    index=i,
                    child_id=f"{device_id}{i:02d}",
                    alias=o.alias,
                    on=o.on,
                    base_w=o.base_load_w,
                    now=now,
                )
                for i, o in enumerate(profile.outlets)
            ]
        else:
            self._outlets = [
                Outlet(
                    index=0,
                    child_id=device_id,
                    alias=self._alias,
                    on=profile.relay_on,
                    base_w=profile.base_load_w,
                    now=now,
                )
            ]
        for outlet in self._outlets:
            outlet.load_w = self._bounded(outlet, outlet.base_w * self._rng.uniform(0.9, 1.1))
        self._modules = self._module_table()

    # -- what tests and the fleet look at ----------------------------------------------

    @property
    def profile_name(self) -> str:
        """The profile this device was built from, e.g. "HS300"."""
        return self._profile.name

    @property
    def model(self) -> str:
        """Model without region, as python-kasa reports it (e.g. "HS110")."""
        return str(self._sysinfo["model"]).partition("(")[0]

    @property
    def alias(self) -> str:
        """The device's name."""
        return self._alias

    @property
    def mac(self) -> str:
        """MAC address with colons, upper case."""
        return str(self._sysinfo["mac"])

    @property
    def device_id(self) -> str:
        """The firmware's deviceId."""
        return str(self._sysinfo["deviceId"])

    @property
    def firmware(self) -> str:
        """The firmware version string (`sw_ver`)."""
        return str(self._sysinfo["sw_ver"])

    @property
    def has_emeter(self) -> bool:
        """True when the device meters energy."""
        return self._profile.meter is not None

    @property
    def outlet_ids(self) -> list[str]:
        """Child ids of a strip's outlets in index order; empty for a plug."""
        return [o.child_id for o in self._outlets] if self.is_strip else []

    @property
    def reboots(self) -> int:
        """How many times the device rebooted (on demand or scheduled)."""
        self._advance(self._clock())
        return self._reboots

    @property
    def relay_requests(self) -> list[int | None]:
        """Every `set_relay_state` request received over the protocol, in order: the outlet index it
        named, or None for a plug's relay or a whole strip. Tests count switches with it."""
        return list(self._relay_requests)

    def is_on(self, outlet: int | None = None) -> bool:
        """Relay state of a plug, of one strip outlet, or whether any strip outlet is on."""
        if outlet is None:
            return any(o.on for o in self._outlets)
        return self._outlet(outlet).on

    def energy_wh(self, outlet: int | None = None) -> float:
        """Energy counted since the last reboot (unrounded), for one outlet or the whole device."""
        self._advance(self._clock())
        if outlet is None:
            return sum(o.energy_wh for o in self._outlets)
        return self._outlet(outlet).energy_wh

    def set_relay(self, on: bool, *, outlet: int | None = None) -> None:
        """Switch the relay (all outlets of a strip when `outlet` is None)."""
        now = self._clock()
        self._advance(now)
        targets = self._outlets if outlet is None else [self._outlet(outlet)]
        for target in targets:
            self._switch(target, on, now)

    def sysinfo(self) -> Result:
        """The `system.get_sysinfo` answer as of now."""
        now = self._clock()
        self._advance(now)
        return self._sysinfo_at(now)

    # -- outlets -----------------------------------------------------------------------

    def _outlet(self, index: int) -> Outlet:
        if not 0 <= index < len(self._outlets):
            raise IndexError(f"{self.model} has no outlet {index}")
        return self._outlets[index]
