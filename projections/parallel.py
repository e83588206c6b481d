"""Rebuilding read models in several processes, then swapping them all in one transaction.

No read model's projector reads another's tables, so each read model is a group of its
own; `groups` deals them into `jobs` groups of about equal replay work. Each group gets a
process of its own at once, running `projections.replay_worker`. On Linux it is a fork of
this one (`FORKS`): it starts replaying about a tenth of a second after its launch, with
nothing to import. Elsewhere it is a fresh interpreter, which imports the replay and its
group's read models only (not the parent's main module, nor the application): about a
second before its first section. Either way it inherits no connection or thread of the
parent's that it uses. While those start, the parent opens the shadow tables (holding
every replay lock, loading checkpoints if asked); then each group is replayed to the log's
head in its process, reading and decoding the log itself and committing its sections to
its shadow tables. The parent collects where each group stopped and what it quarantined,
and `Shadow.swap` replays the last events for every read model from there and swaps them
all in, as a one-process rebuild does. A group that fails, or whose process ends without a
word, ends the rebuild: the other processes are stopped, the shadow tables dropped, the
live read models untouched. A group's process ends by itself when the parent does, even
killed.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from projections import replay_worker
from projections.checkpoints import Checkpoint
from projections.errors import ProjectionError
from projections.rebuild import SHADOW_SCHEMA, ReplayProgress, checked_checkpoints, chosen_projectors, open_shadow
from projections.replay_plan import (
    DECODE_COST,
    FORKS,
    PARALLEL_FROM,
    READ_COST,
    REPLAY_COST,
    SPAWNED_FROM,
    aside_group,
    cores,
    default_jobs_for,
    group_cost,
    groups,
)
from projections.replay_worker import Done, Failed, Progress, Reply
from projections.tables import Projector

if TYPE_CHECKING:
    from projections.engine import ProjectionEngine

__all__ = [
    "DECODE_COST", "READ_COST", "REPLAY_COST", "GroupFailed", "GroupTimes", "PARALLEL_FROM", "SPAWNED_FROM",
    "aside_group", "FORKS", "default_jobs_for", "group_cost", "groups",
    "rebuild_in_processes",
]  # fmt: skip

_ROOT = str(Path(__file__).resolve().parent.parent)
"""The directory holding this `projections` package: a group's process imports from it first."""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Reply).decode


class GroupFailed(ProjectionError, RuntimeError):
    """A process replaying a group of read models failed; nothing was swapped."""


class GroupTimes(msgspec.Struct, frozen=True, kw_only=True):
    """How long a group's process took, in seconds: `start` from its launch to its first section (the
    interpreter, its modules and read models, its connections, and any wait for the shadow tables), `replay`
    from there to its last section, `cpu` its CPU time in all."""

    read_models: tuple[str, ...]
    start: float
    replay: float
    cpu: float


