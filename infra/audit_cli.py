"""`wattledger audit verify` and `wattledger export events`: the tamper check and the compliance export.

Both read PostgreSQL directly (the event store and the hash chain) and show a progress
bar on stderr; their result goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO
from uuid import UUID

import msgspec
import psycopg

from adapters.export_files import FORMATS
from adapters.history import EVENTS_TABLE, EventFilter
from domain.compliance import Manifest
from infra.runtime import Runtime
from infra.settings import SettingsError
from projections.chain import Verification, verify

COMMANDS = frozenset({"audit", "export"})


def _moment(text: str) -> datetime:
    """An ISO 8601 time for `--since` / `--until`; one without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def add_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    settings_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `audit verify` and `export events` on the `wattledger` parser."""
    audit = commands.add_parser("audit", help="check the event history against its hash chain")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    check = audit_actions.add_parser(
        "verify", help="recompute the hash chain from the stored events; exit 1 naming the first position that differs"
    )
    settings_options(check)
    export = commands.add_parser("export", help="export the event history for compliance")
    export_actions = export.add_subparsers(dest="action", required=True)
    events = export_actions.add_parser("events", help="write the events and a manifest.json into a directory")
    events.add_argument("--format", choices=FORMATS, default="jsonl", help="jsonl (default), csv or xlsx")
    events.add_argument("--out", type=Path, required=True, help="directory to write into (created if missing)")
    events.add_argument("--aggregate", help="device, meter, user, session, apikey, roster, ...")
    events.add_argument("--originator-id", type=UUID, help="one aggregate's id")
    events.add_argument("--event-type", help="an event name, e.g. StateChanged")
    events.add_argument("--actor", help="e.g. user:<id>, key:<id>, cli:<login>, system:poller")
    events.add_argument("--since", type=_moment, help="events at or after this time (ISO 8601; UTC without a zone)")
    events.add_argument("--until", type=_moment, help="events before this time")
    events.add_argument("--from-position", type=int, default=1, help="first notification id to include")
    settings_options(events)


class Progress:
    """A one-line progress bar on a terminal stream: a bar, counts, events/s and the time left."""

    def __init__(self, label: str, stream: IO[str]) -> None:
        self.label = label
        self.stream = stream
        self.began = time.perf_counter()
        self._shown = 0.0

    def show(self, done: int, total: int, note: str = "", *, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._shown < 0.2:
            return
        self._shown = now
        elapsed = max(now - self.began, 1e-9)
        rate = done / elapsed
        width = 30
        filled = int(width * min(done, total) / total) if total else width
        left = f", {max(total - done, 0) / rate:,.0f} s left" if rate > 0 and total > done else ""
        bar = f"[{'#' * filled}{'.' * (width - filled)}]"
        self.stream.write(f"\r{self.label} {bar} {done:,}/{total:,}{note}, {rate:,.0f} events/s{left}")
        self.stream.flush()

    def end(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


async def run(runtime: Runtime, args: argparse.Namespace) -> None:
    """Run `audit verify` or `export events`. Raises SystemExit(1) when verify finds a problem."""
    if args.command == "audit":
        result = await asyncio.to_thread(run_verify, runtime.database_url, sys.stderr)
        if not result.intact:
            raise SystemExit(1)
        return
    if args.from_position < 1:
        raise SettingsError("--from-position must be 1 or more")
    where = EventFilter(
        aggregate=args.aggregate, originator_id=args.originator_id, event_type=args.event_type, actor=args.actor,
        since=args.since, until=args.until, from_position=args.from_position,
    )  # fmt: skip
    await run_export(runtime, where, args.format, args.out, sys.stderr, actor=f"cli:{getpass.getuser()}")


def run_verify(database_url: str, stderr: IO[str]) -> Verification:
    """Verify the chain with a progress bar on `stderr`; print the outcome (stdout when intact, stderr if not)."""
    with psycopg.connect(database_url) as conn:
        newest = conn.execute(f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}").fetchone()
        conn.rollback()
        total = int(newest[0]) if newest else 0
        bar = Progress("verifying", stderr)
        result = verify(conn, progress=lambda done: bar.show(done, total))
        bar.show(result.checked + result.unchained, total, force=True)
        bar.end()
    head = f"position {result.head.position}, hash {result.head.hash}" if result.head else "none (empty chain)"
    if result.problem is not None:
        problem = result.problem
        stderr.write(
            f"wattledger: audit verify: position {problem.position} {problem.kind}: {problem.detail} "
            f"({result.checked} events before it matched)\n"
        )
        return result
    print(f"intact: {result.checked} events match the hash chain; head {head}; {result.unchained} not yet chained")
    return result


async def run_export(runtime: Runtime, where: EventFilter, fmt: str, out: Path, stderr: IO[str], *,
                     actor: str) -> Manifest:
    """Export through the one compliance use case (the log records the request and the outcome), with a
    progress bar on `stderr`; print the manifest's summary as JSON on stdout."""
    bar = Progress(f"exporting {fmt}", stderr)
    manifest = await runtime.compliance_exports().export(
        where, fmt, out, actor=actor,
        progress=lambda done, total, written: bar.show(done, total, f" positions, {written:,} written"),
    )  # fmt: skip
    bar.show(1, 1, f" positions, {manifest.count:,} written", force=True)
    bar.end()
    summary = {
        "directory": str(out), "count": manifest.count, "first_position": manifest.first_position,
        "last_position": manifest.last_position, "chain_head": manifest.chain_head,
        "files": manifest.files,
    }  # fmt: skip
    print(msgspec.json.encode(summary).decode())
    return manifest
