"""Embedded PostgreSQL from `pgserver` (a real PostgreSQL 16 shipped as a wheel), for running without a server.

Its data lives in ``data_dir/postgres``; it listens only on a unix socket in that directory (or in
a short runtime directory when the path is too long for a socket). `pgserver` is imported lazily
because importing it computes paths and may warn; it refuses to run as root, so a system user
runs it (see `_require_pgserver_user`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

import structlog

from infra.embedded_process import EmbeddedError, log_tail, pid_alive

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

__all__ = ["EmbeddedPostgres"]

log = structlog.get_logger(__name__)

_PGSERVER_SYSTEM_USER = "pgserver"


class EmbeddedPostgres:
    """A PostgreSQL server owned by this process, with its data in ``data_dir/postgres``.

    `start` returns a libpq URL of the form
    ``postgresql://postgres:@/postgres?host=/abs/socket/dir&port=5432``: user ``postgres``, empty
    password (trust authentication, socket only), database ``postgres``, and ``host`` a unix-socket
    directory. `psycopg.connect` takes it as is; `psycopg.conninfo.conninfo_to_dict` splits it into
    ``host``, ``port``, ``user``, ``password`` and ``dbname`` (note that `urllib.parse` sees no host
    in it: the socket directory is in the query string).

    pgserver lets several processes share one server per data directory: each registers its pid,
    and the last one to let go stops the server. `stop` lets go of this process's share, so the
    server stops unless another live process still uses it. Pids of dead processes are forgotten on
    `start`, so a crashed run neither keeps the server alive forever nor blocks the next one, which
    simply takes over the server left running.

    PostgreSQL refuses to run as root. As root, pgserver runs it as the system user ``pgserver``
    (created with ``useradd`` if missing), hands it ``data_dir/postgres`` and makes every parent
    directory of it, and pgserver's own binaries, readable and traversable by all users.
    """

    _started_here: ClassVar[set[Path]] = set()

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._server: PostgresServer | None = None
        self._pgdata: Path | None = None
        self._url: str | None = None

    @property
    def pgdata(self) -> Path:
        """The PostgreSQL data directory, ``data_dir/postgres``."""
        return self.data_dir / "postgres"

    def start(self) -> str:
        """Start (or take over) the server and return its connection URL; idempotent."""
        if self._url is not None:
            return self._url
        pgdata = self.pgdata.expanduser().resolve()
        if pgdata in self._started_here:
            raise EmbeddedError(f"an EmbeddedPostgres in this process already runs {pgdata}")
        if os.geteuid() == 0:
            _require_pgserver_user()
        pgserver = _import_pgserver()
        pgdata.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(pgserver, pgdata)
        started = time.monotonic()
        try:
            # The constructor, unlike get_server(), never hands back an instance cached by an
            # earlier start, whose pid registration a previous stop() already removed.
            server = pgserver.PostgresServer(pgdata, cleanup_mode="stop")
        except (subprocess.SubprocessError, OSError, AssertionError, RuntimeError) as exc:
            raise EmbeddedError(
                f"embedded PostgreSQL in {pgdata} did not start: {exc}\n{log_tail(pgdata / 'log')}"
            ) from exc
        self._server, self._pgdata = server, pgdata
        self._started_here.add(pgdata)
        self._url = _postgres_url(server)
        log.info(
            "embedded_postgres_started",
            pgdata=str(pgdata),
            pid=server.get_pid(),
            system_user=server.system_user,
            seconds=round(time.monotonic() - started, 3),
        )
        return self._url

    def stop(self) -> None:
        """Release this process's share of the server, stopping it if no one else uses it."""
        server, pgdata = self._server, self._pgdata
        if server is None or pgdata is None:
            return
        self._server = self._pgdata = self._url = None
        self._started_here.discard(pgdata)
        try:
            server.cleanup()
        except (subprocess.SubprocessError, OSError) as exc:
            raise EmbeddedError(f"embedded PostgreSQL in {pgdata} did not stop: {exc}") from exc
        log.info("embedded_postgres_stopped", pgdata=str(pgdata))


def _import_pgserver() -> ModuleType:
    # Importing pgserver computes a runtime directory, and platformdirs warns when
    # XDG_RUNTIME_DIR is unset (containers, CI); the fallback it picks is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import pgserver
    return pgserver


def _require_pgserver_user() -> None:
    try:
        pwd.getpwnam(_PGSERVER_SYSTEM_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            raise EmbeddedError(
                "PostgreSQL refuses to run as root; pgserver runs it as the system user "
                f"{_PGSERVER_SYSTEM_USER!r}, which does not exist and cannot be created without "
                "`useradd`. Create that user, run as a non-root user, or set DATABASE_URL."
            ) from None


def _forget_dead_handles(pgserver: ModuleType, pgdata: Path) -> None:
    from pgserver.utils import DiskList

    with pgserver.PostgresServer._lock:
        handles = DiskList(pgdata / ".handle_pids.json")
        for pid in handles.get():
            if not pid_alive(pid):
                handles.get_and_remove(pid)
                log.info("embedded_postgres_dead_handle_forgotten", pgdata=str(pgdata), pid=pid)


def _postgres_url(server: PostgresServer) -> str:
    info = server.get_postmaster_info()
    if info.socket_dir is None:
        return server.get_uri()
    socket_dir = quote(str(info.socket_dir), safe="/")
    return f"postgresql://{server.postgres_user}:@/postgres?host={socket_dir}&port={info.port}"
