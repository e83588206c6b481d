"""Replays beside the live read models: `rebuild` swaps fresh tables in, `verify` compares them.

A replay builds the read models' tables afresh in a shadow schema (`wl_rebuild`,
or `wl_verify` for a verify), reading the log once for all of them, one committed
transaction per section, while the live tables keep answering queries and the
live engine keeps projecting into them. Once it has caught up it locks the read
models' tracking rows and replays the last events; then `Shadow.swap` drops the
live tables and moves the fresh ones into their home schemas, all in one
transaction, or `Shadow.compare` brings the live read models to the same position
and diffs every table by primary key. `open_shadow` holds a replay lock per read
model, so only one replay of a read model runs at a time.

A replay can start a read model from a checkpoint (`projections.checkpoints`):
`Shadow.restore` loads it into the shadow tables, and that read model is given only
the events after it, while the others in the same read of the log start from zero.
`rebuild_from_checkpoints` and `verify_from_checkpoints` check the checkpoints first.
"""

from __future__ import annotations

import gc
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from typing import Any, Protocol

import msgspec
import psycopg
from psycopg import sql

from adapters.eventlog import EventLog
from projections.checkpoints import Checkpoint, check, load, newest, verify_chain_after
from projections.errors import ProjectionError
from projections.quarantine import (
    QuarantineRow,
    Section,
    apply_isolating,
    ignored_topics,
    log_quarantine,
    read_section,
    record_quarantine,
    undecoded_topics,
)
from projections.tables import Projector, Table, building, home_schemas, set_search_path
from projections.tracking import CLEARED, QUARANTINE, TRACKING
from projections.versions import restart


class ReplayHost(Protocol):
    """What a replay takes from the engine that holds the read models (`ProjectionEngine`)."""

    @property
    def database_url(self) -> str: ...
    @property
    def event_log(self) -> EventLog: ...
    @property
    def projectors(self) -> Mapping[str, Projector]: ...
    @property
    def replay_batch_size(self) -> int: ...

    def replay_aside(self, projectors: Sequence[Projector]) -> list[str]: ...


__all__ = [
    "REPLAY_COLLECTOR_THRESHOLDS",
    "SHADOW_SCHEMA",
    "VERIFY_SCHEMA",
    "ReplayBusy",
    "ReplayHost",
    "ReplayProgress",
    "RowDifference",
    "Shadow",
    "checked_checkpoints",
    "chosen_projectors",
    "eased_collector",
    "open_shadow",
    "rebuild_from_checkpoints",
    "verify_from_checkpoints",
]

# With a read model's name hashed, keeps two replays of one read model apart.
_REPLAY_LOCK = 0x574C_5242

SHADOW_SCHEMA = "wl_rebuild"
"""Where `rebuild` builds fresh tables before they are swapped into their home schema."""
VERIFY_SCHEMA = "wl_verify"
"""Where `verify` builds the tables it compares with the live ones (dropped afterwards)."""


class ReplayBusy(ProjectionError, RuntimeError):
    """Another rebuild or verify of the same read model holds its replay lock."""


class ReplayProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How far a replay is: it has read `events` notifications, up to `position` of the log's `head`.

    `head` is the last notification id when last looked at; it grows while
    events keep arriving. `phase` is `replay`, then `swap` or `compare` once
    the tracking rows are locked.
    """

    phase: str
    position: int
    head: int
    events: int


class RowDifference(msgspec.Struct, frozen=True, kw_only=True):
    """One row in which a live read model differs from its replay.

    `missing`: the replay has the row, the live table does not; `extra`: the
    other way round; `changed`: both have it, `columns` name the differing
    columns. `live` and `rebuilt` hold the row's values (None where absent).
    """

    read_model: str
    table: str
    key: dict[str, Any]
    kind: str
    columns: tuple[str, ...] = ()
    live: dict[str, Any] | None = None
    rebuilt: dict[str, Any] | None = None


REPLAY_COLLECTOR_THRESHOLDS = (50_000, 20, 100)
"""The cyclic garbage collector's thresholds while a replay runs (CPython's default: 700, 10, 10).

