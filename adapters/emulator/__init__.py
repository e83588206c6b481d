"""Kasa IOT device emulator speaking the real legacy protocol on loopback (dev, demo, tests)."""

from adapters.emulator.device import (
    DeviceProfile,
    EmulatedDevice,
    UnknownProfile,
    available_profiles,
    load_profile,
)
from adapters.emulator.fleet import DEFAULT_PROFILES, EmulatorFleet, run_emulator
from adapters.emulator.protocol import EmulatorError, ProtocolError
from adapters.emulator.server import DeviceServer, FleetError, loopback_hosts

__all__ = [
    "DEFAULT_PROFILES",
    "DeviceProfile",
    "DeviceServer",
    "EmulatedDevice",
    "EmulatorError",
    "EmulatorFleet",
    "FleetError",
    "ProtocolError",
    "UnknownProfile",
    "available_profiles",
    "load_profile",
    "loopback_hosts",
    "run_emulator",
]
