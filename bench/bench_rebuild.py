"""`rebuild all`: every registered read model replayed into shadow tables and swapped in, against reading the log.

    python bench/bench_rebuild.py [--devices 200] [--cycles 100] [--rounds 3]

Stores `devices x cycles` readings (plus the devices), then times in the same run, alternated over
`--rounds` rounds: (1) the baseline, reading and decoding the whole notification log in the same
sections as the replay's (also with the collector's thresholds a replay runs with, `eased_collector`,
for the ratio without that advantage); (2) `rebuild all` over `all_projectors` (default settings, the
engine's replay sections of 20,000) as `project --rebuild all` runs it on this machine
(`infra.replay.rebuild`, in the processes `default_jobs` gives); (3) the same in one process
(`rebuild_many`). Each process reads and decodes each section once for all its read models, commits
each section to the shadow tables, and the swap ends the rebuild. Prints each round's events/s and
ratios (on a shared machine one round's figures can be minutes apart in speed, so a round's own ratio
is the figure to compare) and their medians; then each read model's rebuild alone, to show which one
sets the pace, and the read models that ignore readings rebuilt together (the readings are left
undecoded for them).
Uses a scratch database on DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventsourcing.utils import get_topic  # noqa: E402

from adapters.eventstore import WattLedger, ensure_events_schema, store_env  # noqa: E402
from bench.scratch import log_read_rate, scratch_database, seed_fleet_history  # noqa: E402
from domain.meter import MeterDay  # noqa: E402
from infra.replay import default_jobs, rebuild  # noqa: E402
from infra.runtime import all_projectors  # noqa: E402
from infra.settings import Settings  # noqa: E402
from projections.engine import REPLAY_BATCH_SIZE, ProjectionEngine  # noqa: E402
from projections.quarantine import EVERY_EVENT, undecoded_topics  # noqa: E402
from projections.rebuild import eased_collector  # noqa: E402

SECTION = REPLAY_BATCH_SIZE


def run(url: str, devices: int, cycles: int, rounds: int = 3) -> None:
    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    projectors = all_projectors(Settings())
    engine = ProjectionEngine(app, url, projectors)
    names = [p.name for p in projectors]
    try:
        total = seed_fleet_history(app, devices, cycles, subnet=8)
        engine.setup()
        engine.catch_up_all()
        jobs = default_jobs(engine, names)
        measured: list[tuple[float, float, float, float]] = []  # baseline, eased baseline, rebuild all, one process
        for _ in range(rounds):
            baseline = log_read_rate(app, SECTION)
            with eased_collector():
                eased = log_read_rate(app, SECTION)
            began = time.perf_counter()
            if rebuild(engine, names, io.StringIO(), tty=False, jobs=jobs) != 0:
                raise SystemExit("rebuild all failed")
            command = total / (time.perf_counter() - began)
            began = time.perf_counter()
            replayed = engine.rebuild_many(names)
            measured.append((baseline, eased, command, replayed / (time.perf_counter() - began)))
        differences = engine.verify(names)
        alone: dict[str, float] = {}
        for name in names:
            began = time.perf_counter()
            alone[name] = engine.rebuild(name) / (time.perf_counter() - began)
        reading = get_topic(MeterDay.ReadingRecorded)
        spared = [p.name for p in projectors if undecoded_topics([p]) & {reading, EVERY_EVENT}]
        began = time.perf_counter()
        together = engine.rebuild_many(spared) / (time.perf_counter() - began)
    finally:
        engine.close()
        app.close()
    print(f"read models           {', '.join(names)}")
    print(f"{total} events; rebuild all: sections of {SECTION}, then the swap, as `project --rebuild all` runs "
          f"it here: {jobs} process{'es' if jobs > 1 else ''}")
    for number, (baseline, eased, ours, one) in enumerate(measured, 1):
        print(f"round {number}: read + decode log {baseline:9,.0f} events/s, rebuild all {ours:9,.0f} events/s, "
              f"ratio {ours / baseline:.2f} ({ours / eased:.2f} against the log read with the collector's "
              f"thresholds as in a replay, {eased:,.0f} events/s); in one process {one:,.0f} events/s, "
              f"ratio {one / baseline:.2f}")
    print(f"ratio, median of {len(measured)} rounds  {statistics.median(m[2] / m[0] for m in measured):.2f}  "
          f"(in one process {statistics.median(m[3] / m[0] for m in measured):.2f})")
    print(f"verify after rebuild  {len(differences)} rows differ")
    for name, rate in alone.items():
        print(f"  rebuild {name:<13} {rate:10,.0f} events/s alone")
    print(f"rebuild {', '.join(spared)} together (readings left undecoded)  {together:,.0f} events/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    with scratch_database() as url:
        run(url, args.devices, args.cycles, args.rounds)


if __name__ == "__main__":
    main()
