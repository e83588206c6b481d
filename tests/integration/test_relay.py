"""The relay against a real PostgreSQL and a real JetStream server."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
import nats.errors
import psycopg
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Notification
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import NoStreamResponseError, NotFoundError

from adapters.bus import StreamConfig, connect_nats, ensure_stream, subject_for
from adapters.contract import DeviceRenamed, EventData, ReadingRecorded, decode_data, event_data
from adapters.eventstore import EVENTS_SCHEMA, WattLedger
from adapters.relay import (
    Relay,
    RelayPublishError,
    RelayStatus,
    decode_envelope,
    encode_envelope,
    relay_status,
    route_for,
)
from domain.commands import PollResult
from domain.device import Device
from domain.readings import DeviceSnapshot, OutletReading
from tests.harness import fresh_database, ledger
from tests.kit import eventually, seed_device, seed_polls

RUN = secrets.token_hex(4)
DEADLINE_S = 10.0

_hosts = itertools.count(1)
_seconds = itertools.count(1)
_streams = itertools.count(1)
_T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """One database for this module's shared application (the tests only append to it)."""
    with fresh_database(server_urls[0]) as url:
        yield url


@pytest.fixture(scope="module")
def app(database_url: str) -> Iterator[WattLedger]:
    with ledger(database_url) as application:
        yield application


@pytest.fixture
def own_database(server_urls: tuple[str, str]) -> Iterator[str]:
    """A database of one test's own, for tests that store events other tests must not publish."""
    with fresh_database(server_urls[0]) as url:
        yield url


@pytest.fixture
def own_app(own_database: str) -> Iterator[WattLedger]:
    with ledger(own_database) as application:
        yield application


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect_nats(nats_url, name="wl-test-relay")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
async def stream(js: JetStreamContext) -> AsyncIterator[StreamConfig]:
    n = next(_streams)
    cfg = StreamConfig(name=f"WLT_{RUN.upper()}_{n}", subject_prefix=f"wlt{RUN}{n}")
    await ensure_stream(js, cfg)
    try:
        yield cfg
    finally:
        try:
            await js.delete_stream(cfg.name)
        except NotFoundError:
            pass


@pytest.fixture
async def make_relay(
    app: WattLedger, js: JetStreamContext, database_url: str, stream: StreamConfig
) -> AsyncIterator[Callable[..., Relay]]:
    relays: list[Relay] = []

    def make(**options: Any) -> Relay:
        relay = Relay(app, js, database_url=database_url, stream=stream, **options)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        await relay.aclose()


def snapshot(
    *, is_on: bool = True, power_w: float = 12.5, total_wh: float = 100.0, alias: str = "lamp"
) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias=alias,
        model="HS300",
        device_type="strip",
        mac="50:c7:bf:00:00:01",
        firmware="1.0.12",
        is_on=is_on,
        has_emeter=True,
        power_w=power_w,
        voltage_v=230.1,
        current_a=0.05,
        total_wh=total_wh,
        outlets=(OutletReading(outlet_id="out-0", index=0, alias="lamp", is_on=is_on, power_w=power_w),),
    )


def next_moment() -> datetime:
    return _T0 + timedelta(seconds=next(_seconds))


def next_address() -> str:
    n = next(_hosts)
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


def add_devices(app: WattLedger, count: int) -> list[UUID]:
    return [seed_device(app, next_address(), snapshot(), measured_at=next_moment(), actor="test") for _ in range(count)]


def add_device_named(app: WattLedger, alias: str) -> Notification:
    """Store a device whose own name is `alias` (any size); returns its Added notification."""
    device = Device.from_snapshot(next_address(), snapshot(alias=alias), alias=None, actor="test")
    app.save(device)
    [added] = [n for n in stored(app) if n.originator_id == device.id and n.originator_version == 1]
    return added


def record_readings(app: WattLedger, device_ids: list[UUID], *, polls: int = 1) -> None:
    for _ in range(polls):
        at = next_moment()
        results = [PollResult(device_id=d, measured_at=at, snapshot=snapshot()) for d in device_ids]
        seed_polls(app, results, actor="test")


def rename(app: WattLedger, device_id: UUID, alias: str) -> None:
    device: Device = app.repository.get(device_id)
    device.rename(alias, actor="test")
    app.save(device)


def stored(app: WattLedger) -> list[Notification]:
    return list(app.recorder.select_notifications(0, 1_000_000, inclusive_of_start=False))


