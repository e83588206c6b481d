"""`wattledger emulate` and the devices of `wattledger serve --demo`: emulated Kasa devices on loopback.

The emulator ships with a source checkout only; without it both say so in one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from domain.commands import AddDevice
from domain.errors import DeviceAlreadyExists
from infra import signals
from infra.logging import configure_logging
from infra.runtime import Runtime
from infra.settings import SettingsError

log = structlog.get_logger(__name__)

DEMO_PROFILES = ["HS110", "KP115", "HS100", "HS300", "KP303"]
DEMO_PORT = 9999


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `emulate` on the `wattledger` parser."""
    emulate = commands.add_parser("emulate", help="run emulated Kasa devices on loopback")
    emulate.add_argument("--devices", default=",".join(DEMO_PROFILES), help="comma-separated profiles")
    emulate.add_argument("--bind", default="127.0.0.1", help="loopback address to listen on")
    emulate.add_argument("--port", type=int, default=9999, help="first TCP port; the next devices count up (0: free ports)")
    emulate.add_argument(
        "--discovery-port", type=int, default=None,
        help="answer UDP discovery on this port; each device then gets its own loopback IP (127.0.0.2, ...)",
    )
    emulate.add_argument("--speed", type=float, default=1.0, help="energy clock speed-up factor")
    emulate.add_argument("--reboot-every", type=float, default=None, help="seconds between simulated reboots")
    emulate.add_argument("--seed", type=int, default=None, help="seed for reproducible power drift")
    emulate.add_argument("--log-level", dest="log_level", default=None)


def run(args: argparse.Namespace) -> int:
    """Run the emulated devices until stopped; returns the exit code (2 without the emulator)."""
    configure_logging(args.log_level or "info")
    try:
        from adapters.emulator import loopback_hosts, run_emulator
    except ImportError:
        print(
            "wattledger: the device emulator is not installed; it runs from a source checkout (pip install -e .)",
            file=sys.stderr,
        )
        return 2

    profiles = [p.strip() for p in args.devices.split(",") if p.strip()]
    discovery = args.discovery_port is not None
    signals.run(
        lambda stop: signals.until(stop, run_emulator(
            profiles,
            host=loopback_hosts(len(profiles)) if discovery else args.bind,
            port=0 if discovery else args.port,
            speed=args.speed,
            reboot_every=args.reboot_every,
            seed=args.seed,
            discovery_port=args.discovery_port,
        ))
    )
    return 0


@asynccontextmanager
async def demo(runtime: Runtime) -> AsyncIterator[None]:
    """Five emulated devices, added once: the same ports and names on every start, free ones if taken."""
    try:
        from adapters.emulator import EmulatorFleet, FleetError
    except ImportError:
        raise SettingsError("--demo needs the device emulator, which runs from a source checkout") from None

    try:
        fleet = EmulatorFleet(DEMO_PROFILES, host="127.0.0.1", port=DEMO_PORT, seed=7)
        await fleet.start()
    except FleetError:
        log.warning("demo.ports_taken", first=DEMO_PORT, hint="using free ports; earlier demo devices go offline")
        fleet = EmulatorFleet(DEMO_PROFILES, host="127.0.0.1", port=0, seed=7)
        await fleet.start()
    try:
        for address in fleet.addresses:
            try:
                await runtime.handlers().add_device(AddDevice(address=address, actor="system:demo"))
            except DeviceAlreadyExists:
                pass
            log.info("demo.device", address=address)
        runtime.saved()
        yield
    finally:
        await fleet.stop()
