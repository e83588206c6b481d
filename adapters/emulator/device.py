"""An emulated Kasa IOT device: profile identity, relays, a drifting load, an energy counter.

The device answers decoded IOT JSON requests (`{"module": {"method": {args}}}`,
optionally with `"context": {"child_ids": [...]}` for one outlet of a strip)
the way the firmware does, so python-kasa's `IotPlug` and `IotStrip` work
against it unchanged. It does no I/O; `server.py` puts it on the network.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, Literal

import msgspec

from adapters.emulator.protocol import EmulatorError

MeterFormat = Literal["legacy", "milli"]
Result = dict[str, Any]

MODULE_NOT_SUPPORTED: Result = {"err_code": -1, "err_msg": "module not support"}
METHOD_NOT_SUPPORTED: Result = {"err_code": -2, "err_msg": "member not support"}
INVALID_ARGUMENT: Result = {"err_code": -3, "err_msg": "invalid argument"}

# Index 38 is "UCT" in python-kasa's firmware timezone table; the clock is UTC.
_TIMEZONE_INDEX_UTC = 38
_LOAD_CORRELATION_S = 300.0
_LOAD_SPREAD = 0.08
_LOAD_BOUND = 0.25
_VOLTAGE_SPREAD = 0.004
_VOLTAGE_BOUND = 0.02
_RSSI_JITTER = 2


class UnknownProfile(EmulatorError):
    """No device profile has that name."""


class MeterProfile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the energy meter reports: units by firmware generation, and the mains voltage."""

    format: MeterFormat
    nominal_voltage: Annotated[float, msgspec.Meta(gt=0)]


class OutletProfile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One outlet of a strip as it starts: name, relay and the load plugged into it."""

    alias: str
    on: bool
    base_load_w: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class DeviceProfile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A device model: its sysinfo as the firmware reports it, plus what the emulator simulates.

    Plugs use `relay_on` and `base_load_w`; strips list their `outlets`.
    """

    name: str
    sysinfo: dict[str, Any]
    description: str = ""
    meter: MeterProfile | None = None
    relay_on: bool = False
    base_load_w: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    outlets: tuple[OutletProfile, ...] = ()


_profile_decoder = msgspec.json.Decoder(DeviceProfile)


def _profile_dir() -> Any:
    return resources.files("adapters.emulator").joinpath("profiles")


def available_profiles() -> list[str]:
    """Names of the bundled device profiles, e.g. `["HS100", "HS110", ...]`."""
    return sorted(
        entry.name.removesuffix(".json")
        for entry in _profile_dir().iterdir()
        if entry.name.endswith(".json")
    )


def load_profile(name: str) -> DeviceProfile:
    """Load a bundled profile by model name (case-insensitive); raise UnknownProfile."""
    wanted = name.strip().upper()
    if wanted not in available_profiles():
        raise UnknownProfile(
            f"no emulator profile {name!r}; known: {', '.join(available_profiles())}"
        )
    return _profile_decoder.decode(_profile_dir().joinpath(f"{wanted}.json").read_bytes())


class _InvalidArgument(EmulatorError):
    pass


class _Outlet:
    """Mutable state of one relay and the load behind it."""

    __slots__ = ("alias", "base_w", "child_id", "energy_wh", "index", "load_w", "on", "on_since")

    def __init__(
        self, *, index: int, child_id: str, alias: str, on: bool, base_w: float, now: float
    ) -> None:
        self.index = index
        self.child_id = child_id
        self.alias = alias
        self.on = on
        self.base_w = base_w
        self.load_w = base_w
        self.energy_wh = 0.0
        self.on_since = now


Handler = Callable[[dict[str, Any], list[_Outlet] | None], Result]


