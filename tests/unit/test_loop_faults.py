"""Loops over outside I/O: a fault the library raises is one warning and a retry; anything else is raised.

No sockets: the libraries' exceptions are raised by fakes of the ports around each loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any
from uuid import UUID

import eventsourcing.persistence
import kasa
import msgspec
import nats.errors
import nats.js.errors
import psycopg
import psycopg_pool
import pytest
from nats.aio.client import Client
from structlog.testing import capture_logs

from adapters.bus import StreamConfig, _ConnectionLog
from adapters.faults import NATS_FAULTS, Backoff, describe
from adapters.nats_commands import _failure
from api.errors import status_of
from adapters.poller import Assigned, Poller
from adapters.relay import Relay, RelayPublishError
from domain.address import DeviceAddress
from domain.config import ConfigValues
from domain.errors import DeviceUnreachable
from domain.readings import DeviceSnapshot
from tests.kit import MemoryStore, NoDevices, RecordingHandlers, plug, save_devices


def warnings_and_worse(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["log_level"] in ("warning", "error", "critical")]


def without_tracebacks(logs: list[dict[str, Any]]) -> bool:
    return not any("exc_info" in e or "exception" in e for e in logs)


def test_the_faults_are_the_classes_the_libraries_raise() -> None:
    for timeout in (nats.errors.TimeoutError, nats.js.errors.FetchTimeoutError, nats.errors.FlushTimeoutError):
        assert issubclass(timeout, NATS_FAULTS)
    assert issubclass(psycopg_pool.PoolTimeout, psycopg.OperationalError)
    assert issubclass(psycopg.errors.AdminShutdown, psycopg.OperationalError)
    assert issubclass(eventsourcing.persistence.ConnectionUnavailableError, eventsourcing.persistence.OperationalError)
    assert issubclass(kasa.exceptions.TimeoutError, asyncio.TimeoutError)
    assert not issubclass(nats.errors.ConnectionClosedError, NATS_FAULTS)


def test_a_fault_is_described_in_one_line_without_repeating_its_type() -> None:
    assert describe(psycopg.OperationalError("server closed\nthe connection")) == "OperationalError: server closed"
    assert describe(nats.errors.NoRespondersError()) == "NoRespondersError: nats: no responders available for request"
    assert describe(nats.js.errors.ServiceUnavailableError()).startswith("nats: ServiceUnavailableError: ")
    assert describe(asyncio.TimeoutError()) == "TimeoutError"


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_success() -> None:
    backoff = Backoff(first=0.2, cap=1.0)
    assert [backoff.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.2


class ScriptedRelay(Relay):
    """A relay whose passes raise the scripted exceptions in turn, then publish nothing."""

    def __init__(self, *outcomes: BaseException) -> None:
        super().__init__(None, None, database_url="postgresql://", stream=StreamConfig(),  # type: ignore[arg-type]
                         poll_interval=0.01, listen=False)  # fmt: skip
        self.outcomes = deque(outcomes)
        self.passes = 0
        self.drained = asyncio.Event()

    async def publish_pending(self) -> int:
        self.passes += 1
        if self.outcomes:
            raise self.outcomes.popleft()
        self.drained.set()
        return 0


def publish_failed(cause: BaseException) -> RelayPublishError:
    try:
        raise RelayPublishError("notification 7 was not acknowledged") from cause
    except RelayPublishError as exc:
        return exc


async def test_the_relay_retries_after_a_lost_database_and_an_unacknowledged_batch() -> None:
    relay = ScriptedRelay(
        psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec"),
        eventsourcing.persistence.OperationalError("server closed the connection unexpectedly"),
        publish_failed(nats.errors.TimeoutError()),
    )
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(relay.run(stop))
        await asyncio.wait_for(relay.drained.wait(), 10)
        stop.set()
        await asyncio.wait_for(task, 5)
    faults = warnings_and_worse(logs)
    assert [(e["event"], e["part"]) for e in faults] == [("part.fault", "relay")] * 2
    assert relay.passes >= 4 and without_tracebacks(logs)


@pytest.mark.parametrize("raised", [TypeError("a bug"), publish_failed(nats.errors.ConnectionClosedError())])
async def test_the_relay_raises_a_bug_and_a_closed_client_for_its_supervisor(raised: BaseException) -> None:
    relay = ScriptedRelay(raised)
    with pytest.raises(type(raised)):
        await asyncio.wait_for(relay.run(asyncio.Event()), 5)


async def test_a_config_read_the_database_fails_is_one_warning_per_outage() -> None:
    reads: deque[BaseException | ConfigValues] = deque([
        eventsourcing.persistence.OperationalError("the server went away"),
        eventsourcing.persistence.OperationalError("the server went away"),
        ConfigValues(polling_interval=7.0),
    ])  # fmt: skip
    applied = asyncio.Event()

    async def current() -> ConfigValues:
        if not reads:
            applied.set()
            await asyncio.Event().wait()
        outcome = reads.popleft()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    poller = Poller(RecordingHandlers(MemoryStore()), NoDevices(), Fixed({}), interval=1.0)
    with capture_logs() as logs:
        following = asyncio.create_task(poller.follow_config(current, every=0.01))
        await asyncio.wait_for(applied.wait(), 5)
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
    assert poller.interval == 7.0
    faults = [e for e in logs if e["event"] == "part.fault"]
    assert [e["log_level"] for e in faults] == ["warning", "debug"]


class Counting(NoDevices):
    """Never answers (with `error`); `third` is set once a third poll has failed."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.polls = 0
        self.third = asyncio.Event()

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        self.polls += 1
        try:
            return await super().poll(address)
        finally:
            if self.polls >= 3:
                self.third.set()


