"""Fixed-window request counters in PostgreSQL, shared by every API process.

One row per bucket and window in `wl_ops.rate_counters`. Windows are aligned to the
epoch by the database's clock (`date_bin`), so every process agrees on where a window
starts whatever its own clock says. A bucket's text names what is counted and the
window's length (`ip:60:203.0.113.7`), so two limits on one subject never share a row.

`hit` is one statement: it counts the first stage of windows, reads (without counting) a
third, and counts the second only if the request is admitted by both: no first-stage
window over its limit, no third-stage window at its limit. Rows are
locked in the order of their bucket text, so concurrent statements never deadlock.
Expired rows are deleted by `sweep`, which `hit` starts now and then in the background.

`count_requests` counts plain requests in the process's memory and adds them to the table every
`flush_every` seconds in one statement (`flush`), learning the other processes' counts back:
requests cost no round trip, and a limit shared by several processes may be passed by what the
others admitted within one flush interval. Attempts whose failures lock an account go through
`hit`, exact.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import msgspec
from msgspec.structs import force_setattr
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from adapters.errors import AdapterError
from adapters.schemas import OPS_SCHEMA, create_ops_schema

log = structlog.get_logger(__name__)

TABLE = f"{OPS_SCHEMA}.rate_counters"

MAX_COUNT = 1_000_000_000
MAX_WINDOW_S = 30 * 86_400
SWEEP_EVERY_S = 60.0
FLUSH_EVERY_S = 0.5

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {OPS_SCHEMA};
CREATE TABLE IF NOT EXISTS {TABLE} (
    bucket text NOT NULL,
    window_start timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (bucket, window_start)
);
CREATE INDEX IF NOT EXISTS rate_counters_expires_at ON {TABLE} (expires_at);
"""

_HIT = f"""
WITH clock AS (SELECT now() AS t),
req AS (
    SELECT r.stage, r.bucket, r.secs, r.lim,
           date_bin(make_interval(secs => r.secs), clock.t, timestamptz 'epoch') AS start
    FROM unnest(%(stages)s::int[], %(buckets)s::text[], %(secs)s::int[], %(lims)s::bigint[])
         AS r(stage, bucket, secs, lim)
    CROSS JOIN clock
),
first_stage AS (
    INSERT INTO {TABLE} AS c (bucket, window_start, expires_at, count)
    SELECT bucket, start, start + make_interval(secs => secs), 1 FROM req WHERE stage = 1 ORDER BY bucket
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = c.count + 1
    RETURNING c.bucket, c.count
),
admitted AS (
    SELECT NOT EXISTS (
        SELECT 1 FROM first_stage f JOIN req ON req.bucket = f.bucket WHERE f.count > req.lim
    ) AND NOT EXISTS (
        SELECT 1 FROM req JOIN {TABLE} p ON p.bucket = req.bucket AND p.window_start = req.start
        WHERE req.stage = 3 AND p.count >= req.lim
    ) AS ok
),
second_stage AS (
    INSERT INTO {TABLE} AS c (bucket, window_start, expires_at, count)
    SELECT bucket, start, start + make_interval(secs => secs), 1
    FROM req CROSS JOIN admitted WHERE stage = 2 AND admitted.ok ORDER BY bucket
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = c.count + 1
    RETURNING c.bucket, c.count
)
SELECT req.bucket, req.start, req.start + make_interval(secs => req.secs), clock.t,
       CASE req.stage WHEN 1 THEN f.count WHEN 2 THEN s.count ELSE coalesce(p.count, 0) END
FROM req CROSS JOIN clock
LEFT JOIN first_stage f ON req.stage = 1 AND f.bucket = req.bucket
LEFT JOIN second_stage s ON req.stage = 2 AND s.bucket = req.bucket
LEFT JOIN {TABLE} p ON req.stage = 3 AND p.bucket = req.bucket AND p.window_start = req.start
"""

