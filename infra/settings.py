"""One frozen settings object, read from the environment once, at start-up."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import psycopg

T = TypeVar("T")


class SettingsError(ValueError):
    """An invalid setting; the message names it and says what is expected."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of a WattLedger process. Built by `from_env`; tests build their own."""

    database_url: str | None = None
    nats_url: str | None = None
    data_dir: Path = Path("data")
    polling_interval: float = 60.0
    poll_timeout: float = 5.0
    poll_concurrency: int = 16
    offline_after: int = 3
    host: str = "127.0.0.1"
    port: int = 5272
    discovery_target: str = "255.255.255.255"
    discovery_port: int | None = None
    stream_name: str = "WL_EVENTS"
    subject_prefix: str = "wl"
    embedded_nats_port: int = 4222
    timezone: str = "UTC"
    log_level: str = "info"
    log_json: bool = False

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def embedded(self) -> bool:
        return self.database_url is None or self.nats_url is None


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _number(kind: Callable[[str], T], low: float, high: float) -> Callable[[str], T]:
    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"must be a number from {low:g} to {high:g}") from None
        if not low <= value <= high:  # type: ignore[operator]
            raise ValueError(f"must be from {low:g} to {high:g}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not any(text.startswith(f"{s}://") for s in schemes):
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return text

    return parse


def _database_url(text: str) -> str:
    """A libpq URL (postgresql://...) or key=value connection string."""
    try:
        psycopg.conninfo.conninfo_to_dict(text)
    except psycopg.ProgrammingError:
        raise ValueError("must be a PostgreSQL URL (postgresql://user@host:5432/db) or libpq connection string") from None
    return text


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError("must be an IP address") from None


def _identifier(text: str) -> str:
    if not _NAME.match(text):
        raise ValueError("must be 1-64 letters, digits, '_' or '-'")
    return text


def _zone(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("must be an IANA time zone such as Europe/Berlin or America/New_York") from None
    return text


def _level(text: str) -> str:
    if text.lower() not in {"debug", "info", "warning", "error"}:
        raise ValueError("must be one of debug, info, warning, error")
    return text.lower()


def _flag(text: str) -> bool:
    if text.lower() in {"1", "true", "yes", "on"}:
        return True
    if text.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def _host(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise ValueError("must be a host name or IP address")
    return text


_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DATABASE_URL": ("database_url", _database_url),
    "NATS_URL": ("nats_url", _url("nats", "tls")),
    "WATTLEDGER_DATA_DIR": ("data_dir", Path),
    "WATTLEDGER_POLLING_INTERVAL": ("polling_interval", _number(float, 1, 86400)),
    "WATTLEDGER_POLL_TIMEOUT": ("poll_timeout", _number(float, 0.1, 120)),
    "WATTLEDGER_POLL_CONCURRENCY": ("poll_concurrency", _number(int, 1, 1024)),
    "WATTLEDGER_OFFLINE_AFTER": ("offline_after", _number(int, 1, 1000)),
    "WATTLEDGER_HOST": ("host", _host),
    "WATTLEDGER_PORT": ("port", _number(int, 1, 65535)),
    "WATTLEDGER_DISCOVERY_TARGET": ("discovery_target", _ip),
    "WATTLEDGER_DISCOVERY_PORT": ("discovery_port", _number(int, 1, 65535)),
    "WATTLEDGER_STREAM": ("stream_name", _identifier),
    "WATTLEDGER_SUBJECT_PREFIX": ("subject_prefix", _identifier),
    "WATTLEDGER_EMBEDDED_NATS_PORT": ("embedded_nats_port", _number(int, 0, 65535)),
    "WATTLEDGER_TIMEZONE": ("timezone", _zone),
    "WATTLEDGER_LOG_LEVEL": ("log_level", _level),
    "WATTLEDGER_LOG_JSON": ("log_json", _flag),
}

OPTION_ENV = {field: env for env, (field, _) in _FIELDS.items()}


def load_settings(environ: Mapping[str, str], **overrides: str | None) -> Settings:
    """Settings from environment variables, then from command-line overrides (by field name).

    Raises SettingsError naming the first invalid setting.
    """
    values: dict[str, Any] = {}
    raw = {env: environ[env] for env in _FIELDS if environ.get(env, "") != ""}
    for field, text in overrides.items():
        if text is not None:
            raw[OPTION_ENV[field]] = str(text)
    for env, text in raw.items():
        field, parse = _FIELDS[env]
        try:
            values[field] = parse(text.strip())
        except ValueError as exc:
            raise SettingsError(f"invalid {env}={text!r}: {exc}") from None
    return Settings(**values)