A replay holds a section of decoded events (10,000, each a few objects) and the rows it keeps
between sections, so with the default thresholds the collector's full passes, which walk every
object of the process, ran every few hundred events: about a third of a `rebuild all`'s CPU.
Collections still run, a few hundred times less often; the thresholds are put back afterwards."""

_collector_lock = threading.Lock()
_collector_users = 0
_collector_saved: tuple[int, int, int] = (700, 10, 10)


@contextmanager
def eased_collector() -> Iterator[None]:
    """Run the block with the collector's thresholds at least `REPLAY_COLLECTOR_THRESHOLDS` (a collector
    switched off by a zero first threshold stays off); the thresholds found are put back once the last
    of the blocks running at once (in threads) ends."""
    global _collector_users, _collector_saved
    with _collector_lock:
        if _collector_users == 0:
            _collector_saved = gc.get_threshold()
            if _collector_saved[0] > 0:
                eased = (max(a, b) for a, b in zip(_collector_saved, REPLAY_COLLECTOR_THRESHOLDS, strict=True))
                gc.set_threshold(*eased)
        _collector_users += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_users -= 1
            if _collector_users == 0:
                gc.set_threshold(*_collector_saved)


def _key_columns(table: Table[Any]) -> list[str]:
    return [column.strip() for column in table.key.split(",")]


class Shadow:
    """Read models replayed from zero into a shadow schema, on one connection held by the replay.

    Every section is read and decoded once and applied to all of the read
    models with their tables pointed at the shadow schema (`building`), and
    committed with nothing else: no reader and no live engine sees these
    tables until `swap` moves them into their home schemas.
    """

    def __init__(
        self, event_log: EventLog, conn: psycopg.Connection[Any], projectors: Sequence[Projector], schema: str,
        batch: int, *, aside: Sequence[str] = (), database_url: str | None = None,
    ) -> None:
        self.event_log = event_log
        self.conn = conn
        self.projectors = list(projectors)
        self.aside = [p for p in self.projectors if p.name in aside] if database_url is not None else []
        """Read models `catch_up` applies in a thread of its own, on a connection to `database_url` of its own."""
        self.here = [p for p in self.projectors if p not in self.aside]
        if not self.here:
            self.aside = []
            self.here = self.projectors
        self.database_url = database_url
        self.schema = schema
        self.batch = batch
        self.tables = [table for projector in self.projectors for table in projector.tables]
        self.names = [projector.name for projector in self.projectors]
        self.ignored = {projector.name: ignored_topics(projector) for projector in self.projectors}
        self.position = 0
        self.starts: dict[str, int] = {}
        self.events = 0
        self.head = 0
        self.quarantined: list[QuarantineRow] = []
        self.live_quarantined: list[QuarantineRow] = []
        self.kept: dict[int, dict[Any, Any]] = {}
        """Rows the read models keep in memory between sections (`Table.keep`): only this replay writes its tables."""
        bare = [table.bare for table in self.tables]
        if len(set(bare)) != len(bare):
            raise ValueError(f"tables of {', '.join(self.names)} share a name; they cannot be rebuilt side by side")

    @contextmanager
    def _targeted(self, cur: psycopg.Cursor[Any]) -> Iterator[None]:
        set_search_path(cur, [self.schema])
        with building(self.schema, self.tables, self.kept):
            yield

    def create(self) -> None:
        """The shadow schema and empty tables in it (replacing any a crashed replay left behind)."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            with self._targeted(cur):
                for table in self.tables:
                    table.create(cur)

    def drop(self) -> None:
        """Drop whatever shadow tables remain (none after a swap)."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            for table in self.tables:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}.{}").format(
                    sql.Identifier(self.schema), sql.Identifier(table.bare)
                ))

    def restore(self, database_url: str, checkpoints: Mapping[str, Checkpoint]) -> None:
        """Fill the shadow tables of the read models in `checkpoints` from them, in one transaction.

        Each of those read models then replays only the events after its checkpoint; the
        others replay from zero, and the log is read from the lowest of their positions. Raises
        `CheckpointRefused` (nothing kept) if a checkpoint's rows no longer match its digest."""
        with self.conn.transaction(), self.conn.cursor() as cur, self._targeted(cur):
            for projector in self.projectors:
                if (checkpoint := checkpoints.get(projector.name)) is not None:
                    self.quarantined.extend(load(cur, database_url, checkpoint, projector))
                    self.starts[projector.name] = checkpoint.position
        self.position = min(self.starts.get(name, 0) for name in self.names)

    def _report(self, progress: Callable[[ReplayProgress], None] | None, phase: str) -> None:
        self.head = max(self.head, self.position, self.event_log.max_id())
        if progress is not None:
            progress(ReplayProgress(phase=phase, position=self.position, head=self.head, events=self.events))

    def _step(self, cur: psycopg.Cursor[Any], until: int | None = None, aside: _Aside | None = None) -> int:
        """Apply the next section (up to `until`) to the shadow tables in the caller's transaction; with
        `aside`, the read models of `self.aside` in its thread and transaction meanwhile.

        Returns the notifications it held: 0 at the end of the log."""
        section = read_section(self.event_log, self.position, self.batch, stop=until,
                               skip=undecoded_topics(self.projectors))  # fmt: skip
        if section is None:
            return 0
        pending = aside.apply(self, section) if aside is not None else None
        try:
            with self._targeted(cur):
                self.quarantined.extend(self._apply(cur, section, self.here if pending else self.projectors))
        except BaseException:
            if pending is not None:
                wait([pending])  # its transaction ends before the caller's does; the replay is given up
            raise
        if pending is not None:
            self.quarantined.extend(pending.result())
        self.position = section.ids[-1]
        self.events += len(section.ids)
        return len(section.ids)

    def _apply(self, cur: psycopg.Cursor[Any], section: Section, projectors: Sequence[Projector]) -> list[QuarantineRow]:
        """Apply `section` to `projectors` (each from the events after its start), targeted at the shadow tables."""
        found: list[QuarantineRow] = []
        heeded: dict[tuple[frozenset[str], int], tuple[list[object], list[Any]]] = {}
        for projector in projectors:
            first = bisect_right(section.ids, self.starts.get(projector.name, 0))
            if first < len(section.ids):
                # Read models ignoring the same events (most ignore the readings) share one filtered list.
                key = (self.ignored[projector.name], first)
                if (events_of := heeded.get(key)) is None:
                    events_of = heeded[key] = section.heeded(*key)
                events, notifications = events_of
                found.extend(apply_isolating(cur, projector, events, notifications, clean=section.clean))
        return found

    def catch_up(self, progress: Callable[[ReplayProgress], None] | None) -> None:
        """Replay to the log's head, one committed transaction per section, locking nothing live.

        It stops at the first section shorter than a full one (the head as it was then), so a
        log that keeps growing cannot keep it going; what was stored since is replayed by `swap`
        or `compare` under the tracking locks.

        The sections commit without waiting for the write-ahead log to reach the disk: a crash may
        lose the last of them, as it loses the whole replay (the shadow tables are made afresh by the
        next one); on a slow disk (an SD card) that wait is most of a section's commit.

        The read models of `aside` are applied meanwhile in a thread of their own, on a connection
        of their own, each section in a transaction committed before the caller's: while one thread
        waits on the database the other runs (a failure in either gives the replay up, as any
        failure does, and the shadow tables are dropped)."""
        self._report(progress, "replay")
        with eased_collector(), _aside(self) as aside:
            while True:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    cur.execute("SET LOCAL synchronous_commit TO off")
                    read = self._step(cur, aside=aside)
                if read:
                    self._report(progress, "replay")
                if read < self.batch:
                    return

    def _lock_tracking(self, cur: psycopg.Cursor[Any]) -> dict[str, int]:
        """Lock the read models' tracking rows (in name order, so two replays cannot deadlock); their positions."""
        cur.execute(
            f"SELECT name, position FROM {TRACKING} WHERE name = ANY(%s) ORDER BY name FOR UPDATE", (self.names,)
        )
        return {name: int(position) for name, position in cur.fetchall()}

    def swap(self, progress: Callable[[ReplayProgress], None] | None) -> None:
        """In one transaction: hold off the live engine, replay the last events, put the fresh tables in place.

        The live tables are dropped (their indexes with them) and the shadow
        tables moved into their home schemas, and the tracking rows take the
        replay's position and the projectors' versions. Readers wait for the
        commit at most, then see the new tables.
        """
        with eased_collector(), self.conn.transaction(), self.conn.cursor() as cur:
            self._lock_tracking(cur)
            while self._step(cur):
                pass
            for schema in home_schemas(self.tables):
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            for table in self.tables:
                bare = sql.Identifier(table.bare)
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}.{}").format(sql.Identifier(table.home), bare))
                cur.execute(sql.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(
                    sql.Identifier(self.schema), bare, sql.Identifier(table.home)
                ))
            for projector in self.projectors:
                restart(cur, projector, self.position)
            # The replay saw every event up to its position: what it quarantined is the whole quarantine.
            cur.execute(f"DELETE FROM {QUARANTINE} WHERE projector = ANY(%s)", (self.names,))
            record_quarantine(cur, self.quarantined)
        log_quarantine(self.quarantined)
        self._report(progress, "swap")

    def compare(self, progress: Callable[[ReplayProgress], None] | None) -> list[RowDifference]:
        """Bring shadow and live read models to one position under their tracking locks, then diff every table."""
        with eased_collector(), self.conn.transaction(), self.conn.cursor() as cur:
            live = self._lock_tracking(cur)
            target = max([self.event_log.max_id(), self.position, *live.values()])
            while self._step(cur, until=target):
                pass
            for projector in self.projectors:
                self._catch_up_live(cur, projector, live.get(projector.name, 0), target)
            self._report(progress, "compare")
            differences: list[RowDifference] = []
            for projector in self.projectors:
                for table in projector.tables:
                    differences.extend(self._diff(cur, projector.name, table))
        log_quarantine(self.live_quarantined)
        return differences

    def _catch_up_live(self, cur: psycopg.Cursor[Any], projector: Projector, position: int, target: int) -> None:
        """Project the live read model from `position` to `target`, as the engine would, in the caller's transaction."""
        moved = False
        quarantined: list[QuarantineRow] = []
        skip = undecoded_topics([projector])
        while section := read_section(self.event_log, position, self.batch, stop=target, skip=skip):
            set_search_path(cur, home_schemas(projector.tables))
            events, notifications = section.heeded(ignored_topics(projector))
            quarantined.extend(apply_isolating(cur, projector, events, notifications, clean=section.clean))
            position, moved = section.ids[-1], True
        record_quarantine(cur, quarantined)
        self.live_quarantined.extend(quarantined)
        if moved:
            cur.execute(
                f"UPDATE {TRACKING} SET position = %s, updated_at = now(), {CLEARED} WHERE name = %s",
                (position, projector.name),
            )

    def _diff(self, cur: psycopg.Cursor[Any], read_model: str, table: Table[Any]) -> list[RowDifference]:
        """Every row of `table` that differs between its live and shadow copies, by primary key."""
        keys = _key_columns(table)
        bare = sql.Identifier(table.bare)
        live = sql.SQL("{}.{}").format(sql.Identifier(table.home), bare)
        if cur.execute("SELECT to_regclass(%s)", (f"{table.home}.{table.bare}",)).fetchone() == (None,):
            live = sql.SQL("(SELECT * FROM {}.{} WHERE false)").format(sql.Identifier(self.schema), bare)
        rebuilt = sql.SQL("{}.{}").format(sql.Identifier(self.schema), bare)

        def side(alias: str) -> sql.Composable:
            return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c))
                                      for c in table.columns)

        query = sql.SQL(
            "SELECT {l}, {r}, l.{k} IS NULL, r.{k} IS NULL FROM {live} l FULL JOIN {rebuilt} r ON {on} "
            "WHERE ROW({l}) IS DISTINCT FROM ROW({r})"
        ).format(
            l=side("l"), r=side("r"), k=sql.Identifier(keys[0]), live=live, rebuilt=rebuilt,
            on=sql.SQL(" AND ").join(sql.SQL("l.{c} = r.{c}").format(c=sql.Identifier(c)) for c in keys),
        )
        width = len(table.columns)
        found: list[RowDifference] = []
        for record in cur.execute(query):
            ours = dict(zip(table.columns, record[:width], strict=True))
            theirs = dict(zip(table.columns, record[width:2 * width], strict=True))
            no_live, no_rebuilt = record[2 * width], record[2 * width + 1]
            present = theirs if no_live else ours
            key = {c: present[c] for c in keys}
            if no_live:
                found.append(RowDifference(read_model=read_model, table=table.bare, key=key, kind="missing",
                                           rebuilt=theirs))
            elif no_rebuilt:
                found.append(RowDifference(read_model=read_model, table=table.bare, key=key, kind="extra", live=ours))
            else:
                columns = tuple(c for c in table.columns if ours[c] != theirs[c])
                found.append(RowDifference(read_model=read_model, table=table.bare, key=key, kind="changed",
                                           columns=columns, live=ours, rebuilt=theirs))
        found.sort(key=lambda d: repr(sorted(d.key.items(), key=lambda kv: kv[0])))
        return found


