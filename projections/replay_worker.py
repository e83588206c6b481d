"""The process that replays one group of read models for `projections.parallel`.

On Linux it is a fork of the parent, running `forked`: the parent's code and modules as they are,
so it imports nothing and starts at once. Elsewhere it is a fresh interpreter,

    python -P -m projections.replay_worker JOB_FD REPLY_FD

which imports the replay and its group's read models, and nothing of the program that started
it (a process spawned by `multiprocessing` imports its parent's main module again, for the command
line the whole application). `projections.parallel` starts it with the directory of its own
`projections` package as the path, so it runs the same code as the parent whatever the working
directory holds.

On JOB_FD the parent sends a `Group` (its read models pickled, and its `sys.path`), then, once the
shadow tables are ready, `Go` with where each read model starts. The process loads the read models
and connects while the parent opens the shadow tables, replays the group into them on `Go`, and
answers on REPLY_FD with `Progress` for each section, then `Done` or `Failed`. The job pipe is the
parent's lifeline: once it is closed (the parent gave up on the group, or ended, even killed), the
process ends at once and the server rolls back the section in flight.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import NoReturn
from multiprocessing.connection import Connection

import msgspec
import psycopg

from adapters.eventlog import EventLog
from adapters.eventstore import WattLedger, store_env
from projections.quarantine import QuarantineRow, one_line
from projections.rebuild import SHADOW_SCHEMA, Shadow

__all__ = ["Done", "Failed", "Go", "Group", "Progress", "Reply", "forked", "main"]

ORPHANED = 70
"""The exit code of a process whose parent closed the job pipe before it was done."""


class Group(msgspec.Struct, frozen=True, kw_only=True):
    """The read models a process replays, and what it needs to load and reach them."""

    sys_path: list[str]
    database_url: str
    batch: int
    projectors: bytes
    """The read models' projectors, pickled (their classes are imported from `sys_path`)."""


class Go(msgspec.Struct, frozen=True, kw_only=True):
    """The shadow tables are ready: replay each read model from its position in `starts` (0 if absent)."""

    starts: dict[str, int]


class Progress(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    position: int
    head: int
    events: int


class Done(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The group is replayed to `position`. `ready`, `began` and `ended` are wall-clock times (`time.time`):
    ready to replay (modules, read models, connections), the `Go` received, the last section committed;
    `cpu` is the process's CPU time in all."""

    position: int
    events: int
    quarantined: list[QuarantineRow]
    ready: float
    began: float
    ended: float
    cpu: float


class Failed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    error: str


Reply = Progress | Done | Failed

_encode = msgspec.msgpack.Encoder().encode


def _end_with_parent(jobs: Connection) -> None:
    try:
        while True:
            jobs.recv_bytes()
    except (EOFError, OSError):
        os._exit(ORPHANED)


def _replay(group: Group, jobs: Connection, replies: Connection) -> None:
    projectors = pickle.loads(group.projectors)
    app = WattLedger(store_env(group.database_url, pool_size=1))
    try:
        with psycopg.connect(group.database_url, autocommit=True) as conn:
            shadow = Shadow(EventLog(app), conn, projectors, SHADOW_SCHEMA, group.batch)
            ready = time.time()
            try:
                go = msgspec.msgpack.decode(jobs.recv_bytes(), type=Go)
            except EOFError:
                raise SystemExit(ORPHANED) from None
            began = time.time()
            threading.Thread(target=_end_with_parent, args=(jobs,), name="parent-watch", daemon=True).start()
            shadow.starts = dict(go.starts)
            shadow.position = min(go.starts.get(name, 0) for name in shadow.names)
            shadow.catch_up(lambda p: replies.send_bytes(
                _encode(Progress(position=p.position, head=p.head, events=p.events))
            ))  # fmt: skip
            replies.send_bytes(_encode(Done(
                position=shadow.position, events=shadow.events, quarantined=shadow.quarantined, ready=ready,
                began=began, ended=time.time(), cpu=time.process_time(),
            )))  # fmt: skip
    finally:
        app.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Replay the group sent on the job pipe; the exit code is 0 once `Done` is sent (or no group came)."""
    # An interrupt from the terminal reaches the whole process group: the parent decides what ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    job_fd, reply_fd = (int(arg) for arg in (sys.argv[1:] if argv is None else argv))
    jobs, replies = Connection(job_fd, writable=False), Connection(reply_fd, readable=False)
    try:
        group = msgspec.msgpack.decode(jobs.recv_bytes(), type=Group)
    except EOFError:
        return 0
    sys.path[:] = group.sys_path
    try:
        _replay(group, jobs, replies)
    except SystemExit:
        raise
    except BaseException as error:
        with suppress(OSError):
            replies.send_bytes(_encode(Failed(error=one_line(error))))
        return 1
    return 0


def forked(job_fd: int, reply_fd: int, inherited: Sequence[int]) -> NoReturn:
    """`main` in a process just forked from the parent, on these pipes; it ends the process, never returning.

    What the parent held when it forked is left alone: its objects are frozen out of the collector, so
    no finalizer of theirs runs here (a connection's would end the parent's session on their shared
    socket); the parent's ends of the workers' pipes (`inherited`) are closed, so a worker's job pipe
    closes when the parent's end does; its signal handlers for SIGTERM are undone; and the process ends
    by `os._exit`, so no exit handler of the parent's runs and none of its buffers is written twice."""
    code = 1
    try:
        gc.freeze()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for fd in inherited:
            with suppress(OSError):
                os.close(fd)
        code = main([str(job_fd), str(reply_fd)])
    except SystemExit as ended:
        code = ended.code if isinstance(ended.code, int) else 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
