"""Whatever a client sends to a documented operation, the answer is never a 5xx.

The operations come from the app's own OpenAPI document, so a new route is swept as soon as it
exists. Requests carry an administrator's `admin` API key (a key cannot sign itself out, so the
sweep keeps reaching the handlers), or broken credentials, or none. Every address the API could
be made to contact stays on loopback: a body's `ip` is either a 127.0.0.x address or one the
address parser refuses, and discovery goes to an emulated device on its own loopback IP.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import quote, urlencode

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.emulator import EmulatorFleet, loopback_hosts
from api.app import create_app
from domain.address import parse_address
from domain.errors import InvalidAddress
from domain.access import Scope
from domain.identity_requests import NewKey, StepUp
from infra.bootstrap import Runtime
from tests.harness import ADMIN_PASSWORD, free_port, http_client, set_up_and_log_in


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    template: str
    operation_id: str

    def path(self, segments: list[str]) -> str:
        """The template with its `{parameters}` replaced by `segments`, in order (already URL-encoded)."""
        given = iter(segments)
        return re.sub(r"\{[^}]+\}", lambda _: next(given, "x"), self.template)

    @property
    def parameters(self) -> int:
        return len(re.findall(r"\{[^}]+\}", self.template))


CLOSED_PORT = free_port()

# Segments already in URL form: encoded control characters, invalid UTF-8, dot segments.
RAW_SEGMENTS = [
    "%00", "a%00b", "%01", "%1b%5b31m", "%0d%0a", "%7f", "%ff", "%c0%80", "%ed%a0%80", "%e2%80%a8",
    "..", "%2e%2e", "%2e", ".", "%2f", "%5c", "%25", "%", "%zz", "",
]  # fmt: skip
ODD_TEXT = [
    "\x00", "..", "é", "💡", "x" * 5000, "127.0.0.1:99999", "[::1", "00000000-0000-0000-0000-000000000000",
    "-1", "null", "{device}", " ", "\u202e", "\ufeff",
]  # fmt: skip

segments = st.one_of(
    st.sampled_from(RAW_SEGMENTS),
    st.sampled_from(ODD_TEXT).map(lambda s: quote(s, safe="")),
    st.text(st.characters(codec="utf-8"), max_size=40).map(lambda s: quote(s, safe="")),
)
queries = st.one_of(
    st.just(""),
    st.sampled_from(["a=%00", "%ff=1", "&&&=", "x=" + "y" * 5000, "device=%2e%2e", "limit=-1&limit=99999999999"]),
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=4).map(urlencode),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
loopback_ips = st.builds(
    lambda last, port: f"127.0.0.{last}" + (f":{port}" if port else ""),
    st.integers(0, 255),
    st.sampled_from([None, CLOSED_PORT, 0, 65536]),
)
refused_ips = st.one_of(
    st.sampled_from(["", " ", "\x00", "999.1.1.1", "[::1", "127.0.0.1:0", "a/b", "1.2.3", "x" * 300]),
    st.text(max_size=30).filter(lambda s: not _contactable(s)),
)
device_bodies = st.fixed_dictionaries(
    {"ip": st.one_of(loopback_ips, refused_ips)},
    optional={"alias": st.one_of(st.text(max_size=70), json_values), "extra": json_values},
)


def _deep(depth: int, opener: bytes, closer: bytes) -> bytes:
    return opener * depth + closer * depth


bodies = st.one_of(
    st.just(b""),
    json_values.map(msgspec.json.encode),
    device_bodies.map(msgspec.json.encode),
    st.integers(50, 200_000).map(lambda n: _deep(n, b"[", b"]")),
    st.integers(50, 200_000).map(lambda n: _deep(n, b'{"ip":', b"}")),
    st.binary(max_size=200),
    st.sampled_from([
        b'{"ip": "\xff\xfe"}', b"\xff", b'\xef\xbb\xbf{"ip": "127.0.0.1"}', b'{"ip": "\\ud800"}',
        b'{"alias": "\\u0000", "ip": "127.0.0.2"}', b"ip=127.0.0.1&alias=%00", b"--xyz\r\n\r\n--xyz--",
        b'{"ip": "127.0.0.1"' + b" " * 10_000, b"null", b"[]", b'"\\udfff"',
    ]),
)
content_types = st.sampled_from([
    None, "application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
    "application/json; charset=utf-16", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz", "multipart/form-data", "application/msgpack",
    "application/octet-stream", "*/*", "application/vnd.api+json", "garbage",
])  # fmt: skip


def _contactable(ip: str) -> bool:
    """Whether the API would try to reach `ip` at an address other than 127.0.0.x."""
    try:
        host = parse_address(ip).host
    except InvalidAddress:
        return False
    return not re.fullmatch(r"127\.0\.0\.\d{1,3}", host)


def _only_loopback(body: bytes) -> bytes:
    """The body, unless it is JSON that would hand the API an `ip`: then its canonical encoding (no
    duplicate keys), with an `ip` it could contact off loopback replaced."""
    try:
        decoded = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return body
    if not isinstance(decoded, dict) or "ip" not in decoded:
        return body
    if isinstance(decoded["ip"], str) and _contactable(decoded["ip"]):
        decoded["ip"] = "127.0.0.1:0"
    return msgspec.json.encode(decoded)


def assert_not_a_server_error(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what} -> {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), what
        body = response.json()
        assert set(body) >= {"detail", "status_code", "error_code"}, (what, body)
        assert body["status_code"] == response.status_code, (what, body)


@pytest.fixture
async def discoverable() -> AsyncIterator[EmulatorFleet]:
    async with EmulatorFleet(["HS110"], host=loopback_hosts(1, first=221), discovery_port=0, seed=5) as fleet:
        yield fleet


@pytest.fixture
async def sweep_client(runtime: Runtime, discoverable: EmulatorFleet) -> AsyncIterator[httpx.AsyncClient]:
    """The real app, called with an administrator's `admin` key; its discovery answers at once from
    one emulated device on loopback. Rate limits are off: the sweep sends hundreds of requests from
    one address."""
    runtime.settings = msgspec.structs.replace(
        runtime.settings,
        discovery_target=discoverable.addresses[0].partition(":")[0],
        discovery_port=discoverable.discovery_port,
        rate_limits=False,
    )
    async with http_client(create_app(runtime.services()), timeout=30) as http:
        admin = await set_up_and_log_in(http)
        principal = await runtime.identity.authenticate_session(admin.session_id, admin.user_id)
        issued = await runtime.identity.issue_key(principal, NewKey(name="sweep", scope=Scope.ADMIN),
                                                  StepUp(current_password=ADMIN_PASSWORD))  # fmt: skip
        del http.headers["Authorization"]
        http.headers["X-API-Key"] = issued.key
        yield http


@pytest.fixture
async def operations(sweep_client: httpx.AsyncClient) -> list[Operation]:
    return await documented_operations(sweep_client)


async def documented_operations(client: httpx.AsyncClient) -> list[Operation]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    schema = response.json()
    operations = [
        Operation(method=method.upper(), template=path, operation_id=spec.get("operationId", f"{method} {path}"))
        for path, item in schema["paths"].items()
        for method, spec in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert len(operations) >= 6, operations
    return operations


# Instead of the sweep's key: no credentials, or broken ones of each kind the API reads.
OTHER_CREDENTIALS: list[dict[str, str]] = [
    {}, {"X-API-Key": ""}, {"X-API-Key": "wl_" + "0" * 32 + "_x"}, {"X-API-Key": "%00%ff wl_"},
    {"Authorization": "Bearer "}, {"Authorization": "Bearer a.b.c"}, {"Authorization": "Basic dTpw"},
    {"Authorization": "Bearer " + "x" * 5000}, {"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."},
]  # fmt: skip
credentials = st.one_of(st.none(), st.sampled_from(OTHER_CREDENTIALS))


async def send(
    client: httpx.AsyncClient,
    op: Operation,
    path: str,
    query: str,
    body: bytes,
    content_type: str | None,
    credential: dict[str, str] | None = None,
) -> httpx.Response:
    """The request with the client's key, or with `credential` in its place."""
    headers = {"content-type": content_type} if content_type else {}
    url = f"{path}?{query}" if query else path
    request = client.build_request(op.method, url, content=_only_loopback(body), headers=headers)
    if credential is not None:
        del request.headers["X-API-Key"]
        request.headers.update(credential)
    return await client.send(request)


