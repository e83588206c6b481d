"""`wattledger device add|rename|remove` and `wattledger auth rotate-keys`: one change each, then exit.

A device command goes through the same handlers as the API and prints its result as
JSON (or the error, exit 1); `auth rotate-keys` adds a JWT signing key.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

import msgspec
import structlog

from domain.commands import AddDevice, Command, RemoveDevice, RenameDevice, device_key
from domain.errors import DomainError, NoKasaDevice
from infra.runtime import Runtime

log = structlog.get_logger(__name__)

COMMANDS = frozenset({"device", "auth"})


def add_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    settings_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `device add|rename|remove` and `auth rotate-keys` on the `wattledger` parser."""
    device = commands.add_parser("device", help="add, rename or remove a device (the same commands as the API)")
    actions = device.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="contact the device at ADDRESS and add it")
    add.add_argument("address", help="host or host:port")
    add.add_argument("--alias", default=None, help="name to show instead of the device's own")
    rename = actions.add_parser("rename", help="give a device a new alias")
    rename.add_argument("device", help="device id or address")
    rename.add_argument("alias")
    remove = actions.add_parser("remove", help="remove a device (its history stays)")
    remove.add_argument("device", help="device id or address")
    for sub in (add, rename, remove):
        settings_options(sub)
    auth = commands.add_parser("auth", help="manage sign-in security")
    auth_actions = auth.add_subparsers(dest="action", required=True)
    rotate = auth_actions.add_parser(
        "rotate-keys", help="add a JWT signing key: new tokens use it, tokens signed before stay valid until they expire"
    )
    settings_options(rotate)


async def run(runtime: Runtime, args: argparse.Namespace) -> None:
    """Run `device ...` or `auth rotate-keys`."""
    if args.command == "auth":
        await rotate_signing_keys(runtime)
    else:
        await device_command(runtime, args)


async def rotate_signing_keys(runtime: Runtime) -> None:
    """Add a signing key and print its id (never the key) as JSON.

    Processes started from now on sign with it; running ones take it up when they meet a
    token signed with it. Every stored key still verifies the tokens it signed."""
    kid = await runtime.tokens.rotate()
    log.info("auth.signing_key_rotated", kid=kid)
    print(msgspec.json.encode({"signing_key_id": kid}).decode())


async def device_command(runtime: Runtime, args: argparse.Namespace) -> None:
    """Run one device command through the handlers; print its result as JSON, or the error and exit 1."""
    actor = f"cli:{getpass.getuser()}"
    handlers = runtime.handlers()
    command: Command
    try:
        if args.action == "add":
            command = AddDevice(address=args.address, alias=args.alias, actor=actor)
        elif args.action == "rename":
            command = RenameDevice(device_id=device_key(args.device), alias=args.alias, actor=actor)
        else:
            command = RemoveDevice(device_id=device_key(args.device), actor=actor)
        result = await handlers.handle(command)
    except DomainError as exc:
        if isinstance(exc, NoKasaDevice):
            log.warning("devices.add_unreachable", address=args.address, reason=exc.reason, actor=actor)
        print(f"wattledger: {exc} ({exc.code})", file=sys.stderr)
        raise SystemExit(1) from None
    print(msgspec.json.encode(result).decode())
