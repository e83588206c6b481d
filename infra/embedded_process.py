"""What the embedded servers (`infra.embedded_postgres`, `infra.embedded_nats`) share: their error,
whether a process lives, and the tail of a server's log for an error message."""

from __future__ import annotations

import os
from pathlib import Path

from infra.errors import InfraError

TAIL_CHARS = 2000


class EmbeddedError(InfraError):
    """An embedded server could not be found, started or stopped; the message says why."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_tail(path: Path, offset: int = 0) -> str:
    try:
        with path.open("rb") as file:
            file.seek(max(offset, file.seek(0, os.SEEK_END) - TAIL_CHARS))
            return file.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
