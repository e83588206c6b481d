"""`wattledger project --rebuild NAME|all [--verify] [--from-checkpoint]`, `--retry` and the checkpoint options:
replay read models with a progress display, and store, list and prune their checkpoints.

The replay itself is the engine's (`ProjectionEngine.rebuild_many` and
`verify`); this module names what to replay, draws the progress on stderr and
turns the outcome into lines and an exit code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any, TextIO
from uuid import UUID

import psycopg

from infra.errors import InfraError
from projections import checkpoints
from projections.checkpoints import Checkpoint, CheckpointError, CheckpointRefused
from projections.engine import ProjectionEngine, QuarantinedEvent, ReplayBusy, ReplayProgress, RowDifference
from projections.parallel import GroupFailed, rebuild_in_processes
from projections.rebuild import chosen_projectors, rebuild_from_checkpoints, verify_from_checkpoints
from projections.replay_plan import cores, default_jobs_for

ALL = "all"


class UnknownReadModel(InfraError, LookupError):
    """The name given is neither a registered read model nor `all`."""


def chosen_read_models(engine: ProjectionEngine, name: str) -> list[str]:
    """The read models `name` stands for: every registered one for `all`; raises `UnknownReadModel` otherwise."""
    if name == ALL:
        return list(engine.projectors)
    if name not in engine.projectors:
        raise UnknownReadModel(f"unknown read model {name!r}; known: {', '.join(engine.projectors)}, or {ALL}")
    return [name]


def _duration(seconds: float) -> str:
    seconds = max(int(seconds + 0.5), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes:02}:{secs:02}"


class ProgressDisplay:
    """Draws replay progress on a stream: a redrawn bar on a terminal, one line per `every` events otherwise.

    Each update shows events done of the total (the log's head, which grows
    while events arrive), events per second since the start and the time left
    at that rate. A terminal is redrawn at most every `redraw` seconds.
    """

    def __init__(
        self,
        stream: TextIO,
        label: str,
        *,
        tty: bool | None = None,
        every: int = 50_000,
        redraw: float = 0.1,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.label = label
        self.tty = stream.isatty() if tty is None else tty
        self.every = every
        self.redraw = redraw
        self.width = width
        self._clock = clock
        self._began = clock()
        self._drawn = float("-inf")
        self._lines = 0
        self.last: ReplayProgress | None = None

    def rate(self) -> float:
        events = self.last.events if self.last else 0
        return events / max(self._clock() - self._began, 1e-9)

    def text(self, progress: ReplayProgress) -> str:
        """One status line: `label [####....] done/total events, N events/s, ETA m:ss`."""
        done = progress.events
        total = progress.events + max(progress.head - progress.position, 0)
        rate = self.rate()
        left = (total - done) / rate if rate > 0 else 0.0
        filled = int(self.width * done / total) if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        return (
            f"{self.label} [{bar}] {done:,}/{total:,} events, {rate:,.0f} events/s, ETA {_duration(left)}"
            + ("" if progress.phase == "replay" else f" ({progress.phase})")
        )

    def __call__(self, progress: ReplayProgress) -> None:
        self.last = progress
        now = self._clock()
        if self.tty:
            if now - self._drawn >= self.redraw or progress.phase != "replay":
                self._drawn = now
                self.stream.write("\r\x1b[2K" + self.text(progress))
                self.stream.flush()
            return
        if progress.events // self.every > self._lines or progress.phase != "replay":
            self._lines = progress.events // self.every
            self.stream.write(self.text(progress) + "\n")
            self.stream.flush()

    def finish(self, summary: str) -> None:
        """End the display with a summary line (replacing the bar on a terminal)."""
        elapsed = self._clock() - self._began
        line = f"{summary} in {_duration(elapsed)} ({self.rate():,.0f} events/s)"
        self.stream.write(("\r\x1b[2K" if self.tty else "") + line + "\n")
        self.stream.flush()


def _shown(value: Any, limit: int = 80) -> str:
    if isinstance(value, (UUID, datetime, date)):
        text = str(value)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(difference: RowDifference) -> str:
    """One line for one differing row: read model, table, key, and what differs."""
    key = ",".join(f"{column}={_shown(value)}" for column, value in difference.key.items())
    head = f"{difference.read_model} {difference.table} {key}"
    if difference.kind == "missing":
        return f"{head}: missing (the replay has this row, the live table does not)"
    if difference.kind == "extra":
        return f"{head}: extra (the live table has this row, the replay does not)"
    live, rebuilt = difference.live or {}, difference.rebuilt or {}
    changes = "; ".join(
        f"{column} live {_shown(live.get(column))} rebuilt {_shown(rebuilt.get(column))}"
        for column in difference.columns
    )
    return f"{head}: changed {changes}"


def _resumed(used: dict[str, Checkpoint]) -> str:
    if not used:
        return " (no checkpoint: from zero)"
    return " (from checkpoints: " + ", ".join(f"{name} at {c.position:,}" for name, c in used.items()) + ")"


def _replay(
    engine: ProjectionEngine, names: Sequence[str], display: ProgressDisplay, *, from_checkpoint: bool, jobs: int
) -> tuple[int, dict[str, Checkpoint]]:
    if jobs > 1 and len(names) > 1:
        return rebuild_in_processes(engine, names, jobs, display, from_checkpoint=from_checkpoint)
    if from_checkpoint:
        return rebuild_from_checkpoints(engine, names, display)
    return engine.rebuild_many(names, display), {}


def default_jobs(engine: ProjectionEngine, names: Sequence[str]) -> int:
    """The processes `rebuild` replays `names` in when not told: `default_jobs_for` the events in the log and
    this machine's cores (on Linux, from 20,000 events, two processes for all read models on two cores or more)."""
    return default_jobs_for(chosen_projectors(engine, names), engine.event_log.max_id(), cores())


