"""One frozen settings object, read from the environment once, at start-up."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import psycopg

from adapters.ratelimits import Limit, parse_limits
from infra.errors import InfraError

T = TypeVar("T")

MASK = "***"
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s?#]*)@")
_SECRET_KEYWORD = re.compile(
    r"(?i)(?P<key>\b(?:password|passwd|pwd|pass|token|secret|sslpassword|auth_token|nkey)\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|[^\s&;,]*)"
)


class SettingsError(InfraError, ValueError):
    """An invalid setting; the message names it and says what is expected."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of a WattLedger process. Built by `from_env`; tests build their own."""

    database_url: str | None = None
    nats_url: str | None = None
    nats_relay_url: str | None = None
    """Where the relay publishes events, with the credentials of a user allowed to (none: `nats_url`)."""
    data_dir: Path = Path("data")
    polling_interval: float = 60.0
    poll_timeout: float = 5.0
    poll_concurrency: int = 64
    poll_suspect_concurrency: int = 64
    poll_stop_grace: float = 10.0
    poll_lease: float = 30.0
    offline_after: int = 3
    control_deadline: float = 30.0
    """Seconds a control request may wait for the executor; later it is failed `expired`, never run."""
    executor_ack_wait: float = 30.0
    """Seconds without news from an executor before JetStream hands its request to another."""
    host: str = "127.0.0.1"
    port: int = 5272
    discovery_target: str = "255.255.255.255"
    discovery_port: int | None = None
    stream_name: str = "WL_EVENTS"
    subject_prefix: str = "wl"
    embedded_nats_port: int = 4222
    timezone: str = "UTC"
    max_power_w: float = 3700.0
    """The most a meter can draw: a counter rise implying more is a reset, not energy."""
    session_threshold_w: float = 5.0
    session_min_duration: float = 60.0
    log_level: str = "info"
    log_json: bool = False
    startup_timeout: float = 30.0
    secret_key: str | None = None
    """Keys the secret box (sealed TOTP secrets); without it a key generated once is kept in PostgreSQL."""
    rate_limits: bool = True
    rate_limit_ip: tuple[Limit, ...] = (Limit(100, 60),)
    rate_limit_user: tuple[Limit, ...] = (Limit(1000, 3600),)
    rate_limit_key: tuple[Limit, ...] = (Limit(60, 60), Limit(10_000, 86_400))
    rate_limit_login: tuple[Limit, ...] = (Limit(5, 900),)
    rate_limit_login_ip: tuple[Limit, ...] = (Limit(20, 900),)
    cors_origins: tuple[str, ...] = ()
    metrics_basic_auth: str | None = None
    """`user:<argon2 hash>`: `GET /metrics` also takes these basic auth credentials (a scraper's)."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses and networks of the reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are
    believed; empty: no proxy header is believed, the client is the connection's peer."""
    live_queue: int = 256
    """Unread messages a live client may have before it is dropped as too slow."""
    live_heartbeat: float = 15.0
    live_auth_timeout: float = 5.0
    live_recheck: float = 30.0
    export_retention_days: float = 7.0
    """Days a data export's file is kept after it was written; then it is deleted and the export shows expired."""
    exports_per_hour: int = 10
    """Data exports one user may request per hour."""
    max_upload_size_mb: float = 10.0
    """The most an uploaded file may hold, in MB (MiB)."""

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def compliance_dir(self) -> Path:
        """Where compliance exports of the event history are written (one directory per export)."""
        return self.data_dir / "compliance"

    @property
    def ssl_dir(self) -> Path:
        """Where the HTTPS certificate, its key and signing requests are kept (never served as files)."""
        return self.data_dir / "ssl"

    @property
    def exports_dir(self) -> Path:
        """Where data export files are written."""
        return self.data_dir / "exports"

    @property
    def embedded(self) -> bool:
        return self.database_url is None or self.nats_url is None

    def proxy_options(self) -> dict[str, Any]:
        """uvicorn's options for proxy headers: believed from the trusted proxies only, and not at all
        without any (uvicorn's own default believes them from loopback)."""
        return {"proxy_headers": bool(self.trusted_proxies), "forwarded_allow_ips": list(self.trusted_proxies)}


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match["scheme"], match["userinfo"]
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{scheme}{user}:{MASK}@"
    # A NATS URL with a user and no password carries a token there.
    if scheme.lower().startswith(("nats", "tls", "ws")):
        return f"{scheme}{MASK}@"
    return match[0]


