"""The rate limits the edge applies, and the paths and sizes it treats apart.

`RateLimits` is the configuration (built by the composition root from the settings);
the constants say which requests are never counted, which are sign-in, second-factor,
password-change and step-up attempts, and how much of a request or answer the limiter reads.
"""

from __future__ import annotations

import msgspec

from adapters.ratelimits import Limit

EXEMPT_PATHS = frozenset({"/api/health", "/api/health/"})
HANDSHAKE_REFUSED = 4429
"""The close code of a WebSocket handshake refused for its address's rate limit."""
LOGIN_PATHS = frozenset({"/api/auth/login", "/api/auth/login/"})
SECOND_FACTOR_PREFIX = "/api/auth/2fa/"
PASSWORD_PATHS = frozenset({"/api/auth/change-password", "/api/auth/change-password/"})
STEP_UP_PATHS = frozenset({"/api/keys", "/api/keys/", "/api/auth/logout", "/api/auth/logout/"})
STEP_UP_DELETE_PREFIX = "/api/auth/sessions/"
PUSH_PREFIX = "/api/push/"
"""Pushes of push devices: a token no device has (404) counts as a failed attempt of the client's address."""
MAX_AUTH_BODY = 16 * 1024
"""Bytes a sign-in, second-factor, refresh or password-change body may hold (more: 413). The limiter
reads a sign-in's user name before the app does; none of these bodies needs more."""
SIGN_IN_ACCOUNT = "wattledger_sign_in_account"
"""Key of scope["state"] where the sign-in handler leaves the account it judged."""
MAX_ERROR_BODY = 64 * 1024
MAX_TOKEN_LENGTH = 8 * 1024


class RateLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Every limit the edge applies; an empty tuple is no limit of that kind."""

    ip: tuple[Limit, ...] = ()
    user: tuple[Limit, ...] = ()
    key: tuple[Limit, ...] = ()
    login: tuple[Limit, ...] = ()
    """Failed sign-in, second-factor and password-change attempts per account and client IP."""
    login_ip: tuple[Limit, ...] = ()
    """Failed sign-in, second-factor and password-change attempts per client IP."""

    @property
    def enabled(self) -> bool:
        return any((self.ip, self.user, self.key, self.login, self.login_ip))