def rebuild(
    engine: ProjectionEngine, names: Sequence[str], err: TextIO, *, tty: bool | None = None,
    from_checkpoint: bool = False, or_from_zero: bool = False, jobs: int | None = None,
) -> int:
    """Rebuild `names` and swap them in, with progress on `err`; the exit code (1 if another replay holds one,
    a checkpoint is refused without `or_from_zero`, or a process replaying some of them failed).

    With `from_checkpoint` each read model starts from its newest checkpoint; with `or_from_zero`
    a refused checkpoint is a warning and the rebuild starts from zero instead. With `jobs` above
    1 the read models are replayed in that many processes at once; None leaves it to `default_jobs`."""
    if jobs is None:
        jobs = default_jobs(engine, names)
    label = f"rebuilding {', '.join(names)}" + (f" in {jobs} processes" if jobs > 1 and len(names) > 1 else "")
    display = ProgressDisplay(err, label, tty=tty)
    resumed = ""
    try:
        try:
            events, used = _replay(engine, names, display, from_checkpoint=from_checkpoint, jobs=jobs)
            resumed = _resumed(used) if from_checkpoint else ""
        except CheckpointRefused as exc:
            if not or_from_zero:
                err.write(f"\nwattledger: {exc}; nothing rebuilt (--or-from-zero rebuilds from zero instead)\n")
                return 1
            err.write(f"\nwattledger: warning: {exc}; rebuilding from zero\n")
            display = ProgressDisplay(err, label, tty=tty)
            events, _ = _replay(engine, names, display, from_checkpoint=False, jobs=jobs)
    except (ReplayBusy, GroupFailed) as exc:
        err.write(f"\nwattledger: {exc}\n")
        return 1
    position = display.last.position if display.last else 0
    display.finish(
        f"rebuilt {', '.join(names)}: {events:,} events replayed{resumed}, swapped in at position {position:,}"
    )
    return 0


def verify(
    engine: ProjectionEngine, names: Sequence[str], out: TextIO, err: TextIO, *, tty: bool | None = None,
    from_checkpoint: bool = False,
) -> int:
    """Replay `names` beside the live tables (from their checkpoints with `from_checkpoint`) and print every
    row that differs on `out`; exit code 1 if any, or if a checkpoint is refused."""
    display = ProgressDisplay(err, f"verifying {', '.join(names)}", tty=tty)
    try:
        if from_checkpoint:
            differences, _ = verify_from_checkpoints(engine, names, display)
        else:
            differences = engine.verify(names, display)
    except (ReplayBusy, CheckpointRefused) as exc:
        err.write(f"\nwattledger: {exc}\n")
        return 1
    for difference in differences:
        out.write(describe(difference) + "\n")
    out.flush()
    position = display.last.position if display.last else 0
    verdict = "identical" if not differences else f"{len(differences):,} rows differ"
    display.finish(f"verified {', '.join(names)} at position {position:,}: {verdict}")
    return 1 if differences else 0


