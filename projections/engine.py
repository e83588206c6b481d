"""The live projection engine: many read models kept current from one read of the notification log.

Each pass reads one large section of the log, starting at the lowest position
among the projectors, and decodes it once, but for the events every projector of
the pass ignores (`undecoded_topics`: readings, for a pass of read models that
never look at them, are most of the log). Every projector then gets the events
after its own position and commits its rows and its tracking position in one
transaction of its own, so a projector that fails rolls back alone, is retried
with backoff, and does not hold the others back.

Each projector declares a schema `version`; `setup()` drops, recreates and
replays from zero any read model whose version differs or whose tables are
missing (`projections.versions`).

An event a read model cannot apply never holds up the events behind it: it is
quarantined and the read model goes on past it (`projections.quarantine`). Faults
and bugs quarantine nothing: the read model is rolled back and retried with
backoff. `retry()` replays the read models that have quarantined events from
zero, so the events that now apply land in order.

`rebuild_many()` and `verify()` replay read models beside the live tables
(`projections.rebuild`). Read models and their tables are declared with
`projections.tables`; positions and status live in `projections.tracking`. This
module also exports the types its methods take and return.
"""

from __future__ import annotations

import asyncio
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import psycopg
import structlog

from adapters.eventlog import EventLog
from adapters.eventstore import WattLedger
from projections.quarantine import (
    EngineClosed,
    QuarantineRow,
    Section,
    apply_isolating,
    expected_fault,
    ignored_topics,
    log_quarantine,
    one_line,
    read_section,
    record_quarantine,
    undecoded_topics,
)
from projections.rebuild import (
    SHADOW_SCHEMA,
    VERIFY_SCHEMA,
    ReplayBusy,
    ReplayProgress,
    RowDifference,
    open_shadow,
)
from projections.replay_plan import aside_group
from projections.tables import Projector, home_schemas, set_search_path
from projections.tracking import CLEARED, QUARANTINE, TRACKING, QuarantinedEvent, quarantined_events
from projections.versions import set_up

__all__ = [
    "EngineClosed",
    "ProjectionEngine",
    "Projector",
    "QuarantinedEvent",
    "ReplayBusy",
    "ReplayProgress",
    "RowDifference",
]

log = structlog.get_logger(__name__)


BATCH_SIZE = 2000
"""Events per section when catching up live (one transaction each)."""
REPLAY_BATCH_SIZE = 20_000
"""Events per section of a rebuild or verify, unless the engine is given sizes. A read model's work per
section grows with the devices the section touches (the energy projector folds each channel once per
section, the devices read model writes each device's row once), so replaying 1,000 plugs in sections of
10,000 instead of 2,000 costs about a fifth per event, and in sections of 20,000 about a seventh less again
(37,100 against 31,900 events/s over 63,000 events), for about 32 MB more at the peak (a section and the
next one read ahead are held at once); 40,000 gained 4 % more for 40 MB more."""

T = TypeVar("T")


