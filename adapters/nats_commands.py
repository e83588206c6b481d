"""Commands over NATS request/reply: `<prefix>.cmd.device.<verb>` mirrors the REST commands.

Requests carry credentials as headers (`Authorization: Bearer <access token>` or
`X-API-Key`) and need DEVICES_MANAGE; events name the user or key, as over REST.
Every API process subscribes in one queue group, so a request is handled once
however many processes run. A request body is JSON (unknown fields refused); the
reply is `{"ok": true, "result": {...}}` or `{"ok": false, "error": {"status_code",
"error_code", "detail"}}` with the same codes as the REST API. A request that
cannot be decoded is answered with a 400 error, one that breaks the body's schema
with 422 `VALIDATION_ERROR`, and neither changes anything.

| subject | body | result |
| --- | --- | --- |
| `<prefix>.cmd.device.add` | `{"ip", "alias"?}` | `{"device_id", "device_ip", "position"}` |
| `<prefix>.cmd.device.remove` | `{"device"}` (id or address) | `{"position"}` |
| `<prefix>.cmd.device.rename` | `{"device", "alias"}` | `{"position"}` |
| `<prefix>.cmd.device.discover` | `{"target"?, "port"?}` | `{"discovered", "added", "already_known", "unreachable", "position"}` |
| `<prefix>.cmd.device.<device id>.control` | `{"action", "outlet"?, "wait"?, "idempotency_key"?}` | `{"command_id", "created", "status", "outcome"}` |

Control requests need an `X-API-Key` header (a Bearer token is not taken there) whose key
holds DEVICES_CONTROL (`read-write` or `admin` scope); `Idempotency-Key` may come as a
header or in the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from adapters.faults import DATABASE_FAULTS, NATS_FAULTS, report
from domain.authentication import API_KEY_HEADER
from domain.commands import AddDevice, DiscoverDevices, RemoveDevice, RenameDevice, device_key
from domain.control import Action, RequestControl, outcome_of
from domain.control_handlers import ControlHandlers
from domain.errors import (
    AuthenticationRequired,
    DomainError,
    InvalidRequest,
    NoKasaDevice,
    NotFound,
    Unavailable,
)
from domain.handlers import CommandHandlers
from domain.access import Permission, Principal

log = structlog.get_logger(__name__)

QUEUE_GROUP = "wattledger-commands"

Alias = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
DeviceKey = Annotated[str, msgspec.Meta(min_length=1, max_length=261)]


class AddBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ip: DeviceKey
    alias: Alias | None = None


class DeviceBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    device: DeviceKey


class RenameBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    device: DeviceKey
    alias: Alias


class DiscoverBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    target: str | None = None
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None


class ControlBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    action: Action
    outlet: Annotated[int, msgspec.Meta(ge=0, le=64)] | Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    wait: bool = False
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None


MAX_WAIT_S = 30.0


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True):
    status_code: int
    error_code: str
    detail: str


class Reply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ok: bool
    result: Any = None
    error: ErrorReply | None = None


_ENCODER = msgspec.json.Encoder()


Authenticate = Callable[[Mapping[str, str]], Awaitable[Principal]]


class CommandResponder:
    """Answers `<prefix>.cmd.device.*` requests with the same handlers the REST API uses."""

    def __init__(
        self,
        nc: Client,
        commands: CommandHandlers,
        authenticate: Authenticate,
        *,
        subject_prefix: str,
        discovery_target: str,
        discovery_port: int | None,
        status_of: Callable[[DomainError], int],
        on_saved: Callable[[], None] = lambda: None,
        control: ControlHandlers | None = None,
    ) -> None:
        self._nc = nc
        self._status_of = status_of
        self._control = control
        self._control_subscription: Subscription | None = None
        self._commands = commands
        self._authenticate = authenticate
        self._prefix = subject_prefix
        self._discovery_target = discovery_target
        self._discovery_port = discovery_port
        self._on_saved = on_saved
        self._subscription: Subscription | None = None
        self._routes: dict[str, Callable[[bytes, str], Awaitable[Any]]] = {
            "add": self._add,
            "remove": self._remove,
            "rename": self._rename,
            "discover": self._discover,
        }

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(
            f"{self._prefix}.cmd.device.*", queue=QUEUE_GROUP, cb=self._on_message
        )
        log.info("commands.listening", subjects=f"{self._prefix}.cmd.device.*")
        if self._control is not None:
            self._control_subscription = await self._nc.subscribe(
                f"{self._prefix}.cmd.device.*.control", queue=QUEUE_GROUP, cb=self._on_control
            )
            log.info("commands.listening", subjects=f"{self._prefix}.cmd.device.*.control")

    async def stop(self) -> None:
        subscriptions = (self._subscription, self._control_subscription)
        self._subscription = self._control_subscription = None
        for subscription in subscriptions:
            if subscription is None:
                continue
            try:
                await subscription.unsubscribe()
            except nats.errors.Error as exc:  # a closed connection has no subscription left to end
                log.debug("commands.unsubscribe_failed", error=repr(exc))

    async def _on_control(self, msg: Msg) -> None:
        device = msg.subject.split(".")[-2]
        await _respond(msg, await self.answer_control(device, msg.data, msg.headers or {}))

    async def answer_control(self, device: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Authenticate an `X-API-Key`, check DEVICES_CONTROL, record the request, wait for it if asked.

        No key (a Bearer token is not taken here), a bad key, a `read` key or a key without
        DEVICES_CONTROL is an error reply and switches nothing; so is turned-off control
        (403 DEVICE_CONTROL_DISABLED) and every REST error (400, 404, 422).
        """
        try:
            if self._control is None:
                raise Unavailable("device control is not served here")
            if not any(name.lower() == API_KEY_HEADER.lower() for name in headers):
                raise AuthenticationRequired("control over NATS needs an X-API-Key header")
            key_only = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            principal = await self._authenticate(key_only)
            principal.require(Permission.DEVICES_CONTROL)
            principal.check_method("POST")
            request = msgspec.json.decode(body or b"{}", type=ControlBody)
            header_key = next((v for k, v in headers.items() if k.lower() == "idempotency-key"), None)
            accepted = await self._control.request_control(
                RequestControl(
                    device_id=device_key(device), action=request.action, outlet=request.outlet,
                    idempotency_key=request.idempotency_key or header_key, actor=principal.actor,
                )
            )  # fmt: skip
            self._on_saved()
            timeout = MAX_WAIT_S if request.wait else 0.0
            control = await self._control.wait_outcome(accepted.command_id, timeout)
        except Exception as exc:
            return _failure(exc, self._status_of, "the command could not be recorded; try again", command="control", device=device)
        outcome = outcome_of(control)
        return Reply(ok=True, result={
            "command_id": str(accepted.command_id), "created": accepted.created, "status": outcome.status,
            "outcome": msgspec.to_builtins(outcome),
        })  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def _on_message(self, msg: Msg) -> None:
        verb = msg.subject.rpartition(".")[2]
        await _respond(msg, await self.answer(verb, msg.data, msg.headers or {}))

    async def answer(self, verb: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Authenticate, check DEVICES_MANAGE, run one command and build its reply.

        Credentials travel as message headers, as over HTTP: `Authorization: Bearer <access
        token>` or `X-API-Key`. Every failure becomes an error reply and stores nothing.
        """
        route = self._routes.get(verb)
        try:
            principal = await self._authenticate(headers)
            principal.require(Permission.DEVICES_MANAGE)
            principal.check_method("POST")
            if route is None:
                raise NotFound(f"no command {verb!r}; known: {', '.join(self._routes)}")
            result = await route(body or b"{}", principal.actor)
        except Exception as exc:
            return _failure(exc, self._status_of, "the command could not be completed; try again", command=verb)
        self._on_saved()
        return Reply(ok=True, result=msgspec.to_builtins(result))

    async def _add(self, body: bytes, actor: str) -> Any:
        request = msgspec.json.decode(body, type=AddBody)
        try:
            added = await self._commands.add_device(AddDevice(address=request.ip, alias=request.alias, actor=actor))
        except NoKasaDevice as exc:
            log.warning("commands.add_unreachable", address=request.ip, reason=exc.reason, actor=actor)
            raise
        return {"device_id": added.device_id, "device_ip": added.address, "position": added.position}

    async def _remove(self, body: bytes, actor: str) -> Any:
        request = msgspec.json.decode(body, type=DeviceBody)
        return await self._commands.remove_device(RemoveDevice(device_id=device_key(request.device), actor=actor))

    async def _rename(self, body: bytes, actor: str) -> Any:
        request = msgspec.json.decode(body, type=RenameBody)
        return await self._commands.rename_device(
            RenameDevice(device_id=device_key(request.device), alias=request.alias, actor=actor)
        )

    async def _discover(self, body: bytes, actor: str) -> Any:
        request = msgspec.json.decode(body, type=DiscoverBody)
        if request.target is not None and request.target != self._discovery_target:
            raise InvalidRequest("discovery runs only at the configured discovery target")
        return await self._commands.discover_devices(
            DiscoverDevices(target=self._discovery_target, port=request.port or self._discovery_port, actor=actor)
        )


async def _respond(msg: Msg, reply: Reply) -> None:
    """Send the reply, if one is asked for; with NATS away it is lost, and the requester times out and may retry."""
    if not msg.reply:
        return
    try:
        await msg.respond(_ENCODER.encode(reply))
    except NATS_FAULTS + (nats.errors.ConnectionClosedError,) as exc:
        report("commands", exc, action="reply")


def _error(status_code: int, error_code: str, detail: str) -> Reply:
    return Reply(ok=False, error=ErrorReply(status_code=status_code, error_code=error_code, detail=detail))


def _failure(exc: Exception, status_of: Callable[[DomainError], int], unavailable: str, **context: str) -> Reply:
    """The error reply for a failed command, as REST would answer it: 400 for a body that does not
    decode, 422 for one that does not fit its schema, the domain error's status and code, else
    (logged) 503 with `unavailable`."""
    if isinstance(exc, msgspec.ValidationError):
        return _error(422, "VALIDATION_ERROR", str(exc))
    if isinstance(exc, msgspec.DecodeError):
        return _error(400, "INVALID_REQUEST", "the body is not valid JSON")
    if isinstance(exc, DomainError):
        return _error(status_of(exc), exc.code, str(exc) or exc.code)
    if isinstance(exc, DATABASE_FAULTS + NATS_FAULTS):
        fields: dict[str, Any] = dict(context)
        report("commands", exc, **fields)
    else:
        log.error("commands.failed", error=repr(exc), exc_info=exc, **context)
    failure = Unavailable(unavailable)
    return _error(503, failure.code, str(failure))
