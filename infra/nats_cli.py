"""`wattledger tail` and `wattledger nats-credentials`: the commands that need NATS alone, or nothing at all."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import msgspec

from adapters.bus import StreamConfig
from domain.errors import DomainError
from infra import nats_auth, signals
from infra.embedded import embedded_nats_url, nats_credentials_file
from infra.settings import Settings, nats_endpoint

COMMANDS = frozenset({"tail", "nats-credentials"})


def add_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    settings_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `tail` and `nats-credentials` on the `wattledger` parser."""
    tail = commands.add_parser("tail", help="print live readings and device status from NATS as they happen")
    tail.add_argument("--device", default=None, help="only this device (id or address)")
    tail.add_argument("--json", action="store_true", help="print each event's envelope as published, one per line")
    settings_options(tail)
    credentials = commands.add_parser(
        "nats-credentials",
        help="print where the embedded NATS keeps its users' passwords (relay, app, reader, commander)",
    )
    settings_options(credentials)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run `tail` or `nats-credentials`; returns the exit code."""
    if args.command == "tail":
        return tail(settings, args)
    return credentials(settings)


def tail(settings: Settings, args: argparse.Namespace) -> int:
    """`wattledger tail`: NATS only, at NATS_URL or the embedded server's port; exit 2 for a bad --device."""
    import nats.errors

    from infra.tail import run_tail

    nats_url = settings.nats_url or embedded_nats_url(
        settings.data_dir, f"nats://127.0.0.1:{settings.embedded_nats_port}", nats_auth.READER
    )
    stream = StreamConfig(name=settings.stream_name, subject_prefix=settings.subject_prefix)
    try:
        signals.run(lambda stop: run_tail(nats_url, stream, stop, device=args.device, as_json=args.json))
    except DomainError as exc:
        print(f"wattledger: {exc} ({exc.code})", file=sys.stderr)
        return 2
    except (OSError, nats.errors.Error) as exc:
        print(f"wattledger: cannot reach NATS at {nats_endpoint(nats_url)}: {exc!r}", file=sys.stderr)
        return 1
    return 0


def credentials(settings: Settings) -> int:
    """`wattledger nats-credentials`: the path of the embedded NATS's credentials file, as JSON; exit 1 without one."""
    path = nats_credentials_file(settings.data_dir)
    if not path.is_file():
        print(f"wattledger: no NATS credentials in {path.parent} yet: `wattledger serve` creates them", file=sys.stderr)
        return 1
    print(msgspec.json.encode({"credentials_file": str(path), "roles": list(nats_auth.ROLES)}).decode())
    return 0
