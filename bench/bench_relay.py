"""Relay throughput against a real PostgreSQL and JetStream, next to a wait-for-each-ack baseline.

    python bench/bench_relay.py [--events 20000] [--sample 2000] [--sections 20000]

Creates a scratch database and scratch streams, and removes them at the end.
The baseline publishes already-encoded messages, so it is timed without reading or
encoding; the relay's figure includes reading the log, decoding and encoding, and
is given in wall time and in this process's CPU time per event (steadier than wall
time on a shared machine).

Then the first `--sections` events, already encoded, are published in sections of
1,000 twice, alternating five rounds each: by `adapters.publisher.Publisher` (a reply
subject of its own per message) and by nats-py's `publish_async` with the acks gathered
(what the publisher did before); each round to a stream of its own. Printed: the
median of each one's rounds, events/s and CPU microseconds per event.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import structlog
from nats.js import JetStreamContext
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.bus import StreamConfig, connect_nats, ensure_stream, subject_for  # noqa: E402
from adapters.eventstore import PollResult, WattLedger, ensure_events_schema, store_env  # noqa: E402
from adapters.publisher import Outgoing, Publisher  # noqa: E402
from adapters.relay import Relay, encode_envelope, route_for  # noqa: E402
from bench.scratch import PollRecorder  # noqa: E402
from domain.device import Device  # noqa: E402
from domain.readings import DeviceSnapshot, OutletReading  # noqa: E402

AGGREGATES_PER_SAVE = 1000


def snapshot(i: int) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias=f"plug {i}",
        model="HS110",
        device_type="plug",
        mac=f"50:c7:bf:00:{i // 256 % 256:02x}:{i % 256:02x}",
        firmware="1.5.6",
        is_on=True,
        has_emeter=True,
        power_w=40.0 + i % 7,
        voltage_v=230.0,
        current_a=0.18,
        total_wh=1000.0 + i,
        outlets=(OutletReading(outlet_id="0", index=0, alias="plug", is_on=True),),
    )


def append_readings(app: WattLedger, events: int) -> tuple[int, float]:
    """Add one device per aggregate in a save, then record polls until `events` readings exist."""
    devices = [
        Device.from_snapshot(f"10.9.{i // 256}.{i % 256}", snapshot(i), alias=None, actor="bench")
        for i in range(AGGREGATES_PER_SAVE)
    ]
    app.save(*devices)
    started = time.perf_counter()
    at = datetime(2026, 3, 1, tzinfo=timezone.utc)
    recorded = 0
    recorder = PollRecorder(app)
    while recorded < events:
        at += timedelta(seconds=10)
        count = min(AGGREGATES_PER_SAVE, events - recorded)
        results = [PollResult(device_id=d.id, measured_at=at, snapshot=snapshot(i)) for i, d in enumerate(devices[:count])]
        recorded += recorder.record(results)
    recorder.close()
    return recorded, time.perf_counter() - started


async def publish_async_sections(js: JetStreamContext, stream: str, sections: list[list[Outgoing]]) -> None:
    """The former way: `publish_async` per message, the section's acks gathered."""
    for section in sections:
        futures = [
            await js.publish_async(m.subject, m.payload, headers=dict(m.headers), stream=stream) for m in section
        ]
        await asyncio.gather(*futures)


async def publisher_sections(js: JetStreamContext, stream: str, sections: list[list[Outgoing]]) -> None:
    publisher = Publisher(js, stream, ack_timeout=10.0)
    try:
        for section in sections:
            result = await publisher.publish(section)
            assert result.settled == len(section) and result.error is None, result
    finally:
        await publisher.close()


