"""Polling many devices on time: the poller against a bare python-kasa loop, same run, same machine.

    python bench/bench_poll_fanout.py [--scale 1000,5000] [--seconds 60] [--interval 10] [--pollers 1]
                                      [--baselines update,driver] [--profile PATH] [--burn 0]

For each scale N: N emulated plugs and strips (HS110, KP115, HS100, HS300, KP303 in turn)
plus N/10 black holes (loopback servers that accept and never answer) run in a process of
their own. Then `--pollers` processes run the real poller (`Runtime.poller()`: leases,
store queue, PostgreSQL) for a warm-up plus `--seconds`; with several, they share the
devices through their leases. Then the baseline process reads the healthy devices with a
bare loop of python-kasa `update()` calls, the same concurrency and no storage: the
ceiling of polling on this machine; then (`--baselines`) through the poller's own driver
alone (`KasaDriver.poll`, the short reads the poller makes, no schedule, no storage), so what
the poller adds to its reads shows apart. This process runs the relay and listens on JetStream.

Measuring starts `--warmup` seconds after every poller has polled each of its devices once
(the first contact costs several reads) and its store caught up; all pollers are measured
over the same window and keep polling until every one is measured. Reported over the measured window: time between consecutive reads of a device (median,
p99), the share of healthy devices read in every interval (no gap above 1.1 x the interval),
readings stored per second and the number expected, CPU of the polling processes (CPU time
/ wall, summed; 1.0 is one core) and per reading (split by thread: `main` polls, the store's
saves run on `poller-store` and the default executor's `asyncio_N`), and the relay lag (event created by the poller → message
on JetStream, median and p99). Projectors do not run. `--burn N` runs N processes that only spin
for the whole run, pollers and baselines alike: a loaded machine on demand.

PostgreSQL from DATABASE_URL (a scratch database, dropped at the end), NATS from NATS_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import multiprocessing as mp
import os
import resource
import statistics
import sys
import threading
import time
import uuid
from collections import defaultdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402

from bench.scratch import scratch_database  # noqa: E402

PROFILES = ("HS110", "KP115", "HS100", "HS300", "KP303")
COUNTERS = ("failures", "overruns", "skipped", "taken", "given_up", "assignment_failures", "saves", "stored",
            "save_failures", "dropped")
"""The poller's counters shown as their growth over the measured window."""


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """What one polling process saw while it was measured."""

    started: float
    ended: float
    cpu: float
    stats: dict[str, Any] = {}
    reads: dict[str, list[float]] = {}
    cycles: list[float] = []
    threads: dict[str, float] = {}
    """CPU seconds by thread: `main` is the polling loop, `poller-store` the store's loop."""
    changed: dict[str, int] = {}
    """How much each of the poller's counters grew over the window."""


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        sys.exit(f"need {needed} open files, the hard limit allows {soft}: raise it (ulimit -Hn)")


class GcTimer:
    """CPU seconds spent in the garbage collector from now until `stop()` (any thread), by generation."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self._began = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.thread_time()
        else:
            self.seconds[info["generation"]] += time.thread_time() - self._began

    def stop(self) -> dict[str, float]:
        gc.callbacks.remove(self._callback)
        return {f"of which gc{generation}": seconds for generation, seconds in enumerate(self.seconds)}


def thread_cpu() -> dict[str, float]:
    """User + system CPU seconds of this process's threads, by name (the main thread as `main`)."""
    names = {t.native_id: ("main" if t is threading.main_thread() else t.name) for t in threading.enumerate()}
    seconds: dict[str, float] = defaultdict(float)
    for task in Path("/proc/self/task").iterdir():
        try:
            seconds[names.get(int(task.name), "other")] += proc_cpu_path(task / "stat")
        except (FileNotFoundError, ProcessLookupError):
            continue
    return dict(seconds)


