"""Rebuilding read models in several processes, then swapping them all in one transaction.

No read model's projector reads another's tables, so each read model is a group of its
own; `groups` deals them into `jobs` groups of about equal replay work. Each group gets a
process of its own at once: a fresh interpreter running `projections.replay_worker`, which
imports the replay and its group's read models only (not the parent's main module, nor
the application) and inherits no connection or thread of the parent's. While those load,
the parent opens the shadow tables (holding every replay lock, loading checkpoints if
asked); then each group is replayed to the log's head in its process, reading and decoding
the log itself and committing its sections to its shadow tables. The parent collects where
each group stopped and what it quarantined, and `Shadow.swap` replays the last events for
every read model from there and swaps them all in, as a one-process rebuild does. A group
that fails, or whose process ends without a word, ends the rebuild: the other processes are
stopped, the shadow tables dropped, the live read models untouched. A group's process ends
by itself when the parent does, even killed.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from eventsourcing.utils import get_topic

from domain.meter import MeterDay
from projections import replay_worker
from projections.checkpoints import Checkpoint
from projections.errors import ProjectionError
from projections.quarantine import EVERY_EVENT, undecoded_topics
from projections.rebuild import SHADOW_SCHEMA, ReplayProgress, checked_checkpoints, chosen_projectors, open_shadow
from projections.replay_worker import Done, Failed, Progress, Reply
from projections.tables import Projector

if TYPE_CHECKING:
    from projections.engine import ProjectionEngine

__all__ = [
    "DECODE_COST", "READ_COST", "REPLAY_COST", "GroupFailed", "GroupTimes", "PARALLEL_FROM", "aside_group",
    "default_jobs", "default_jobs_for", "group_cost", "groups",
    "rebuild_in_processes",
]  # fmt: skip

_ROOT = str(Path(__file__).resolve().parent.parent)
"""The directory holding this `projections` package: a group's process imports from it first."""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Reply).decode

READ_COST = 2.5
"""CPU per event (microseconds) of reading the log's rows: every group's process pays it."""
DECODE_COST = 10.0
"""CPU per event of decoding the readings, paid by a group with a read model that needs them decoded
(one that does not `ignores` them, `projections.quarantine.undecoded_topics`)."""
REPLAY_COST: dict[str, float] = {
    "energy": 10.0, "devices": 2.9, "alerts": 2.1, "chain": 1.9, "exports": 0.5, "audit": 0.3, "identity": 0.1,
    "commands": 0.1,
}  # fmt: skip
"""Each read model's own CPU per event in a replay, above reading and decoding the log (1.0 for one not
named). Measured as the CPU of each read model's process replaying it alone (`rebuild_in_processes` with a
process per read model and `timed`, 243,000 events of 1,000 devices), less the process's start (about
1 s) and, for those that need the readings, reading and decoding them. With these the registered read
models fall into energy | the others, which the processes' wall times agree with: energy alone is the
slower of the two, and no split can be faster than the group that holds energy."""

PARALLEL_FROM = 150_000
"""The events to replay from which `default_jobs_for` takes more than one process. On two cores and an idle
machine, two processes were 1.23x faster than one at 243,000 events and slower at 63,000."""


def _needs_readings(projector: Projector) -> bool:
    return not undecoded_topics([projector]) & {get_topic(MeterDay.ReadingRecorded), EVERY_EVENT}


def group_cost(group: Sequence[Projector]) -> float:
    """The estimated CPU per event of replaying `group` in a process of its own (0 for none)."""
    if not group:
        return 0.0
    decode = DECODE_COST if any(_needs_readings(p) for p in group) else 0.0
    return READ_COST + decode + sum(REPLAY_COST.get(p.name, 1.0) for p in group)


class GroupFailed(ProjectionError, RuntimeError):
    """A process replaying a group of read models failed; nothing was swapped."""


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_jobs(count: int) -> int:
    """Processes for rebuilding `count` read models: one per core, at most one per read model."""
    return max(1, min(cores(), count))


