"""Rebuilding read models in several processes, then swapping them all in one transaction.

No read model's projector reads another's tables, so each read model is a group of its
own; `groups` deals them into `jobs` groups of about equal replay work. The parent opens
the shadow tables (holding every replay lock, loading checkpoints if asked), then each
group is replayed to the log's head in a process of its own (spawned: no connection or
thread of the parent's is inherited), reading and decoding the log itself and committing
its sections to its shadow tables. The parent collects where each group stopped and what
it quarantined, and `Shadow.swap` replays the last events for every read model from there
and swaps them all in, as a one-process rebuild does. A group that fails ends the rebuild:
the other processes are stopped, the shadow tables dropped, the live read models untouched.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queues
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

import psycopg
from eventsourcing.utils import get_topic

from adapters.eventlog import EventLog
from adapters.eventstore import WattLedger, store_env
from domain.meter import MeterDay
from projections.checkpoints import Checkpoint
from projections.errors import ProjectionError
from projections.quarantine import EVERY_EVENT, QuarantineRow, one_line, undecoded_topics
from projections.rebuild import SHADOW_SCHEMA, ReplayProgress, Shadow, checked_checkpoints, chosen_projectors, open_shadow
from projections.tables import Projector

if TYPE_CHECKING:
    from projections.engine import ProjectionEngine

__all__ = [
    "DECODE_COST", "READ_COST", "REPLAY_COST", "GroupFailed", "default_jobs", "group_cost", "groups",
    "rebuild_in_processes",
]  # fmt: skip

READ_COST = 3.0
"""CPU per event (microseconds) of reading the log's rows: every group's process pays it."""
DECODE_COST = 5.0
"""CPU per event of decoding the readings, paid by a group with a read model that needs them decoded
(one that does not `ignores` them, `projections.quarantine.undecoded_topics`)."""
REPLAY_COST: dict[str, float] = {
    "energy": 11.6, "alerts": 6.4, "devices": 4.8, "chain": 1.3, "exports": 0.9, "audit": 0.6, "identity": 0.4,
    "commands": 0.1,
}  # fmt: skip
"""Each read model's own CPU per event in a replay, above reading and decoding the log (1.0 for one not
named), from `bench_rebuild.py`'s rates of each read model alone (1,000 devices, 60 cycles)."""


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


def _replay_group(
    database_url: str, projectors: list[Projector], starts: dict[str, int], batch: int, index: int,
    results: Any,
) -> None:
    """In a process of its own: replay `projectors` into their (existing) shadow tables to the log's head."""
    app = WattLedger(store_env(database_url, pool_size=1))
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            shadow = Shadow(EventLog(app), conn, projectors, SHADOW_SCHEMA, batch)
            shadow.starts = dict(starts)
            shadow.position = min(starts.get(name, 0) for name in shadow.names)
            shadow.catch_up(lambda p: results.put(("progress", index, p.position, p.head, p.events)))
            results.put(("done", index, shadow.position, shadow.events, shadow.quarantined))
    except BaseException as error:
        results.put(("failed", index, one_line(error)))
        raise SystemExit(1) from None
    finally:
        app.close()


def _collect(
    workers: list[BaseProcess], results: Any, count: int, progress: Callable[[ReplayProgress], None] | None,
) -> dict[int, tuple[int, int, list[QuarantineRow]]]:
    """Wait for every group's outcome, reporting the slowest group's progress; raise `GroupFailed` on a failure."""
    done: dict[int, tuple[int, int, list[QuarantineRow]]] = {}
    seen: dict[int, tuple[int, int, int]] = {}
    while len(done) < count:
        try:
            message = results.get(timeout=1.0)
        except queues.Empty:
            if dead := [i for i, w in enumerate(workers) if i not in done and w.exitcode is not None]:
                worker = workers[dead[0]]
                raise GroupFailed(f"the process replaying {worker.name} ended with code {worker.exitcode}")
            continue
        kind, index, *rest = message
        if kind == "failed":
            raise GroupFailed(f"replaying {workers[index].name} failed: {rest[0]}")
        if kind == "done":
            position, events, quarantined = rest
            done[index] = (position, events, quarantined)
            continue
        seen[index] = (rest[0], rest[1], rest[2])
        if progress is not None and seen:
            position, head, events = min(seen.values())
            progress(ReplayProgress(phase="replay", position=position, head=head, events=events))
    return done


def rebuild_in_processes(
    engine: ProjectionEngine, names: Sequence[str], jobs: int,
    progress: Callable[[ReplayProgress], None] | None = None, *, from_checkpoint: bool = False,
) -> tuple[int, dict[str, Checkpoint]]:
    """Rebuild `names` as `rebuild_many` does (from their checkpoints with `from_checkpoint`), each group
    of read models replayed in a process of its own, then all swapped in one transaction.

    Returns the events replayed and the checkpoints used. Raises what `rebuild_many` raises, and
    `GroupFailed` when a group's process fails (the live read models are left as they were).
    """
    picked = chosen_projectors(engine, names)
    found = checked_checkpoints(engine, picked) if from_checkpoint else {}
    dealt = groups(picked, jobs)
    with open_shadow(engine.database_url, engine.event_log, picked, SHADOW_SCHEMA, engine.replay_batch_size) as shadow:
        shadow.restore(engine.database_url, found)
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        workers: list[BaseProcess] = [
            context.Process(
                target=_replay_group, name=", ".join(p.name for p in group),
                args=(engine.database_url, group, {p.name: shadow.starts.get(p.name, 0) for p in group},
                      engine.replay_batch_size, index, results),
            )  # fmt: skip
            for index, group in enumerate(dealt)
        ]
        for worker in workers:
            worker.start()
        try:
            done = _collect(workers, results, len(workers), progress)
        except BaseException:
            for worker in workers:
                worker.terminate()
            raise
        finally:
            for worker in workers:
                worker.join(30)
        for index, group in enumerate(dealt):
            position, _, quarantined = done[index]
            shadow.quarantined.extend(quarantined)
            for projector in group:
                shadow.starts[projector.name] = position
        slowest = min(range(len(dealt)), key=lambda i: done[i][0])
        shadow.position, shadow.events = done[slowest][0], done[slowest][1]
        shadow.swap(progress)
    return shadow.events, found
