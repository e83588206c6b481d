"""Device addresses: `host` or `host:port`, normalised so one device has one spelling."""

from __future__ import annotations

import ipaddress
import re

import msgspec

from domain.errors import InvalidAddress

KASA_PORT = 9999
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class DeviceAddress(msgspec.Struct, frozen=True, kw_only=True):
    """Where a device listens. `str()` gives the canonical spelling."""

    host: str
    port: int = KASA_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == KASA_PORT else f"{host}:{self.port}"


def _check_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(p) for p in name.split(".")):
        raise InvalidAddress(f"not an IP address or host name: {host!r}")
    if name.replace(".", "").isdigit():
        raise InvalidAddress(f"not an IP address or host name: {host!r}")
    return name


def _check_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidAddress(f"port must be a number from 1 to 65535, got {text!r}")
    return int(text)


def parse_address(text: str) -> DeviceAddress:
    """Parse `host`, `host:port`, `[v6]` or `[v6]:port`; raise InvalidAddress otherwise."""
    raw = text.strip()
    if not raw or any(c.isspace() for c in raw) or "/" in raw:
        raise InvalidAddress(f"not a device address: {text!r}")
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep:
            raise InvalidAddress(f"unclosed '[' in address: {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidAddress(f"not an IPv6 address: {host!r}") from None
        if rest and not rest.startswith(":"):
            raise InvalidAddress(f"not a device address: {text!r}")
        port = _check_port(rest[1:]) if rest else KASA_PORT
        return DeviceAddress(host=str(ipaddress.IPv6Address(host)), port=port)
    if raw.count(":") > 1:
        try:
            return DeviceAddress(host=str(ipaddress.IPv6Address(raw)))
        except ValueError:
            raise InvalidAddress(f"not a device address: {text!r}") from None
    host, sep, port_text = raw.partition(":")
    port = _check_port(port_text) if sep else KASA_PORT
    return DeviceAddress(host=_check_host(host), port=port)
