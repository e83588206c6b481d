"""Emulator device profiles: what each bundled Kasa model reports and simulates, and loading them."""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any, Literal

import msgspec

from adapters.emulator.protocol import EmulatorError

MeterFormat = Literal["legacy", "milli"]


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