def quarantined_line(event: QuarantinedEvent) -> str:
    """One line for an event a read model quarantined: read model, position, event, error."""
    name = event.topic.rpartition(":")[2] or event.topic
    return (f"{event.projector} position {event.position:,}: {name} of {event.originator_id} "
            f"v{event.originator_version}: {event.error}")  # fmt: skip


def retry(
    engine: ProjectionEngine, names: Sequence[str], out: TextIO, err: TextIO, *, tty: bool | None = None
) -> int:
    """Replay the read models `names` that quarantined events, so those events are applied again in order.

    Prints each event still quarantined on `out`; the exit code is 1 if any still fail (or
    another replay of one of them runs), 0 otherwise (also when nothing was quarantined)."""
    if not names:
        err.write("no read model has quarantined events\n")
        return 0
    display = ProgressDisplay(err, f"retrying {', '.join(names)}", tty=tty)
    try:
        before, after = engine.retry(names, display)
    except ReplayBusy as exc:
        err.write(f"\nwattledger: {exc}\n")
        return 1
    for event in after:
        out.write(quarantined_line(event) + "\n")
    out.flush()
    still = {(e.projector, e.position) for e in after}
    applied = sum((e.projector, e.position) not in still for e in before)
    display.finish(
        f"retried {len(before):,} quarantined events of {', '.join(names)}: "
        f"{applied:,} now apply, {len(after):,} quarantined"
    )
    return 1 if after else 0


def _size(count: int) -> str:
    value, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{count:,} B" if unit == "B" else f"{value:,.1f} {unit}"


def checkpoint_line(checkpoint: Checkpoint) -> str:
    """One line for a stored checkpoint: id, read model, version, position, rows, bytes, when."""
    return (
        f"checkpoint {checkpoint.id} of {checkpoint.read_model} v{checkpoint.version} at position "
        f"{checkpoint.position:,}: {checkpoint.rows:,} rows, {_size(checkpoint.stored_bytes)} stored "
        f"({_size(checkpoint.raw_bytes)} as text), {checkpoint.created_at:%Y-%m-%d %H:%M:%S %Z}"
    )


def checkpoint(engine: ProjectionEngine, names: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Store a checkpoint of each of `names` and print it on `out`; exit code 1 if one cannot be."""
    code = 0
    for name in names:
        try:
            out.write(checkpoint_line(checkpoints.write(engine.database_url, engine.projectors[name])) + "\n")
        except CheckpointError as exc:
            err.write(f"wattledger: {exc}\n")
            code = 1
        out.flush()
    return code


def list_checkpoints(engine: ProjectionEngine, out: TextIO) -> int:
    """Print every stored checkpoint, by read model, newest first."""
    with psycopg.connect(engine.database_url) as conn:
        found = checkpoints.list_checkpoints(conn)
    for stored in found:
        out.write(checkpoint_line(stored) + "\n")
    if not found:
        out.write("no checkpoints stored\n")
    out.flush()
    return 0


def prune_checkpoints(engine: ProjectionEngine, keep: int, out: TextIO) -> int:
    """Delete all but the newest `keep` checkpoints of each read model, printing each deleted."""
    with psycopg.connect(engine.database_url) as conn:
        deleted = checkpoints.prune(conn, keep)
    for stored in deleted:
        out.write("deleted " + checkpoint_line(stored) + "\n")
    out.write(f"{len(deleted):,} checkpoints deleted, the newest {keep} of each read model kept\n")
    out.flush()
    return 0


def has_checkpoint(engine: ProjectionEngine, name: str) -> bool:
    """Whether read model `name` has a stored checkpoint."""
    with psycopg.connect(engine.database_url) as conn:
        return checkpoints.newest(conn, name) is not None
