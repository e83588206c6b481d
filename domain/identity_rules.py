"""The rules of identity's values: user names, passwords, e-mail addresses, full names, codes and keys.

Pure checks that raise domain errors, the limits they enforce (session count and lifetimes,
password length, backup codes), and the text form of an API key (`wl_<key id hex>_<secret>`).
"""

from __future__ import annotations

import re
from datetime import timedelta
from uuid import UUID

from domain.errors import ApiKeyInvalid, InvalidEmail, InvalidRequest, InvalidUsername, PasswordPolicy
from domain.text import check_text

MAX_SESSIONS = 3
"""Active sessions per user; a sign-in beyond this ends the oldest."""

SESSION_LIFETIME = timedelta(days=7)
"""A session, and with it every refresh token it issues, ends this long after sign-in."""

ACCESS_TOKEN_LIFETIME = timedelta(minutes=30)

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 256
BACKUP_CODE_COUNT = 10
API_KEY_PREFIX = "wl"
MAX_NAME_LENGTH = 200

_USERNAME = re.compile(r"[^\W_][\w.@-]{2,63}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


def check_username(username: str) -> str:
    """3 to 64 letters, digits and `. _ @ -`, starting with a letter or digit. Raises InvalidUsername."""
    if not _USERNAME.fullmatch(username):
        raise InvalidUsername(
            "a user name has 3 to 64 characters: letters, digits and . _ @ -, starting with a letter or digit"
        )
    return username


def check_email(email: str | None) -> str | None:
    """None, or something shaped like `name@host` of at most 254 characters. Raises InvalidText, InvalidEmail."""
    if email is None:
        return None
    email = check_text(email, field="email").strip()
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise InvalidEmail("an e-mail address looks like name@host")
    return email


def check_password(password: str, *, username: str) -> None:
    """The password policy. Raises PasswordPolicy naming the first rule broken.

    A password has 12 to 256 characters, mixes at least two kinds of character
    (lower-case letters, upper-case letters, digits, anything else such as
    spaces or punctuation), and does not contain the user name.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicy(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordPolicy(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    kinds = {
        "lower" if c.islower() else "upper" if c.isupper() else "digit" if c.isdigit() else "other"
        for c in password
    }
    if len(kinds) < 2:
        raise PasswordPolicy(
            "a password mixes at least two of: lower-case letters, upper-case letters, digits, other characters"
        )
    if username.casefold() in password.casefold():
        raise PasswordPolicy("a password must not contain the user name")



def check_full_name(full_name: str) -> str:
    """A person's full name, without surrounding spaces, of at most MAX_NAME_LENGTH characters.

    Raises InvalidText, InvalidRequest.
    """
    name = check_text(full_name, field="full_name").strip()
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"a full name has at most {MAX_NAME_LENGTH} characters")
    return name


def is_totp_code(code: str) -> bool:
    """Six digits (spaces allowed) are a TOTP code; anything else is tried as a backup code."""
    digits = code.replace(" ", "")
    return len(digits) == 6 and digits.isascii() and digits.isdigit()


def normalize_backup_code(code: str) -> str:
    """Backup codes are compared without case, spaces or dashes."""
    return "".join(c for c in code.upper() if c not in " -")


def api_key_text(key_id: UUID, secret: str) -> str:
    """The plain key a client sends in `X-API-Key`: `wl_<key id hex>_<secret>`."""
    return f"{API_KEY_PREFIX}_{key_id.hex}_{secret}"


def key_prefix(key_id: UUID) -> str:
    """The start of a key, shown in lists so a person can tell keys apart; not a secret."""
    return f"{API_KEY_PREFIX}_{key_id.hex[:8]}"


def parse_api_key(plain: str) -> tuple[UUID, str]:
    """(key id, secret) of a plain key. Raises ApiKeyInvalid for anything not shaped like one."""
    parts = plain.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or len(parts[1]) != 32 or not parts[2]:
        raise ApiKeyInvalid("not an API key")
    try:
        key_id = UUID(hex=parts[1])
    except ValueError:
        raise ApiKeyInvalid("not an API key") from None
    return key_id, parts[2]