def proc_cpu_path(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The emulator process ----------------------------------------------------------------


def emulate(count: int, holes: int, conn: Connection) -> None:
    asyncio.run(_emulate(count, holes, conn))


async def _emulate(count: int, holes: int, conn: Connection) -> None:
    from adapters.emulator import EmulatorFleet
    from infra.logging import configure_logging

    configure_logging("error")
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(4096):
            pass

    profiles = [PROFILES[i % len(PROFILES)] for i in range(count)]
    async with EmulatorFleet(profiles, host="127.0.0.1", port=0, seed=1) as fleet:
        servers = [await asyncio.start_server(swallow, "127.0.0.1", 0, backlog=64) for _ in range(holes)]
        conn.send((fleet.addresses, [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        for server in servers:
            server.close()
        for writer in writers:
            writer.close()


# The polling processes ---------------------------------------------------------------


def poll(options: dict[str, Any], conn: Connection) -> None:
    asyncio.run(_poll(options, conn))


async def _poll(options: dict[str, Any], conn: Connection) -> None:
    from infra.bootstrap import open_runtime
    from infra.logging import configure_logging
    from infra.settings import Settings

    configure_logging("error")
    settings = Settings(
        polling_interval=options["interval"],
        poll_timeout=options["timeout"],
        poll_concurrency=options["concurrency"],
        poll_suspect_concurrency=options["suspect_concurrency"],
        stream_name=options["stream"],
        subject_prefix=options["prefix"],
    )
    async with open_runtime(settings, options["database_url"], options["nats_url"]) as runtime:
        poller = runtime.poller()
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        await first_contact(poller, options["first_contact_max"])
        loop = asyncio.get_running_loop()
        conn.send("ready")
        start_at = await loop.run_in_executor(None, conn.recv)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        collecting = GcTimer()
        profiler = cProfile.Profile() if options["profile"] else None
        threads_before = thread_cpu()
        counted_before = msgspec.structs.asdict(poller.stats())
        started, cpu = time.time(), time.process_time()
        if profiler is not None:
            profiler.enable()
        await asyncio.sleep(options["seconds"])
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{options['profile']}.{os.getpid()}")
        ended, used = time.time(), time.process_time() - cpu
        threads = {name: seconds - threads_before.get(name, 0.0) for name, seconds in thread_cpu().items()}
        threads.update(collecting.stop())
        stats = msgspec.structs.asdict(poller.stats())
        changed = {k: v - counted_before[k] for k, v in stats.items() if isinstance(v, int) and k in COUNTERS}
        conn.send(msgspec.json.encode(Window(started=started, ended=ended, cpu=used, stats=stats, threads=threads,
                                             changed=changed)))
        # Every poller polls until all are measured, so no hand-over falls into a window.
        await loop.run_in_executor(None, conn.recv)
        stop.set()
        await task


async def first_contact(poller: Any, longest: float) -> None:
    """Until every device held was polled once and the store caught up (connecting is costlier than reading)."""
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        stats = poller.stats()
        if stats.devices and stats.polls >= stats.devices and stats.pending < 200:
            return
        await asyncio.sleep(1.0)


def bare(addresses: list[str], options: dict[str, Any], conn: Connection, kind: str = "update") -> None:
    loop = bare_loop if kind == "update" else driver_loop
    conn.send(msgspec.json.encode(asyncio.run(loop(addresses, options))))


async def driver_loop(addresses: list[str], options: dict[str, Any]) -> Window:
    """Read every device once per interval through the poller's driver alone (`KasaDriver.poll`), no
    schedule and no storage: what the poller adds is the rest of its CPU."""
    from adapters.kasa_driver import KasaDriver
    from domain.address import parse_address

    limit = asyncio.Semaphore(options["concurrency"])
    reads: dict[str, list[float]] = defaultdict(list)
    driver = KasaDriver(timeout=options["timeout"])
    targets = [(a, parse_address(a)) for a in addresses]

    async def poll(address: str, target: Any) -> None:
        async with limit:
            try:
                await driver.poll(target)
            except Exception:
                return
        reads[address].append(time.time())

    await asyncio.gather(*(poll(a, t) for a, t in targets))
    reads.clear()
    return await cycle(lambda: asyncio.gather(*(poll(a, t) for a, t in targets)), reads, options, driver.close)


async def cycle(read_all: Any, reads: dict[str, list[float]], options: dict[str, Any], close: Any) -> Window:
    """`read_all()` once per interval (then sleep the rest) for `baseline_seconds`; CPU over that time."""
    interval = options["interval"]
    cycles: list[float] = []
    started, cpu = time.time(), time.process_time()
    deadline = time.monotonic() + options["baseline_seconds"]
    while time.monotonic() < deadline:
        began = time.monotonic()
        await read_all()
        cycles.append(time.monotonic() - began)
        await asyncio.sleep(max(0.0, interval - cycles[-1]))
    ended, used = time.time(), time.process_time() - cpu
    await close()
    return Window(started=started, ended=ended, cpu=used, reads=dict(reads), cycles=cycles)


async def bare_loop(addresses: list[str], options: dict[str, Any]) -> Window:
    """Read every device once per interval with python-kasa alone (`update()`): gather, then sleep the rest."""
    from kasa import Device, DeviceConfig

    limit = asyncio.Semaphore(options["concurrency"])
    reads: dict[str, list[float]] = defaultdict(list)

    async def connect(address: str) -> tuple[str, Device]:
        host, port = address.rsplit(":", 1)
        async with limit:
            config = DeviceConfig(host=host, port_override=int(port), timeout=options["timeout"])
            return address, await Device.connect(config=config)

    async def update(address: str, device: Device) -> None:
        async with limit:
            try:
                await asyncio.wait_for(device.update(), options["timeout"])
            except Exception:
                return
        reads[address].append(time.time())

    devices = await asyncio.gather(*(connect(a) for a in addresses))

    async def close() -> None:
        for _, device in devices:
            await device.disconnect()

    return await cycle(lambda: asyncio.gather(*(update(a, d) for a, d in devices)), reads, options, close)


# The benchmark process ---------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(reads: dict[Any, list[float]], devices: int, started: float, ended: float, interval: float) -> dict[str, float]:
    """Gaps between consecutive reads of each device whose later read falls in [started, ended)."""
    gaps: list[float] = []
    on_time = 0
    count = 0
    late = 1.1 * interval
    for times in reads.values():
        times = sorted(times)
        inside = [t for t in times if started <= t < ended]
        count += len(inside)
        mine = [b - a for a, b in zip(times, times[1:]) if started <= b < ended]
        gaps += mine
        if inside and inside[0] - started <= late and ended - inside[-1] <= late and all(g <= late for g in mine):
            on_time += 1
    return {
        "gap_median": statistics.median(gaps) if gaps else float("nan"),
        "gap_p99": quantile(gaps, 0.99),
        "on_time": on_time / devices,
        "rate": count / (ended - started),
    }


def seed_devices(url: str, addresses: list[str]) -> None:
    """Store the devices and project the devices read model the leases read."""
    from zoneinfo import ZoneInfo

    from adapters.eventstore import WattLedger, ensure_events_schema, store_env
    from domain.device import Device
    from domain.readings import DeviceSnapshot
    from projections.devices import DevicesProjector
    from projections.engine import ProjectionEngine

    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    snapshot = DeviceSnapshot(alias="", model="HS110", device_type="plug", mac="", firmware="1", is_on=True,
                              has_emeter=True)
    try:
        for first in range(0, len(addresses), 100):
            app.save(*(Device.from_snapshot(a, snapshot, alias=None, actor="bench") for a in addresses[first:first + 100]))
        engine = ProjectionEngine(app, url, [DevicesProjector(ZoneInfo("UTC"))])
        engine.setup()
        engine.catch_up_all()
        engine.close()
    finally:
        app.close()


def stored_reads(url: str) -> dict[Any, list[float]]:
    from adapters.eventstore import WattLedger, store_env

    app = WattLedger(store_env(url))
    reads: dict[Any, list[float]] = defaultdict(list)
    try:
        for notification in app.recorder.select_notifications(1, 100_000_000):
            if notification.topic.endswith(".ReadingRecorded"):
                event = app.mapper.to_domain_event(notification)
                reads[getattr(event, "device_id")].append(getattr(event, "measured_at").timestamp())
    finally:
        app.close()
    return reads


async def receive(conn: Connection) -> Window:
    return msgspec.json.decode(await asyncio.get_running_loop().run_in_executor(None, conn.recv), type=Window)


async def run_scale(count: int, pollers: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    from adapters.bus import StreamConfig, connect_nats, ensure_stream
    from adapters.eventstore import WattLedger, store_env
    from adapters.relay import Relay, decode_envelope

    holes = round(count * args.black_holes)
    ctx = mp.get_context("spawn")
    emulator_end, emulator_side = ctx.Pipe()
    emulator = ctx.Process(target=emulate, args=(count, holes, emulator_side), daemon=True)
    emulator.start()
    healthy, black = await asyncio.get_running_loop().run_in_executor(None, emulator_end.recv)
    tag = uuid.uuid4().hex[:8]
    stream = StreamConfig(name=f"WLBENCH_{tag.upper()}", subject_prefix=f"wlb{tag}")
    nc = await connect_nats(args.nats_url, name="bench")
    js = nc.jetstream()
    rows: list[dict[str, Any]] = []
    try:
        with scratch_database("wl_fanout") as url:
            await asyncio.to_thread(seed_devices, url, healthy + black)
            await ensure_stream(js, stream)
            app = WattLedger(store_env(url))
            relay = Relay(app, js, database_url=url, stream=stream)
            relay_task = asyncio.create_task(relay.run())
            lags: list[tuple[float, float]] = []

            async def on_reading(message: Any) -> None:
                now = time.time()
                lags.append((now, now - decode_envelope(message.data).timestamp.timestamp()))

            subscription = await nc.subscribe(f"{stream.subject_prefix}.events.meter.*.ReadingRecorded", cb=on_reading)
            options = {
                "interval": args.interval, "timeout": args.timeout, "concurrency": args.concurrency,
                "suspect_concurrency": args.suspect_concurrency, "stream": stream.name,
                "prefix": stream.subject_prefix, "database_url": url, "nats_url": args.nats_url,
                "warmup": args.warmup + (args.lease if pollers > 1 else 0.0), "seconds": args.seconds,
                "first_contact_max": args.first_contact_max,
                "baseline_seconds": args.baseline_seconds, "profile": args.profile,
            }
            pipes = [ctx.Pipe() for _ in range(pollers)]
            processes = [ctx.Process(target=poll, args=(options, side), daemon=True) for _, side in pipes]
            emulator_cpu, since = proc_cpu(emulator.pid or 0), time.time()
            for process in processes:
                process.start()
            loop = asyncio.get_running_loop()
            for end, _ in pipes:
                await loop.run_in_executor(None, end.recv)
            for end, _ in pipes:
                end.send(time.time() + options["warmup"])
            windows = [await receive(end) for end, _ in pipes]
            emulator_busy = (proc_cpu(emulator.pid or 0) - emulator_cpu) / (time.time() - since)
            for end, _ in pipes:
                end.send("stop")
            for process in processes:
                process.join(30)
            await asyncio.sleep(2)
            relay_task.cancel()
            await asyncio.gather(relay_task, return_exceptions=True)
            await subscription.unsubscribe()
            await relay.aclose()
            app.close()

            baselines: list[tuple[str, Window]] = []
            for kind in args.baselines:
                base_end, base_side = ctx.Pipe()
                baseline_process = ctx.Process(target=bare, args=(healthy, options, base_side, kind), daemon=True)
                baseline_process.start()
                baselines.append((kind, await receive(base_end)))
                baseline_process.join(30)

            started, ended = max(w.started for w in windows), min(w.ended for w in windows)
            measured = summarise(await asyncio.to_thread(stored_reads, url), len(healthy), started, ended, args.interval)
            inside = [lag for at, lag in lags if started <= at < ended]
            totals = {k: sum(w.stats.get(k, 0) for w in windows) for k in ("overruns", "failures", "pending")}
            grew = ", ".join(f"{k} {sum(w.changed.get(k, 0) for w in windows)}" for k in COUNTERS)
            store_lag = max(w.stats.get("store_lag", 0.0) for w in windows)
            reads = measured["rate"] * (ended - started)
            threads: dict[str, float] = defaultdict(float)
            for w in windows:
                for name, seconds in w.threads.items():
                    threads[name] += seconds * (ended - started) / (w.ended - w.started)
            split = ", ".join(f"{name} {1000 * seconds / max(reads, 1):.2f}"
                              for name, seconds in sorted(threads.items(), key=lambda kv: -kv[1]) if seconds > 0)
            rows.append({
                "scale": f"{count}+{holes}", "run": f"poller x{pollers}", **measured,
                "ms_per_read": 1000 * sum(w.cpu * (ended - started) / (w.ended - w.started) for w in windows)
                / max(reads, 1),
                "expected": len(healthy) / args.interval,
                "cpu": sum(w.cpu / (w.ended - w.started) for w in windows),
                "lag_median": statistics.median(inside) if inside else float("nan"),
                "lag_p99": quantile(inside, 0.99),
                "notes": f"cpu ms/read by thread: {split}; "
                         f"emulator cpu {emulator_busy:.2f}, devices held {[w.stats.get('devices') for w in windows]}, "
                         f"in the window: {grew}; since start: "
                         f"poll failures {totals['failures']}, overruns {totals['overruns']}, "
                         f"heap freezes {[w.stats.get('heap_freezes') for w in windows]}, "
                         f"unsaved at the end {totals['pending']} (oldest {store_lag:.1f} s)",
            })
            for kind, baseline in baselines:
                base = summarise(baseline.reads, len(healthy), baseline.started + args.interval, baseline.ended,
                                 args.interval)
                rows.append({
                    "scale": f"{count}", "run": "bare loop" if kind == "update" else "driver",
                    **base, "expected": len(healthy) / args.interval,
                    "ms_per_read": 1000 * baseline.cpu / max(1, sum(len(t) for t in baseline.reads.values())),
                    "cpu": baseline.cpu / (baseline.ended - baseline.started),
                    "lag_median": float("nan"), "lag_p99": float("nan"),
                    "notes": f"cycle median {statistics.median(baseline.cycles):.2f} s, "
                             f"p99 {quantile(baseline.cycles, 0.99):.2f} s",
                })
    finally:
        emulator_end.send("stop")
        emulator.join(30)
        try:
            await js.delete_stream(stream.name)
        except Exception:
            pass
        await nc.close()
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    head = (f"{'devices':>11}  {'run':<10} {'gap med':>7} {'gap p99':>7} {'on time':>7} {'stored/s':>8} "
            f"{'expected':>8} {'cpu':>5} {'ms/read':>7} {'relay med':>9} {'relay p99':>9}  notes")
    print()
    print(f"interval {args.interval:g} s, timeout {args.timeout:g} s, concurrency {args.concurrency}"
          f" (suspect {args.suspect_concurrency}), {args.seconds:g} s measured, from {args.warmup:g} s after"
          f" every device was polled once; {args.burn} spinning processes; load {os.getloadavg()[0]:.1f}")
    print(head)
    print("-" * len(head))
    for row in rows:
        print(f"{row['scale']:>11}  {row['run']:<10} {row['gap_median']:7.2f} {row['gap_p99']:7.2f} "
              f"{row['on_time']:7.1%} {row['rate']:8.1f} {row['expected']:8.1f} {row['cpu']:5.2f} {row['ms_per_read']:7.2f} "
              f"{row['lag_median']:9.3f} {row['lag_p99']:9.3f}  {row['notes']}")
    print("gap: s between consecutive reads of a device; on time: healthy devices read in every interval;"
          " cpu: cores used by polling; ms/read: CPU ms per reading taken; relay: s from event to JetStream")


def spin() -> None:
    while True:
        pass


async def main(args: argparse.Namespace) -> None:
    from infra.logging import configure_logging

    configure_logging("warning")
    rows: list[dict[str, Any]] = []
    burners = [mp.get_context("spawn").Process(target=spin, daemon=True) for _ in range(args.burn)]
    for burner in burners:
        burner.start()
    try:
        for count in args.scale:
            raise_file_limit(3 * count + 1024)
            for pollers in args.pollers:
                rows += await run_scale(count, pollers, args)
                print_table(rows, args)
    finally:
        for burner in burners:
            burner.terminate()


if __name__ == "__main__":
    from infra.settings import Settings

    def numbers(text: str) -> list[int]:
        return [int(x) for x in text.split(",")]

    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=numbers, default=[1000, 5000], help="device counts (default 1000,5000)")
    parser.add_argument("--pollers", type=numbers, default=[1], help="poller processes, e.g. 1,2 (default 1)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per run (default 60)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds measured from once every device was polled once (default 2 intervals)")
    parser.add_argument("--first-contact-max", type=float, default=300.0,
                        help="longest wait for every device to be polled once (default 300)")
    parser.add_argument("--baseline-seconds", type=float, default=None, help="bare loop seconds (default --seconds)")
    parser.add_argument("--interval", type=float, default=10.0, help="polling interval (default 10)")
    parser.add_argument("--timeout", type=float, default=defaults.poll_timeout, help="per-device timeout")
    parser.add_argument("--black-holes", type=float, default=0.1, help="silent devices per device (default 0.1)")
    parser.add_argument("--concurrency", type=int, default=defaults.poll_concurrency)
    parser.add_argument("--suspect-concurrency", type=int, default=defaults.poll_suspect_concurrency)
    parser.add_argument("--baselines", type=lambda text: text.split(","), default=["update", "driver"],
                        help="update: python-kasa update() per device; driver: the poller's KasaDriver.poll alone "
                             "(default update,driver)")
    parser.add_argument("--burn", type=int, default=0, help="processes that only spin meanwhile (default 0)")
    parser.add_argument("--profile", default="", help="cProfile each poller's measured window into PATH.<pid>")
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parsed = parser.parse_args()
    parsed.warmup = 2 * parsed.interval if parsed.warmup is None else parsed.warmup
    parsed.baseline_seconds = parsed.baseline_seconds or parsed.seconds + parsed.interval
    parsed.lease = max(3.0, min(defaults.poll_lease, 3 * parsed.interval))
    asyncio.run(main(parsed))
