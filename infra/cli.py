"""`wattledger` command line: serve, api, poll, relay, project, emulate."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import msgspec
import psycopg
import structlog

from adapters.bus import StreamConfig
from domain.commands import AddDevice, Command, RemoveDevice, RenameDevice, device_key
from domain.errors import DeviceAlreadyExists, DomainError, NoKasaDevice
from infra import audit_cli, nats_auth, replay
from infra.bootstrap import open_runtime, run_parts
from infra.runtime import Runtime
from infra.startup import StartupError, StartupInterrupted
from infra.supervisor import PartFailedTooOften
from infra.errors import InfraError
from infra.embedded import EmbeddedError, embedded_nats_url, embedded_servers, nats_credentials_file
from infra.logging import configure_logging
from infra.settings import Settings, SettingsError, load_settings, mask_secrets, nats_endpoint
from projections.chain import ChainProjector, Problem
from projections.chain import verify as verify_chain
from projections.engine import ProjectionEngine

log = structlog.get_logger(__name__)

DEMO_PROFILES = ["HS110", "KP115", "HS100", "HS300", "KP303"]
DEMO_PORT = 9999


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
    serve = commands.add_parser("serve", help="run everything in one process (API, poller, relay, projectors)")
    serve.add_argument("--demo", action="store_true", help="also start five emulated devices and add them")
    _settings_options(serve)
    for name, text in (
        ("api", "run the HTTP API only"),
        ("poll", "run the device poller only"),
        ("relay", "run the event store -> JetStream relay only"),
        ("execute", "run the command executor only (switches devices for control requests)"),
    ):
        _settings_options(commands.add_parser(name, help=text))
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
    _settings_options(project)
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
        _settings_options(sub)
    auth = commands.add_parser("auth", help="manage sign-in security")
    auth_actions = auth.add_subparsers(dest="action", required=True)
    rotate = auth_actions.add_parser(
        "rotate-keys", help="add a JWT signing key: new tokens use it, tokens signed before stay valid until they expire"
    )
    _settings_options(rotate)
    audit_cli.add_commands(commands, _settings_options)
    tail = commands.add_parser("tail", help="print live readings and device status from NATS as they happen")
    tail.add_argument("--device", default=None, help="only this device (id or address)")
    tail.add_argument("--json", action="store_true", help="print each event's envelope as published, one per line")
    _settings_options(tail)
    credentials = commands.add_parser(
        "nats-credentials",
        help="print where the embedded NATS keeps its users' passwords (relay, app, reader, commander)",
    )
    _settings_options(credentials)
    emulate = commands.add_parser("emulate", help="run emulated Kasa devices on loopback")
    emulate.add_argument("--devices", default=",".join(DEMO_PROFILES), help="comma-separated profiles")
    emulate.add_argument("--bind", default="127.0.0.1", help="loopback address to listen on")
    emulate.add_argument("--port", type=int, default=9999, help="first TCP port; the next devices count up (0: free ports)")
    emulate.add_argument(
        "--discovery-port", type=int, default=None,
        help="answer UDP discovery on this port; each device then gets its own loopback IP (127.0.0.2, ...)",
    )
    emulate.add_argument("--speed", type=float, default=1.0, help="energy clock speed-up factor")
    emulate.add_argument("--reboot-every", type=float, default=None, help="seconds between simulated reboots")
    emulate.add_argument("--seed", type=int, default=None, help="seed for reproducible power drift")
    emulate.add_argument("--log-level", dest="log_level", default=None)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    fields = ("database_url", "nats_url", "data_dir", "host", "port", "polling_interval", "timezone", "log_level")
    return load_settings(os.environ, **{f: getattr(args, f, None) for f in fields})


class _Interrupted(InfraError):
    """SIGINT or SIGTERM arrived while no event loop was there to turn it into a clean stop."""


def _interrupt(signum: int, _frame: object) -> None:
    raise _Interrupted(signal.Signals(signum).name)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While synchronous start-up or shutdown runs, SIGINT and SIGTERM unwind it (closing what it opened)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run until done; the first SIGINT/SIGTERM asks for a clean stop, a second one cancels.

    Start-up counts as running: a stop asked for while connecting ends the start-up at once.
    """

    async def runner() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(main(stop))

        def on_signal() -> None:
            if stop.is_set():
                task.cancel()
            else:
                log.info("shutdown.requested")
                stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await task
        except asyncio.CancelledError:
            log.info("shutdown.forced")

    outer = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(runner())
    finally:
        # The loop resets the handlers it installed to the defaults; put back the ones from before.
        for sig, handler in outer.items():
            signal.signal(sig, handler)