class _Aside:
    """A thread and a connection of its own that apply a section to `Shadow.aside`, each in a transaction."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="wattledger-replay")

    def apply(self, shadow: Shadow, section: Section) -> Future[list[QuarantineRow]]:
        return self.pool.submit(self._apply, shadow, section)

    def _apply(self, shadow: Shadow, section: Section) -> list[QuarantineRow]:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit TO off")
            with shadow._targeted(cur):
                return shadow._apply(cur, section, shadow.aside)


@contextmanager
def _aside(shadow: Shadow) -> Iterator[_Aside | None]:
    """The `_Aside` of `shadow`'s catch-up, closed afterwards; None when it has no read model aside."""
    if not shadow.aside or shadow.database_url is None:
        yield None
        return
    with psycopg.connect(shadow.database_url, autocommit=True) as conn:
        aside = _Aside(conn)
        try:
            yield aside
        finally:
            aside.pool.shutdown(wait=True)


@contextmanager
def open_shadow(
    database_url: str, event_log: EventLog, projectors: Sequence[Projector], schema: str, batch: int,
    aside: Sequence[str] = (),
) -> Iterator[Shadow]:
    """Fresh tables for `projectors` in `schema`, on a connection of their own; dropped if left behind.
    The read models named in `aside` are caught up in a second thread (`Shadow.catch_up`).

    Raises `ReplayBusy` if another rebuild or verify of one of them holds its replay lock."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            for projector in projectors:
                row = conn.execute(
                    "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_REPLAY_LOCK, projector.name)
                ).fetchone()
                if not (row and row[0]):
                    raise ReplayBusy(f"a rebuild or verify of {projector.name} is already running")
            shadow = Shadow(event_log, conn, projectors, schema, batch, aside=aside, database_url=database_url)
            shadow.create()
            try:
                yield shadow
            finally:
                if not conn.broken:
                    shadow.drop()
        finally:
            # Closing the connection lets go of the locks only once the server has ended its backend,
            # which a busy server may do after the next replay already asked for them.
            if not conn.broken:
                with suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock_all()")


def chosen_projectors(engine: ReplayHost, names: Sequence[str]) -> list[Projector]:
    """The engine's projectors named, each once; raises `LookupError` for an unknown name or none."""
    if unknown := [n for n in names if n not in engine.projectors]:
        raise LookupError(f"unknown read model {', '.join(unknown)}; known: {', '.join(engine.projectors)}")
    if not names:
        raise LookupError("no read model named")
    return [engine.projectors[n] for n in dict.fromkeys(names)]


