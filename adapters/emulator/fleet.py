"""Fleets of emulated devices on loopback, started and stopped together, and `run_emulator`.

A fleet builds one `EmulatedDevice` and one `DeviceServer` per profile; with a discovery port
it also binds the shared broadcast listener (`adapters.emulator.discovery` says why each
device then needs its own loopback address).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, NoReturn

import structlog

from adapters.emulator.device import EmulatedDevice, load_profile
from adapters.emulator.discovery import LOOPBACK_BROADCAST, BroadcastListener, udp_socket
from adapters.emulator.server import DeviceServer, FleetError, check_loopback

DEFAULT_PROFILES: tuple[str, ...] = ("HS110", "KP115", "HS100", "HS300", "KP303")
_PORT_ATTEMPTS = 20

log = structlog.get_logger("adapters.emulator.server")


class EmulatorFleet:
    """Several emulated devices on loopback, started and stopped together.

    `host` is one loopback IP shared by all devices (each then gets port
    `port + i`, or an ephemeral port when `port` is 0) or one distinct loopback
    IP per device (each on `port`). With `discovery_port` set, each device also
    answers UDP discovery and serves TCP on that port number, which is what
    python-kasa's discovery assumes; that needs one IP per device and an IPv4
    host list. `discovery_port=0` picks a free port common to all devices.
    `speed`, `reboot_every` and `seed` go to every EmulatedDevice (seeds are
    derived per device so the fleet is reproducible as a whole); `clock`
    replaces the monotonic clock of every device (tests).
    """

    def __init__(
        self,
        profiles: Sequence[str] = DEFAULT_PROFILES,
        *,
        host: str | Sequence[str] = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        reboot_every: float | None = None,
        seed: int | None = None,
        discovery_port: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not profiles:
            raise FleetError("a fleet needs at least one device profile")
        if not 0 <= port <= 65535 or not 0 <= (discovery_port or 0) <= 65535:
            raise FleetError("ports must be within 0..65535")
        count = len(profiles)
        if isinstance(host, str):
            if discovery_port is not None:
                raise FleetError(
                    "discovery needs one loopback IP per device (see loopback_hosts())"
                )
            hosts = [check_loopback(host)] * count
            ports = [port + i if port else 0 for i in range(count)]
            if ports and ports[-1] > 65535:
                raise FleetError(f"ports {port}..{ports[-1]} exceed 65535")
        else:
            hosts = [check_loopback(h) for h in host]
            if len(hosts) != count:
                raise FleetError(f"{count} profiles but {len(hosts)} hosts")
            if len(set(hosts)) != count:
                raise FleetError("hosts must be distinct")
            if discovery_port is not None:
                if any(":" in h for h in hosts):
                    raise FleetError("discovery works over IPv4 only")
                if port not in (0, discovery_port):
                    raise FleetError(
                        "with discovery the TCP port is the discovery port; leave port at 0"
                    )
            ports = [port] * count
        self._hosts = hosts
        self._ports = ports
        self._discovery_port = discovery_port
        seen: dict[str, int] = {}
        self.devices: list[EmulatedDevice] = []
        for index, name in enumerate(profiles):
            profile = load_profile(name)
            serial = seen.get(profile.name, 0)
            seen[profile.name] = serial + 1
            extra: dict[str, Any] = {} if clock is None else {"clock": clock}
            self.devices.append(
                EmulatedDevice(
                    profile,
                    serial=serial,
                    speed=speed,
                    reboot_every=reboot_every,
                    seed=None if seed is None else seed * 1009 + index,
                    **extra,
                )
            )
        self.servers: list[DeviceServer] = []
        self._broadcast: asyncio.DatagramTransport | None = None

    def __iter__(self) -> Iterator[tuple[EmulatedDevice, DeviceServer]]:
        return iter(zip(self.devices, self.servers, strict=True))

    def __len__(self) -> int:
        return len(self.devices)

    @property
    def addresses(self) -> list[str]:
        """Each device's TCP address as `host:port`, in profile order (after `start()`)."""
        return [server.address for server in self.servers]

    @property
    def discovery_port(self) -> int | None:
        """The UDP port devices answer discovery on, once started; None without discovery."""
        if self._discovery_port is None or not self.servers:
            return self._discovery_port
        return self.servers[0].discovery_port

    async def start(self) -> None:
        """Bind every device; raise FleetError (nothing left open) if ports are taken."""
        if self.servers:
            raise FleetError("fleet already started")
        if self._discovery_port == 0:
            await self._start_on_common_free_port()
        else:
            await self._start_on(self._ports, self._discovery_port)

    async def _start_on_common_free_port(self) -> None:
        for _ in range(_PORT_ATTEMPTS):
            probe = udp_socket(self._hosts[0], 0)
            candidate = probe.getsockname()[1]
            probe.close()
            try:
                await self._start_on([candidate] * len(self.devices), candidate)
                return
            except FleetError as exc:
                cause = exc.__cause__
                if not isinstance(cause, OSError) or cause.errno != errno.EADDRINUSE:
                    raise
        raise FleetError(f"no port free on all of {', '.join(self._hosts)}")

    async def _start_on(self, ports: Sequence[int], discovery_port: int | None) -> None:
        try:
            for device, host, port in zip(self.devices, self._hosts, ports, strict=True):
                server = DeviceServer(device, host=host, port=port, discovery_port=discovery_port)
                await server.start()
                self.servers.append(server)
            if discovery_port is not None:
                loop = asyncio.get_running_loop()
                bound_port = self.servers[0].discovery_port or 0
                sock = udp_socket(LOOPBACK_BROADCAST, bound_port, shared=True)
                self._broadcast, _ = await loop.create_datagram_endpoint(
                    lambda: BroadcastListener(list(self.servers)), sock=sock
                )
        except OSError as exc:
            await self.stop()
            raise FleetError(f"cannot start emulator fleet: {exc}") from exc
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every listener, connection and discovery socket. Safe to call twice."""
        broadcast, self._broadcast = self._broadcast, None
        if broadcast is not None:
            broadcast.close()
        servers, self.servers = self.servers, []
        await asyncio.gather(*(server.stop() for server in servers))
        # Let the datagram transports finish closing their sockets before the loop may end.
        await asyncio.sleep(0)

    async def __aenter__(self) -> EmulatorFleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def run_emulator(
    profiles: Sequence[str] = DEFAULT_PROFILES,
    *,
    host: str | Sequence[str] = "127.0.0.1",
    port: int = 9999,
    speed: float = 1.0,
    reboot_every: float | None = None,
    seed: int | None = None,
    discovery_port: int | None = None,
    on_ready: Callable[[EmulatorFleet], None] | None = None,
) -> NoReturn:
    """Run an emulator fleet until cancelled, logging where each device listens.

    Backs `wattledger emulate`. With the defaults the devices listen on
    127.0.0.1:9999, :10000, ... in profile order. For discovery pass one
    loopback IP per device and a discovery port, e.g.
    `host=loopback_hosts(5), discovery_port=9999`: each device then serves
    TCP and answers discovery on <its IP>:9999, as real plugs do on a LAN.
    `on_ready` is called once every socket is bound. Cancel the task to stop;
    all sockets are closed before the cancellation propagates.
    """
    async with EmulatorFleet(
        profiles,
        host=host,
        port=port,
        speed=speed,
        reboot_every=reboot_every,
        seed=seed,
        discovery_port=discovery_port,
    ) as fleet:
        for device, server in fleet:
            log.info(
                "emulated_device_listening",
                model=device.model,
                alias=device.alias,
                mac=device.mac,
                address=server.address,
                discovery_port=server.discovery_port,
                outlets=len(device.outlet_ids) or None,
            )
        if fleet.discovery_port is not None:
            log.info(
                "emulator_discovery_ready",
                broadcast=LOOPBACK_BROADCAST,
                discovery_port=fleet.discovery_port,
            )
        if on_ready is not None:
            on_ready(fleet)
        await asyncio.Event().wait()
    raise AssertionError("unreachable: the fleet runs until cancelled")