class _Forked:
    """A group's process forked from this one, answering as much of `subprocess.Popen` as `_Worker` asks."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler): its code is lost
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"replay worker {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        return code

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, number: int) -> None:
        if self.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.pid, number)


def _fork(job_read: int, reply_write: int, inherited: Sequence[int]) -> _Forked:
    """A process forked from this one that runs `replay_worker.forked` on these pipes and never comes back;
    `inherited` are this process's ends of the workers' pipes, which the child closes."""
    for stream in (sys.stdout, sys.stderr):  # what is buffered would be written twice, once by the child
        with suppress(OSError, ValueError, AttributeError):
            stream.flush()
    with warnings.catch_warnings():
        # Python 3.12 warns of any fork of a process running threads; the child is written for that (`FORKS`).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, which ends inside
        replay_worker.forked(job_read, reply_write, inherited)
    return _Forked(pid)


class _Worker:
    """A group's process (`projections.replay_worker`) and the pipes to it: jobs out, replies in.

    `inherited` are the pipe ends this process holds for other workers: a forked process closes them, so
    that only this process keeps a worker's job pipe open (its lifeline) and only the worker its replies."""

    def __init__(self, group: Sequence[Projector], *, fork: bool, inherited: Sequence[int] = ()) -> None:
        self.name = ", ".join(p.name for p in group)
        self.launched = time.time()
        job_read, self._job_write = os.pipe()
        self._reply_read, reply_write = os.pipe()
        self.process: subprocess.Popen[bytes] | _Forked
        try:
            if fork:
                self.process = _fork(job_read, reply_write, [*inherited, self._job_write, self._reply_read])
            else:
                env = {**os.environ,
                       "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}  # fmt: skip
                # -P: the working directory does not come first on the path, `_ROOT` does.
                self.process = subprocess.Popen(
                    [sys.executable, "-P", "-m", replay_worker.__name__, str(job_read), str(reply_write)],
                    pass_fds=(job_read, reply_write), env=env,
                )  # fmt: skip
        except BaseException:
            os.close(self._job_write)
            os.close(self._reply_read)
            raise
        finally:
            os.close(job_read)
            os.close(reply_write)
        self.jobs = Connection(self._job_write, readable=False)
        self.replies = Connection(self._reply_read, writable=False)

    @property
    def ends(self) -> tuple[int, int]:
        """This process's ends of the pipes: the job pipe's writer, the replies' reader."""
        return self._job_write, self._reply_read

    def send(self, message: msgspec.Struct) -> None:
        try:
            self.jobs.send_bytes(_encode(message))
        except OSError:
            raise GroupFailed(f"the process replaying {self.name} ended with code {self.exit_code()}") from None

    def exit_code(self) -> int | None:
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """End the process if it still runs (closing the job pipe ends it as well), and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
        self.close()
        if self.exit_code() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.jobs.close()
        self.replies.close()


@contextmanager
def _launched(
    dealt: Sequence[Sequence[Projector]], database_url: str, batch: int, fork: bool
) -> Iterator[list[_Worker]]:
    """A process for each group (forked with `fork`), sent its read models at once (so they load while the
    parent prepares); every one still running is ended on the way out."""
    workers: list[_Worker] = []
    try:
        for group in dealt:
            workers.append(_Worker(group, fork=fork, inherited=[end for w in workers for end in w.ends]))
        for worker, group in zip(workers, dealt, strict=True):
            worker.send(replay_worker.Group(
                sys_path=list(sys.path), database_url=database_url, batch=batch, projectors=pickle.dumps(list(group)),
            ))  # fmt: skip
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def _collect(workers: Sequence[_Worker], progress: Callable[[ReplayProgress], None] | None) -> list[Done]:
    """Wait for every group's outcome, reporting the slowest group's progress; raise `GroupFailed` on a failure
    (or a process that ended without saying)."""
    done: dict[int, Done] = {}
    seen: dict[int, tuple[int, int, int]] = {}
    while len(done) < len(workers):
        waiting = [w.replies for i, w in enumerate(workers) if i not in done]
        ready = wait(waiting)
        for index, worker in enumerate(workers):
            if worker.replies not in ready:
                continue
            try:
                reply = _decode(worker.replies.recv_bytes())
            except EOFError:
                raise GroupFailed(f"the process replaying {worker.name} ended with code {worker.exit_code()}") from None
            match reply:
                case Failed(error=error):
                    raise GroupFailed(f"replaying {worker.name} failed: {error}")
                case Done():
                    done[index] = reply
                case Progress(position=position, head=head, events=events):
                    seen[index] = (position, head, events)
                    if progress is not None:
                        position, head, events = min(seen.values())
                        progress(ReplayProgress(phase="replay", position=position, head=head, events=events))
    return [done[index] for index in range(len(workers))]


def rebuild_in_processes(
    engine: ProjectionEngine, names: Sequence[str], jobs: int,
    progress: Callable[[ReplayProgress], None] | None = None, *, from_checkpoint: bool = False,
    timed: Callable[[GroupTimes], None] | None = None, fork: bool = FORKS,
) -> tuple[int, dict[str, Checkpoint]]:
    """Rebuild `names` as `rebuild_many` does (from their checkpoints with `from_checkpoint`), each group
    of read models replayed in a process of its own (forked from this one with `fork`, else a fresh
    interpreter), then all swapped in one transaction. `timed` is given each group's `GroupTimes` once all
    are replayed.

    Returns the events replayed and the checkpoints used. Raises what `rebuild_many` raises, and
    `GroupFailed` when a group's process fails (the live read models are left as they were).
    """
    picked = chosen_projectors(engine, names)
    dealt = groups(picked, jobs)
    with _launched(dealt, engine.database_url, engine.replay_batch_size, fork) as workers:
        found = checked_checkpoints(engine, picked) if from_checkpoint else {}
        with open_shadow(
            engine.database_url, engine.event_log, picked, SHADOW_SCHEMA, engine.replay_batch_size
        ) as shadow:
            shadow.restore(engine.database_url, found)
            for worker, group in zip(workers, dealt, strict=True):
                worker.send(replay_worker.Go(starts={p.name: shadow.starts.get(p.name, 0) for p in group}))
            done = _collect(workers, progress)
            for worker in workers:
                worker.exit_code()
            for group, outcome in zip(dealt, done, strict=True):
                shadow.quarantined.extend(outcome.quarantined)
                for projector in group:
                    shadow.starts[projector.name] = outcome.position
            slowest = min(done, key=lambda outcome: outcome.position)
            shadow.position, shadow.events = slowest.position, slowest.events
            shadow.swap(progress)
    if timed is not None:
        for worker, group, outcome in zip(workers, dealt, done, strict=True):
            timed(GroupTimes(
                read_models=tuple(p.name for p in group), start=outcome.began - worker.launched,
                replay=outcome.ended - outcome.began, cpu=outcome.cpu,
            ))  # fmt: skip
    return shadow.events, found