def mask_secrets(text: str) -> str:
    """`text` with the passwords and tokens of any URL or libpq/key=value string in it replaced by ***."""
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    return _SECRET_KEYWORD.sub(lambda m: f"{m['key']}{MASK}", text)


def postgres_endpoint(database_url: str) -> str:
    """Where a libpq URL or connection string points, as `host:port` (or `socket-dir:port`), no credentials."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(database_url)
    except psycopg.ProgrammingError:
        return "an unparseable DATABASE_URL"
    hosts = str(parts.get("host") or parts.get("hostaddr") or "localhost").split(",")
    ports = str(parts.get("port") or "5432").split(",")
    pairs = [f"{h or 'localhost'}:{ports[i] if i < len(ports) else ports[-1]}" for i, h in enumerate(hosts)]
    return mask_secrets(",".join(pairs))


def nats_endpoint(nats_url: str) -> str:
    """Where a NATS URL (or comma-separated list of them) points, as `host:port`, no credentials."""
    endpoints = []
    for server in nats_url.split(","):
        split = urlsplit(server.strip())
        try:
            port = split.port or 4222
        except ValueError:
            port = 4222
        host = split.hostname or "localhost"
        endpoints.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return mask_secrets(",".join(endpoints))


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


def _origins(text: str) -> tuple[str, ...]:
    """Comma-separated origins (`https://app.example.com`, `http://localhost:3000`); never a wildcard."""
    origins: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "*" in item:
            raise ValueError("must name each origin: a wildcard would let any site call the API")
        split = urlsplit(item.rstrip("/"))
        try:
            port = split.port
        except ValueError:
            port = -1
        if split.scheme.lower() not in {"http", "https"} or not split.hostname or split.path or split.query \
                or split.fragment or "@" in split.netloc or port == -1:
            raise ValueError("must be origins such as https://app.example.com or http://localhost:3000")
        scheme, host = split.scheme.lower(), split.netloc.lower()
        # A browser's Origin leaves out the default port.
        origin = f"{scheme}://{host.removesuffix({'http': ':80', 'https': ':443'}[scheme])}"
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def _networks(text: str) -> tuple[str, ...]:
    """Comma-separated IP addresses and CIDR networks (`10.0.0.1,192.168.0.0/24,::1`); never a wildcard."""
    networks: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "*" in item:
            raise ValueError("must name each proxy: a wildcard would let any client choose its own address")
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError("must be IP addresses or networks such as 10.0.0.1 or 192.168.0.0/24") from None
        name = str(network.network_address) if network.num_addresses == 1 else str(network)
        if name not in networks:
            networks.append(name)
    return tuple(networks)


def _secret_key(text: str) -> str:
    if len(text) < 16:
        raise ValueError("must have at least 16 characters")
    return text


def _basic_credentials(text: str) -> str:
    user, _, password_hash = text.partition(":")
    if not user or not password_hash.startswith("$argon2"):
        raise ValueError("must be user:<argon2 hash of the password>, e.g. user:$argon2id$v=19$...")
    return text


def _host(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise ValueError("must be a host name or IP address")
    return text


_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DATABASE_URL": ("database_url", _database_url),
    "NATS_URL": ("nats_url", _url("nats", "tls")),
    "WATTLEDGER_NATS_RELAY_URL": ("nats_relay_url", _url("nats", "tls")),
    "WATTLEDGER_DATA_DIR": ("data_dir", Path),
    "WATTLEDGER_POLLING_INTERVAL": ("polling_interval", _number(float, 1, 86400)),
    "WATTLEDGER_POLL_TIMEOUT": ("poll_timeout", _number(float, 0.1, 120)),
    "WATTLEDGER_POLL_CONCURRENCY": ("poll_concurrency", _number(int, 1, 1024)),
    "WATTLEDGER_POLL_SUSPECT_CONCURRENCY": ("poll_suspect_concurrency", _number(int, 1, 1024)),
    "WATTLEDGER_POLL_STOP_GRACE": ("poll_stop_grace", _number(float, 0, 600)),
    "WATTLEDGER_POLL_LEASE": ("poll_lease", _number(float, 3, 3600)),
    "WATTLEDGER_OFFLINE_AFTER": ("offline_after", _number(int, 1, 1000)),
    "WATTLEDGER_CONTROL_DEADLINE": ("control_deadline", _number(float, 1, 3600)),
    "WATTLEDGER_EXECUTOR_ACK_WAIT": ("executor_ack_wait", _number(float, 1, 3600)),
    "WATTLEDGER_HOST": ("host", _host),
    "WATTLEDGER_PORT": ("port", _number(int, 1, 65535)),
    "WATTLEDGER_DISCOVERY_TARGET": ("discovery_target", _ip),
    "WATTLEDGER_DISCOVERY_PORT": ("discovery_port", _number(int, 1, 65535)),
    "WATTLEDGER_STREAM": ("stream_name", _identifier),
    "WATTLEDGER_SUBJECT_PREFIX": ("subject_prefix", _identifier),
    "WATTLEDGER_EMBEDDED_NATS_PORT": ("embedded_nats_port", _number(int, 0, 65535)),
    "WATTLEDGER_TIMEZONE": ("timezone", _zone),
    "WATTLEDGER_MAX_POWER_W": ("max_power_w", _number(float, 1, 100_000)),
    "WATTLEDGER_SESSION_THRESHOLD_W": ("session_threshold_w", _number(float, 0, 100_000)),
    "WATTLEDGER_SESSION_MIN_DURATION": ("session_min_duration", _number(float, 0, 86_400)),
    "WATTLEDGER_LOG_LEVEL": ("log_level", _level),
    "WATTLEDGER_LOG_JSON": ("log_json", _flag),
    "WATTLEDGER_STARTUP_TIMEOUT": ("startup_timeout", _number(float, 0.5, 3600)),
    "WATTLEDGER_SECRET_KEY": ("secret_key", _secret_key),
    "WATTLEDGER_RATE_LIMITS": ("rate_limits", _flag),
    "WATTLEDGER_RATE_LIMIT_IP": ("rate_limit_ip", parse_limits),
    "WATTLEDGER_RATE_LIMIT_USER": ("rate_limit_user", parse_limits),
    "WATTLEDGER_RATE_LIMIT_KEY": ("rate_limit_key", parse_limits),
    "WATTLEDGER_RATE_LIMIT_LOGIN": ("rate_limit_login", parse_limits),
    "WATTLEDGER_RATE_LIMIT_LOGIN_IP": ("rate_limit_login_ip", parse_limits),
    "WATTLEDGER_CORS_ORIGINS": ("cors_origins", _origins),
    "WATTLEDGER_METRICS_BASIC_AUTH": ("metrics_basic_auth", _basic_credentials),
    "WATTLEDGER_TRUSTED_PROXIES": ("trusted_proxies", _networks),
    "WATTLEDGER_LIVE_QUEUE": ("live_queue", _number(int, 1, 100_000)),
    "WATTLEDGER_LIVE_HEARTBEAT": ("live_heartbeat", _number(float, 0.1, 3600)),
    "WATTLEDGER_LIVE_AUTH_TIMEOUT": ("live_auth_timeout", _number(float, 0.1, 600)),
    "WATTLEDGER_LIVE_RECHECK": ("live_recheck", _number(float, 0.1, 3600)),
    "WATTLEDGER_EXPORT_RETENTION_DAYS": ("export_retention_days", _number(float, 0.001, 3650)),
    "WATTLEDGER_EXPORTS_PER_HOUR": ("exports_per_hour", _number(int, 1, 10_000)),
    "WATTLEDGER_MAX_UPLOAD_SIZE_MB": ("max_upload_size_mb", _number(float, 0.001, 1024)),
}

OPTION_ENV = {field: env for env, (field, _) in _FIELDS.items()}

_URL_SETTINGS = frozenset({"DATABASE_URL", "NATS_URL", "WATTLEDGER_NATS_RELAY_URL"})
_SECRET_SETTINGS = frozenset({"WATTLEDGER_SECRET_KEY"})
_LEADING_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?[^/\s?#]*@")


def _shown(env: str, text: str) -> str:
    """An invalid value as an error may show it: a URL setting keeps no user, password or token at
    all, even when its scheme is missing or wrong; a secret is never shown."""
    if env in _SECRET_SETTINGS:
        return MASK
    if env in _URL_SETTINGS:
        text = _LEADING_USERINFO.sub(lambda m: f"{m['scheme'] or ''}{MASK}@", text)
    return mask_secrets(text)


def load_settings(environ: Mapping[str, str], **overrides: str | None) -> Settings:
    """Settings from environment variables, then from command-line overrides (by field name).

    Raises SettingsError naming the first invalid setting; its message never holds a password.
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
            raise SettingsError(mask_secrets(f"invalid {env}={_shown(env, text)!r}: {exc}")) from None
    return Settings(**values)
