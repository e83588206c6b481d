"""`wattledger project`: run the projectors, or `--rebuild`, `--verify`, `--retry` or checkpoint the read models.

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
        "--from-checkpoint", action="store_true",
        help="with --rebuild or --verify: start each read model from its newest checkpoint (verified first) and "
        "replay only the events after it; one without a checkpoint replays from zero",
    )
    project.add_argument(
        "--or-from-zero", action="store_true",
        help="with --from-checkpoint: a checkpoint that fails verification is a warning and the rebuild starts "
        "from zero (by default it is refused with exit code 1)",
    )
    project.add_argument(
        "--checkpoint", metavar="NAME|all",
        help="store a checkpoint of a read model (or all) at the position it has reached, and exit",
    )
    project.add_argument("--checkpoints", action="store_true", help="list the stored checkpoints and exit")
    project.add_argument(
        "--jobs", metavar="N", type=int,
        help="with --rebuild: replay the read models in N processes at once, then swap them in together "
        "(default: 1 below 20,000 events in the log, else as the cores allow, 2 on two cores; where a process "
        "cannot be forked, 1 below 150,000 events or on fewer than 4 cores)",
    )
    project.add_argument(
        "--prune-checkpoints", metavar="KEEP", type=int,
        help="delete all but the newest KEEP checkpoints of each read model, and exit",
    )
    project.add_argument(
        "--force", action="store_true",
        help="rebuild the hash chain even when the stored history no longer matches it (re-chains tampering)",
    )
    settings_options(project)


def replays(args: argparse.Namespace) -> bool:
    """Whether the command is a replay that exits when done, not the running projectors."""
    return args.command == "project" and bool(
        args.retry or args.rebuild or args.verify or args.checkpoint or args.checkpoints
        or args.prune_checkpoints is not None or args.from_checkpoint or args.or_from_zero
    )  # fmt: skip


async def run(engine: ProjectionEngine, args: argparse.Namespace) -> None:
    """Run the replay `args` ask for."""
    if args.from_checkpoint and not (args.rebuild or args.verify):
        raise SettingsError("--from-checkpoint goes with --rebuild NAME|all or --verify")
    if args.or_from_zero and not args.from_checkpoint:
        raise SettingsError("--or-from-zero goes with --from-checkpoint")
    if args.jobs is not None and (args.jobs < 1 or not args.rebuild or args.verify):
        raise SettingsError("--jobs N (1 or more) goes with --rebuild NAME|all, without --verify")
    if args.retry:
        await retry(engine, force=args.force)
    elif args.checkpoint or args.checkpoints or args.prune_checkpoints is not None:
        await checkpoints(engine, args)
    else:
        await rebuild(engine, args.rebuild or replay.ALL, verify=args.verify, force=args.force,
                      from_checkpoint=args.from_checkpoint, or_from_zero=args.or_from_zero,
                      jobs=args.jobs)  # fmt: skip


async def checkpoints(engine: ProjectionEngine, args: argparse.Namespace) -> None:
    """Store, list or prune checkpoints; exit 1 if one cannot be stored."""
    await asyncio.to_thread(engine.setup)
    if args.checkpoint:
        try:
            names = replay.chosen_read_models(engine, args.checkpoint)
        except replay.UnknownReadModel as exc:
            raise SettingsError(str(exc)) from None
        code = await asyncio.to_thread(replay.checkpoint, engine, names, sys.stdout, sys.stderr)
    elif args.prune_checkpoints is not None:
        if args.prune_checkpoints < 0:
            raise SettingsError(f"--prune-checkpoints keeps 0 or more, not {args.prune_checkpoints}")
        code = await asyncio.to_thread(replay.prune_checkpoints, engine, args.prune_checkpoints, sys.stdout)
    else:
        code = await asyncio.to_thread(replay.list_checkpoints, engine, sys.stdout)
    if code:
        raise SystemExit(code)


async def rebuild(
    engine: ProjectionEngine, name: str, *, verify: bool, force: bool = False, from_checkpoint: bool = False,
    or_from_zero: bool = False, jobs: int | None = None,
) -> None:
    """Rebuild (or verify) the read models `name` stands for; exit 1 on differences or a replay already running.

    Rebuilding the hash chain hashes the history as it is stored now, which would bless an edited
    event: unless `force`, the chain is checked first and a history that no longer matches it
    stops the rebuild (exit 1, naming the first position, nothing rebuilt). A chain resumed from a
    checkpoint hashes only the events after it, which the checkpoint's checks hold to the chain.
    """
    try:
        names = replay.chosen_read_models(engine, name)
    except replay.UnknownReadModel as exc:
        raise SettingsError(str(exc)) from None
    await asyncio.to_thread(engine.setup)
    if not verify:
        # A chain resumed from its checkpoint re-chains nothing before it (a fallback from zero would).
        resumed = from_checkpoint and not or_from_zero and CHAIN_READ_MODEL in names and await asyncio.to_thread(
            replay.has_checkpoint, engine, CHAIN_READ_MODEL
        )
        await _refuse_edited_chain(engine, names, force=force or resumed)
    if verify:
        code = await asyncio.to_thread(replay.verify, engine, names, sys.stdout, sys.stderr,
                                       from_checkpoint=from_checkpoint)  # fmt: skip
    else:
        code = await asyncio.to_thread(replay.rebuild, engine, names, sys.stderr, from_checkpoint=from_checkpoint,
                                       or_from_zero=or_from_zero, jobs=jobs)  # fmt: skip
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
