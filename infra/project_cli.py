"""`wattledger project`: run the projectors, or `--rebuild`, `--verify` and `--retry` the read models and exit.

The replays and their progress are `infra.replay`'s; this module registers the options, and
refuses to re-chain a history that no longer matches its hash chain unless `--force`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

import psycopg

from infra import replay
from infra.settings import SettingsError
from projections.chain import ChainProjector, Problem
from projections.chain import verify as verify_chain
from projections.engine import ProjectionEngine

CHAIN_READ_MODEL = ChainProjector.name


def add_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    settings_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `project` and its replay options on the `wattledger` parser."""
    project = commands.add_parser("project", help="run the projectors, or rebuild read models from zero")
    project.add_argument(
        "--rebuild", metavar="NAME|all",
        help="replay a read model (or all) from the first event into fresh tables, swap them in and exit",
    )
    project.add_argument(
        "--verify", action="store_true",
        help="with --rebuild (all if none named): replay beside the live tables, print every row that differs "
        "and exit 1 if any, swapping nothing",
    )
    project.add_argument(
        "--retry", action="store_true",
        help="apply the events the read models quarantined again (each such read model is replayed from zero); "
        "list those that still fail and exit 1 if any",
    )
    project.add_argument(
        "--force", action="store_true",
        help="rebuild the hash chain even when the stored history no longer matches it (re-chains tampering)",
    )
    settings_options(project)


def replays(args: argparse.Namespace) -> bool:
    """Whether the command is a replay that exits when done, not the running projectors."""
    return args.command == "project" and bool(args.retry or args.rebuild or args.verify)


async def run(engine: ProjectionEngine, args: argparse.Namespace) -> None:
    """Run the replay `args` ask for."""
    if args.retry:
        await retry(engine, force=args.force)
    else:
        await rebuild(engine, args.rebuild or replay.ALL, verify=args.verify, force=args.force)


async def rebuild(engine: ProjectionEngine, name: str, *, verify: bool, force: bool = False) -> None:
    """Rebuild (or verify) the read models `name` stands for; exit 1 on differences or a replay already running.

    Rebuilding the hash chain hashes the history as it is stored now, which would bless an edited
    event: unless `force`, the chain is checked first and a history that no longer matches it
    stops the rebuild (exit 1, naming the first position, nothing rebuilt).
    """
    try:
        names = replay.chosen_read_models(engine, name)
    except replay.UnknownReadModel as exc:
        raise SettingsError(str(exc)) from None
    await asyncio.to_thread(engine.setup)
    if not verify:
        await _refuse_edited_chain(engine, names, force=force)
    if verify:
        code = await asyncio.to_thread(replay.verify, engine, names, sys.stdout, sys.stderr)
    else:
        code = await asyncio.to_thread(replay.rebuild, engine, names, sys.stderr)
    if code:
        raise SystemExit(code)


async def retry(engine: ProjectionEngine, *, force: bool = False) -> None:
    """Apply the quarantined events again; exit 1 while some still fail (or another replay runs)."""
    await asyncio.to_thread(engine.setup)
    names = await asyncio.to_thread(engine.quarantined)
    await _refuse_edited_chain(engine, names, force=force)
    code = await asyncio.to_thread(replay.retry, engine, names, sys.stdout, sys.stderr)
    if code:
        raise SystemExit(code)


async def _refuse_edited_chain(engine: ProjectionEngine, names: Sequence[str], *, force: bool) -> None:
    """Exit 1 before a replay of `names` would re-chain an edited history (unless `force`)."""
    if force or CHAIN_READ_MODEL not in names:
        return
    found = await asyncio.to_thread(_chain_check, engine.database_url)
    if found is not None:
        print(
            f"wattledger: the stored history no longer matches its hash chain: position {found.position} "
            f"{found.kind} ({found.detail}); nothing rebuilt. See `wattledger audit verify`; "
            "`--force` rebuilds the chain over the history as it is now",
            file=sys.stderr,
        )
        raise SystemExit(1)


def _chain_check(database_url: str) -> Problem | None:
    with psycopg.connect(database_url) as conn:
        return verify_chain(conn).problem
