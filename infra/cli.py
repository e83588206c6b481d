"""`wattledger` command line: serve, api, poll, relay, execute and project run parts until stopped.

Each group of one-shot subcommands lives in a module of its own that registers its parser
(`add_commands`) and runs it: `device_cli` (device add/rename/remove, auth rotate-keys),
`project_cli` (rebuild, verify, retry), `audit_cli` (audit verify, export events),
`nats_cli` (tail, nats-credentials), `emulate_cli` (emulate, and the devices of `--demo`),
`backup_cli` (backup create, list, restore).
Process signals are `infra.signals`'.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence

import msgspec
import structlog

from infra import audit_cli, backup_cli, device_cli, emulate_cli, nats_auth, nats_cli, project_cli, signals
from infra.bootstrap import open_runtime, run_parts
from infra.child_parts import STDIN_OPTION, ChildProcess, relay_child, relay_in_child, stop_when_stdin_closes
from infra.startup import StartupError, StartupInterrupted
from infra.supervisor import PartFailedTooOften
from infra.embedded import EmbeddedError, embedded_nats_url, embedded_servers
from infra.logging import configure_logging
from infra.settings import Settings, SettingsError, load_settings, mask_secrets

log = structlog.get_logger(__name__)

def _settings_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (override the environment)")
    group.add_argument("--database-url", dest="database_url", help="PostgreSQL URL (DATABASE_URL)")
    group.add_argument("--nats-url", dest="nats_url", help="NATS URL (NATS_URL)")
    group.add_argument("--data-dir", dest="data_dir", help="data directory (WATTLEDGER_DATA_DIR, ./data)")
    group.add_argument("--host", dest="host", help="API bind address (WATTLEDGER_HOST, 127.0.0.1)")
    group.add_argument("--port", dest="port", help="API port (WATTLEDGER_PORT, 5272)")
    group.add_argument(
        "--polling-interval", dest="polling_interval", help="seconds between polls (WATTLEDGER_POLLING_INTERVAL, 60)"
    )
    group.add_argument("--timezone", dest="timezone", help="IANA zone for days and months (WATTLEDGER_TIMEZONE, UTC)")
    group.add_argument("--log-level", dest="log_level", help="debug, info, warning, error (WATTLEDGER_LOG_LEVEL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wattledger", description="Event-sourced smart plug monitoring.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run everything (API, poller, projectors; the relay in a child process of its own)"
    )
    serve.add_argument("--demo", action="store_true", help="also start five emulated devices and add them")
    _settings_options(serve)
    for name, text in (
        ("api", "run the HTTP API only"),
        ("poll", "run the device poller only"),
        ("relay", "run the event store -> JetStream relay only"),
        ("execute", "run the command executor only (switches devices for control requests)"),
    ):
        command = commands.add_parser(name, help=text)
        _settings_options(command)
        if name == "relay":
            # `serve` starts its relay so: the relay stops once the pipe from its parent is closed.
            command.add_argument(STDIN_OPTION, dest="stop_when_stdin_closes", action="store_true",
                                 help=argparse.SUPPRESS)  # fmt: skip
    project_cli.add_commands(commands, _settings_options)
    device_cli.add_commands(commands, _settings_options)
    audit_cli.add_commands(commands, _settings_options)
    backup_cli.add_commands(commands, _settings_options)
    nats_cli.add_commands(commands, _settings_options)
    emulate_cli.add_commands(commands)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    fields = ("database_url", "nats_url", "data_dir", "host", "port", "polling_interval", "timezone", "log_level")
    return load_settings(os.environ, **{f: getattr(args, f, None) for f in fields})


async def _serve(
    settings: Settings, database_url: str, nats_url: str, args: argparse.Namespace, stop: asyncio.Event,
    relay_url: str | None = None,
) -> None:
    if not getattr(args, "stop_when_stdin_closes", False):
        await _run_command(settings, database_url, nats_url, args, stop, relay_url)
        return
    watcher = asyncio.create_task(stop_when_stdin_closes(stop))
    try:
        await _run_command(settings, database_url, nats_url, args, stop, relay_url)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def _run_command(
    settings: Settings, database_url: str, nats_url: str, args: argparse.Namespace, stop: asyncio.Event,
    relay_url: str | None,
) -> None:
    command = args.command
    relay_process: ChildProcess | None = None
    if command == "serve" and relay_in_child(os.environ):
        relay_process = relay_child(settings, database_url, nats_url, relay_url)
    demo = getattr(args, "demo", False)
    if demo:
        # The demo's devices live on loopback; discovery must not go out to the LAN.
        settings = msgspec.structs.replace(settings, discovery_target="127.0.0.1")
    async with open_runtime(settings, database_url, nats_url, stop=stop, relay_url=relay_url,
                            with_relay=command in ("serve", "relay")) as runtime:  # fmt: skip
        if command in device_cli.COMMANDS:
            await device_cli.run(runtime, args)
            return
        if command in audit_cli.COMMANDS:
            await audit_cli.run(runtime, args)
            return
        if command in backup_cli.COMMANDS:
            await backup_cli.run(runtime, args)
            return
        if project_cli.replays(args):
            await project_cli.run(runtime.engine, args)
            return
        if demo:
            async with emulate_cli.demo(runtime):
                await run_parts(runtime, stop, api=True, poll=True, relay=True, project=True, execute=True,
                                relay_process=relay_process)  # fmt: skip
            return
        await run_parts(
            runtime,
            stop,
            api=command in ("serve", "api"),
            poll=command in ("serve", "poll"),
            relay=command in ("serve", "relay"),
            project=command in ("serve", "project"),
            execute=command in ("serve", "execute"),
            relay_process=relay_process,
        )


def _free_or_any(port: int) -> int:
    """The wanted port for the embedded NATS, or 0 (any free port) when something already listens there."""
    if port == 0:
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            log.warning("embedded_nats.port_taken", port=port, hint="set NATS_URL to use the server already there")
            return 0
    return port


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "emulate":
            return emulate_cli.run(args)
        settings = _settings(args)
        configure_logging(settings.log_level, json=settings.log_json)
        if args.command == "serve":
            relay_in_child(os.environ)  # an invalid WATTLEDGER_RELAY_PROCESS stops start-up here
        if args.command in nats_cli.COMMANDS:
            return nats_cli.run(settings, args)
        if args.command in backup_cli.COMMANDS and not backup_cli.needs_runtime(args):
            return backup_cli.run_alone(settings, args)
        with signals.signals_interrupt(), embedded_servers(
            settings.data_dir,
            database_url=settings.database_url,
            nats_url=settings.nats_url,
            nats_port=settings.embedded_nats_port if settings.nats_url else _free_or_any(settings.embedded_nats_port),
            subject_prefix=settings.subject_prefix,
            stream=settings.stream_name,
        ) as (database_url, nats_url):
            # The embedded NATS has a relay user of its own; an external one's is WATTLEDGER_NATS_RELAY_URL.
            relay_url = None if settings.nats_url else embedded_nats_url(settings.data_dir, nats_url, nats_auth.RELAY)
            signals.run(lambda stop: _serve(settings, database_url, nats_url, args, stop, relay_url))
    except SettingsError as exc:
        print(f"wattledger: {exc}", file=sys.stderr)
        return 2
    except (StartupError, EmbeddedError, PartFailedTooOften) as exc:
        print(f"wattledger: {mask_secrets(str(exc))}", file=sys.stderr)
        return 1
    except (StartupInterrupted, signals.Interrupted):
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