def checked_checkpoints(engine: ReplayHost, projectors: Sequence[Projector]) -> dict[str, Checkpoint]:
    """The newest checkpoint of each of `projectors` that has one, each checked (`check`), and the stored
    events after the oldest of them checked against the hash chain. Raises `CheckpointRefused`."""
    with psycopg.connect(engine.database_url) as conn:
        found = {p.name: c for p in projectors if (c := newest(conn, p.name)) is not None}
        head = engine.event_log.max_id()
        for projector in projectors:
            if projector.name in found:
                check(conn, found[projector.name], projector, head)
    if found:
        oldest = min(found.values(), key=lambda c: c.chain_position or 0)
        verify_chain_after(engine.database_url, oldest.chain_position or 0, oldest.chain_hash)
    return found


def rebuild_from_checkpoints(
    engine: ReplayHost, names: Sequence[str], progress: Callable[[ReplayProgress], None] | None = None
) -> tuple[int, dict[str, Checkpoint]]:
    """`rebuild_many` starting each read model from its newest checkpoint (from zero if it has none).

    Every checkpoint is checked first (version, chain link, the chain after it) and its rows
    against its digest as they are loaded; a refused one raises `CheckpointRefused` and the
    live read models are left as they were. Returns the events replayed and the checkpoints used.
    """
    chosen = chosen_projectors(engine, names)
    found = checked_checkpoints(engine, chosen)
    with open_shadow(engine.database_url, engine.event_log, chosen, SHADOW_SCHEMA, engine.replay_batch_size,
                     engine.replay_aside(chosen)) as shadow:
        shadow.restore(engine.database_url, found)
        shadow.catch_up(progress)
        shadow.swap(progress)
    return shadow.events, found


def verify_from_checkpoints(
    engine: ReplayHost, names: Sequence[str], progress: Callable[[ReplayProgress], None] | None = None
) -> tuple[list[RowDifference], dict[str, Checkpoint]]:
    """`verify` with the replay started from each read model's newest checkpoint: every row in which the
    live read models differ from it, and the checkpoints used. Raises `CheckpointRefused` as
    `rebuild_from_checkpoints` does."""
    chosen = chosen_projectors(engine, names)
    found = checked_checkpoints(engine, chosen)
    with open_shadow(engine.database_url, engine.event_log, chosen, VERIFY_SCHEMA, engine.replay_batch_size,
                     engine.replay_aside(chosen)) as shadow:
        shadow.restore(engine.database_url, found)
        shadow.catch_up(progress)
        return shadow.compare(progress), found
