"""The TCP server of one emulated device: framed IOT requests in, answers out; its discovery socket.

`DeviceServer` serves one `EmulatedDevice` on a loopback address and, when asked, answers
discovery on its own UDP socket (`adapters.emulator.discovery`). Fleets of them are
`adapters.emulator.fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from typing import Any

import structlog

from adapters.emulator.device import EmulatedDevice
from adapters.emulator.discovery import DiscoveryResponder, udp_socket
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


def check_loopback(host: str) -> str:
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
        self.host = check_loopback(host)
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
                sock = udp_socket(self.host, self._requested_discovery_port)
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: DiscoveryResponder(self), sock=sock
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
