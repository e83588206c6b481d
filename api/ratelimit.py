"""The rate limiter at the outermost edge of the app (`api.edge` wraps the app in it).

The limiter wraps the whole Litestar app (outside its CORS layer and its own exception
handling), so it counts every request: unknown paths, the auth guard's 401s, everything
but `/api/health` and CORS preflights. A request is counted in the process's memory and the
counts reach the shared table (`adapters.ratelimits`) in one statement every half second, so
counting costs no round trip; an attempt that can fail (sign-in, second factor, password, step-up,
push) is counted and checked against the failure counts in one statement at once, exactly:

- the client's IP (an IPv6 client by its /64) is counted first;
- the user (`sub` of a Bearer token) and the API key (`X-API-Key`, `wl_<key id>_<secret>`)
  are counted only if the request is admitted otherwise, so a client over its own limit
  cannot spend someone else's allowance. Who the caller is cannot be known before the auth
  layer has run, so the token's `sub` is read unverified, for counting only. The count
  stands only if the auth layer then leaves that same `Principal` in
  `scope["state"]["principal"]` (the guard does, for every route that takes credentials);
  otherwise (a bad token, a public route that never looked at it) it is taken back;
- sign-in (`POST /api/auth/login`), second-factor (`POST /api/auth/2fa/...`), password-change
  (`POST /api/auth/change-password`) and step-up attempts (a body sent to `POST /api/keys`,
  `POST /api/auth/logout` or `DELETE /api/auth/sessions/...`, which may confirm the change with the
  current password or a TOTP code) also read the failure counts of the account from
  this IP and of the IP alone, and are refused while either is at its limit: a stranger's
  failures lock the account from the stranger's address only, never its owner elsewhere. A
  failure (a 401 that says the password or code was wrong, a 422 `WRONG_PASSWORD`) is counted
  before the answer reaches the client, so the next attempt already sees it. A sign-in is
  counted against the account its handler judged (`SIGN_IN_ACCOUNT`), and its body is read here
  first for the user name: one over `MAX_AUTH_BODY` is refused (413) unread, so no sign-in can
  escape its account's count.
- a push (`/api/push/{token}`) answered 404 (a token no device has) counts against the client's
  address in a window of its own with the failed-attempt limit per address; pushes are refused
  while it is at its limit, so tokens cannot be guessed from one address.

Every counted answer carries `X-RateLimit-Limit`, `-Remaining` and `-Reset` (Unix time the
window ends) for the tightest limit that applied; a 429 carries `Retry-After` as well.
When the counters do not answer, requests pass unlimited and without these headers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec
import structlog
from litestar.config.cors import CORSConfig
from litestar.enums import ScopeType
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from adapters.ratelimits import Counted, CountersUnavailable, Held, PgRateCounters, Tally, Window
from api.errors import HTTP_CODES, error_body
from api.headers import ANSWER_HEADERS
from api.ratelimit_requests import (
    Attempt,
    Caller,
    caller_of,
    error_code_of,
    login_username,
    principal_of,
    request_headers,
    step_up_attempt,
)
from api.ratelimit_rules import (
    EXEMPT_PATHS,
    HANDSHAKE_REFUSED,
    LOGIN_PATHS,
    MAX_ERROR_BODY,
    PASSWORD_PATHS,
    PUSH_PREFIX,
    SECOND_FACTOR_PREFIX,
    SIGN_IN_ACCOUNT,
    RateLimits,
)
from domain.access import Principal
from domain.identity import user_id_for

if TYPE_CHECKING:
    from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

_MESSAGE = "Too many requests. Please try again later."
_DETAILS = {
    "ip": "Rate limit exceeded for this address: {limit}",
    "user": "Rate limit exceeded for this user: {limit}",
    "key": "Rate limit exceeded for this API key: {limit}",
    "login": "Too many failed sign-in attempts for this account from this address: {limit}",
    "login-ip": "Too many failed sign-in attempts from this address: {limit}",
    "push": "Too many pushes with unknown tokens from this address: {limit}",
}
# A sign-in answered with these proved the password right: not a guess.
_LOGIN_NOT_GUESSES = frozenset({"TOTP_REQUIRED", "ACCOUNT_DISABLED"})
# A second-factor call answered with these was judged by its handler, past authentication.
_WRONG_SECRETS = frozenset({"INVALID_TOTP_CODE", "INVALID_CREDENTIALS"})
# A password change answered with this had its current password guessed wrong.
_WRONG_PASSWORD = "WRONG_PASSWORD"
# Answers of an attempt held until its failure is counted.
_JUDGED = frozenset({401, 422})
# A push answered with this named a token no device has.
_PUSH_JUDGED = frozenset({404})


REMEMBERED_CALLERS = 4096
"""Clients (address and credentials) whose counting windows the limiter keeps at hand."""


def _tightest(tallies: Sequence[Tally]) -> Tally | None:
    """The counted tally with the fewest requests left, the one that resets last among equals."""
    best: Tally | None = None
    best_left = 0
    for tally in tallies:
        count = tally.count
        if count is None:
            continue
        left = tally.window.limit.count - count
        if left < 0:
            left = 0
        if (
            best is None
            or left < best_left
            or (left == best_left and tally.resets_at - tally.now > best.resets_at - best.now)
        ):
            best, best_left = tally, left
    return best


_NUMBERS = [str(n).encode() for n in range(1024)]
"""Header values of small counts, spelled once."""


def _number(value: int) -> bytes:
    return _NUMBERS[value] if 0 <= value < 1024 else str(value).encode()


_LIMIT, _REMAINING, _RESET = b"x-ratelimit-limit", b"x-ratelimit-remaining", b"x-ratelimit-reset"
_LIMITS = [(_LIMIT, number) for number in _NUMBERS]
_LEFT = [(_REMAINING, number) for number in _NUMBERS]
"""The first two labels of an answer with a small limit and small number left, built once."""


class _Client:
    """A client the limiter counts (by address and credentials): who it claims to be, its windows,
    and whether anything is counted against an identity the auth layer has to confirm."""

    __slots__ = ("caller", "held", "claims")

    def __init__(self, caller: Caller, held: Held) -> None:
        self.caller = caller
        self.held = held
        self.claims = not caller.verified and (caller.user_id is not None or caller.key_id is not None)


def _labelled(send: Send, labels: Sequence[tuple[bytes, bytes]]) -> Send:
    """`send` adding `labels` to the answer's headers."""

    async def labelled(message: Message) -> None:
        if message["type"] == "http.response.start":
            # The app never sets these itself: they are added, not replaced.
            message["headers"] = [*(message.get("headers") or ()), *labels]
        await send(message)

    return labelled