NASTY_REQUESTS: list[tuple[str, str, bytes, str | None]] = [
    ("%00", "", b"", None),
    ("a%00%1b", "x=%00", b'{"ip": "127.0.0.1:0"}', "application/json"),
    ("%ff%fe", "", b"\xff\xfe", "application/json"),
    ("x" * 5000, "", b"[" * 100_000 + b"]" * 100_000, "application/json"),
    ("..", "", b'{"ip":' * 50_000 + b"}" * 50_000, "application/json"),
    ("%e2%80%a8", "%ff=%ff", b'{"ip": "\xc0\x80"}', "text/plain"),
    ("127.0.0.1", "", b"ip=127.0.0.1", "application/x-www-form-urlencoded"),
    ("x", "", b"[" * 100_000 + b"]" * 100_000, "multipart/form-data; boundary=xyz"),
    ("x", "", b"[" * 100_000, "multipart/form-data"),
]


@pytest.mark.parametrize(("segment", "query", "body", "content_type"), NASTY_REQUESTS)
async def test_known_nasty_inputs_answer_4xx_json_on_every_operation(
    sweep_client: httpx.AsyncClient, operations: list[Operation], segment: str, query: str, body: bytes,
    content_type: str | None,
) -> None:
    for op in operations:
        path = op.path([segment] * op.parameters)
        response = await send(sweep_client, op, path, query, body, content_type)
        assert_not_a_server_error(response, f"{op.method} {path[:80]}")


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_no_generated_request_answers_5xx(
    sweep_client: httpx.AsyncClient, operations: list[Operation], data: st.DataObject
) -> None:
    op = data.draw(st.sampled_from(operations), label="operation")
    path = op.path([data.draw(segments, label="segment") for _ in range(op.parameters)])
    query = data.draw(queries, label="query")
    body = data.draw(bodies, label="body")
    content_type = data.draw(content_types, label="content-type")
    credential = data.draw(credentials, label="credential")
    response = await send(sweep_client, op, path, query, body, content_type, credential)
    assert_not_a_server_error(response, f"{op.method} {path[:80]}?{query[:40]} body={body[:60]!r} ({content_type})")


def test_generated_device_addresses_stay_on_loopback() -> None:
    """The sweep's own guard: no body it sends names a host off 127.0.0.x."""
    assert _only_loopback(b'{"ip": "example.com"}') == b'{"ip":"127.0.0.1:0"}'
    assert _only_loopback(b'{"ip": "127.0.0.1", "\\u0069p": "[::1]"}') == b'{"ip":"127.0.0.1:0"}'
    assert _only_loopback(b'{"ip": "127.0.0.9:81", "alias": 1}') == b'{"ip":"127.0.0.9:81","alias":1}'
    assert _only_loopback(b"\xff{") == b"\xff{"
    assert not _contactable("999.1.1.1") and not _contactable("127.0.0.200:5")
    assert _contactable("localhost") and _contactable("::1") and _contactable("10.0.0.1")