async def compare_sections(app: WattLedger, js: JetStreamContext, run: str, count: int) -> None:
    """Publisher against `publish_async` gathered, on the same encoded sections, alternating rounds."""
    logged = app.recorder.select_notifications(0, count, inclusive_of_start=False)
    ways = {"Publisher (own reply subjects)": publisher_sections, "publish_async, acks gathered": publish_async_sections}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for round_ in range(5):
        for n, (name, way) in enumerate(ways.items()):
            cfg = StreamConfig(name=f"WLB_{run.upper()}_S{round_}{n}", subject_prefix=f"wlb{run}s{round_}{n}")
            await ensure_stream(js, cfg)
            messages = []
            for note in logged:
                where = route_for(app.mapper.to_domain_event(note))
                messages.append(Outgoing(
                    notification_id=note.id,
                    subject=subject_for(cfg.subject_prefix, where.aggregate, where.key, where.event),
                    payload=encode_envelope(note.id, app.mapper.to_domain_event(note)),
                    headers={"Nats-Msg-Id": f"{note.originator_id}:{note.originator_version}",
                             "WL-Notification-Id": str(note.id)},
                ))  # fmt: skip
            sections = [messages[i:i + 1000] for i in range(0, len(messages), 1000)]
            try:
                started, cpu = time.perf_counter(), time.process_time()
                await way(js, cfg.name, sections)
                wall, used = time.perf_counter() - started, time.process_time() - cpu
                assert (await js.stream_info(cfg.name)).state.messages == len(messages)
                figures[name].append((len(messages) / wall, 1e6 * used / len(messages)))
            finally:
                await js.delete_stream(cfg.name)
    for name, rounds in figures.items():
        rate = statistics.median(r for r, _ in rounds)
        cpu = statistics.median(c for _, c in rounds)
        print(f"{name:32} {len(logged)} events in sections of 1000: {rate:9,.0f} events/s, {cpu:5.1f} us CPU per event"
              f" (median of {len(rounds)} rounds)")  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    run = secrets.token_hex(4)
    db_name = f"wl_bench_{run}"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db_name)))
    url = psycopg.conninfo.make_conninfo(args.database_url, dbname=db_name)
    nc = await connect_nats(args.nats_url, name="wl-bench-relay")
    js = nc.jetstream()
    relay_stream = StreamConfig(name=f"WLB_{run.upper()}", subject_prefix=f"wlb{run}")
    base_stream = StreamConfig(name=f"WLB_{run.upper()}_BASE", subject_prefix=f"wlb{run}base")
    app: WattLedger | None = None
    try:
        ensure_events_schema(url)
        app = WattLedger(store_env(url))
        recorded, append_s = await asyncio.to_thread(append_readings, app, args.events)
        total = app.recorder.max_notification_id() or 0
        print(f"appended {recorded} readings ({total} events in all) in {append_s:.2f}s: {recorded / append_s:,.0f} readings/s")

        await ensure_stream(js, relay_stream)
        await ensure_stream(js, base_stream)
        async with Relay(app, js, database_url=url, stream=relay_stream) as relay:
            started, cpu = time.perf_counter(), time.process_time()
            published = await relay.publish_pending()
            relay_s, relay_cpu = time.perf_counter() - started, time.process_time() - cpu
        stored = (await js.stream_info(relay_stream.name)).state.messages
        print(
            f"relay publish_pending: {published} events in {relay_s:.2f}s: {published / relay_s:,.0f} events/s"
            f" (stream holds {stored}), {1e6 * relay_cpu / published:.0f} us CPU per event"
        )
        await compare_sections(app, js, run, args.sections)

        notifications = app.recorder.select_notifications(0, args.sample, inclusive_of_start=False)
        messages = []
        for n in notifications:
            event = app.mapper.to_domain_event(n)
            where = route_for(event)
            subject = subject_for(base_stream.subject_prefix, where.aggregate, where.key, where.event)
            payload = encode_envelope(n.id, event)
            messages.append((subject, payload, f"{n.originator_id}:{n.originator_version}"))
        started = time.perf_counter()
        for subject, payload, msg_id in messages:
            await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
        base_s = time.perf_counter() - started
        base_rate = len(messages) / base_s
        print(f"baseline js.publish, one ack at a time: {len(messages)} events in {base_s:.2f}s: {base_rate:,.0f} events/s")
        print(f"relay / baseline: {published / relay_s / base_rate:.1f}x")
    finally:
        for cfg in (relay_stream, base_stream):
            try:
                await js.delete_stream(cfg.name)
            except Exception:
                pass
        await nc.close()
        if app is not None:
            app.close()
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db_name)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000, help="readings to append (default 20000)")
    parser.add_argument("--sample", type=int, default=2000, help="messages in the baseline (default 2000)")
    parser.add_argument("--sections", type=int, default=20000,
                        help="events published in sections by each way compared (default 20000)")
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    asyncio.run(main(parser.parse_args()))
