"""How a replay's read models are dealt: into processes (`projections.parallel`) and, in one process, into the
replay's own thread and a second one (`aside_group`), by their estimated CPU per event.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Final

from eventsourcing.utils import get_topic

from domain.meter import MeterDay
from projections.quarantine import EVERY_EVENT, undecoded_topics
from projections.tables import Projector

__all__ = [
    "DECODE_COST", "FORKS", "PARALLEL_FROM", "READ_COST", "REPLAY_COST", "SPAWNED_FROM", "aside_group", "cores",
    "default_jobs_for", "group_cost", "groups",
]  # fmt: skip

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

FORKS: Final = sys.platform == "linux" and hasattr(os, "fork")
"""Whether a group's process is a fork of the replaying one (Linux), not a fresh interpreter
(`projections.parallel`). A fork of a process that runs threads is safe only where the child touches
nothing another thread may hold (a lock, a connection): the child uses its own connections, and only
`projections.replay_worker.forked`'s code; elsewhere (macOS, whose system libraries refuse to run in
such a child) the fresh interpreter is the safe kind."""

PARALLEL_FROM = 20_000
"""The events to replay from which `default_jobs_for` takes more than one forked process. On two cores and
an idle machine (1,000 plugs, best of three), two forked processes against one: 0.90x at 8,000 events,
1.25x at 23,000 (1.09x with two CPU-burning loops running), 1.30-1.38x at 63,000 (1.00-1.06x loaded)."""

SPAWNED_FROM = 150_000
"""`PARALLEL_FROM` for fresh interpreters, which take about a second to start: on two cores and an idle
machine, two were 1.23x faster than one at 243,000 events and slower at 63,000, and on two cores they were
slower than one whenever anything else ran."""


def _needs_readings(projector: Projector) -> bool:
    return not undecoded_topics([projector]) & {get_topic(MeterDay.ReadingRecorded), EVERY_EVENT}


def group_cost(group: Sequence[Projector]) -> float:
    """The estimated CPU per event of replaying `group` in a process of its own (0 for none)."""
    if not group:
        return 0.0
    decode = DECODE_COST if any(_needs_readings(p) for p in group) else 0.0
    return READ_COST + decode + sum(REPLAY_COST.get(p.name, 1.0) for p in group)


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_jobs_for(projectors: Sequence[Projector], events: int, cores: int, *, forks: bool = FORKS) -> int:
    """Processes worth rebuilding `projectors` in, with `events` to replay on `cores` CPUs shared with the
    database: one below `PARALLEL_FROM` events for forked processes (`forks`), `SPAWNED_FROM` for fresh
    interpreters (the processes' start and each group's own read of the log cost more than they save);
    else at most one per core for forked processes, one per two cores for fresh interpreters (on two
    cores, two of those were slower than one whenever anything else ran), and of those the fewest beyond
    which another process would not cut the slowest group's `group_cost` by a tenth."""
    if events < (PARALLEL_FROM if forks else SPAWNED_FROM):
        return 1
    jobs, pace = 1, group_cost(projectors)
    for more in range(2, min(cores if forks else cores // 2, len(projectors)) + 1):
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