def _derived_hex(seed: str, length: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest().upper()[:length]


class EmulatedDevice:
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
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        if reboot_every is not None and reboot_every <= 0:
            raise ValueError(f"reboot_every must be positive or None, got {reboot_every}")
        self._profile = profile
        self._speed = speed
        self._reboot_every = reboot_every
        self._rng = random.Random(seed)
        self._clock = clock
        now = clock()
        self._last = now
        self._next_reboot = None if reboot_every is None else now + reboot_every
        self._reboots = 0
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
                _Outlet(
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
                _Outlet(
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
    def is_strip(self) -> bool:
        """True for multi-outlet devices (HS300, KP303)."""
        return bool(self._profile.outlets)

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

    def reboot(self) -> None:
        """Reboot now: energy counters go back to 0, relays keep their state."""
        now = self._clock()
        self._advance(now)
        self._restart(now)
        if self._reboot_every is not None:
            self._next_reboot = now + self._reboot_every

    def sysinfo(self) -> Result:
        """The `system.get_sysinfo` answer as of now."""
        now = self._clock()
        self._advance(now)
        return self._sysinfo_at(now)

    # -- the IOT JSON protocol ---------------------------------------------------------

    def handle(self, request: Any) -> Result:
        """Answer one decoded request, module by module and method by method.

        Unknown modules answer `err_code -1`, unknown methods `-2`, bad arguments
        or unknown child ids `-3`, as the firmware does; the reply never echoes
        the request's `context`.
        """
        if not isinstance(request, dict):
            return dict(INVALID_ARGUMENT)
        self._advance(self._clock())
        targets, context_ok = self._context_targets(request.get("context"))
        response: Result = {}
        for module, methods in request.items():
            if module == "context":
                continue
            table = self._modules.get(module)
            if table is None or not isinstance(methods, dict):
                response[module] = dict(MODULE_NOT_SUPPORTED)
                continue
            answers: Result = {}
            for method, args in methods.items():
                handler = table.get(method)
                if handler is None:
                    answers[method] = dict(METHOD_NOT_SUPPORTED)
                    continue
                if not context_ok:
                    answers[method] = dict(INVALID_ARGUMENT)
                    continue
                try:
                    result = handler(args if isinstance(args, dict) else {}, targets)
                except _InvalidArgument:
                    answers[method] = dict(INVALID_ARGUMENT)
                    continue
                answers[method] = {**result, "err_code": 0}
            response[module] = answers
        return response

    def _context_targets(self, context: Any) -> tuple[list[_Outlet] | None, bool]:
        if context is None or not self.is_strip:
            return None, True
        child_ids = context.get("child_ids") if isinstance(context, dict) else None
        if not isinstance(child_ids, list) or not child_ids:
            return None, False
        targets: list[_Outlet] = []
        for child_id in child_ids:
            match = next(
                (
                    o
                    for o in self._outlets
                    if isinstance(child_id, str)
                    and (
                        o.child_id == child_id
                        or (len(child_id) == 2 and o.child_id.endswith(child_id))
                    )
                ),
                None,
            )
            if match is None:
                return None, False
            targets.append(match)
        return targets, True

    def _module_table(self) -> dict[str, dict[str, Handler]]:
        rules: Handler = lambda args, targets: {"enable": 0, "rule_list": [], "version": 2}
        no_action: Handler = lambda args, targets: {"type": -1}
        no_days: Handler = lambda args, targets: {"day_list": []}
        no_months: Handler = lambda args, targets: {"month_list": []}
        table: dict[str, dict[str, Handler]] = {
            "system": {
                "get_sysinfo": lambda args, targets: self._sysinfo_at(self._last),
                "set_relay_state": self._set_relay_state,
                "set_dev_alias": self._set_dev_alias,
                "set_led_off": self._set_led_off,
                "reboot": self._reboot_request,
            },
            "time": {"get_time": self._get_time, "get_timezone": self._get_timezone},
            "cnCloud": {"get_info": self._get_cloud_info},
            "schedule": {
                "get_rules": rules,
                "get_next_action": no_action,
                "get_daystat": no_days,
                "get_monthstat": no_months,
            },
            "anti_theft": {"get_rules": rules},
            "count_down": {"get_rules": lambda args, targets: {"rule_list": []}},
        }
        if self._profile.meter is not None:
            table["emeter"] = {
                "get_realtime": self._get_realtime,
                "get_daystat": no_days,
                "get_monthstat": no_months,
                "erase_emeter_stat": lambda args, targets: {},
            }
        return table

    def _sysinfo_at(self, now: float) -> Result:
        info = copy.deepcopy(self._sysinfo)
        info["alias"] = self._alias
        info["led_off"] = self._led_off
        info["rssi"] = self._base_rssi + self._rng.randint(-_RSSI_JITTER, _RSSI_JITTER)
        if self.is_strip:
            info["child_num"] = len(self._outlets)
            info["children"] = [
                {
                    "alias": o.alias,
                    "id": o.child_id,
                    "next_action": {"type": -1},
                    "on_time": self._on_time(o, now),
                    "state": int(o.on),
                }
                for o in self._outlets
            ]
        else:
            outlet = self._outlets[0]
            info["relay_state"] = int(outlet.on)
            info["on_time"] = self._on_time(outlet, now)
        info["err_code"] = 0
        return info

    def _set_relay_state(self, args: dict[str, Any], targets: list[_Outlet] | None) -> Result:
        state = args.get("state")
        if state not in (0, 1) or isinstance(state, float):
            raise _InvalidArgument
        if targets:
            self._relay_requests.extend(t.index for t in targets)
        else:
            self._relay_requests.append(None)
        for outlet in targets or self._outlets:
            self._switch(outlet, bool(state), self._last)
        return {}

    def _set_dev_alias(self, args: dict[str, Any], targets: list[_Outlet] | None) -> Result:
        alias = args.get("alias")
        if not isinstance(alias, str) or not alias or len(alias) > 64:
            raise _InvalidArgument
        if targets:
            for outlet in targets:
                outlet.alias = alias
        else:
            self._alias = alias
            if not self.is_strip:
                self._outlets[0].alias = alias
        return {}

    def _set_led_off(self, args: dict[str, Any], targets: list[_Outlet] | None) -> Result:
        off = args.get("off")
        if off not in (0, 1):
            raise _InvalidArgument
        self._led_off = int(off)
        return {}

    def _reboot_request(self, args: dict[str, Any], targets: list[_Outlet] | None) -> Result:
        self.reboot()
        return {}

    def _get_time(self, args: dict[str, Any], targets: list[_Outlet] | None) -> Result:
        now = datetime.now(UTC)
        return {
            "year": now.year,
            "month": now.month,
            "mday": now.day,
            "hour": now.hour,
            "min": now.minute,
            "sec": now.second,
        }

    def _get_timezone(self, args: dict[str, Any], targets: list[_Outlet] | None) -> Result:
        return {"index": _TIMEZONE_INDEX_UTC}

    def _get_cloud_info(self, args: dict[str, Any], targets: list[_Outlet] | None) -> Result:
        return {
            "binded": 0,
            "cld_connection": 0,
            "fwDlPage": "",
            "fwNotifyType": 0,
            "illegalType": 0,
            "server": "n-devs.tplinkcloud.com",
            "stopConnect": 0,
            "tcspInfo": "",
            "tcspStatus": 0,
            "username": "",
        }

    def _get_realtime(self, args: dict[str, Any], targets: list[_Outlet] | None) -> Result:
        meter = self._profile.meter
        assert meter is not None
        # Without a child context a strip reports its first slot, as the HS300 does.
        outlet = targets[0] if targets else self._outlets[0]
        volts = meter.nominal_voltage * (
            1 + max(-_VOLTAGE_BOUND, min(_VOLTAGE_BOUND, self._rng.gauss(0, _VOLTAGE_SPREAD)))
        )
        watts = outlet.load_w if outlet.on else 0.0
        amps = watts / volts
        # The firmware counts whole watt-hours.
        counter_wh = math.floor(outlet.energy_wh)
        if meter.format == "milli":
            reading: Result = {
                "voltage_mv": round(volts * 1000),
                "current_ma": round(amps * 1000),
                "power_mw": round(watts * 1000),
                "total_wh": counter_wh,
            }
            if self.is_strip:
                reading["slot_id"] = outlet.index
            return reading
        return {
            "voltage": round(volts, 6),
            "current": round(amps, 6),
            "power": round(watts, 6),
            "total": round(counter_wh / 1000, 3),
        }

    # -- physics -----------------------------------------------------------------------

    def _outlet(self, index: int) -> _Outlet:
        if not 0 <= index < len(self._outlets):
            raise IndexError(f"{self.model} has no outlet {index}")
        return self._outlets[index]

    def _on_time(self, outlet: _Outlet, now: float) -> int:
        return int(now - outlet.on_since) if outlet.on else 0

    def _switch(self, outlet: _Outlet, on: bool, now: float) -> None:
        if outlet.on != on:
            outlet.on = on
            outlet.on_since = now

    def _restart(self, now: float) -> None:
        self._reboots += 1
        for outlet in self._outlets:
            outlet.energy_wh = 0.0
            outlet.on_since = now

    def _advance(self, now: float) -> None:
        while self._next_reboot is not None and self._next_reboot <= now:
            assert self._reboot_every is not None
            self._integrate(self._next_reboot)
            self._restart(self._next_reboot)
            self._next_reboot += self._reboot_every
        self._integrate(now)

    def _integrate(self, until: float) -> None:
        """Move the load along a bounded mean-reverting walk and count energy up to `until`."""
        if until <= self._last:
            return
        dt = (until - self._last) * self._speed
        decay = math.exp(-dt / _LOAD_CORRELATION_S)
        spread = math.sqrt(1.0 - decay * decay)
        for outlet in self._outlets:
            before = outlet.load_w
            drifted = (
                outlet.base_w
                + (before - outlet.base_w) * decay
                + outlet.base_w * _LOAD_SPREAD * spread * self._rng.gauss(0.0, 1.0)
            )
            outlet.load_w = self._bounded(outlet, drifted)
            if outlet.on:
                outlet.energy_wh += (before + outlet.load_w) / 2 * dt / 3600
        self._last = until

    @staticmethod
    def _bounded(outlet: _Outlet, watts: float) -> float:
        low = outlet.base_w * (1 - _LOAD_BOUND)
        high = outlet.base_w * (1 + _LOAD_BOUND)
        return min(max(watts, low), high)
