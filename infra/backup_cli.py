"""`wattledger backup create|list|restore`: archives of the whole event store, and restoring one into a new database.

`create` runs beside the live system (a consistent cut of the log, polling carries on) and
is recorded in the log with the operator's login as actor. `restore` touches no running
system: it checks the whole archive, writes it into the empty database given with
`--into-database-url`, replays every read model there and verifies the hash chain; the
switch-over is starting WattLedger with `DATABASE_URL` set to that database.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec

from adapters.backup_jobs import LEVELS, list_archives, restore_archive
from adapters.eventstore import WattLedger, ensure_events_schema, store_env
from domain.errors import DomainError
from infra.backups import PASSPHRASE_ENV, backup_jobs, backups_dir, key_fingerprint, restore_tools
from infra.runtime import Runtime
from infra.settings import Settings, SettingsError, load_settings, postgres_endpoint

COMMANDS = frozenset({"backup"})
"""The commands this module runs; `backup create` needs the runtime, the others do not."""


def add_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    settings_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `backup create|list|restore` on the `wattledger` parser."""
    backup = commands.add_parser("backup", help="make, list and restore encrypted backups of the whole event store")
    actions = backup.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="write an archive of every event, the keys and the settings")
    create.add_argument("--compression", choices=list(LEVELS), default="normal")
    create.add_argument("--passphrase-file", type=Path, help=f"read the passphrase from this file (else {PASSPHRASE_ENV})")
    settings_options(create)
    listed = actions.add_parser("list", help="list the archives in the data directory, newest first, as JSON")
    settings_options(listed)
    restore = actions.add_parser(
        "restore", help="check an archive whole, then restore it into an empty database and rebuild the read models"
    )
    restore.add_argument("archive", type=Path, help="the archive file")
    restore.add_argument("--into-database-url", required=True, help="the new, empty database to restore into")
    restore.add_argument("--passphrase-file", type=Path, help=f"read the passphrase from this file (else {PASSPHRASE_ENV})")
    settings_options(restore)


def passphrase(args: argparse.Namespace, *, confirm: bool = False) -> str:
    """From `--passphrase-file`, else the environment, else asked on the terminal; raises SettingsError without one."""
    if args.passphrase_file is not None:
        try:
            text = args.passphrase_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise SettingsError(f"cannot read --passphrase-file: {exc.strerror}") from None
    elif os.environ.get(PASSPHRASE_ENV):
        text = os.environ[PASSPHRASE_ENV]
    elif sys.stdin.isatty():
        text = getpass.getpass("backup passphrase: ")
        if confirm and getpass.getpass("again: ") != text:
            raise SettingsError("the passphrases differ")
    else:
        text = ""
    if not text:
        raise SettingsError(f"a backup is encrypted: give --passphrase-file or set {PASSPHRASE_ENV}")
    return str(text)


async def run(runtime: Runtime, args: argparse.Namespace) -> None:
    """`backup create` in a running runtime: print the archive's entry as JSON."""
    secret = passphrase(args, confirm=True)
    jobs = backup_jobs(runtime.settings, runtime.app, runtime.database_url, runtime.clock, secret)
    try:
        entry = await jobs.create(kind="manual", actor=f"cli:{getpass.getuser()}", compression=args.compression)
    except DomainError as exc:
        print(f"wattledger: {exc} ({exc.code})", file=sys.stderr)
        raise SystemExit(1) from None
    print(msgspec.json.encode(entry).decode())


def needs_runtime(args: argparse.Namespace) -> bool:
    return bool(args.command == "backup" and args.action == "create")


def run_alone(settings: Settings, args: argparse.Namespace) -> int:
    """`backup list` and `backup restore`, which need neither NATS nor the configured database."""
    directory = backups_dir(settings)
    if args.action == "list":
        print(msgspec.json.encode(list_archives(directory) if directory.is_dir() else []).decode())
        return 0
    if not args.archive.is_file():
        print(f"wattledger: no archive at {args.archive}", file=sys.stderr)
        return 2
    try:
        target_settings = load_settings({}, database_url=args.into_database_url)
    except SettingsError as exc:
        raise SettingsError(str(exc).replace("DATABASE_URL", "--into-database-url")) from None
    target_url = target_settings.database_url or ""
    return asyncio.run(_restore(settings, args.archive, passphrase(args), target_url))


async def _restore(settings: Settings, archive: Path, secret: str, target_url: str) -> int:
    await asyncio.to_thread(ensure_events_schema, target_url)
    target = await asyncio.to_thread(WattLedger, store_env(target_url))
    try:
        manifest = await restore_archive(
            archive, secret, target, target_url, restore_tools(settings), actor=f"cli:{getpass.getuser()}",
            secret_key_fingerprint=key_fingerprint(settings),
            phase=lambda name: print(f"restore: {name}", file=sys.stderr),
        )  # fmt: skip
    except DomainError as exc:
        print(f"wattledger: {exc} ({exc.code}); nothing was changed", file=sys.stderr)
        return 1
    finally:
        await asyncio.to_thread(target.close)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "restored-settings.json").write_bytes(
        msgspec.json.encode({"from": archive.name, "manifest": manifest})
    )
    print(msgspec.json.encode({
        "restored": archive.name, "events": manifest.count, "last_position": manifest.last_position,
        "chain_head": manifest.chain_head, "database": postgres_endpoint(target_url),
        "switch_over": "stop WattLedger, set DATABASE_URL to the database restored into, start it again",
    }).decode())
    return 0