class Fixed:
    """An assignment of fixed devices; `failures` are raised by the next refreshes first."""

    refresh_every = 0.05

    def __init__(self, devices: dict[UUID, str], *failures: BaseException) -> None:
        self.devices = devices
        self.failures = deque(failures)
        self.refreshed = asyncio.Event()

    async def refresh(self, release: Any) -> Assigned:
        if self.failures:
            raise self.failures.popleft()
        self.refreshed.set()
        return Assigned(devices=self.devices)

    async def leave(self) -> None:
        return None


async def test_a_lost_lease_database_is_one_warning_and_a_bug_in_the_assignment_ends_the_poller() -> None:
    lost = Fixed({}, psycopg.OperationalError("consuming input failed"), psycopg_pool.PoolTimeout("no connection"))
    poller = Poller(RecordingHandlers(MemoryStore()), NoDevices(), lost, interval=1.0, grace=0.1)
    with capture_logs() as logs:
        task = asyncio.create_task(poller.run())
        await asyncio.wait_for(lost.refreshed.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [e["log_level"] for e in logs if e["event"] == "part.fault"] == ["warning", "debug"]
    assert without_tracebacks(logs)

    broken = Fixed({}, KeyError("a bug"))
    with pytest.raises(KeyError):
        await asyncio.wait_for(Poller(RecordingHandlers(MemoryStore()), NoDevices(), broken, interval=1.0, grace=0.1).run(), 5)


@pytest.mark.parametrize("error", [
    DeviceUnreachable("127.0.0.1:30000: refused"), kasa.KasaException("Unable to query the device"),
    ConnectionResetError(104, "Connection reset by peer"), asyncio.TimeoutError(),
])  # fmt: skip
async def test_a_silent_device_is_one_warning_line_without_a_traceback(error: Exception) -> None:
    store = MemoryStore()
    devices = await save_devices(store, plug(), 1)
    driver = Counting(error)
    poller = Poller(RecordingHandlers(store), driver, Fixed(devices), interval=0.05, offline_after=5, grace=0.1)
    with capture_logs() as logs:
        task = asyncio.create_task(poller.run())
        await asyncio.wait_for(driver.third.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    faults = [e for e in logs if e["event"] == "part.fault"]
    assert [e["log_level"] for e in faults][:3] == ["warning", "debug", "debug"]
    assert warnings_and_worse(logs) == faults[:1] and without_tracebacks(logs)


async def test_nats_connection_errors_are_one_warning_per_kind_and_a_callback_bug_has_its_traceback() -> None:
    callbacks = _ConnectionLog("test", Client())
    with capture_logs() as logs:
        for _ in range(3):
            await callbacks.error(ConnectionRefusedError(111, "Connect call failed"))
        await callbacks.error(nats.errors.SlowConsumerError(subject="s", reply="", sid=1, sub=None))  # type: ignore[arg-type]
        await callbacks.error(ZeroDivisionError("in a subscription callback"))
        await callbacks.reconnected()
        await callbacks.error(ConnectionRefusedError(111, "Connect call failed"))
    levels = [(e["event"], e["log_level"]) for e in logs if e["event"] != "nats.reconnected"]
    assert levels == [
        ("nats.error", "warning"), ("nats.error", "debug"), ("nats.error", "debug"), ("nats.error", "warning"),
        ("nats.callback_failed", "error"), ("nats.error", "warning"),
    ]
    assert "exc_info" in next(e for e in logs if e["event"] == "nats.callback_failed")


async def test_a_nats_command_the_database_fails_is_a_503_and_one_warning() -> None:
    with capture_logs() as logs:
        reply = _failure(psycopg.OperationalError("the connection is lost"), status_of, "try again", command="add")
        bug = _failure(ZeroDivisionError("a bug"), status_of, "try again", command="add")
    assert reply.error is not None and reply.error.status_code == 503
    assert bug.error is not None and bug.error.status_code == 503
    assert [(e["event"], e["log_level"]) for e in logs] == [("part.fault", "warning"), ("commands.failed", "error")]
    assert "exc_info" in logs[1] and "exc_info" not in logs[0]
    assert msgspec.json.decode(msgspec.json.encode(reply))["error"]["error_code"]