async def stream_messages(js: JetStreamContext, cfg: StreamConfig) -> list[api.RawStreamMsg]:
    info = await js.stream_info(cfg.name)
    if not info.state.messages:
        return []
    return [await js.get_msg(cfg.name, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]


async def stream_count(js: JetStreamContext, cfg: StreamConfig) -> int:
    return (await js.stream_info(cfg.name)).state.messages


def notification_ids(messages: list[api.RawStreamMsg]) -> list[int]:
    return [int(m.headers["WL-Notification-Id"]) for m in messages if m.headers]


async def status_of(database_url: str, stream: StreamConfig, max_notification_id: int) -> RelayStatus:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        return await relay_status(conn, stream.name, max_notification_id)


async def limit_message_size(js: JetStreamContext, stream: StreamConfig, max_msg_size: int) -> None:
    info = await js.stream_info(stream.name)
    await js.update_stream(info.config.evolve(max_msg_size=max_msg_size))


async def test_every_stored_event_is_published_in_notification_order(
    app: WattLedger, js: JetStreamContext, stream: StreamConfig, make_relay: Callable[..., Relay]
) -> None:
    devices = add_devices(app, 2)
    record_readings(app, devices, polls=2)
    rename(app, devices[0], "kettle")
    log = stored(app)

    published = await make_relay().publish_pending()

    messages = await stream_messages(js, stream)
    assert published == len(log) == len(messages)
    assert [int(m.headers["WL-Notification-Id"]) for m in messages] == [n.id for n in log]
    for message, notification in zip(messages, log, strict=True):
        event = app.mapper.to_domain_event(notification)
        envelope = decode_envelope(message.data)
        aggregate, key = (
            ("meter", event.device_id) if notification.topic.startswith("domain.meter:") else ("device", event.originator_id)
        )
        assert message.subject == subject_for(stream.subject_prefix, aggregate, key, type(event).__name__)
        assert message.headers["Nats-Msg-Id"] == f"{notification.originator_id}:{notification.originator_version}"
        assert set(message.headers) == {"Nats-Msg-Id", "WL-Notification-Id", "Nats-Expected-Stream"}
        assert notification.topic.encode() not in message.data
        assert envelope.notification_id == notification.id
        assert envelope.originator_id == notification.originator_id
        assert envelope.version == notification.originator_version
        assert (envelope.aggregate, envelope.event) == (aggregate, type(event).__name__)
        assert envelope.timestamp == event.timestamp
        assert envelope.actor == getattr(event, "actor", "system")
        assert decode_data(envelope) == event_data(event)

    readings = [decode_envelope(m.data) for m in messages if m.subject.endswith(".ReadingRecorded")]
    assert len(readings) == sum(n.topic.endswith(".ReadingRecorded") for n in log) >= 6
    reading = decode_data(readings[-1])
    assert isinstance(reading, ReadingRecorded)
    assert reading.device_id == devices[1]
    assert reading.measured_at > _T0
    assert reading.outlets[0].outlet_id == "out-0"
    assert reading.total_wh == 100.0
    renamed = [decode_envelope(m.data) for m in messages if m.subject.endswith(".Renamed")]
    assert renamed[-1].data == {"alias": "kettle"} and renamed[-1].actor == "test"
    assert decode_data(renamed[-1]) == DeviceRenamed(alias="kettle")


async def test_subscribers_filter_live_readings_by_device(
    app: WattLedger, js: JetStreamContext, stream: StreamConfig, make_relay: Callable[..., Relay]
) -> None:
    relay = make_relay()
    first, second = add_devices(app, 2)
    await relay.publish_pending()
    every_device = await js.subscribe(
        f"{stream.subject_prefix}.events.meter.*.ReadingRecorded",
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.NEW,
    )
    one_device = await js.subscribe(
        f"{stream.subject_prefix}.events.meter.{first}.ReadingRecorded",
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.NEW,
    )
    try:
        record_readings(app, [first, second], polls=2)
        await relay.publish_pending()

        seen = [decode_envelope((await every_device.next_msg(timeout=DEADLINE_S)).data) for _ in range(4)]
        mine = [decode_envelope((await one_device.next_msg(timeout=DEADLINE_S)).data) for _ in range(2)]
    finally:
        await every_device.unsubscribe()
        await one_device.unsubscribe()

    assert [e.data["device_id"] for e in seen] == [str(first), str(second)] * 2
    assert {e.data["device_id"] for e in mine} == {str(first)}
    assert all(e.event == "ReadingRecorded" and e.aggregate == "meter" for e in seen + mine)


async def test_republishing_after_a_crash_leaves_one_message_per_event(
    app: WattLedger, database_url: str, js: JetStreamContext, stream: StreamConfig, make_relay: Callable[..., Relay]
) -> None:
    class CrashBeforeSavingPosition(Exception):
        pass

    class CrashingRelay(Relay):
        async def _save_progress(self, first: int, position: int, refused: Any) -> None:
            raise CrashBeforeSavingPosition

    devices = add_devices(app, 3)
    record_readings(app, devices, polls=3)
    log = stored(app)
    crashing = CrashingRelay(app, js, database_url=database_url, stream=stream, batch_size=7)
    try:
        with pytest.raises(CrashBeforeSavingPosition):
            await crashing.publish_pending()
        assert await crashing.position() == 0
    finally:
        await crashing.aclose()
    assert await stream_count(js, stream) == 7

    relay = make_relay(batch_size=7)
    assert await relay.publish_pending() == len(log)
    await relay.reset(log[len(log) // 2].id)
    assert await relay.publish_pending() == len(log) - len(log) // 2 - 1
    await relay.reset()
    assert await relay.publish_pending() == len(log)

    messages = await stream_messages(js, stream)
    assert await stream_count(js, stream) == len(log) == len(messages)
    msg_ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(set(msg_ids)) == len(msg_ids)
    assert msg_ids == [f"{n.originator_id}:{n.originator_version}" for n in log]
    assert await relay.position() == log[-1].id


async def test_position_survives_a_new_relay_instance(
    app: WattLedger, js: JetStreamContext, stream: StreamConfig, make_relay: Callable[..., Relay]
) -> None:
    add_devices(app, 1)
    first = make_relay()
    published = await first.publish_pending()
    await first.aclose()

    second = make_relay()
    assert published == len(stored(app))
    assert await second.position() == stored(app)[-1].id
    assert await second.publish_pending() == 0

    before = len(stored(app))
    add_devices(app, 1)
    assert await second.publish_pending() == len(stored(app)) - before > 0
    assert await stream_count(js, stream) == len(stored(app))


async def _published_while_running(app: WattLedger, relay: Relay, *, nudge: bool = False) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _caught_up(app, relay), within=DEADLINE_S, every=0.02, what="the relay caught up")
        [device] = await asyncio.to_thread(add_devices, app, 1)
        if nudge:
            await asyncio.to_thread(relay.wake)
        log = stored(app)
        last = log[-1]
        assert device in {n.originator_id for n in log}
        await eventually(lambda: _reached(relay, last.id), within=DEADLINE_S, every=0.02,
                         what=f"notification {last.id} published")  # fmt: skip
    finally:
        stop.set()
        await asyncio.wait_for(running, DEADLINE_S)


async def _caught_up(app: WattLedger, relay: Relay) -> bool:
    log = stored(app)
    return await relay.position() == (log[-1].id if log else 0)


async def _reached(relay: Relay, notification_id: int) -> bool:
    return await relay.position() >= notification_id


async def test_run_publishes_an_event_saved_after_it_started_on_notify(
    app: WattLedger, js: JetStreamContext, stream: StreamConfig, make_relay: Callable[..., Relay]
) -> None:
    add_devices(app, 1)
    relay = make_relay(poll_interval=60.0)
    await _published_while_running(app, relay)
    assert await stream_count(js, stream) == len(stored(app))


async def test_run_polls_when_no_notification_arrives(
    app: WattLedger, js: JetStreamContext, stream: StreamConfig, make_relay: Callable[..., Relay]
) -> None:
    relay = make_relay(listen=False, poll_interval=0.2)
    await _published_while_running(app, relay)
    assert await stream_count(js, stream) == len(stored(app))


async def test_wake_nudges_an_idle_relay_from_another_thread(
    app: WattLedger, js: JetStreamContext, stream: StreamConfig, make_relay: Callable[..., Relay]
) -> None:
    relay = make_relay(listen=False, poll_interval=60.0)
    await _published_while_running(app, relay, nudge=True)
    assert await stream_count(js, stream) == len(stored(app))


async def test_holes_in_notification_ids_do_not_stall_the_relay(
    app: WattLedger, database_url: str, js: JetStreamContext, stream: StreamConfig, make_relay: Callable[..., Relay]
) -> None:
    [doomed] = add_devices(app, 1)
    before = stored(app)[-1].id
    duplicate = Device.from_snapshot(app.repository.get(doomed).address, snapshot(), alias=None, actor="test")
    with pytest.raises(IntegrityError):
        app.save(duplicate)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DELETE FROM {}.wattledger_events WHERE notification_id = %s").format(
                psycopg.sql.Identifier(EVENTS_SCHEMA)
            ),
            (before,),
        )
    [after_hole] = add_devices(app, 1)
    log = stored(app)
    ids = [n.id for n in log]
    assert before not in ids
    assert ids[ids.index(before - 1) + 1] > before + 1

    relay = make_relay(batch_size=3)
    assert await relay.publish_pending() == len(log)
    assert await relay.position() == log[-1].id
    assert after_hole in {n.originator_id for n in log if n.id > before}
    assert await stream_count(js, stream) == len(log)