def _limit_headers(tally: Tally) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(tally.window.limit.count),
        "X-RateLimit-Remaining": str(tally.remaining),
        "X-RateLimit-Reset": str(math.ceil(tally.resets_at.timestamp())),
    }


class RateLimiter:
    """The ASGI wrapper that counts, refuses (429) and labels every answer; see the module doc."""

    def __init__(self, app: ASGIApp, limits: RateLimits, counters: PgRateCounters, *, cors: CORSConfig | None) -> None:
        self.app = app
        self.limits = limits
        self.counters = counters
        self.cors = cors
        self._callers: dict[tuple[str | None, bytes | None, bytes | None], _Client] = {}
        """Clients by address and raw key and authorization headers (see `_client`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            if scope["type"] == ScopeType.WEBSOCKET:
                await self._handshake(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not path or path in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if (method == "GET" or method == "HEAD") and not path.startswith(PUSH_PREFIX):
            # Most requests: no attempt, no body, no preflight; counted before their headers are decoded.
            client = self._client(scope)
            now = self.counters.count_held(client.held)
            if now is None or not now.within:
                await self._limit(scope, receive, send, request_headers(scope), method, path, client, now)
                return
            await self._answer_within(scope, receive, send, client, now)
            return
        headers = request_headers(scope)
        if method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers:
            await self.app(scope, receive, send)
            return
        await self._limit(scope, receive, send, headers, method, path, self._client(scope), None)

    async def _limit(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Mapping[str, str],
        method: str,
        path: str,
        client: _Client,
        now: Counted | None,
    ) -> None:
        """Every request but one within its limits on the way in (`__call__` answers those): attempts,
        refusals, and any request while the counters count by statement. `now`: the request was counted
        in memory already."""
        caller = client.caller
        first, then = client.held.first, client.held.then
        attempt: Attempt | None = None
        oversized = False
        if method == "GET" or method == "HEAD":
            if path.startswith(PUSH_PREFIX):
                attempt = Attempt("push", None)
        elif method == "POST" and path in LOGIN_PATHS:
            receive, username, oversized = await login_username(headers, receive)
            attempt = Attempt("login", user_id_for(username) if username else None)
        elif method == "POST" and path.startswith(SECOND_FACTOR_PREFIX):
            attempt = Attempt("second_factor", caller.user_id)
        elif method == "POST" and path in PASSWORD_PATHS:
            attempt = Attempt("password", caller.user_id)
        elif (method == "POST" or method == "DELETE") and step_up_attempt(method, path, headers):
            attempt = Attempt("step_up", caller.user_id)
        elif path.startswith(PUSH_PREFIX):
            attempt = Attempt("push", None)

        peek = self.failure_windows(attempt, caller.ip) if attempt else []
        tallies: list[Tally] | None = None
        if now is None and not peek:
            now = self.counters.count_held(client.held)
        if now is not None:
            if now.within and attempt is None:
                await self._answer_within(scope, receive, send, client, now)
                return
            tallies = now.tallies()
        if tallies is None:
            try:
                tallies = await (self.counters.hit(first, then, peek) if peek else self.counters.count_requests(first, then))
            except CountersUnavailable:
                await self.app(scope, receive, send)
                return
        if peek:
            counted, peeked = tallies[: len(first) + len(then)], tallies[len(first) + len(then) :]
        else:
            counted, peeked = tallies, []
        refused = [t for t in counted if t.count is not None and t.count > t.window.limit.count]
        if peeked:
            refused += [t for t in peeked if (t.count or 0) >= t.window.limit.count]
        if refused:
            await self._refuse(scope, headers, refused, send)
            return
        if oversized:
            body = error_body(413, RequestEntityTooLarge.detail, HTTP_CODES[413])
            await self._answer(413, body, {**self._labels(counted, peeked), **self._cors_headers(headers)}, send)
            return

        exchange = _Exchange(self, scope, send, caller, attempt, counted, peeked)
        await self.app(scope, receive, exchange.send)
        await exchange.finish()

    async def _answer_within(self, scope: Scope, receive: Receive, send: Send, client: _Client, now: Counted) -> None:
        """A request counted in memory within every limit, no attempt (most requests): labelled on the
        way out, then what was counted against an identity the auth layer did not confirm is taken back.

        The labels go to the layer adding the security headers when there is one outside (it adds
        them in the one pass it makes over the answer's headers), else the limiter adds them."""
        if now.reset is not None:
            left, limit = now.left, now.limit
            labels = (_LIMITS[limit] if limit < 1024 else (_LIMIT, str(limit).encode()),
                      _LEFT[left] if left < 1024 else (_REMAINING, str(left).encode()), (_RESET, now.reset))  # fmt: skip
            answer_headers = scope.get(ANSWER_HEADERS)
            if isinstance(answer_headers, list):
                answer_headers += labels
            else:
                send = _labelled(send, labels)
        await self.app(scope, receive, send)
        if client.claims and not _proves(principal_of(scope), client.caller):
            await _take_back_unproven(self.counters, scope, client.caller, now.tallies)

    def _client(self, scope: Scope) -> _Client:
        """Who the request is counted as and the windows of its address, then of its user and key.

        Remembered per (address, key header, authorization header): a client sends the same ones
        request after request, and none of this depends on anything else of the request."""
        address = scope.get("client")
        key = authorization = None
        for name, value in scope.get("headers") or ():
            # Only the two credential headers' lengths are worth a closer look (names in any case).
            size = len(name)
            if size == 9:
                if key is None and name.lower() == b"x-api-key":
                    key = bytes(value)
            elif size == 13 and authorization is None and name.lower() == b"authorization":
                authorization = bytes(value)
        memo = (address[0] if address else None, key, authorization)
        state = scope.get("state")
        if not (state and isinstance(state.get("principal"), Principal)) and not isinstance(scope.get("user"), Principal):
            found = self._callers.get(memo)
            if found is not None:
                return found
        caller = caller_of(scope, request_headers(scope))
        limits = self.limits
        client = _Client(
            caller,
            Held(
                [Window("ip", caller.ip, limit) for limit in limits.ip],
                [Window("user", str(caller.user_id), limit) for limit in limits.user if caller.user_id]
                + [Window("key", str(caller.key_id), limit) for limit in limits.key if caller.key_id],
            ),
        )
        if not caller.verified:
            if len(self._callers) >= REMEMBERED_CALLERS:
                self._callers.clear()
            self._callers[memo] = client
        return client

    async def _handshake(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake (`/ws`, socket.io's upgrade) counts against its address like a request;
        over the limit it is closed before it is accepted (close code 4429, an HTTP 403 to the client)."""
        caller = caller_of(scope, request_headers(scope))
        try:
            tallies = await self.counters.count_requests([Window("ip", caller.ip, limit) for limit in self.limits.ip])
        except CountersUnavailable:
            await self.app(scope, receive, send)
            return
        refused = [t for t in tallies if t.count is not None and t.count > t.window.limit.count]
        if not refused:
            await self.app(scope, receive, send)
            return
        message = await receive()
        if message["type"] == "websocket.connect":
            log.info("ratelimit.handshake_refused", path=scope["path"])
            await send({"type": "websocket.close", "code": HANDSHAKE_REFUSED, "reason": "rate limit exceeded"})

    def failure_windows(self, attempt: Attempt, ip: str, account: UUID | None = None) -> list[Window]:
        """The failed-attempt windows of the account from this IP, and of the IP alone (a push's: its own)."""
        if attempt.kind == "push":
            return [Window("push", ip, limit) for limit in self.limits.login_ip]
        account = account or attempt.account
        windows = [Window("login", f"{account}@{ip}", limit) for limit in self.limits.login if account]
        return windows + [Window("login-ip", ip, limit) for limit in self.limits.login_ip]

    @staticmethod
    def _labels(counted: Sequence[Tally], peeked: Sequence[Tally]) -> dict[str, str]:
        tightest = _tightest([*counted, *peeked])
        return _limit_headers(tightest) if tightest is not None else {}

    @staticmethod
    async def _answer(status: int, body: dict[str, Any], headers: dict[str, str], send: Send) -> None:
        content = msgspec.json.encode(body)
        response_headers = {"Content-Type": "application/json", "Content-Length": str(len(content)), **headers}
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response_headers.items()],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": content, "more_body": False})

    async def _refuse(self, scope: Scope, headers: Mapping[str, str], refused: Sequence[Tally], send: Send) -> None:
        binding = max(refused, key=lambda t: t.resets_in)
        window = binding.window
        retry_after = max(1, math.ceil(binding.resets_in))
        body = error_body(
            429,
            _DETAILS[window.kind].format(limit=window.limit.describe()),
            "RATE_LIMIT_EXCEEDED",
            error="rate_limit_exceeded",
            message=_MESSAGE,
            retry_after=retry_after,
            limit=window.limit.describe(),
        )
        # Once per window and subject: the first refusal (a lockout was logged as it began).
        if binding.count == window.limit.count + 1:
            log.info("ratelimit.refused", kind=window.kind, limit=window.limit.describe(), path=scope["path"],
                     retry_after=retry_after)  # fmt: skip
        extra = {"Retry-After": str(retry_after), **_limit_headers(binding), **self._cors_headers(headers)}
        await self._answer(429, body, extra, send)

    def _cors_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """What the CORS layer would have added to an answer it never saw."""
        origin = headers.get("origin")
        if self.cors is None or not origin:
            return {}
        added = dict(self.cors.simple_headers)
        if self.cors.is_origin_allowed(origin) and not self.cors.is_allow_all_origins:
            added["Access-Control-Allow-Origin"] = origin
            added["Vary"] = "Origin"
        return added


def _proves(principal: Principal | None, caller: Caller) -> bool:
    """Whether `principal` proves every identity the caller claimed (true when it claimed none)."""
    if caller.user_id is None and caller.key_id is None:
        return True
    return (
        principal is not None
        and (caller.user_id is None or (principal.kind == "user" and principal.user_id == caller.user_id))
        and (caller.key_id is None or principal.key_id == caller.key_id)
    )


async def _take_back_unproven(
    counters: PgRateCounters, scope: Scope, caller: Caller, counted: Callable[[], Sequence[Tally]]
) -> None:
    """Take back the counts of the user's and the key's windows (`counted()`, built from the ids the
    caller claimed) that the principal the auth layer left does not prove."""
    principal = principal_of(scope)
    if _proves(principal, caller):
        return
    proven = set()
    if principal is not None and principal.kind == "user" and principal.user_id == caller.user_id:
        proven.add("user")
    if principal is not None and principal.key_id is not None and principal.key_id == caller.key_id:
        proven.add("key")
    unproven = [
        t for t in counted()
        if t.window.kind in {"user", "key"} and t.count is not None and t.window.kind not in proven
    ]  # fmt: skip
    if unproven:
        try:
            await counters.refund(unproven)
        except CountersUnavailable:
            pass


class _Exchange:
    """One admitted request on its way out: labels the answer, counts a failed attempt before the
    client sees it, and takes back what was counted against an identity the auth layer did not confirm."""

    __slots__ = ("limiter", "scope", "_send", "caller", "attempt", "counted", "peeked", "status", "_start", "_held",
                 "_body")  # fmt: skip

    def __init__(
        self,
        limiter: RateLimiter,
        scope: Scope,
        send: Send,
        caller: Caller,
        attempt: Attempt | None,
        counted: list[Tally],
        peeked: list[Tally],
    ) -> None:
        self.limiter = limiter
        self.scope = scope
        self._send = send
        self.caller = caller
        self.attempt = attempt
        self.counted = counted
        self.peeked = peeked
        self.status: int | None = None
        self._start: HTTPResponseStartEvent | None = None
        self._held: list[Message] = []
        self._body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            if self.attempt is not None and self.status in (_PUSH_JUDGED if self.attempt.kind == "push" else _JUDGED):
                self._start = message
                return
            self._label(message)
            await self._send(message)
        elif self._start is not None:
            self._held.append(message)
            if message["type"] == "http.response.body":
                self._body += message.get("body", b"")
                if message.get("more_body", False) and len(self._body) <= MAX_ERROR_BODY:
                    return
            await self._release()
        else:
            await self._send(message)

    async def finish(self) -> None:
        """After the app is done: send what is still held, then take back unproven identity counts."""
        if self._start is not None:
            await self._release()
        caller = self.caller
        if caller.verified or (caller.user_id is None and caller.key_id is None):
            return  # nothing was counted against a claimed identity
        await _take_back_unproven(self.limiter.counters, self.scope, caller, lambda: self.counted)

    async def _release(self) -> None:
        start, held, self._start, self._held = self._start, self._held, None, []
        if start is None:
            return
        await self._count_failure(error_code_of(bytes(self._body)) if len(self._body) <= MAX_ERROR_BODY else None)
        self._label(start)
        await self._send(start)
        for message in held:
            await self._send(message)

    async def _count_failure(self, code: str | None) -> None:
        attempt = self.attempt
        if attempt is None:
            return
        account: UUID | None = None
        if attempt.kind == "push":
            failed = self.status == 404
        elif attempt.kind == "login":
            judged = (self.scope.get("state") or {}).get(SIGN_IN_ACCOUNT)
            failed = self.status == 401 and code not in _LOGIN_NOT_GUESSES
            account = judged if isinstance(judged, UUID) else attempt.account
        else:
            principal = principal_of(self.scope)
            failed = code == _WRONG_PASSWORD if attempt.kind == "password" else code in _WRONG_SECRETS
            account = principal.user_id if principal is not None else attempt.account
        if not failed:
            return
        windows = self.limiter.failure_windows(attempt, self.caller.ip, account)
        try:
            tallies = await self.limiter.counters.hit(windows)
        except CountersUnavailable:
            return
        for tally in tallies:
            if tally.count == tally.window.limit.count:
                log.info("ratelimit.attempts_locked", kind=tally.window.kind, limit=tally.window.limit.describe(),
                         path=self.scope["path"])  # fmt: skip
        self.peeked = tallies

    def _label(self, message: HTTPResponseStartEvent) -> None:
        tightest = _tightest([*self.counted, *self.peeked] if self.peeked else self.counted)
        if tightest is None:
            return
        limit = tightest.window.limit.count
        # The app never sets these itself: they are added, not replaced.
        headers = list(message.get("headers") or ())
        headers.append((b"x-ratelimit-limit", _number(limit)))
        headers.append((b"x-ratelimit-remaining", _number(max(0, limit - (tightest.count or 0)))))
        headers.append((b"x-ratelimit-reset", str(math.ceil(tightest.resets_at.timestamp())).encode()))
        message["headers"] = headers