_REFUND = f"""
UPDATE {TABLE} AS c SET count = c.count - 1
FROM unnest(%(buckets)s::text[], %(starts)s::timestamptz[]) AS r(bucket, start)
WHERE c.bucket = r.bucket AND c.window_start = r.start AND c.count > 0
"""

# Adds what one process counted since its last flush; rows are locked in key order (no deadlocks).
_ADD = f"""
INSERT INTO {TABLE} AS c (bucket, window_start, expires_at, count)
SELECT r.bucket, r.start, r.ends, r.added
FROM unnest(%(buckets)s::text[], %(starts)s::timestamptz[], %(ends)s::timestamptz[], %(adds)s::bigint[])
     AS r(bucket, start, ends, added)
ORDER BY r.bucket, r.start
ON CONFLICT (bucket, window_start) DO UPDATE SET count = c.count + excluded.count
RETURNING c.bucket, c.window_start, c.count, now()
"""

_SWEEP = f"DELETE FROM {TABLE} WHERE expires_at < now()"

# Serialises creating the table between processes starting at once.
_DDL_LOCK = f"SELECT pg_advisory_xact_lock(hashtext('{TABLE}'))"

_UNITS = ((86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second"))
_UNIT_SECONDS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3_600),
    **dict.fromkeys(("d", "day", "days"), 86_400),
}
_ITEM = re.compile(r"(\d{1,10})\s*/\s*(\d{0,7})\s*([a-z]+)")
_SYNTAX = "must be limits like 100/minute, 5/15min or 60/minute,10000/day (units s, min, h, day), or off"


async def _ensure_table(conn: psycopg.AsyncConnection[Any]) -> None:
    for attempt in (1, 2):
        try:
            async with conn.transaction():
                await conn.execute(_DDL_LOCK)
                await create_ops_schema(conn)
                await conn.execute(_DDL)
            return
        except psycopg.errors.UniqueViolation:
            # Another part creating the wl_ops schema at the same moment, under its own lock.
            if attempt == 2:
                raise


class Limit(msgspec.Struct, frozen=True):
    """At most `count` requests (or failures) per fixed window of `seconds`."""

    count: int
    seconds: int

    def describe(self) -> str:
        """`100 per minute`, `5 per 15 minutes`: how the limit reads in a 429 body."""
        for size, name in _UNITS:
            if self.seconds % size == 0:
                windows = self.seconds // size
                return f"{self.count} per {name}" if windows == 1 else f"{self.count} per {windows} {name}s"
        raise AssertionError("unreachable: every window is a whole number of seconds")


def parse_limits(text: str) -> tuple[Limit, ...]:
    """Limits from a setting such as `60/minute,10000/day`; `off`, `0` or `none` is no limit.

    Raises ValueError, with a one-line message, for anything else.
    """
    spec = text.strip().lower()
    if spec in {"0", "off", "none"}:
        return ()
    limits: list[Limit] = []
    for item in spec.split(","):
        match = _ITEM.fullmatch(item.strip())
        if match is None or match[3] not in _UNIT_SECONDS:
            raise ValueError(_SYNTAX)
        count, windows = int(match[1]), int(match[2] or 1)
        seconds = windows * _UNIT_SECONDS[match[3]]
        if not 1 <= count <= MAX_COUNT:
            raise ValueError(f"a limit's count must be from 1 to {MAX_COUNT} (off disables it)")
        if not 1 <= seconds <= MAX_WINDOW_S:
            raise ValueError("a limit's window must be from 1 second to 30 days")
        if any(limit.seconds == seconds for limit in limits):
            raise ValueError("two limits over the same window")
        limits.append(Limit(count, seconds))
    return tuple(sorted(limits, key=lambda limit: limit.seconds))


class Window(msgspec.Struct, frozen=True):
    """One limit applied to one subject, e.g. `Window("ip", "203.0.113.7", Limit(100, 60))`."""

    kind: str
    subject: str
    limit: Limit
    bucket: str = ""
    """The window's row key, `kind:seconds:subject` (worked out when the window is made)."""

    def __post_init__(self) -> None:
        force_setattr(self, "bucket", f"{self.kind}:{self.limit.seconds}:{self.subject}")