class LosingClient:
    """The real NATS client, except that one notification is published with a reply inbox nobody reads:
    JetStream stores it and its ack is lost."""

    def __init__(self, nc: Client, lost: str) -> None:
        self._client = nc
        self.lost = lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", headers: Any = None) -> None:
        if reply and headers and headers.get("WL-Notification-Id") == self.lost:
            reply = self._client.new_inbox()
        await self._client.publish(subject, payload, reply=reply, headers=headers)


class LostAckJetStream(JetStreamContext):
    """Real JetStream, except that one notification's ack never arrives.

    With `unreachable`, publishing that notification again gets no answer either.
    """

    def __init__(self, nc: Client, lost_notification_id: int, *, unreachable: bool = True) -> None:
        self.lost = str(lost_notification_id)
        super().__init__(LosingClient(nc, self.lost))  # type: ignore[arg-type]
        self.unreachable = unreachable
        self.asked_again: list[str] = []

    async def publish(self, subject: str, payload: bytes = b"", **kwargs: Any) -> api.PubAck:
        notification_id = kwargs["headers"]["WL-Notification-Id"]
        self.asked_again.append(notification_id)
        if self.unreachable and notification_id == self.lost:
            raise nats.errors.TimeoutError
        return await super().publish(subject, payload, **kwargs)