async def _serve(
    settings: Settings, database_url: str, nats_url: str, args: argparse.Namespace, stop: asyncio.Event,
    relay_url: str | None = None,
) -> None:
    command = args.command
    if getattr(args, "demo", False):
        # The demo's devices live on loopback; discovery must not go out to the LAN.
        settings = msgspec.structs.replace(settings, discovery_target="127.0.0.1")
    async with open_runtime(settings, database_url, nats_url, stop=stop, relay_url=relay_url) as runtime:
        if command == "device":
            await _device_command(runtime, args)
            return
        if command == "auth":
            await _rotate_signing_keys(runtime)
            return
        if command in audit_cli.COMMANDS:
            await audit_cli.run(runtime, args)
            return
        if command == "project" and args.retry:
            await _retry(runtime.engine, force=args.force)
            return
        if command == "project" and (args.rebuild or args.verify):
            await _rebuild(runtime.engine, args.rebuild or replay.ALL, verify=args.verify, force=args.force)
            return
        if getattr(args, "demo", False):
            async with _demo(runtime):
                await run_parts(runtime, stop, api=True, poll=True, relay=True, project=True, execute=True)
            return
        await run_parts(
            runtime,
            stop,
            api=command in ("serve", "api"),
            poll=command in ("serve", "poll"),
            relay=command in ("serve", "relay"),
            project=command in ("serve", "project"),
            execute=command in ("serve", "execute"),
        )


async def _rotate_signing_keys(runtime: Runtime) -> None:
    """Add a signing key and print its id (never the key) as JSON.

    Processes started from now on sign with it; running ones take it up when they meet a
    token signed with it. Every stored key still verifies the tokens it signed."""
    kid = await runtime.tokens.rotate()
    log.info("auth.signing_key_rotated", kid=kid)
    print(msgspec.json.encode({"signing_key_id": kid}).decode())


async def _device_command(runtime: Runtime, args: argparse.Namespace) -> None:
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


async def _rebuild(engine: ProjectionEngine, name: str, *, verify: bool, force: bool = False) -> None:
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


async def _retry(engine: ProjectionEngine, *, force: bool = False) -> None:
    """Apply the quarantined events again; exit 1 while some still fail (or another replay runs)."""
    await asyncio.to_thread(engine.setup)
    names = await asyncio.to_thread(engine.quarantined)
    await _refuse_edited_chain(engine, names, force=force)
    code = await asyncio.to_thread(replay.retry, engine, names, sys.stdout, sys.stderr)
    if code:
        raise SystemExit(code)


CHAIN_READ_MODEL = ChainProjector.name


def _chain_check(database_url: str) -> Problem | None:
    with psycopg.connect(database_url) as conn:
        return verify_chain(conn).problem


@asynccontextmanager
async def _demo(runtime: Runtime) -> AsyncIterator[None]:
    """Five emulated devices, added once: the same ports and names on every start, free ones if taken."""
    try:
        from adapters.emulator import EmulatorFleet, FleetError
    except ImportError:
        raise SettingsError("--demo needs the device emulator, which runs from a source checkout") from None

    try:
        fleet = EmulatorFleet(DEMO_PROFILES, host="127.0.0.1", port=DEMO_PORT, seed=7)
        await fleet.start()
    except FleetError:
        log.warning("demo.ports_taken", first=DEMO_PORT, hint="using free ports; earlier demo devices go offline")
        fleet = EmulatorFleet(DEMO_PROFILES, host="127.0.0.1", port=0, seed=7)
        await fleet.start()
    try:
        for address in fleet.addresses:
            try:
                await runtime.handlers().add_device(AddDevice(address=address, actor="system:demo"))
            except DeviceAlreadyExists:
                pass
            log.info("demo.device", address=address)
        runtime.saved()
        yield
    finally:
        await fleet.stop()


