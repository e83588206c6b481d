from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.address import KASA_PORT, parse_address
from domain.errors import InvalidAddress


@pytest.mark.parametrize(
    ("text", "host", "port", "canonical"),
    [
        ("192.168.1.100", "192.168.1.100", KASA_PORT, "192.168.1.100"),
        ("127.0.0.1:10001", "127.0.0.1", 10001, "127.0.0.1:10001"),
        ("127.0.0.1:9999", "127.0.0.1", KASA_PORT, "127.0.0.1"),
        ("Kitchen-Plug.local", "kitchen-plug.local", KASA_PORT, "kitchen-plug.local"),
        ("::1", "::1", KASA_PORT, "[::1]"),
        ("[::1]:10002", "::1", 10002, "[::1]:10002"),
        (" 10.0.0.7 ", "10.0.0.7", KASA_PORT, "10.0.0.7"),
    ],
)
def test_addresses_parse_to_one_canonical_spelling(text: str, host: str, port: int, canonical: str) -> None:
    address = parse_address(text)
    assert (address.host, address.port, str(address)) == (host, port, canonical)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "host:", "host:0", "host:65536", "host:abc", "999.1.1.1", "a b", "http://x", "[::1", "[zz]:1",
     "-bad.example", "1.2.3.4:5:6"],
)
def test_malformed_addresses_are_refused(text: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_address(text)


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_canonical_spelling_parses_back_to_the_same_address(ip: object, port: int) -> None:
    host = str(ip)
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    address = parse_address(text)
    assert parse_address(str(address)) == address