async def test_a_missing_ack_stops_the_position_at_the_last_contiguous_ack(
    app: WattLedger,
    database_url: str,
    nc: Client,
    js: JetStreamContext,
    stream: StreamConfig,
    make_relay: Callable[..., Relay],
) -> None:
    add_devices(app, 2)
    log = stored(app)
    lost = log[-3]
    flaky = Relay(app, LostAckJetStream(nc, lost.id), database_url=database_url, stream=stream, ack_timeout=0.3)
    try:
        with pytest.raises(RelayPublishError):
            await flaky.publish_pending()
        assert await flaky.position() == log[-4].id
    finally:
        await flaky.aclose()

    relay = make_relay()
    assert await relay.publish_pending() == 3
    messages = await stream_messages(js, stream)
    assert len(messages) == len(log)
    assert len({m.headers["Nats-Msg-Id"] for m in messages}) == len(log)
    assert (await relay.status()).rejected == 0


async def test_a_lost_ack_is_settled_by_asking_again_within_the_pass(
    app: WattLedger, database_url: str, nc: Client, js: JetStreamContext, stream: StreamConfig
) -> None:
    add_devices(app, 2)
    log = stored(app)
    lost = log[-3]
    lossy = LostAckJetStream(nc, lost.id, unreachable=False)
    relay = Relay(app, lossy, database_url=database_url, stream=stream)
    try:
        assert await relay.publish_pending() == len(log)
        assert await relay.position() == log[-1].id
    finally:
        await relay.aclose()
    assert lossy.asked_again == [str(lost.id)]
    assert notification_ids(await stream_messages(js, stream)) == [n.id for n in log]


async def test_a_message_the_stream_refuses_for_good_is_recorded_and_passed_over(
    own_app: WattLedger, own_database: str, js: JetStreamContext, stream: StreamConfig
) -> None:
    app = own_app
    await limit_message_size(js, stream, 2048)
    add_devices(app, 1)
    oversized = add_device_named(app, "x" * 4096)
    [after] = add_devices(app, 1)
    record_readings(app, [after])
    log = stored(app)

    async with Relay(app, js, database_url=own_database, stream=stream) as relay:
        assert await relay.publish_pending() == len(log) - 1

        assert await relay.position() == log[-1].id
        assert notification_ids(await stream_messages(js, stream)) == [n.id for n in log if n.id != oversized.id]
        status = await status_of(own_database, stream, log[-1].id)
        assert (status.position, status.lag, status.rejected) == (log[-1].id, 0, 1)
        [rejection] = status.last_rejections
        assert rejection.notification_id == oversized.id
        assert rejection.subject == subject_for(stream.subject_prefix, "device", oversized.originator_id, "Added")
        assert "10054" in rejection.error and "exceeds maximum" in rejection.error
        assert await relay.status() == status

        add_devices(app, 1)
        assert await relay.publish_pending() == len(stored(app)) - len(log)
        assert (await relay.status()).rejected == 1

        await limit_message_size(js, stream, -1)
        await relay.reset(oversized.id - 1)
        await relay.publish_pending()
        assert (await relay.status()).rejected == 0
        assert oversized.id in notification_ids(await stream_messages(js, stream))