async def _finished(work: asyncio.Future[T]) -> T:
    """The result of `work`; cancelled meanwhile, wait for `work` to end (its outcome dropped) and then
    raise CancelledError."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait({work})
        if not work.cancelled():
            work.exception()  # the pass's own failure, if any, is dropped with it
        raise


class ProjectionEngine:
    """Keeps read models current with the WattLedger event log.

    Two engines on one database serialise on the tracking row lock; a projector
    whose position moved under it (another engine, a rebuild) is skipped in that
    pass and resumes from its new position in the next.
    """

    def __init__(
        self,
        app: WattLedger,
        database_url: str,
        projectors: Sequence[Projector],
        *,
        batch_size: int | None = None,
        replay_batch_size: int | None = None,
        replay_threads: bool = True,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        live = BATCH_SIZE if batch_size is None else batch_size
        replay = replay_batch_size if replay_batch_size is not None else REPLAY_BATCH_SIZE if batch_size is None else live
        if live < 1 or replay < 1:
            raise ValueError(f"batch sizes must be positive, got {batch_size} and {replay_batch_size}")
        self.event_log = EventLog(app)
        self.database_url = database_url
        self.projectors = {p.name: p for p in projectors}
        if len(self.projectors) != len(projectors):
            raise ValueError("projector names must be unique")
        self.batch_size = live
        self.replay_batch_size = replay
        self.replay_threads = replay_threads
        """Whether a replay in this process applies some read models in a second thread (`replay_aside`)."""
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._wakeup = asyncio.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._lock = threading.RLock()

    def _connection(self) -> psycopg.Connection[Any]:
        """One connection kept between batches (idle polls would otherwise connect twice a second).

        Raises RuntimeError once the engine is closed, so a pass still running in a
        worker thread ends instead of opening a connection nobody closes.
        """
        if self._closed:
            raise EngineClosed("the projection engine is closed")
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = psycopg.connect(self.database_url, autocommit=True)
        return self._conn

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def setup(self) -> None:
        """Create the tracking tables; rebuild the tables of every read model whose version changed."""
        with self._lock, psycopg.connect(self.database_url) as conn, conn.transaction(), conn.cursor() as cur:
            for name in set_up(cur, self.projectors.values()):
                self._forget_failures(name)

    def _forget_failures(self, name: str) -> None:
        self._failures.pop(name, None)
        self._retry_at.pop(name, None)

    def position(self, name: str) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(f"SELECT position FROM {TRACKING} WHERE name = %s", (name,)).fetchone()
        return int(row[0]) if row else 0

    def project_batch(
        self, names: Collection[str] | None = None, *, raise_errors: bool = False
    ) -> tuple[int, dict[str, int]]:
        """One pass: read and decode one section of the log, hand each projector its part.

        Returns the notifications read (0 at the end of the log) and the events
        applied per projector. A projector that fails is rolled back and recorded;
        with `raise_errors` its exception is raised after that.
        """
        chosen = list(self.projectors) if names is None else list(names)
        if not chosen:
            return 0, {}
        with self._lock:
            conn = self._connection()
            cur = conn.execute(f"SELECT name, position FROM {TRACKING} WHERE name = ANY(%s)", (chosen,))
            positions: dict[str, int] = dict(cur.fetchall())
            if unknown := set(chosen) - set(positions):
                raise LookupError(f"read models not set up: {', '.join(sorted(unknown))}; run setup() first")
            skip = undecoded_topics(self.projectors[name] for name in chosen)
            section = read_section(self.event_log, min(positions.values()), self.batch_size, skip=skip)
            if section is None:
                return 0, {}
            applied = {name: self._apply(conn, name, section, raise_errors) for name in chosen}
            return len(section.ids), applied

    def _apply(self, conn: psycopg.Connection[Any], name: str, section: Section, raise_errors: bool) -> int:
        projector = self.projectors[name]
        quarantined: list[QuarantineRow] = []
        try:
            with conn.transaction(), conn.cursor() as cur:
                row = cur.execute(f"SELECT position FROM {TRACKING} WHERE name = %s FOR UPDATE", (name,)).fetchone()
                position = int(row[0]) if row else 0
                if position < section.after:
                    return 0
                first = bisect_right(section.ids, position)
                if first == len(section.ids):
                    return 0
                set_search_path(cur, home_schemas(projector.tables))
                events, notifications = section.heeded(ignored_topics(projector), first)
                quarantined = apply_isolating(cur, projector, events, notifications, clean=section.clean)
                record_quarantine(cur, quarantined)
                cur.execute(
                    f"UPDATE {TRACKING} SET position = %s, updated_at = now(), {CLEARED} WHERE name = %s",
                    (section.ids[-1], name),
                )
        except Exception as error:
            if conn.broken:
                raise
            self._failed(conn, name, error)
            if raise_errors:
                raise
            return 0
        log_quarantine(quarantined)
        if self._failures.pop(name, None):
            self._retry_at.pop(name, None)
            log.info("projector.recovered", projector=name)
        return len(section.ids) - first

    def _failed(self, conn: psycopg.Connection[Any], name: str, error: BaseException) -> None:
        """Record a failure in the projector's tracking row and schedule its retry.

        A fault (the database away or busy) is one warning line; anything else is a bug in the
        read model, logged with its traceback when it first fails and as one line after that."""
        attempts = self._failures[name] = self._failures.get(name, 0) + 1
        delay = min(self.retry_base * 2 ** (attempts - 1), self.retry_max)
        self._retry_at[name] = self._clock() + delay
        text = one_line(error)
        with conn.transaction():
            conn.execute(
                f"UPDATE {TRACKING} SET last_error = %s, failed_at = now(), "
                f"failing_since = coalesce(failing_since, now()), attempts = attempts + 1 WHERE name = %s",
                (text, name),
            )
        if expected_fault(error):
            log.warning("projector.failed", projector=name, attempts=attempts, retry_in_s=delay, error=text)
        elif attempts == 1:
            log.error("projector.failed", projector=name, attempts=attempts, retry_in_s=delay, exc_info=error)
        else:
            log.error("projector.failed", projector=name, attempts=attempts, retry_in_s=delay, error=text)

    def due(self) -> list[str]:
        """The projectors not waiting out a backoff."""
        now = self._clock()
        return [name for name in self.projectors if self._retry_at.get(name, now) <= now]

    def catch_up(self, name: str, progress: Callable[[int], None] | None = None) -> int:
        """Project one read model until the log's end; returns the events applied. Raises its failure."""
        total = 0
        while True:
            read, applied = self.project_batch([name], raise_errors=True)
            if not read:
                return total
            total += applied.get(name, 0)
            if progress and applied.get(name):
                progress(applied[name])

    def catch_up_all(self) -> dict[str, int]:
        """Project every read model not in backoff until the log's end; returns the events applied to each."""
        totals: dict[str, int] = {}

        def add(applied: dict[str, int]) -> None:
            for name, count in applied.items():
                totals[name] = totals.get(name, 0) + count

        while due := self.due():
            read, applied = self.project_batch(due)
            if not read:
                break
            add(applied)
            # A read model replaying from far behind sets where each section
            # starts; the ones ahead of it get a section of their own, so they
            # stay current while it catches up.
            ahead = [name for name in self.due() if name in due and not applied.get(name)]
            if ahead and len(ahead) < len(due):
                add(self.project_batch(ahead)[1])
        return totals

    def quarantined(self) -> list[str]:
        """The read models with quarantined events, in registration order."""
        with psycopg.connect(self.database_url) as conn:
            names = {row[0] for row in conn.execute(f"SELECT DISTINCT projector FROM {QUARANTINE}").fetchall()}
        return [name for name in self.projectors if name in names]

    def retry(
        self, names: Sequence[str] | None = None, progress: Callable[[ReplayProgress], None] | None = None
    ) -> tuple[list[QuarantinedEvent], list[QuarantinedEvent]]:
        """Apply the quarantined events of `names` (default: every read model that has some) again.

        Each such read model is replayed from zero (`rebuild_many`), so the events that now apply
        land in log order among the others; the ones that still fail stay quarantined. Returns
        the quarantined events before and after.
        """
        chosen = self.quarantined() if names is None else list(names)
        with psycopg.connect(self.database_url) as conn:
            before = quarantined_events(conn, chosen)
        if not chosen:
            return before, []
        self.rebuild_many(chosen, progress)
        with psycopg.connect(self.database_url) as conn:
            after = quarantined_events(conn, chosen)
        return before, after

    def rebuild(self, name: str, progress: Callable[[ReplayProgress], None] | None = None) -> int:
        """Replay one read model from the first event into fresh tables and swap them in; returns the events replayed."""
        return self.rebuild_many([name], progress)

    def rebuild_many(self, names: Sequence[str], progress: Callable[[ReplayProgress], None] | None = None) -> int:
        """Replay read models from the first event into fresh tables, then swap them in atomically.

        The live tables keep answering queries, and the live engine keeps
        projecting into them, until the swap. The log is read and decoded once
        for all of `names`. Returns the events replayed. Raises `LookupError` for
        an unknown name, `ReplayBusy` if another rebuild or verify of one of them
        runs, and whatever a projector raises (the shadow tables are dropped and
        the live read model is left as it was).
        """
        chosen = self._chosen(names)
        with open_shadow(self.database_url, self.event_log, chosen, SHADOW_SCHEMA, self.replay_batch_size,
                         self.replay_aside(chosen)) as shadow:
            log.info("projector.rebuild.started", projectors=list(names))
            shadow.catch_up(progress)
            shadow.swap(progress)
        with self._lock:
            for projector in chosen:
                self._forget_failures(projector.name)
        log.info("projector.rebuild.swapped", projectors=list(names), position=shadow.position, events=shadow.events)
        return shadow.events

    def replay_aside(self, projectors: Sequence[Projector]) -> list[str]:
        """The read models a replay of `projectors` applies in a second thread (`projections.parallel.aside_group`)."""
        return aside_group(projectors) if self.replay_threads else []

    def verify(
        self, names: Sequence[str], progress: Callable[[ReplayProgress], None] | None = None
    ) -> list[RowDifference]:
        """Rebuild `names` beside the live tables and return every row in which they differ.

        The comparison is made at one position: with the read models' tracking
        rows locked, both the shadow and the live read models are brought to the
        log's head (the live ones as the engine would have), then compared by
        primary key. The shadow tables are dropped afterwards, whatever happens.
        Raises like `rebuild_many`, and the live projector's error if it cannot
        catch up.
        """
        chosen = self._chosen(names)
        with open_shadow(self.database_url, self.event_log, chosen, VERIFY_SCHEMA, self.replay_batch_size,
                         self.replay_aside(chosen)) as shadow:
            shadow.catch_up(progress)
            return shadow.compare(progress)

    def _chosen(self, names: Sequence[str]) -> list[Projector]:
        if unknown := [n for n in names if n not in self.projectors]:
            raise LookupError(f"unknown read model {', '.join(unknown)}; known: {', '.join(self.projectors)}")
        if not names:
            raise LookupError("no read model named")
        return [self.projectors[n] for n in dict.fromkeys(names)]

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self, *, poll_interval: float = 0.5, fault_backoff_max: float = 30.0) -> None:
        """Keep every read model current: woken by `wake()`, and polling as a fallback.

        Cancelled during a pass, it returns (raising CancelledError) only once that pass has ended: the
        pass runs in a thread, which a cancel cannot stop, so a caller that cancels and goes on (closes
        the database, checks a tracking row) never has a pass still writing behind it.

        A pass that fails because the database is away is one warning line when the outage
        starts, and is retried after a pause that doubles up to `fault_backoff_max`; any other
        failure is logged with its traceback."""
        await asyncio.to_thread(self.setup)
        failures = 0
        while True:
            self._wakeup.clear()
            wait = poll_interval
            try:
                applied = await _finished(asyncio.ensure_future(asyncio.to_thread(self.catch_up_all)))
                for name, count in applied.items():
                    if count:
                        log.debug("projector.applied", projector=name, events=count)
                if failures:
                    log.info("projector.pass_recovered", failed_passes=failures)
                failures = 0
            except Exception as error:
                # The database or the log failed, not one projector: the next pass retries.
                failures += 1
                wait = min(poll_interval * 2 ** min(failures - 1, 16), max(fault_backoff_max, poll_interval))
                if not expected_fault(error):
                    log.exception("projector.pass_failed", failed_passes=failures)
                elif failures == 1:
                    log.warning("projector.pass_failed", error=one_line(error, 300), retry_in_s=wait)
                else:
                    log.debug("projector.pass_failed", error=one_line(error, 300), failed_passes=failures)
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait)
            except TimeoutError:
                pass
