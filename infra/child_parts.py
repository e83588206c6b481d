"""Parts that run as child processes of `wattledger serve`: the relay, in a process of its own.

The relay publishes every stored event to JetStream. In the serve process it would compete with
the API's handlers and the projector thread for one interpreter lock; in a child process it has a
core of its own, and a bulk import stores faster. `relay_child` builds that part: the same program
(`wattledger relay`) with the same settings (the URLs the parent resolved, the relay's own NATS URL,
data directory, stream, subject prefix, log level and format; every other setting is inherited
from the parent's environment), its logs on the parent's stderr.

`ChildProcess.run` is supervised like any part (`infra.supervisor`): a child that exits while the
parent runs is a failure, restarted with the supervisor's backoff, and one that fails too often
ends the parent with `PartFailedTooOften`. When the parent stops, the child is sent SIGTERM (its
clean stop) and waited for; one that takes longer than `patience` is killed. The child runs in a
session of its own, so a Ctrl-C at the terminal reaches the parent only, which stops the child.

A parent that dies without stopping its child (SIGKILL, a crash) must not leave it running: the
child's stdin is a pipe from the parent, and the child stops cleanly when it reads end of file
there (`stop_when_stdin_closes`), which the kernel gives it as soon as the parent's end is closed,
however the parent ended.

`WATTLEDGER_RELAY_PROCESS=false` keeps the relay in the serve process (`relay_in_child`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import structlog

from infra.settings import Settings, SettingsError
from infra.supervisor import PartEnded

__all__ = [
    "RELAY_PROCESS_ENV",
    "STDIN_OPTION",
    "ChildExited",
    "ChildProcess",
    "relay_child",
    "relay_child_env",
    "relay_in_child",
    "stop_when_stdin_closes",
]

log = structlog.get_logger(__name__)

RELAY_PROCESS_ENV = "WATTLEDGER_RELAY_PROCESS"
"""`true` (the default): `serve` runs the relay in a child process; `false`: in its own process."""

STDIN_OPTION = "--stop-when-stdin-closes"
"""The (hidden) option of `wattledger relay` that makes it stop once its stdin reaches end of file."""

CHILD_PATIENCE_S = 8.0
"""How long a child may take to stop after SIGTERM before it is killed (within the supervisor's patience)."""


class ChildExited(PartEnded):
    """A child process ended while its parent was running."""


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exited with code {code}"


def relay_in_child(environ: Mapping[str, str]) -> bool:
    """Whether `serve` runs the relay in a child process (`WATTLEDGER_RELAY_PROCESS`, default true)."""
    text = environ.get(RELAY_PROCESS_ENV, "").strip().lower()
    if text in {"", "1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"invalid {RELAY_PROCESS_ENV}={environ[RELAY_PROCESS_ENV]!r}: must be true or false")


def relay_child_env(
    settings: Settings, database_url: str, nats_url: str, relay_url: str | None, environ: Mapping[str, str],
) -> dict[str, str]:
    """The child relay's environment: the parent's, with the settings the parent resolved (embedded
    servers' URLs, command-line options, settings a caller built in code) written over it."""
    env = dict(environ)
    resolved = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "WATTLEDGER_NATS_RELAY_URL": relay_url or settings.nats_relay_url,
        "WATTLEDGER_DATA_DIR": str(settings.data_dir),
        "WATTLEDGER_STREAM": settings.stream_name,
        "WATTLEDGER_SUBJECT_PREFIX": settings.subject_prefix,
        "WATTLEDGER_TIMEZONE": settings.timezone,
        "WATTLEDGER_LOG_LEVEL": settings.log_level,
        "WATTLEDGER_LOG_JSON": "true" if settings.log_json else "false",
        "WATTLEDGER_STARTUP_TIMEOUT": repr(settings.startup_timeout),
        "WATTLEDGER_SECRET_KEY": settings.secret_key,
    }
    for name, value in resolved.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def relay_child(
    settings: Settings, database_url: str, nats_url: str, relay_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ChildProcess:
    """The relay of `serve` as a child process: `wattledger relay` with this process's settings."""
    env = relay_child_env(settings, database_url, nats_url, relay_url, os.environ if environ is None else environ)
    return ChildProcess("relay", [sys.executable, "-m", "infra.cli", "relay", STDIN_OPTION], env)


class ChildProcess:
    """One child process run as a part; see the module docstring."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], *, patience: float = CHILD_PATIENCE_S,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.patience = patience
        self.pid: int | None = None
        """The running child's process id (None before the first start and once it ended)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Start the child and wait: until it exits (raises ChildExited) or `stop` is set (stops it
        with SIGTERM and waits, killing it after `patience`). Cancelled, it kills the child."""
        process = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, stdin=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        self.pid = process.pid
        log.info("child.started", part=self.name, pid=process.pid)
        exited = asyncio.create_task(process.wait())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                _signal(process, signal.SIGTERM)
                await asyncio.wait({exited}, timeout=self.patience)
                if not exited.done():
                    log.warning("child.killed", part=self.name, pid=process.pid, after_s=self.patience)
            elif not stop.is_set():
                raise ChildExited(f"the {self.name} process (pid {process.pid}) {_how(process.returncode)}")
        finally:
            stopped.cancel()
            if process.returncode is None:
                _signal(process, signal.SIGKILL)
            if process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.shield(exited)
            finally:
                self.pid = None
        log.info("child.stopped", part=self.name, pid=process.pid, code=process.returncode)


def _signal(process: asyncio.subprocess.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:  # it ended on its own meanwhile
        pass


async def stop_when_stdin_closes(stop: asyncio.Event) -> None:
    """Set `stop` once stdin reaches end of file: the parent holding the pipe's other end is gone
    (or asks for a stop). Runs until then, or until cancelled."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while await reader.read(4096):
            pass
        if not stop.is_set():
            log.info("shutdown.parent_gone")
            stop.set()
    finally:
        transport.close()
