"""The IOT JSON protocol of an emulated device: requests module by module, answers as the firmware's.

`IotRequests` answers decoded requests (`{"module": {"method": {args}}}`, optionally with
`"context": {"child_ids": [...]}` for one outlet of a strip) over the load model it extends;
`EmulatedDevice` (`adapters.emulator.device`) gives it the device's identity and state.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from adapters.emulator.load import LoadModel, Outlet
from adapters.emulator.profiles import DeviceProfile
from adapters.emulator.protocol import EmulatorError

Result = dict[str, Any]

MODULE_NOT_SUPPORTED: Result = {"err_code": -1, "err_msg": "module not support"}
METHOD_NOT_SUPPORTED: Result = {"err_code": -2, "err_msg": "member not support"}
INVALID_ARGUMENT: Result = {"err_code": -3, "err_msg": "invalid argument"}

# Index 38 is "UCT" in python-kasa's firmware timezone table; the clock is UTC.
_TIMEZONE_INDEX_UTC = 38
_VOLTAGE_SPREAD = 0.004
_VOLTAGE_BOUND = 0.02
_RSSI_JITTER = 2


class _InvalidArgument(EmulatorError):
    pass


Handler = Callable[[dict[str, Any], list[Outlet] | None], Result]


class IotRequests(LoadModel):
    """Answers IOT requests for a device whose identity and settings its subclass sets up."""

    _profile: DeviceProfile
    _sysinfo: Result
    _alias: str
    _led_off: int
    _base_rssi: int
    _relay_requests: list[int | None]
    _modules: dict[str, dict[str, Handler]]

    @property
    def is_strip(self) -> bool:
        """True for multi-outlet devices (HS300, KP303)."""
        return bool(self._profile.outlets)
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

    def _context_targets(self, context: Any) -> tuple[list[Outlet] | None, bool]:
        if context is None or not self.is_strip:
            return None, True
        child_ids = context.get("child_ids") if isinstance(context, dict) else None
        if not isinstance(child_ids, list) or not child_ids:
            return None, False
        targets: list[Outlet] = []
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

    def _set_relay_state(self, args: dict[str, Any], targets: list[Outlet] | None) -> Result:
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

    def _set_dev_alias(self, args: dict[str, Any], targets: list[Outlet] | None) -> Result:
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

    def _set_led_off(self, args: dict[str, Any], targets: list[Outlet] | None) -> Result:
        off = args.get("off")
        if off not in (0, 1):
            raise _InvalidArgument
        self._led_off = int(off)
        return {}

    def _reboot_request(self, args: dict[str, Any], targets: list[Outlet] | None) -> Result:
        self.reboot()
        return {}

    def _get_time(self, args: dict[str, Any], targets: list[Outlet] | None) -> Result:
        now = datetime.now(UTC)
        return {
            "year": now.year,
            "month": now.month,
            "mday": now.day,
            "hour": now.hour,
            "min": now.minute,
            "sec": now.second,
        }

    def _get_timezone(self, args: dict[str, Any], targets: list[Outlet] | None) -> Result:
        return {"index": _TIMEZONE_INDEX_UTC}

    def _get_cloud_info(self, args: dict[str, Any], targets: list[Outlet] | None) -> Result:
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

    def _get_realtime(self, args: dict[str, Any], targets: list[Outlet] | None) -> Result:
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