def default_jobs_for(projectors: Sequence[Projector], events: int, cores: int) -> int:
    """Processes worth rebuilding `projectors` in, with `events` to replay on `cores` CPUs shared with the
    database: one below `PARALLEL_FROM` events (the processes' start and each group's own read of the log
    cost more than they save); else at most one per two cores (each process keeps a database backend busy
    as well: on two cores, two processes were slower than one whenever anything else ran), and of those the
    fewest beyond which another process would not cut the slowest group's `group_cost` by a tenth."""
    if events < PARALLEL_FROM:
        return 1
    jobs, pace = 1, group_cost(projectors)
    for more in range(2, min(cores // 2, len(projectors)) + 1):
        slowest = max(group_cost(group) for group in groups(projectors, more))
        if slowest < 0.9 * pace:
            jobs, pace = more, slowest
    return jobs


def aside_group(projectors: Sequence[Projector]) -> list[str]:
    """The read models a replay in one process applies in a second thread while its own thread applies the
    rest (`projections.rebuild.Shadow.catch_up`): the group `groups` deals apart from the first read model's
    when they are dealt in two. None on one core, where the threads could only take turns."""
    if cores() < 2 or len(projectors) < 2:
        return []
    dealt = groups(projectors, 2)
    return [p.name for p in dealt[-1]] if len(dealt) == 2 else []


def groups(projectors: Sequence[Projector], jobs: int) -> list[list[Projector]]:
    """`projectors` dealt into at most `jobs` groups of about equal `group_cost`: heaviest first, each to
    the group it makes the cheapest (so read models that need the readings decoded gather, and one that
    does not joins a group that spares decoding them when it can); in registration order within and
    between groups."""
    if jobs < 1:
        raise ValueError(f"jobs must be 1 or more, got {jobs}")
    dealt: list[list[Projector]] = [[] for _ in range(min(jobs, len(projectors)))]
    order = {p.name: i for i, p in enumerate(projectors)}
    for projector in sorted(projectors, key=lambda p: -REPLAY_COST.get(p.name, 1.0)):
        costs = [group_cost([*group, projector]) for group in dealt]
        dealt[costs.index(min(costs))].append(projector)
    ordered = [sorted(group, key=lambda p: order[p.name]) for group in dealt if group]
    return sorted(ordered, key=lambda group: order[group[0].name])


class GroupTimes(msgspec.Struct, frozen=True, kw_only=True):
    """How long a group's process took, in seconds: `start` from its launch to its first section (the
    interpreter, its modules and read models, its connections, and any wait for the shadow tables), `replay`
    from there to its last section, `cpu` its CPU time in all."""

    read_models: tuple[str, ...]
    start: float
    replay: float
    cpu: float


class _Worker:
    """A group's process (`projections.replay_worker`) and the pipes to it: jobs out, replies in."""

    def __init__(self, group: Sequence[Projector]) -> None:
        self.name = ", ".join(p.name for p in group)
        self.launched = time.time()
        job_read, self._job_write = os.pipe()
        self._reply_read, reply_write = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
        try:
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
def _launched(dealt: Sequence[Sequence[Projector]], database_url: str, batch: int) -> Iterator[list[_Worker]]:
    """A process for each group, sent its read models at once (so they load while the parent prepares);
    every one still running is ended on the way out."""
    workers: list[_Worker] = []
    try:
        for group in dealt:
            workers.append(_Worker(group))
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
    timed: Callable[[GroupTimes], None] | None = None,
) -> tuple[int, dict[str, Checkpoint]]:
    """Rebuild `names` as `rebuild_many` does (from their checkpoints with `from_checkpoint`), each group
    of read models replayed in a process of its own, then all swapped in one transaction. `timed` is
    given each group's `GroupTimes` once all are replayed.

    Returns the events replayed and the checkpoints used. Raises what `rebuild_many` raises, and
    `GroupFailed` when a group's process fails (the live read models are left as they were).
    """
    picked = chosen_projectors(engine, names)
    dealt = groups(picked, jobs)
    with _launched(dealt, engine.database_url, engine.replay_batch_size) as workers:
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