class Tally(msgspec.Struct, frozen=True, kw_only=True):
    """A window's count after a `hit`, by the database's clock (`now`)."""

    window: Window
    count: int | None
    """None: not counted, because the first stage refused the request."""
    window_start: datetime
    resets_at: datetime
    now: datetime

    @property
    def remaining(self) -> int:
        return max(0, self.window.limit.count - (self.count or 0))

    @property
    def resets_in(self) -> float:
        """Seconds until the window ends."""
        return max(0.0, (self.resets_at - self.now).total_seconds())


class _Local:
    """A window this process counts in memory: the shared count as of its last flush (`known`,
    its own flushed counts included) and what it counted since (`pending`)."""

    __slots__ = ("known", "pending", "start", "end", "reset")

    def __init__(self, start: datetime, end: datetime) -> None:
        self.known = 0
        self.pending = 0
        self.start = start
        self.end = end
        self.reset = str(math.ceil(end.timestamp())).encode()
        """Its end as `X-RateLimit-Reset` spells it (Unix seconds)."""


class Held:
    """The windows one client is counted in (its address's first, then its user's and key's) as
    `count_held` counts them, with the in-memory entries of their current windows kept at hand: a
    request finds them without working out where each window starts or looking it up, until the
    first of them ends (or the counters forget a window)."""

    __slots__ = ("first", "then", "windows", "limits", "staged", "locals", "since", "until", "generation")

    def __init__(self, first: Sequence[Window], then: Sequence[Window] = ()) -> None:
        self.first = tuple(first)
        self.then = tuple(then)
        self.windows = (*self.first, *self.then)
        self.limits = tuple(window.limit.count for window in self.windows)
        self.staged = len(self.first)
        """How many of `windows` (from the first) are counted whatever the others say."""
        self.locals: list[_Local] = []
        """The entries of the windows `moment` falls in, for `since <= moment < until` (by the database's
        clock) while the counters' `generation` is unchanged; replaced, never changed in place."""
        self.since = math.inf
        self.until = -math.inf
        self.generation = -1


class Counted(msgspec.Struct, gc=False):
    """Windows `count_held` has just counted, before any tally is built: a request within every
    limit needs only the tightest counted window's limit, requests left and reset (`limit`, `left`,
    `reset`); `tallies` builds what `count_in_memory` returns. (A Struct: one is made per request.)"""

    windows: tuple[Window, ...]
    locals: list[_Local]
    counted: int
    """How many of `windows` (from the first) were counted: all, or the first stage's alone."""
    within: bool
    """Whether every counted window is within its limit (the request is admitted)."""
    moment: float
    limit: int
    left: int
    reset: bytes | None
    """With `limit` and `left`: the counted window with the fewest requests left, the one that resets
    last among equals: its limit, requests left and reset as `X-RateLimit-Reset` spells it (None: no
    window was counted)."""

    def tallies(self) -> list[Tally]:
        now = datetime.fromtimestamp(self.moment, timezone.utc)
        return [
            Tally(window=window, count=local.known + local.pending if i < self.counted else None,
                  window_start=local.start, resets_at=local.end, now=now)
            for i, (window, local) in enumerate(zip(self.windows, self.locals, strict=True))
        ]  # fmt: skip


def _epoch_s(moment: datetime) -> int:
    """A window's start (always a whole second, aligned to the epoch) in Unix seconds."""
    return round(moment.timestamp())


class CountersUnavailable(AdapterError):
    """The counters could not be read or written in time; callers let the request through."""


