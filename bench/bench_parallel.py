"""`rebuild all` in one process against the read models' groups replayed in `--jobs` processes at once.

    python bench/bench_parallel.py [--devices 1000] [--cycles 60] [--jobs 2] [--runs 3]

Stores `devices x cycles` readings (plus the devices) and projects them, then times,
alternated, `--runs` times each: `rebuild_many(all)` in this process, and
`rebuild_in_processes(all, jobs)` (the groups it deals, each replayed by a process of
its own reading the log itself, then one swap). Prints the best of each in events/s,
the ratio, the baseline of reading and decoding the log, whether both give the same
rows, and for each group's process in each run: the seconds from its launch to its
first section, from there to its last, and its CPU in all (which sets the pace of the
replay is the group with the longest start plus replay). PostgreSQL runs on the same
machine and shares its cores.
Uses a scratch database on DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.eventstore import WattLedger, ensure_events_schema, store_env  # noqa: E402
from bench.scratch import log_read_rate, scratch_database, seed_fleet_history  # noqa: E402
from infra.runtime import all_projectors  # noqa: E402
from infra.settings import Settings  # noqa: E402
from projections.engine import REPLAY_BATCH_SIZE, ProjectionEngine  # noqa: E402
from projections.parallel import GroupTimes, groups, rebuild_in_processes  # noqa: E402
from projections.replay_plan import cores  # noqa: E402


def dump(database_url: str, engine: ProjectionEngine) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(database_url) as conn:
        return {t.name: conn.execute(f"{t.select} ORDER BY {t.key}").fetchall()
                for p in engine.projectors.values() for t in p.tables}  # fmt: skip


def run(url: str, devices: int, cycles: int, jobs: int, runs: int) -> None:
    ensure_events_schema(url)
    app = WattLedger(store_env(url))
    projectors = all_projectors(Settings())
    engine = ProjectionEngine(app, url, projectors)
    names = [p.name for p in projectors]
    try:
        total = seed_fleet_history(app, devices, cycles, subnet=8)
        engine.setup()
        engine.catch_up_all()
        baseline = log_read_rate(app, REPLAY_BATCH_SIZE)
        one: list[float] = []
        many: list[float] = []
        times: list[GroupTimes] = []
        for _ in range(runs):
            began = time.perf_counter()
            engine.rebuild_many(names)
            one.append(time.perf_counter() - began)
            alone = dump(url, engine)
            began = time.perf_counter()
            rebuild_in_processes(engine, names, jobs, timed=times.append)
            many.append(time.perf_counter() - began)
        same = dump(url, engine) == alone
    finally:
        engine.close()
        app.close()
    dealt = groups(projectors, jobs)
    print(f"cores                   {cores()} (PostgreSQL on the same machine)")
    print(f"groups                  {' | '.join(', '.join(p.name for p in g) for g in dealt)}")
    print(f"read + decode log       {baseline:10,.0f} events/s  ({total:,} events)")
    print(f"rebuild all, 1 process  {total / min(one):10,.0f} events/s  best of {runs}: "
          f"{', '.join(f'{t:.2f}' for t in one)} s")
    print(f"rebuild all, {jobs} procs   {total / min(many):10,.0f} events/s  best of {runs}: "
          f"{', '.join(f'{t:.2f}' for t in many)} s")
    print(f"ratio                   {min(one) / min(many):10.2f}x (processes over one)")
    print(f"same rows               {same}")
    print("each group's process    start to first section / replay / CPU, s, run by run:")
    for group in dealt:
        mine = [t for t in times if t.read_models == tuple(p.name for p in group)]
        print(f"  {', '.join(p.name for p in group)}")
        print(f"    {'  '.join(f'{t.start:.2f} / {t.replay:.2f} / {t.cpu:.2f}' for t in mine)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with scratch_database("parallel_bench") as url:
        run(url, args.devices, args.cycles, args.jobs, args.runs)


if __name__ == "__main__":
    main()
