"""`wattledger project --rebuild NAME|all [--verify]` and `--retry`: replay read models with a progress display.

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

from infra.errors import InfraError
from projections.engine import ProjectionEngine, QuarantinedEvent, ReplayBusy, ReplayProgress, RowDifference

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


def rebuild(engine: ProjectionEngine, names: Sequence[str], err: TextIO, *, tty: bool | None = None) -> int:
    """Rebuild `names` and swap them in, with progress on `err`; the exit code (1 if another replay holds one)."""
    display = ProgressDisplay(err, f"rebuilding {', '.join(names)}", tty=tty)
    try:
        events = engine.rebuild_many(names, display)
    except ReplayBusy as exc:
        err.write(f"\nwattledger: {exc}\n")
        return 1
    position = display.last.position if display.last else 0
    display.finish(f"rebuilt {', '.join(names)}: {events:,} events replayed, swapped in at position {position:,}")
    return 0


def verify(
    engine: ProjectionEngine, names: Sequence[str], out: TextIO, err: TextIO, *, tty: bool | None = None
) -> int:
    """Replay `names` beside the live tables and print every row that differs on `out`; exit code 1 if any."""
    display = ProgressDisplay(err, f"verifying {', '.join(names)}", tty=tty)
    try:
        differences = engine.verify(names, display)
    except ReplayBusy as exc:
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