async def test_a_message_over_the_servers_max_payload_is_refused_without_losing_the_connection(
    own_app: WattLedger, own_database: str, nc: Client, js: JetStreamContext, stream: StreamConfig
) -> None:
    app = own_app
    oversized = add_device_named(app, "x" * nc.max_payload)
    add_devices(app, 1)
    log = stored(app)

    async with Relay(app, js, database_url=own_database, stream=stream) as relay:
        assert await relay.publish_pending() == len(log) - 1
        assert await relay.position() == log[-1].id
        status = await relay.status()

    assert nc.is_connected
    assert notification_ids(await stream_messages(js, stream)) == [n.id for n in log if n.id != oversized.id]
    assert [r.notification_id for r in status.last_rejections] == [oversized.id]
    assert "max_payload" in status.last_rejections[0].error


async def test_a_transient_failure_after_a_refused_message_keeps_the_refusal_and_stops_before_it(
    own_app: WattLedger, own_database: str, nc: Client, js: JetStreamContext, stream: StreamConfig
) -> None:
    app = own_app
    await limit_message_size(js, stream, 2048)
    oversized = add_device_named(app, "y" * 4096)
    add_devices(app, 2)
    log = stored(app)
    lost = log[-2]
    lossy = LostAckJetStream(nc, lost.id)

    async with Relay(app, lossy, database_url=own_database, stream=stream, ack_timeout=0.5) as flaky:
        with pytest.raises(RelayPublishError) as failure:
            await flaky.publish_pending()
        assert isinstance(failure.value.__cause__, nats.errors.TimeoutError)
        assert await flaky.position() == log[-3].id
        assert [r.notification_id for r in (await flaky.status()).last_rejections] == [oversized.id]
    assert lossy.asked_again == [str(lost.id)]  # the refusal was read from its first answer

    async with Relay(app, js, database_url=own_database, stream=stream) as relay:
        assert await relay.publish_pending() == 2
        status = await relay.status()
    assert (status.position, status.rejected) == (log[-1].id, 1)
    assert notification_ids(await stream_messages(js, stream)) == [n.id for n in log if n.id != oversized.id]


async def test_a_stream_that_does_not_exist_yet_is_retried_in_log_order_with_nothing_skipped(
    own_app: WattLedger, own_database: str, js: JetStreamContext
) -> None:
    app = own_app
    n = next(_streams)
    late = StreamConfig(name=f"WLT_{RUN.upper()}_LATE_{n}", subject_prefix=f"wlt{RUN}late{n}")
    add_devices(app, 2)
    log = stored(app)
    try:
        async with Relay(app, js, database_url=own_database, stream=late, ack_timeout=2.0) as relay:
            with pytest.raises(RelayPublishError) as failure:
                await relay.publish_pending()
            assert isinstance(failure.value.__cause__, NoStreamResponseError)
            assert await relay.position() == 0
            assert (await relay.status()).rejected == 0

            await ensure_stream(js, late)
            assert await relay.publish_pending() == len(log)
            status = await relay.status()
        assert notification_ids(await stream_messages(js, late)) == [n.id for n in log]
        assert (status.position, status.lag, status.rejected) == (log[-1].id, 0, 0)
    finally:
        try:
            await js.delete_stream(late.name)
        except NotFoundError:
            pass


async def test_status_before_any_relay_ran_reports_the_whole_log_as_lag(server_urls: tuple[str, str]) -> None:
    with fresh_database(server_urls[0]) as url:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            status = await relay_status(conn, "WL_EVENTS", 42)
    assert status == RelayStatus(stream="WL_EVENTS", position=0, lag=42, rejected=0, last_rejections=[])


class Tariff(Aggregate):
    class Priced(Aggregate.Event):
        price: Decimal
        valid_from: datetime


def test_other_aggregates_are_routed_by_class_name_and_publish_no_unlisted_fields() -> None:
    tariff = Tariff()
    tariff.trigger_event(Tariff.Priced, price=Decimal("0.3125"), valid_from=_T0)
    _, priced = tariff.collect_events()

    route = route_for(priced)
    body = encode_envelope(7, priced)
    envelope = decode_envelope(body)

    assert route == ("tariff", str(tariff.id), "Priced")
    assert envelope.data == {} and b"0.3125" not in body
    assert event_data(priced) == EventData()
    assert (envelope.notification_id, envelope.aggregate, envelope.event) == (7, "tariff", "Priced")
    assert msgspec.json.decode(body)["actor"] == "system"
