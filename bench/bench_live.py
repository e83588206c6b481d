"""Live delivery: reading stored → WebSocket message, against a bare NATS subscriber in the same run.

    python bench/bench_live.py [--devices 1000] [--interval 10] [--clients 100] [--seconds 60]
                               [--all] [--memory-subscribers 1000]

Readings come through the write path, not from polled devices: a writer process stores one
reading per device per `--interval` seconds (each device at its own phase, saved every 0.1 s
in `record_polls` calls of at most 100 devices, as the poller's store task does), so 1,000
devices at 10 s are 100 readings/s without 1,000 emulated devices competing for the 2 cores.
The API process runs the real parts (`run_parts`: API under uvicorn with its live fan-out,
relay, projectors). A client process opens `--clients` WebSockets with an API key; each
subscribes to its share of the devices (`--all`: every client subscribes to everything),
and, as the baseline, one plain nats-py subscription takes the same readings off
`<prefix>.events.meter.*.ReadingRecorded`. Latency is the receive time minus the event's
`timestamp` (set when the reading is decided, just before it is saved, so it includes the
save and the relay). Reported: median and p99 for both, and messages received.

Memory: in this process, tracemalloc measures the fan-out with `--memory-subscribers`
subscribers (each watching one device, a tenth watching all) while 10,000 readings are
dispatched: the steady state with every queue read, then with 255 unread readings in each
all-device watcher's queue (one short of the bound that drops it).

PostgreSQL from DATABASE_URL (a scratch database, dropped at the end), NATS from NATS_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
import tracemalloc
import uuid
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402

from bench.scratch import scratch_database  # noqa: E402

DEFAULT_NATS = "nats://127.0.0.1:4222"


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def snapshot(k: int) -> Any:
    from domain.readings import DeviceSnapshot

    return DeviceSnapshot(alias="plug", model="HS110", device_type="plug", mac="50:c7:bf:00:00:01", firmware="1",
                          is_on=True, has_emeter=True, power_w=40.0 + k % 7, voltage_v=230.0, current_a=0.2,
                          total_wh=1000.0 + k)  # fmt: skip


def seed_devices(url: str, count: int) -> list[str]:
    """Store `count` plug devices (no projection: the API process's projectors catch up)."""
    from adapters.eventstore import WattLedger, ensure_events_schema, store_env
    from domain.device import Device

    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    addresses = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:9999" for i in range(1, count + 1)]
    try:
        for first in range(0, count, 100):
            app.save(*(Device.from_snapshot(a, snapshot(0), alias=None, actor="bench") for a in addresses[first:first + 100]))
    finally:
        app.close()
    return addresses


# The API process ---------------------------------------------------------------------


def serve(options: dict[str, Any], conn: Connection) -> None:
    asyncio.run(_serve(options, conn))


async def _serve(options: dict[str, Any], conn: Connection) -> None:
    from domain.access import Scope
    from domain.identity_requests import Login, NewKey, SetupAdmin, StepUp
    from infra.bootstrap import open_runtime, run_parts
    from infra.logging import configure_logging
    from infra.settings import Settings

    configure_logging("error")
    settings = Settings(port=options["port"], stream_name=options["stream"], subject_prefix=options["prefix"],
                        rate_limits=False, live_queue=4096, polling_interval=options["interval"])  # fmt: skip
    stop = asyncio.Event()
    async with open_runtime(settings, options["database_url"], options["nats_url"]) as runtime:
        task = asyncio.create_task(run_parts(runtime, stop, api=True, poll=False, relay=True, project=True))
        await runtime.identity.setup(SetupAdmin(username="bench", password="Live-passphrase-42"))
        grant = await runtime.identity.login(Login(username="bench", password="Live-passphrase-42"))
        principal = await runtime.identity.authenticate_session(grant.session_id, grant.user_id)
        issued = await runtime.identity.issue_key(principal, NewKey(name="bench", scope=Scope.READ),
                                                  StepUp(current_password="Live-passphrase-42"))  # fmt: skip
        runtime.saved()
        newest = await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0
        while True:
            if await runtime.services().reads.wait_projected(newest, timeout=5) and \
                    await runtime.services().reads.wait_projected(newest, projector="identity", timeout=5):  # fmt: skip
                break
        while runtime.fanout is None or not runtime.fanout.running:
            await asyncio.sleep(0.05)
        conn.send(issued.key)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        rss = Path("/proc/self/status").read_text()
        conn.send([line for line in rss.splitlines() if line.startswith("VmRSS")][0])
        stop.set()
        await task


# The writer process ------------------------------------------------------------------


def write(options: dict[str, Any], conn: Connection) -> None:
    asyncio.run(_write(options, conn))


async def _write(options: dict[str, Any], conn: Connection) -> None:
    from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, store_env
    from bench.scratch import NoDriver
    from domain.commands import PollResult, RecordPolls
    from domain.device import device_id_for
    from domain.handlers import CommandHandlers
    from infra.logging import configure_logging

    configure_logging("error")
    app = WattLedger(store_env(options["database_url"]))
    handlers = CommandHandlers(StoreUnitOfWork(app, cache=True), NoDriver(), SystemClock())
    ids = [device_id_for(a) for a in options["addresses"]]
    interval, tick = options["interval"], 0.1
    per_tick = len(ids) * tick / interval
    started = time.monotonic()
    conn.send("ready")
    k = 0
    due = 0.0
    position = 0
    try:
        while time.monotonic() - started < options["seconds"]:
            due += per_tick
            batch = []
            while due >= 1:
                batch.append(ids[position % len(ids)])
                position += 1
                due -= 1
            now = datetime.now(timezone.utc)
            for first in range(0, len(batch), 100):
                results = tuple(PollResult(device_id=d, measured_at=now, snapshot=snapshot(k)) for d in batch[first:first + 100])
                await handlers.record_polls(RecordPolls(results=results, offline=(), actor="system:bench"))
            k += 1
            await asyncio.sleep(max(0.0, started + k * tick - time.monotonic()))
    finally:
        app.close()
    conn.send(position)


# The client process ------------------------------------------------------------------


def listen(options: dict[str, Any], conn: Connection) -> None:
    asyncio.run(_listen(options, conn))


def _latency(stamp: str, received: float) -> float:
    return received - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def _listen(options: dict[str, Any], conn: Connection) -> None:
    import nats
    from websockets.asyncio.client import connect

    ws_latency: list[float] = []
    nats_latency: list[float] = []
    addresses: list[str] = options["addresses"]
    clients: int = options["clients"]
    url = f"ws://127.0.0.1:{options['port']}/ws"
    sockets = []
    for i in range(clients):
        ws = await connect(url, additional_headers={"X-API-Key": options["key"]}, max_queue=None, ping_interval=None)
        await ws.recv()
        if options["all"]:
            await ws.send('{"event": "subscribe_all"}')
        else:
            for address in addresses[i::clients]:
                await ws.send(msgspec.json.encode({"event": "subscribe_device", "device_ip": address}).decode())
        sockets.append(ws)

    async def read(ws: Any) -> None:
        while True:
            raw = await ws.recv()
            received = time.time()
            message = msgspec.json.decode(raw)
            if message.get("event") == "device_update" and measuring.is_set():
                ws_latency.append(_latency(message["data"]["timestamp"], received))

    measuring = asyncio.Event()
    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    nc = await nats.connect(options["nats_url"])

    async def on_reading(msg: Any) -> None:
        if measuring.is_set():
            envelope = msgspec.json.decode(msg.data)
            nats_latency.append(_latency(envelope["data"]["measured_at"], time.time()))

    await nc.subscribe(f"{options['prefix']}.events.meter.*.ReadingRecorded", cb=on_reading)
    conn.send("ready")
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await asyncio.sleep(options["warmup"])
    measuring.set()
    await asyncio.sleep(options["seconds"])
    measuring.clear()
    for task in readers:
        task.cancel()
    await nc.close()
    for ws in sockets:
        await ws.close()
    conn.send({"ws": ws_latency, "nats": nats_latency})


# Memory ------------------------------------------------------------------------------


def fanout_memory(subscribers: int, devices: int, events: int) -> dict[str, float]:
    """tracemalloc of a fan-out with `subscribers` (one device each, a tenth every device) over `events` readings."""
    from adapters.bus import StreamConfig
    from adapters.contract import decode_envelope
    from adapters.fanout import FanOut, LiveEvent

    async def directory() -> dict[Any, Any]:
        return {}

    async def run() -> dict[str, float]:
        device_ids = [uuid.uuid4() for _ in range(devices)]
        raws = [msgspec.json.encode({
            "notification_id": i + 1, "originator_id": str(uuid.uuid4()), "version": 1, "aggregate": "meter",
            "event": "ReadingRecorded", "timestamp": "2026-05-01T10:00:00Z", "actor": "system:poller",
            "data": {"device_id": str(device_ids[i % devices]), "measured_at": "2026-05-01T10:00:00Z", "is_on": True,
                     "power_w": 42.0, "voltage_v": 230.0, "current_a": 0.2, "total_wh": 1234.5, "outlets": [],
                     "rssi": -50},
        }) for i in range(events)]  # fmt: skip
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.take_snapshot()
        fanout = FanOut(None, None, StreamConfig(), directory=directory)  # type: ignore[arg-type]
        subs = [fanout.subscribe(queue_size=256) for _ in range(subscribers)]
        for i, sub in enumerate(subs):
            if i % 10 == 0:
                sub.watch_all()
            else:
                sub.watch(device_ids[i % devices])
        for i, raw in enumerate(raws):
            fanout.dispatch(decode_envelope(raw), raw)
            if i % 100 == 99:
                for sub in subs:
                    while not sub.queue.empty():
                        item = sub.queue.get_nowait()
                        if isinstance(item, LiveEvent):
                            item.seed()
        gc.collect()
        steady = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
        for raw in raws[:255]:
            fanout.dispatch(decode_envelope(raw.replace(b'"notification_id":', b'"notification_id":1000000')), raw)
        gc.collect()
        full = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {"steady_mb": steady / 1e6, "full_mb": full / 1e6, "peak_mb": peak / 1e6,
                "dropped": float(fanout.dropped)}  # fmt: skip

    return asyncio.run(run())


async def main(args: argparse.Namespace) -> None:
    from adapters.bus import StreamConfig, connect_nats, ensure_stream

    memory = await asyncio.to_thread(fanout_memory, args.memory_subscribers, args.devices, 10_000)
    tag = uuid.uuid4().hex[:8]
    stream = StreamConfig(name=f"WL_BENCH_LIVE_{tag.upper()}", subject_prefix=f"wlbl{tag}")
    nats_url = os.environ.get("NATS_URL", DEFAULT_NATS)
    nc = await connect_nats(nats_url, name="bench-live")
    await ensure_stream(nc.jetstream(), stream)
    ctx = mp.get_context("spawn")
    try:
        with scratch_database("wl_bench_live") as url:
            addresses = seed_devices(url, args.devices)
            options = {"database_url": url, "nats_url": nats_url, "stream": stream.name, "prefix": stream.subject_prefix,
                       "port": free_port(), "interval": args.interval, "addresses": addresses, "clients": args.clients,
                       "all": args.all, "seconds": args.seconds, "warmup": args.warmup}  # fmt: skip
            api_end, api_child = ctx.Pipe()
            api = ctx.Process(target=serve, args=(options, api_child))
            api.start()
            options["key"] = await asyncio.to_thread(api_end.recv)
            client_end, client_child = ctx.Pipe()
            client = ctx.Process(target=listen, args=(options, client_child))
            client.start()
            assert await asyncio.to_thread(client_end.recv) == "ready"
            writer_end, writer_child = ctx.Pipe()
            writer = ctx.Process(target=write, args=({**options, "seconds": args.seconds + args.warmup + 2}, writer_child))
            writer.start()
            assert await asyncio.to_thread(writer_end.recv) == "ready"
            client_end.send("go")
            result = await asyncio.to_thread(client_end.recv)
            written = await asyncio.to_thread(writer_end.recv)
            api_end.send("stop")
            rss = await asyncio.to_thread(api_end.recv)
            for process in (writer, client, api):
                process.join(timeout=30)
    finally:
        await nc.jetstream().delete_stream(stream.name)
        await nc.close()
    ws, base = result["ws"], result["nats"]
    mode = "every client subscribed to all" if args.all else f"each device watched by one of {args.clients} clients"
    print(f"live delivery: {args.devices} devices every {args.interval:g} s ({args.devices / args.interval:.0f} "
          f"readings/s stored through the write path), {args.clients} WebSocket clients ({mode}), "
          f"{args.seconds:g} s measured, {written} readings written")  # fmt: skip
    print(f"{'path':<34}{'messages':>10}{'median ms':>12}{'p99 ms':>10}")
    for name, values in (("stored -> WebSocket message", ws), ("stored -> NATS subscriber (base)", base)):
        print(f"{name:<34}{len(values):>10}{statistics.median(values) * 1000 if values else float('nan'):>12.1f}"
              f"{quantile(values, 0.99) * 1000:>10.1f}")  # fmt: skip
    print(f"API process at the end: {rss}")
    print(f"fan-out memory, {args.memory_subscribers} subscribers, 10,000 readings dispatched (tracemalloc): "
          f"steady {memory['steady_mb']:.2f} MB, with the {args.memory_subscribers // 10} all-device "
          f"watchers' queues 255 deep {memory['full_mb']:.2f} MB, "
          f"peak {memory['peak_mb']:.2f} MB, dropped {memory['dropped']:.0f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--all", action="store_true", help="every client subscribes to every device")
    parser.add_argument("--memory-subscribers", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
