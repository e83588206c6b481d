"""Cold start at the end of a day against one at its start: a restarted poller's first cycle, same run.

    python bench/bench_coldstart.py [--plugs 200] [--readings 8640] [--rounds 2]

Stores `plugs` devices and a full UTC day of `readings` each (10 s apart), as the poller
would have stored them (snapshots included). Then, each in a fresh process (a restarted
poller: no cache, its own memory), stores one new reading per device through the
poller's write path (`record_polls` over the caching store):

- late:   at 23:59:51 (and on) of the full day, so every meter day is loaded;
- early:  at 00:00:05 of a new day (the baseline: no meter day to load);
- replay: late again with snapshots switched off, so every meter day is replayed whole.

Prints seconds and peak RSS per run, and late/early ratios. The target is late within 1.5x of early
in time and memory. Uses a scratch database on DATABASE_URL, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch import NoDriver, plug, scratch_database  # noqa: E402

from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, ensure_events_schema, store_env  # noqa: E402
from domain.commands import PollResult, RecordPolls  # noqa: E402
from domain.device import Device  # noqa: E402
from domain.handlers import CommandHandlers  # noqa: E402
from domain.meter import MeterDay  # noqa: E402

DAY = datetime(2026, 1, 5, tzinfo=timezone.utc)
STEP = timedelta(seconds=10)


def fill(url: str, plugs: int, readings: int) -> list[str]:
    """Store the fleet and its full day; returns the device ids."""
    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    try:
        fleet = [Device.from_snapshot(f"10.9.{i // 256}.{i % 256}", plug(i, 0), alias=None, actor="bench")
                 for i in range(plugs)]  # fmt: skip
        for device in fleet:
            device.came_online(actor="bench")
        for start in range(0, plugs, 100):
            app.save(*fleet[start : start + 100])
        began = time.perf_counter()
        for i, device in enumerate(fleet):
            meter = MeterDay(device_id=device.id, day=DAY.date().isoformat())
            for k in range(readings):
                meter.record(DAY + k * STEP, plug(i, float(k)), actor="bench")
            app.store(meter)
        seconds = time.perf_counter() - began
        print(f"stored {plugs * readings:,} readings in {seconds:.0f} s ({plugs * readings / seconds:,.0f}/s)")
        return [str(d.id) for d in fleet]
    finally:
        app.close()


def measure(url: str, at: datetime, replay: bool) -> dict[str, float]:
    """In this process: one reading per device at `at`, stored as a freshly started poller does."""
    env = store_env(url)
    if replay:
        env["IS_SNAPSHOTTING_ENABLED"] = "n"
    ids = json.loads(sys.stdin.read())
    before = rss_mib()
    app = WattLedger(env)
    handlers = CommandHandlers(StoreUnitOfWork(app, cache=True), NoDriver(), SystemClock())
    results = tuple(PollResult(device_id=UUID(d), measured_at=at, snapshot=plug(i, 1e6)) for i, d in enumerate(ids))
    began = time.perf_counter()
    stored = asyncio.run(handlers.record_polls(RecordPolls(results=results, actor="bench")))
    seconds = time.perf_counter() - began
    app.close()
    assert stored.recorded == len(ids), f"stored {stored.recorded} of {len(ids)}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak, "start_mib": before}


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_child(url: str, ids: list[str], at: datetime, replay: bool) -> dict[str, float]:
    command = [sys.executable, __file__, "--measure", url, "--at", at.isoformat()] + (["--replay"] if replay else [])
    done = subprocess.run(command, input=json.dumps(ids), capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plugs", type=int, default=200)
    parser.add_argument("--readings", type=int, default=8640)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--measure")
    parser.add_argument("--at")
    parser.add_argument("--replay", action="store_true")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, datetime.fromisoformat(args.at), args.replay)))
        return
    with scratch_database() as url:
        ids = fill(url, args.plugs, args.readings)
        last = DAY + (args.readings - 1) * STEP
        runs: dict[str, list[dict[str, float]]] = {"late": [], "early": [], "replay": []}
        for r in range(args.rounds):
            runs["late"].append(run_child(url, ids, last + timedelta(seconds=1 + r), replay=False))
            runs["early"].append(run_child(url, ids, DAY + timedelta(days=1 + r, seconds=5), replay=False))
            runs["replay"].append(run_child(url, ids, last + timedelta(seconds=5 + r), replay=True))
    print(f"{args.plugs} plugs, {args.readings:,} readings each stored on the day")
    for name, figures in runs.items():
        for f in figures:
            print(f"{name:7} {f['seconds']:7.2f} s   peak RSS {f['peak_mib']:6.0f} MiB (at start {f['start_mib']:.0f})")
    best = {name: min(f["seconds"] for f in figures) for name, figures in runs.items()}
    peak = {name: max(f["peak_mib"] for f in figures) for name, figures in runs.items()}
    for name in ("late", "replay"):
        print(f"{name + ' / early':14} time {best[name] / best['early']:.2f}x   "
              f"peak memory {peak[name] / peak['early']:.2f}x")


if __name__ == "__main__":
    main()
