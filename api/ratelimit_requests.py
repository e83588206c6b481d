"""What the rate limiter reads from a request before the app runs: the client's address, the
caller it claims (read unverified, for counting only), whether it is a sign-in, second-factor,
password-change or step-up attempt and against which account, and the error code of an answer."""

from __future__ import annotations

import base64
import ipaddress
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

import msgspec

from api.ratelimit_rules import MAX_AUTH_BODY, MAX_TOKEN_LENGTH, STEP_UP_DELETE_PREFIX, STEP_UP_PATHS
from domain.access import Principal
from domain.errors import ApiKeyInvalid
from domain.identity_rules import parse_api_key

if TYPE_CHECKING:
    from litestar.types import Receive, ReceiveMessage, Scope


READ_HEADERS = frozenset({
    b"x-api-key", b"authorization", b"origin", b"access-control-request-method", b"content-length",
    b"transfer-encoding",
})  # fmt: skip
"""The request headers the limiter reads (the caller, CORS, and the size of an attempt's body)."""


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's READ_HEADERS by lower-case name; a header sent twice reads as its first value, as
    Litestar's `Headers.get` (and so the auth guard) reads it."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        lowered = name.lower()  # ASGI: byte strings
        if lowered in READ_HEADERS:
            found.setdefault(lowered.decode("latin-1"), bytes(value).decode("latin-1"))
    return found


def client_subject(scope: Scope) -> str:
    """The client address a request is counted under: IPv4 as is, IPv6 by its /64 network."""
    client = scope.get("client")
    host = str(client[0])[:100] if client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _Subject(msgspec.Struct):
    sub: Any = None


class _LoginName(msgspec.Struct):
    username: Any = None


class _ErrorCode(msgspec.Struct):
    error_code: Any = None


_SUBJECT = msgspec.json.Decoder(_Subject)
_LOGIN_NAME = msgspec.json.Decoder(_LoginName)
_ERROR_CODE = msgspec.json.Decoder(_ErrorCode)


def unverified_subject(token: str) -> UUID | None:
    """The `sub` of a JWT, read without checking its signature: for counting, never for access."""
    parts = token.split(".")
    if len(token) > MAX_TOKEN_LENGTH or len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        sub = _SUBJECT.decode(payload).sub
        return UUID(sub) if isinstance(sub, str) else None
    except (ValueError, msgspec.DecodeError, RecursionError):
        return None


def principal_of(scope: Scope) -> Principal | None:
    """The principal the auth layer left for this request, if it did."""
    state = scope.get("state")
    candidate = state.get("principal") if state else None
    if isinstance(candidate, Principal):
        return candidate
    candidate = scope.get("user")
    return candidate if isinstance(candidate, Principal) else None


@dataclass(frozen=True)
class Caller:
    ip: str
    user_id: UUID | None
    key_id: UUID | None
    verified: bool


def caller_of(scope: Scope, headers: Mapping[str, str]) -> Caller:
    ip = client_subject(scope)
    principal = principal_of(scope)
    if principal is not None:
        user_id = principal.user_id if principal.kind == "user" else None
        return Caller(ip=ip, user_id=user_id, key_id=principal.key_id, verified=True)
    key_id = None
    if api_key := headers.get("x-api-key"):
        try:
            key_id, _ = parse_api_key(api_key)
        except ApiKeyInvalid:
            pass
    user_id = None
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        # An API key may come as the bearer token too (as scrapers send it), and is charged as a key.
        try:
            bearer_key, _ = parse_api_key(token)
        except ApiKeyInvalid:
            user_id = unverified_subject(token.strip())
        else:
            key_id = key_id or bearer_key
    return Caller(ip=ip, user_id=user_id, key_id=key_id, verified=False)


@dataclass(frozen=True)
class Attempt:
    """A sign-in, second-factor, password-change, step-up or push call, with the account it is against (if known)."""

    kind: Literal["login", "second_factor", "password", "step_up", "push"]
    account: UUID | None


def step_up_attempt(method: str, path: str, headers: Mapping[str, str]) -> bool:
    """A body sent to a route whose changes are confirmed in it (step-up): it may hold a password guess."""
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        return False
    if method == "DELETE":
        return path.startswith(STEP_UP_DELETE_PREFIX)
    return method == "POST" and path in STEP_UP_PATHS


async def _read_body(receive: Receive, cap: int) -> tuple[list[ReceiveMessage], bytes | None, bool]:
    """The request's messages read so far, its body if it was complete within `cap` bytes, and whether
    it went past `cap`."""
    messages: list[ReceiveMessage] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None, False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            return messages, None, True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return messages, b"".join(chunks), False


def _replaying(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    pending = deque(messages)

    async def replay() -> ReceiveMessage:
        return pending.popleft() if pending else await receive()

    return replay


async def login_username(headers: Mapping[str, str], receive: Receive) -> tuple[Receive, str | None, bool]:
    """The `username` of a sign-in body (read here and handed on unchanged), if it has one, and whether
    the body is over MAX_AUTH_BODY (then it is not read to its end)."""
    length = headers.get("content-length", "")
    if length and (not length.isdigit() or int(length) > MAX_AUTH_BODY):
        return receive, None, True
    messages, body, oversized = await _read_body(receive, MAX_AUTH_BODY)
    replay = _replaying(messages, receive)
    if not body:
        return replay, None, oversized
    try:
        name = _LOGIN_NAME.decode(body).username
    except (msgspec.DecodeError, RecursionError):
        return replay, None, False
    return replay, name if isinstance(name, str) and 0 < len(name) <= 256 else None, False


def error_code_of(body: bytes) -> str | None:
    try:
        code = _ERROR_CODE.decode(body).error_code
    except (msgspec.DecodeError, RecursionError):
        return None
    return code if isinstance(code, str) else None
