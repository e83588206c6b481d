"""Live readings on JetStream: an independent durable consumer, and the fan-out, against real servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import FetchTimeoutError

from adapters.bus import StreamConfig, connect_nats, ensure_stream
from adapters.contract import decode_envelope
from adapters.eventstore import WattLedger
from adapters.fanout import TOO_SLOW, DeviceEntry, Ended, FanOut, LiveEvent
from adapters.relay import Relay
from domain.commands import PollResult
from tests.harness import metered_plug
from tests.kit import seed_device, seed_polls

T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)


@pytest.fixture
async def bus(nats_url: str, stream_config: StreamConfig) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    nc = await connect_nats(nats_url, name="test-live")
    js = nc.jetstream()
    await ensure_stream(js, stream_config)
    try:
        yield nc, js
    finally:
        await nc.close()


def store_readings(app: WattLedger, devices: list[UUID], first: int, count: int) -> int:
    """One poll cycle of every device per step, as the poller stores them."""
    return sum(
        seed_polls(app, [PollResult(device_id=d, measured_at=T0 + timedelta(seconds=10 * k), snapshot=metered_plug(k))
                         for d in devices])  # fmt: skip
        for k in range(first, first + count)
    )


async def drain(js: JetStreamContext, subject: str, durable: str, stream: str, *, limit: int | None = None
                ) -> list[Any]:  # fmt: skip
    """Fetch and ack messages of a durable pull consumer until none come (or `limit` are taken)."""
    sub = await js.pull_subscribe(subject, durable=durable, stream=stream,
                                  config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT))  # fmt: skip
    taken: list[Any] = []
    while limit is None or len(taken) < limit:
        try:
            batch = await sub.fetch(min(50, (limit or 50) - len(taken)) or 1, timeout=1.0)
        except (FetchTimeoutError, TimeoutError):
            break
        for msg in batch:
            taken.append(decode_envelope(msg.data))
            await msg.ack()
    await sub.unsubscribe()
    return taken


async def test_an_independent_durable_consumer_sees_every_reading_once_and_in_order_per_device(
    app: WattLedger, database_url: str, stream_config: StreamConfig, bus: tuple[Client, JetStreamContext],
    nats_url: str,
) -> None:
    _, js = bus
    devices = [seed_device(app, f"127.0.0.{i}", metered_plug(0.0), measured_at=T0) for i in (11, 12, 13)]
    relay = Relay(app, js, database_url=database_url, stream=stream_config, listen=False)
    async with relay:
        stored = len(devices) + store_readings(app, devices, 1, 10)
        await relay.publish_pending()
        subject = f"{stream_config.subject_prefix}.events.meter.*.ReadingRecorded"
        first = await drain(js, subject, "reporting", stream_config.name, limit=12)
        # The consumer goes away; more readings arrive, and the relay re-publishes everything from zero.
        stored += store_readings(app, devices, 11, 5)
        await relay.reset(0)
        await relay.publish_pending()
        nc2 = await connect_nats(nats_url, name="test-live-again")
        try:
            rest = await drain(nc2.jetstream(), subject, "reporting", stream_config.name)
        finally:
            await nc2.close()
    seen = first + rest
    ids = [e.notification_id for e in seen]
    assert len(ids) == len(set(ids)) == stored
    for device in devices:
        times = [e.data["measured_at"] for e in seen if e.data["device_id"] == str(device)]
        assert times == sorted(times) and len(times) == len(set(times)) == 16


async def test_the_fanout_delivers_new_events_once_and_drops_a_subscriber_that_does_not_read(
    app: WattLedger, database_url: str, stream_config: StreamConfig, bus: tuple[Client, JetStreamContext],
) -> None:
    nc, js = bus
    devices = [seed_device(app, f"127.0.0.{i}", metered_plug(0.0), measured_at=T0) for i in (21, 22)]
    relay = Relay(app, js, database_url=database_url, stream=stream_config, listen=False)

    async def directory() -> dict[UUID, DeviceEntry]:
        return {devices[0]: DeviceEntry(address="127.0.0.21", alias="plug")}

    fanout = FanOut(nc, js, stream_config, directory=directory)
    async with relay:
        await relay.publish_pending()
        await fanout.start()
        try:
            one = fanout.subscribe(queue_size=100)
            one.watch(devices[0])
            slow = fanout.subscribe(queue_size=3)
            slow.watch_all()
            store_readings(app, devices, 1, 4)
            await relay.reset(0)
            await relay.publish_pending()
            got: list[LiveEvent] = []
            while len(got) < 4:
                item = await asyncio.wait_for(one.next(), timeout=10)
                assert isinstance(item, LiveEvent)
                got.append(item)
            assert all(e.device_id == devices[0] and e.address == "127.0.0.21" for e in got)
            assert [e.envelope.notification_id for e in got] == sorted({e.envelope.notification_id for e in got})
            seed = got[0].seed_object()
            assert seed is not None and seed["event"] == "device_update" and seed["device_ip"] == "127.0.0.21"
            with pytest.raises(Ended) as ended:
                await slow.next()
            assert ended.value.code == TOO_SLOW and fanout.dropped == 1
            status = await fanout.status()
            assert status.running and status.connected and status.subscribers == 1 and status.pending == 0
        finally:
            await fanout.stop()
