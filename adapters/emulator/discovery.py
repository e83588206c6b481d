"""UDP discovery for emulated devices: each device's own responder and the shared broadcast listener.

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
import socket
from collections.abc import Sequence
from typing import Any, Protocol

import structlog


class DiscoveryTarget(Protocol):
    """A device that answers a discovery datagram itself (`adapters.emulator.server.DeviceServer`)."""

    @property
    def address(self) -> str: ...

    def answer_discovery(self, data: bytes, addr: tuple[str | Any, int]) -> None: ...

LOOPBACK_BROADCAST = "127.255.255.255"

log = structlog.get_logger("adapters.emulator.server")


class DiscoveryResponder(asyncio.DatagramProtocol):
    """Answers unframed XOR datagrams sent to one device's own address."""

    def __init__(self, server: DiscoveryTarget) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._server.answer_discovery(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("emulator_discovery_error", address=self._server.address, error=str(exc))


class BroadcastListener(asyncio.DatagramProtocol):
    """Fans a broadcast discovery datagram out to every device; each replies from its own socket."""

    def __init__(self, servers: Sequence[DiscoveryTarget]) -> None:
        self._servers = servers

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        for server in self._servers:
            server.answer_discovery(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("emulator_broadcast_error", error=str(exc))


def udp_socket(host: str, port: int, *, shared: bool = False) -> socket.socket:
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
