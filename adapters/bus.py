"""NATS and JetStream wiring: one connection factory, the events stream, its subjects."""

from __future__ import annotations

import asyncio
import re
from uuid import UUID

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError, NotFoundError

from adapters.errors import AdapterError

log = structlog.get_logger(__name__)

DUPLICATE_WINDOW_S = 120.0
_TOKEN = re.compile(r"^[^.*>\s]+$")


class BusError(AdapterError):
    """A NATS / JetStream problem the caller cannot fix by retrying at once."""


class StreamConfig(msgspec.Struct, frozen=True):
    """The JetStream stream that carries every stored event, under `<subject_prefix>.events.>`."""

    name: str = "WL_EVENTS"
    subject_prefix: str = "wl"

    @property
    def subjects(self) -> list[str]:
        return [f"{self.subject_prefix}.events.>"]


def subject_for(prefix: str, aggregate: str, key: UUID | str, event_name: str) -> str:
    """`<prefix>.events.<aggregate>.<key>.<EventName>`; every part must be one subject token."""
    parts = (aggregate, str(key), event_name)
    for part in parts:
        if not _TOKEN.match(part):
            raise ValueError(f"not a NATS subject token: {part!r}")
    return f"{prefix}.events.{aggregate}.{parts[1]}.{event_name}"


class _ConnectionLog:
    """Callbacks that log one line per kind of error and outage instead of one traceback per reconnect attempt.

    An error of the kind logged last (the same reconnect failing again) goes to debug until the
    client reconnects; an error of another kind (a slow consumer) is a warning of its own, and
    one that our subscription callback raised, a bug, is an error with its traceback.
    """

    def __init__(self, name: str, client: Client) -> None:
        self.name = name
        self.client = client
        self.last: type[BaseException] | None = None

    async def error(self, exc: Exception) -> None:
        repeat = type(exc) is self.last
        self.last = type(exc)
        if repeat:
            log.debug("nats.error", client=self.name, error=repr(exc))
        elif isinstance(exc, (nats.errors.Error, OSError, asyncio.TimeoutError)):
            log.warning("nats.error", client=self.name, error=repr(exc))
        else:  # raised by our code in a subscription callback: a bug
            log.error("nats.callback_failed", client=self.name, error=repr(exc), exc_info=exc)

    async def disconnected(self) -> None:
        if self.client.is_closed or self.client.is_draining:
            return
        log.warning("nats.disconnected", client=self.name)

    async def reconnected(self) -> None:
        self.last = None
        log.info("nats.reconnected", client=self.name)

    async def closed(self) -> None:
        log.info("nats.closed", client=self.name)


async def connect_nats(url: str, *, name: str) -> Client:
    """Connect with endless reconnects (1 s apart) and quiet, structured callbacks.

    Publishes made while reconnecting are buffered (up to nats-py's pending size);
    the first connect still fails fast if no server answers.
    """
    client = Client()
    callbacks = _ConnectionLog(name, client)
    await client.connect(
        url,
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
        ping_interval=20,
        max_outstanding_pings=3,
        error_cb=callbacks.error,
        disconnected_cb=callbacks.disconnected,
        reconnected_cb=callbacks.reconnected,
        closed_cb=callbacks.closed,
    )
    return client


async def ensure_stream(js: JetStreamContext, cfg: StreamConfig) -> api.StreamInfo:
    """Create the stream (file storage, 2 min duplicate window) or bring an existing one in line.

    An existing stream keeps its other settings (limits, replicas); only its subjects and
    duplicate window are updated. Storage cannot change on a live stream.
    """
    wanted = api.StreamConfig(
        name=cfg.name,
        subjects=cfg.subjects,
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
    )
    try:
        info = await js.stream_info(cfg.name)
    except NotFoundError:
        try:
            info = await js.add_stream(wanted)
            log.info("stream.created", stream=cfg.name, subjects=cfg.subjects)
            return info
        except BadRequestError:
            info = await js.stream_info(cfg.name)
    current = info.config
    if current.storage != api.StorageType.FILE:
        raise BusError(f"stream {cfg.name} uses {current.storage} storage, not file")
    if sorted(current.subjects or []) == cfg.subjects and current.duplicate_window == DUPLICATE_WINDOW_S:
        return info
    info = await js.update_stream(
        current.evolve(subjects=cfg.subjects, duplicate_window=DUPLICATE_WINDOW_S)
    )
    log.info("stream.updated", stream=cfg.name, subjects=cfg.subjects)
    return info


_NEVER_LAST = str(2**63 - 1)
"""An expected last sequence no stream reaches: a publish carrying it is refused by the stream, never stored."""


async def may_publish_events(js: JetStreamContext, cfg: StreamConfig, *, timeout: float = 2.0) -> bool:
    """Whether this connection's user may publish onto the events stream, asked without storing anything.

    The probe expects a last sequence the stream never has, so JetStream answers it with an
    error and keeps nothing; a publish the server's permissions refuse gets no answer at all.
    """
    subject = subject_for(cfg.subject_prefix, "probe", "relay", "PublishCheck")
    try:
        await js.publish(subject, b"", timeout=timeout, headers={"Nats-Expected-Last-Sequence": _NEVER_LAST})
    except APIError:
        return True
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, asyncio.TimeoutError):
        return False
    return True