class PgRateCounters:
    """The counters of every API process, in one PostgreSQL table.

    Opens its own small pool on first use (a process that never serves HTTP never connects).
    A call that fails or takes longer than `timeout` raises CountersUnavailable, and so does
    every call for `backoff` seconds after, so an unreachable database slows no request
    for long; then one call tries again while the others still raise at once. The first
    failure is logged, and the recovery; nothing in between.
    """

    def __init__(
        self,
        database_url: str,
        *,
        timeout: float = 1.0,
        backoff: float = 5.0,
        max_size: int = 4,
        flush_every: float = FLUSH_EVERY_S,
    ) -> None:
        self.timeout = timeout
        self.backoff = backoff
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=max_size,
            open=False,
            name="wattledger-ratelimit",
            timeout=timeout,
            kwargs={"autocommit": True},
        )
        self._opened = False
        self._ready = False
        self._closed = False
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S
        self._tasks: set[asyncio.Task[None]] = set()
        self.flush_every = flush_every
        self._local: dict[tuple[str, int], _Local] = {}
        """Windows counted in memory, by bucket and the window's start in Unix seconds."""
        self._generation = 0
        """Changed whenever windows are forgotten: a `Held` pointing at entries of an older one finds them anew."""
        self._offset: float | None = None
        """The database's clock minus this process's, in seconds; None until the first answer."""
        self._flusher: asyncio.Task[None] | None = None
        self._first_answer: asyncio.Future[None] | None = None
        """Set while the first `hit` of `count_requests` (the one that reads the database's clock) runs."""
        self._probing = False
        """Whether a call is trying the failing counters again (the others meanwhile raise at once)."""

    async def hit(
        self, first: Sequence[Window], then: Sequence[Window] = (), peek: Sequence[Window] = ()
    ) -> list[Tally]:
        """Count `first`, read `peek`, and count `then` only if no `first` window is now over its
        limit and no `peek` window is at its limit.

        One statement, one round trip. Tallies come back in the order of the windows given.
        Raises CountersUnavailable.
        """
        windows = [*first, *then, *peek]
        if not windows:
            return []
        stages = [1] * len(first) + [2] * len(then) + [3] * len(peek)
        buckets = [w.bucket for w in windows]
        if len(set(buckets)) != len(buckets):
            raise ValueError("a window is given twice")
        params = {
            "stages": stages,
            "buckets": buckets,
            "secs": [w.limit.seconds for w in windows],
            "lims": [w.limit.count for w in windows],
        }
        rows = await self._run(_HIT, params, fetch=True)
        by_bucket = {row[0]: row for row in rows}
        tallies = []
        for window in windows:
            _, start, end, now, count = by_bucket[window.bucket]
            tallies.append(Tally(window=window, count=count, window_start=start, resets_at=end, now=now))
        self._learn(tallies[: len(first) + len(then)])
        self._maybe_sweep()
        return tallies

    def _learn(self, tallies: Sequence[Tally]) -> None:
        """Take the shared counts a statement answered as what `count_requests` builds on."""
        for tally in tallies:
            if tally.count is not None:
                key = (tally.window.bucket, _epoch_s(tally.window_start))
                local = self._local.get(key)
                if local is None:
                    local = self._local[key] = _Local(tally.window_start, tally.resets_at)
                local.known = tally.count

    async def count_requests(self, first: Sequence[Window], then: Sequence[Window] = ()) -> list[Tally]:
        """`hit(first, then)` counted in this process's memory and added to the shared table every
        `flush_every` seconds, in one statement for all its windows: no round trip per request.

        A window's count is the shared count as of the last flush plus what this process counted
        since, so a limit shared by several processes may be passed by what the others admitted
        within one flush interval. Until the database has first answered (its clock aligns the
        windows), and while it is failing, this is `hit` itself: it raises CountersUnavailable. Calls
        made while that first `hit` runs wait for it, then count in memory.
        """
        counted = self.count_in_memory(first, then)
        if counted is not None:
            return counted
        if self._failing_since is not None:
            return await self.hit(first, then)
        if self._first_answer is None:
            return await self._first_hit(first, then)
        # One statement reads the clock; requests arriving meanwhile (a burst on a fresh process)
        # wait for it instead of each queueing for the counters' few connections.
        await asyncio.shield(self._first_answer)
        if self._offset is None:
            return await self.hit(first, then)
        return self.count_in_memory(first, then) or await self.hit(first, then)

    def count_in_memory(self, first: Sequence[Window], then: Sequence[Window] = ()) -> list[Tally] | None:
        """`count_requests` without awaiting, when it needs no statement: None until the database
        has first answered and while it is failing (then call `count_requests`)."""
        counted = self.count_now(first, then)
        return counted.tallies() if counted is not None else None

    def count_now(self, first: Sequence[Window], then: Sequence[Window] = ()) -> Counted | None:
        """`count_in_memory`, its tallies not yet built (see `Counted`)."""
        return self.count_held(Held(first, then))

    def count_held(self, held: Held) -> Counted | None:
        """`count_now(held.first, held.then)`, finding the windows' entries through `held`."""
        offset = self._offset
        if offset is None or self._failing_since is not None:
            return None
        moment = time.time() + offset
        if not held.since <= moment < held.until or held.generation != self._generation:
            self._hold(held, moment)
        locals_ = held.locals
        limits = held.limits
        staged = held.staged
        admitted = True
        best: _Local | None = None
        best_left = best_limit = 0
        for i in range(staged):
            local = locals_[i]
            local.pending += 1
            limit = limits[i]
            left = limit - local.known - local.pending
            if left < 0:
                admitted = False
                left = 0
            if best is None or left < best_left or (left == best_left and local.end > best.end):
                best, best_left, best_limit = local, left, limit
        within = admitted
        counted = len(locals_) if admitted else staged
        for i in range(staged, counted):
            local = locals_[i]
            local.pending += 1
            limit = limits[i]
            left = limit - local.known - local.pending
            if left < 0:
                within = False
                left = 0
            if best is None or left < best_left or (left == best_left and local.end > best.end):
                best, best_left, best_limit = local, left, limit
        if self._flusher is None and not self._closed:
            self._flusher = asyncio.create_task(self._flush_soon())
        return Counted(
            held.windows, locals_, counted, within, moment, best_limit, best_left, best.reset if best is not None else None
        )

    def _hold(self, held: Held, moment: float) -> None:
        """Point `held` at the entries of the windows `moment` (by the database's clock) falls in."""
        since, until = -math.inf, math.inf
        locals_ = []
        for window in held.windows:
            seconds = window.limit.seconds
            start_s = int(moment // seconds) * seconds
            since, until = max(since, start_s), min(until, start_s + seconds)
            locals_.append(self._entry(window.bucket, start_s, seconds))
        held.locals, held.since, held.until, held.generation = locals_, since, until, self._generation

    async def _first_hit(self, first: Sequence[Window], then: Sequence[Window]) -> list[Tally]:
        waited = self._first_answer = asyncio.get_running_loop().create_future()
        try:
            answered = await self.hit(first, then)
            if answered:
                self._offset = answered[0].now.timestamp() - time.time()
            return answered
        finally:
            self._first_answer = None
            waited.set_result(None)

    def _entry(self, bucket: str, start_s: int, seconds: int) -> _Local:
        """The in-memory entry of the window of `bucket` starting at `start_s` (Unix seconds)."""
        key = (bucket, start_s)
        local = self._local.get(key)
        if local is None:
            local = self._local[key] = _Local(
                datetime.fromtimestamp(start_s, timezone.utc), datetime.fromtimestamp(start_s + seconds, timezone.utc)
            )
        return local

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(self.flush_every)
            await self.flush()
        except CountersUnavailable:
            pass  # reported by `_run`; the counts stay pending for the next flush
        finally:
            self._flusher = None
            if any(local.pending for local in self._local.values()) and not self._closed:
                self._flusher = asyncio.create_task(self._flush_soon())

    async def flush(self) -> None:
        """Add every count this process holds in memory to the shared table, learn the shared counts
        back, and forget windows that have ended. Raises CountersUnavailable (the counts stay pending)."""
        pending = [(key, local, local.pending) for key, local in self._local.items() if local.pending]
        if pending:
            params = {
                "buckets": [key[0] for key, _, _ in pending],
                "starts": [local.start for _, local, _ in pending],
                "ends": [local.end for _, local, _ in pending],
                "adds": [added for _, _, added in pending],
            }
            rows = await self._run(_ADD, params, fetch=True)
            shared = {(row[0], _epoch_s(row[1])): int(row[2]) for row in rows}
            for key, local, added in pending:
                local.pending -= added
                local.known = shared.get(key, local.known + added)
            if rows:
                self._offset = rows[0][3].timestamp() - time.time()
            self._maybe_sweep()
        self._forget_ended()

    def _forget_ended(self) -> None:
        """Drop the windows held in memory that have ended and hold nothing unflushed."""
        if self._offset is not None:
            now = datetime.fromtimestamp(time.time() + self._offset, timezone.utc)
            ended = [key for key, local in self._local.items() if local.end <= now and not local.pending]
            for key in ended:
                del self._local[key]
            if ended:
                self._generation += 1

    async def refund(self, tallies: Sequence[Tally]) -> None:
        """Take back one count from each counted tally's window (if that window still exists): from
        what this process holds in memory when it can, else from the shared table."""
        counted = []
        for tally in tallies:
            if tally.count is None:
                continue
            local = self._local.get((tally.window.bucket, _epoch_s(tally.window_start)))
            if local is not None and local.pending > 0:
                local.pending -= 1
            else:
                counted.append(tally)
        if counted:
            params = {"buckets": [t.window.bucket for t in counted], "starts": [t.window_start for t in counted]}
            await self._run(_REFUND, params)

    async def sweep(self) -> int:
        """Delete the windows that have ended; returns how many."""
        deleted: int = await self._run(_SWEEP, {}, count_rows=True)
        return deleted

    async def close(self) -> None:
        if self._opened and not self._closed:
            try:
                await self.flush()
            except CountersUnavailable:
                log.info("ratelimit.counts_unflushed", windows=sum(1 for local in self._local.values() if local.pending))
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            self._tasks.add(self._flusher)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._opened:
            await self._pool.close()

    def _maybe_sweep(self) -> None:
        if time.monotonic() < self._next_sweep or self._closed:
            return
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S
        self._forget_ended()
        task = asyncio.create_task(self._sweep_quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep_quietly(self) -> None:
        try:
            deleted = await self.sweep()
        except CountersUnavailable:
            return
        if deleted:
            log.debug("ratelimit.swept", windows=deleted)

    async def _run(self, query: str, params: dict[str, Any], *, fetch: bool = False, count_rows: bool = False) -> Any:
        if self._closed:
            raise CountersUnavailable("the counters are closed")
        probe = self._failing_since is not None
        if probe and (self._probing or time.monotonic() < self._retry_at):
            # Failing: one call at a time tries them again, after `backoff`; the others pass at once.
            raise CountersUnavailable("the counters failed a moment ago")
        self._probing = probe
        try:
            async with asyncio.timeout(self.timeout):
                if not self._opened:
                    self._opened = True
                    await self._pool.open(wait=False)
                async with self._pool.connection() as conn:
                    if not self._ready:
                        await _ensure_table(conn)
                        self._ready = True
                    cur = await conn.execute(query, params)
                    result: Any = await cur.fetchall() if fetch else cur.rowcount if count_rows else None
        except (psycopg.Error, PoolTimeout, PoolClosed, TimeoutError, OSError) as exc:
            self._failed(exc)
            raise CountersUnavailable(type(exc).__name__) from exc
        finally:
            if probe:
                self._probing = False
        if self._failing_since is not None:
            log.info("ratelimit.counters_recovered", after_s=round(time.monotonic() - self._failing_since, 1))
            self._failing_since = None
        return result

    def _failed(self, exc: BaseException) -> None:
        # A missing table (dropped, or a fresh database after a failover) is created again on the next try.
        self._ready = False
        self._retry_at = time.monotonic() + self.backoff
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            sqlstate = getattr(exc, "sqlstate", None)
            log.warning(
                "ratelimit.counters_unavailable",
                error=type(exc).__name__,
                sqlstate=sqlstate,
                note="requests pass unlimited until the counters answer again",
            )