async def _until(stop: asyncio.Event, work: Coroutine[Any, Any, Any]) -> None:
    """Run `work` until `stop` is set, then cancel it (it cleans up on cancellation)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stopper):
        pending.cancel()
    await asyncio.gather(task, stopper, return_exceptions=True)


def _free_or_any(port: int) -> int:
    """The wanted port for the embedded NATS, or 0 (any free port) when something already listens there."""
    if port == 0:
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            log.warning("embedded_nats.port_taken", port=port, hint="set NATS_URL to use the server already there")
            return 0
    return port


def _tail(settings: Settings, args: argparse.Namespace) -> int:
    """`wattledger tail`: NATS only, at NATS_URL or the embedded server's port; exit 2 for a bad --device."""
    import nats.errors

    from infra.tail import run_tail

    nats_url = settings.nats_url or embedded_nats_url(
        settings.data_dir, f"nats://127.0.0.1:{settings.embedded_nats_port}", nats_auth.READER
    )
    stream = StreamConfig(name=settings.stream_name, subject_prefix=settings.subject_prefix)
    try:
        _run(lambda stop: run_tail(nats_url, stream, stop, device=args.device, as_json=args.json))
    except DomainError as exc:
        print(f"wattledger: {exc} ({exc.code})", file=sys.stderr)
        return 2
    except (OSError, nats.errors.Error) as exc:
        print(f"wattledger: cannot reach NATS at {nats_endpoint(nats_url)}: {exc!r}", file=sys.stderr)
        return 1
    return 0


def _nats_credentials(settings: Settings) -> int:
    """`wattledger nats-credentials`: the path of the embedded NATS's credentials file, as JSON; exit 1 without one."""
    path = nats_credentials_file(settings.data_dir)
    if not path.is_file():
        print(f"wattledger: no NATS credentials in {path.parent} yet: `wattledger serve` creates them", file=sys.stderr)
        return 1
    print(msgspec.json.encode({"credentials_file": str(path), "roles": list(nats_auth.ROLES)}).decode())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "emulate":
            configure_logging(args.log_level or "info")
            try:
                from adapters.emulator import loopback_hosts, run_emulator
            except ImportError:
                print(
                    "wattledger: the device emulator is not installed; it runs from a source checkout "
                    "(pip install -e .)",
                    file=sys.stderr,
                )
                return 2

            profiles = [p.strip() for p in args.devices.split(",") if p.strip()]
            discovery = args.discovery_port is not None
            _run(
                lambda stop: _until(stop, run_emulator(
                    profiles,
                    host=loopback_hosts(len(profiles)) if discovery else args.bind,
                    port=0 if discovery else args.port,
                    speed=args.speed,
                    reboot_every=args.reboot_every,
                    seed=args.seed,
                    discovery_port=args.discovery_port,
                ))
            )
            return 0
        settings = _settings(args)
        configure_logging(settings.log_level, json=settings.log_json)
        if args.command == "tail":
            return _tail(settings, args)
        if args.command == "nats-credentials":
            return _nats_credentials(settings)
        with _signals_interrupt(), embedded_servers(
            settings.data_dir,
            database_url=settings.database_url,
            nats_url=settings.nats_url,
            nats_port=settings.embedded_nats_port if settings.nats_url else _free_or_any(settings.embedded_nats_port),
            subject_prefix=settings.subject_prefix,
            stream=settings.stream_name,
        ) as (database_url, nats_url):
            # The embedded NATS has a relay user of its own; an external one's is WATTLEDGER_NATS_RELAY_URL.
            relay_url = None if settings.nats_url else embedded_nats_url(settings.data_dir, nats_url, nats_auth.RELAY)
            _run(lambda stop: _serve(settings, database_url, nats_url, args, stop, relay_url))
    except SettingsError as exc:
        print(f"wattledger: {exc}", file=sys.stderr)
        return 2
    except (StartupError, EmbeddedError, PartFailedTooOften) as exc:
        print(f"wattledger: {mask_secrets(str(exc))}", file=sys.stderr)
        return 1
    except (StartupInterrupted, _Interrupted):
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
