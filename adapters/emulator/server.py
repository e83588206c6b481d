"""Put emulated devices on loopback: a TCP server per device and UDP discovery responders.

python-kasa derives a discovered device's address from the discovery reply:
host = the reply's source IP, port = the discovery port it was asked to use
(9999 by default), and it only accepts replies whose source port is that
discovery port. So for discovery to yield addresses the client can connect to,
every device must have its own IP and serve TCP on the discovery port number.
The fleet does that when `discovery_port` is set: give each device its own
loopback address (`loopback_hosts`), and each answers unicast discovery on
(its IP, discovery_port) and serves TCP on the same port. A broadcast to
127.255.255.255 reaches every device through one shared listener bound to
that broadcast address. Limits: IPv4 only (python-kasa's discovery socket is
IPv4); loopback only; the AES discovery probes python-kasa also sends (ports
20002/20004) are not answered, as an IOT-only device would not.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, NoReturn

import structlog

from adapters.emulator.device import EmulatedDevice, load_profile
from adapters.emulator.protocol import (
    EmulatorError,
    FrameDecoder,
    ProtocolError,
    decode_json,
    decrypt,
    encode_json,
    encrypt,
    frame,
)

DEFAULT_PROFILES: tuple[str, ...] = ("HS110", "KP115", "HS100", "HS300", "KP303")
LOOPBACK_BROADCAST = "127.255.255.255"
_PORT_ATTEMPTS = 20
_CLOSE_TIMEOUT_S = 2.0

log = structlog.get_logger(__name__)


class FleetError(EmulatorError):
    """A fleet that cannot be built or started as asked."""


def loopback_hosts(count: int, *, first: int = 2) -> list[str]:
    """`count` consecutive IPv4 loopback addresses from 127.0.0.`first` (127.0.0.1 stays free)."""
    start = ipaddress.IPv4Address("127.0.0.0") + first
    hosts = [str(start + i) for i in range(count)]
    if not all(ipaddress.IPv4Address(h) in ipaddress.IPv4Network("127.0.0.0/8") for h in hosts):
        raise FleetError(f"{count} addresses from 127.0.0.{first} leave 127.0.0.0/8")
    return hosts


def _check_loopback(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise FleetError(f"emulator host must be a loopback IP address, got {host!r}") from None
    if not ip.is_loopback:
        raise FleetError(f"emulator host must be a loopback address, got {host!r}")
    return str(ip)


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _StreamSession(asyncio.Protocol):
    """One TCP connection: framed requests in, framed answers out, many per connection."""

    def __init__(self, server: DeviceServer) -> None:
        self._server = server
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._sessions.add(self)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        try:
            for message in self._decoder.feed(data):
                answer = self._server.device.handle(decode_json(message))
                transport.write(frame(encode_json(answer)))
        except ProtocolError as exc:
            log.debug("emulator_bad_request", address=self._server.address, error=str(exc))
            transport.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._sessions.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _DiscoveryResponder(asyncio.DatagramProtocol):
    """Answers unframed XOR datagrams sent to one device's own address."""

    def __init__(self, server: DeviceServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._server.answer_discovery(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("emulator_discovery_error", address=self._server.address, error=str(exc))


class _BroadcastListener(asyncio.DatagramProtocol):
    """Fans a broadcast discovery datagram out to every device; each replies from its own socket."""

    def __init__(self, servers: Sequence[DeviceServer]) -> None:
        self._servers = servers

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        for server in self._servers:
            server.answer_discovery(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("emulator_broadcast_error", error=str(exc))


def _udp_socket(host: str, port: int, *, shared: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class DeviceServer:
    """Serves one EmulatedDevice: TCP on (host, port), discovery on (host, discovery_port)."""

    def __init__(
        self,
        device: EmulatedDevice,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        discovery_port: int | None = None,
    ) -> None:
        self.device = device
        self.host = _check_loopback(host)
        self._requested_port = port
        self._requested_discovery_port = discovery_port
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._sessions: set[_StreamSession] = set()
        self.port = port
        self.discovery_port = discovery_port

    @property
    def address(self) -> str:
        """`host:port` (IPv6 in brackets) where the device accepts TCP connections."""
        return _join_host_port(self.host, self.port)

    @property
    def connection_count(self) -> int:
        """TCP connections currently open to this device."""
        return len(self._sessions)

    @property
    def is_serving(self) -> bool:
        """True between `start()` and `stop()`."""
        return self._server is not None

    async def start(self) -> None:
        """Bind and listen; ports given as 0 are chosen by the system and then readable."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _StreamSession(self), self.host, self._requested_port
        )
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        if self._requested_discovery_port is not None:
            try:
                sock = _udp_socket(self.host, self._requested_discovery_port)
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _DiscoveryResponder(self), sock=sock
                )
            except BaseException:
                await self.stop()
                raise
            self._udp = transport
            self.discovery_port = sock.getsockname()[1]

    async def stop(self) -> None:
        """Close the listener, every open connection and the discovery socket."""
        server, self._server = self._server, None
        udp, self._udp = self._udp, None
        if udp is not None:
            udp.close()
        if server is None:
            return
        server.close()
        sessions = list(self._sessions)
        for session in sessions:
            session.close()
        await server.wait_closed()
        if sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await asyncio.gather(*(s.closed for s in sessions))

    def answer_discovery(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """Reply to a legacy discovery datagram from this device's own discovery socket."""
        udp = self._udp
        if udp is None or udp.is_closing():
            return
        try:
            request = decode_json(decrypt(data))
        except ProtocolError:
            return
        if not isinstance(request, dict) or "system" not in request:
            return
        udp.sendto(encrypt(encode_json(self.device.handle(request))), addr)


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
            hosts = [_check_loopback(host)] * count
            ports = [port + i if port else 0 for i in range(count)]
            if ports and ports[-1] > 65535:
                raise FleetError(f"ports {port}..{ports[-1]} exceed 65535")
        else:
            hosts = [_check_loopback(h) for h in host]
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
            probe = _udp_socket(self._hosts[0], 0)
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
                sock = _udp_socket(LOOPBACK_BROADCAST, bound_port, shared=True)
                self._broadcast, _ = await loop.create_datagram_endpoint(
                    lambda: _BroadcastListener(list(self.servers)), sock=sock
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
