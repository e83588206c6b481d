"""The identity use cases in one object: `IdentityHandlers`, which the HTTP layer, NATS, the CLI and tests build.

It works over ports only, like `domain.handlers`, and is each group of use cases at once:
`domain.session_handlers` (setup, sign-in, refresh, sign-out), `domain.user_handlers` (users
and one's own account), `domain.totp_handlers` (two-factor), `domain.key_handlers` (API keys)
and `domain.authentication` (per-request checks), all over `domain.identity_core`.

Plain secrets (passwords, TOTP secrets, backup codes, keys) are only ever in
arguments and in the one return value that hands them out; nothing here logs.
"""

from __future__ import annotations

from domain.authentication import Authentication
from domain.key_handlers import KeyHandlers
from domain.session_handlers import SessionHandlers
from domain.totp_handlers import TotpHandlers
from domain.user_handlers import UserHandlers


class IdentityHandlers(SessionHandlers, UserHandlers, TotpHandlers, KeyHandlers, Authentication):
    """Every identity use case; the HTTP layer, the CLI and tests call these same methods."""
