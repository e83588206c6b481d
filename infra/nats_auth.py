"""NATS users and what each may publish and subscribe to, for a server with authorization.

Four roles share one account (JetStream included):

- ``relay`` publishes the stored events on ``<prefix>.events.>`` and nothing else;
- ``app`` (API, poller, executor, command responder, live fan-out) may do everything it needs but
  publish on ``<prefix>.events.>``, and is the only role that sees ``<prefix>.cmd.>`` requests,
  whose headers carry API keys and access tokens;
- ``reader`` (external subscribers, ``wattledger tail``) reads the events stream through its own
  JetStream consumers, publishes no event or command, changes no stream, and cannot touch the
  command executor's consumer;
- ``commander`` (external request/reply clients) sends ``<prefix>.cmd.>`` requests and reads
  only replies, so it never sees another client's request.

`server_config` renders the ``authorization`` block of a nats-server configuration (JSON, which
nats-server reads) for the users of a `load_credentials` file; both files hold passwords and are
written with mode 0600.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec

from adapters.executor import DURABLE as EXECUTOR_CONSUMER

__all__ = [
    "APP",
    "COMMANDER",
    "READER",
    "RELAY",
    "ROLES",
    "Credential",
    "Permissions",
    "load_credentials",
    "role_permissions",
    "server_config",
    "with_credential",
    "write_private",
]

RELAY, APP, READER, COMMANDER = "relay", "app", "reader", "commander"
ROLES = (APP, RELAY, READER, COMMANDER)
_URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


class Credential(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    password: str


class Rules(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    """nats-server's `permissions` map for one user: subjects allowed and denied (deny wins)."""

    publish: Rules
    subscribe: Rules


def role_permissions(subject_prefix: str, stream: str) -> dict[str, Permissions]:
    """What each role may publish and subscribe to, for the events stream `stream` and `subject_prefix`."""
    events, commands = f"{subject_prefix}.events.>", f"{subject_prefix}.cmd.>"
    api = "$JS.API"
    executor = EXECUTOR_CONSUMER
    return {
        APP: Permissions(publish=Rules(allow=(">",), deny=(events,)), subscribe=Rules(allow=(">",))),
        # A JetStream publish is a request: the ack comes back to the relay's inbox.
        RELAY: Permissions(publish=Rules(allow=(events,)), subscribe=Rules(allow=("_INBOX.>",))),
        READER: Permissions(
            publish=Rules(
                allow=(
                    f"{api}.INFO",
                    f"{api}.STREAM.NAMES",
                    f"{api}.STREAM.INFO.{stream}",
                    f"{api}.STREAM.MSG.GET.{stream}",
                    f"{api}.DIRECT.GET.{stream}",
                    f"{api}.DIRECT.GET.{stream}.>",
                    # Named creates only: the nameless form takes the name from the body, so it
                    # could rewrite the executor's consumer.
                    f"{api}.CONSUMER.CREATE.{stream}.>",
                    f"{api}.CONSUMER.DURABLE.CREATE.{stream}.*",
                    f"{api}.CONSUMER.INFO.{stream}.*",
                    f"{api}.CONSUMER.DELETE.{stream}.*",
                    f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
                    f"$JS.ACK.{stream}.>",
                    f"$JS.FC.{stream}.>",
                ),
                deny=(
                    events,
                    commands,
                    f"{api}.CONSUMER.*.{stream}.{executor}",
                    f"{api}.CONSUMER.CREATE.{stream}.{executor}.>",
                    f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{executor}",
                    f"{api}.CONSUMER.MSG.NEXT.{stream}.{executor}",
                    f"$JS.ACK.{stream}.{executor}.>",
                ),
            ),
            subscribe=Rules(allow=(events, "_INBOX.>"), deny=(commands,)),
        ),
        COMMANDER: Permissions(publish=Rules(allow=(commands,)), subscribe=Rules(allow=("_INBOX.>",))),
    }


def write_private(path: Path, content: bytes) -> None:
    """Write `content` to `path` (mode 0600) through a temporary file, so no reader sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


_CREDENTIALS = msgspec.json.Decoder(dict[str, Credential])


def load_credentials(path: Path, *, create: bool = True) -> dict[str, Credential]:
    """Every role's user and password from `path`; roles missing there (or the file) get new ones once.

    The file is JSON, `{"<role>": {"user", "password"}}`, mode 0600 (tightened if it was looser).
    With `create` false, a missing file gives an empty dict and nothing is written.
    """
    try:
        credentials = _CREDENTIALS.decode(path.read_bytes())
    except FileNotFoundError:
        if not create:
            return {}
        credentials = {}
    missing = [role for role in ROLES if role not in credentials]
    if missing and create:
        for role in missing:
            credentials[role] = Credential(user=role, password=secrets.token_urlsafe(32))
        write_private(path, msgspec.json.format(msgspec.json.encode(credentials)) + b"\n")
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return credentials


class _User(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    password: str
    permissions: Permissions


def server_config(credentials: dict[str, Credential], permissions: dict[str, Permissions]) -> bytes:
    """A nats-server configuration (JSON) with one user per role of `permissions`."""
    users = [
        _User(user=credentials[role].user, password=credentials[role].password, permissions=rules)
        for role, rules in permissions.items()
    ]
    config = {"authorization": {"users": users}}
    return msgspec.json.format(msgspec.json.encode(config)) + b"\n"


def with_credential(url: str, credential: Credential) -> str:
    """`url` (or each of a comma-separated list) with `credential` as its user and password.

    nats-py takes a URL's user and password as written (it decodes no %-escapes), so both must be
    URL-safe, as generated ones are; anything else raises ValueError.
    """
    if not all(_URL_SAFE.match(part) for part in (credential.user, credential.password)):
        raise ValueError("a NATS user and password in a URL must be letters, digits, '-' and '_'")
    userinfo = f"{credential.user}:{credential.password}"
    servers = []
    for server in url.split(","):
        split = urlsplit(server.strip())
        host = split.netloc.rpartition("@")[2]
        servers.append(urlunsplit(split._replace(netloc=f"{userinfo}@{host}")))
    return ",".join(servers)
