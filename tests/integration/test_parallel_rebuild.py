"""A parallel rebuild's groups run in processes of `projections.replay_worker`, forked from the parent (Linux) or
fresh interpreters: neither runs the parent's main module again, a fresh one imports nothing of the
application, a forked one leaves the parent's connections alone; both run the parent's code, report how they
ended, and end with the parent.

This module is imported by those processes to load its read models, so it imports little."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from adapters.eventstore import WattLedger
from domain.readings import DeviceSnapshot
from projections.engine import ProjectionEngine
from projections.parallel import GroupFailed, GroupTimes, rebuild_in_processes
from projections.rebuild import SHADOW_SCHEMA
from projections.tables import Table
from tests.kit import seed_device

T0 = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parents[2]
APPLICATION = ("litestar", "infra.runtime", "infra.cli")
LAMP = DeviceSnapshot(alias="lamp", model="HS100", device_type="plug", mac="m1", firmware="1", is_on=True,
                      has_emeter=False)  # fmt: skip


KINDS = [pytest.param(True, id="forked"), pytest.param(False, id="fresh interpreter")]
"""The kinds of a group's process (`rebuild_in_processes`' `fork`)."""


class Origin(msgspec.Struct, kw_only=True):
    pid: int
    parent: int
    modules: list[str]
    """Which of `APPLICATION`'s modules the process had loaded."""


class Probe:
    """Notes the process that replays it and what that process has imported."""

    version = 1

    def __init__(self, name: str) -> None:
        self.name = name
        self.table = Table(f"{name}_origin", Origin, key="pid")
        self.tables = (self.table,)

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        loaded = [m for m in APPLICATION if m in sys.modules]
        cur.execute(self.table.upsert, self.table.values(Origin(pid=os.getpid(), parent=os.getppid(),
                                                               modules=loaded)))


class Stuck(Probe):
    """Writes down the pid of the process replaying it into `pids`, then waits (for a minute at most)."""

    def __init__(self, name: str, pids: Path) -> None:
        super().__init__(name)
        self.pids = pids

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        if self.table.schema == SHADOW_SCHEMA:
            with self.pids.open("a") as marks:
                marks.write(f"{os.getpid()}\n")
            time.sleep(60)
        super().apply_batch(cur, events)


class Dies(Probe):
    """Ends its process without a word when replayed into the shadow tables."""

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        if self.table.schema == SHADOW_SCHEMA:
            os._exit(9)
        super().apply_batch(cur, events)


class Collects(Probe):
    """Runs a full collection in the process replaying it into the shadow tables."""

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        if self.table.schema == SHADOW_SCHEMA:
            gc.collect()
        super().apply_batch(cur, events)


PARENT = """
import os, sys
from pathlib import Path

with open(sys.argv[2], "a") as marks:
    marks.write(f"{os.getpid()}\\n")
import infra.runtime  # the whole application, as the command line's main module has it

from adapters.eventstore import WattLedger, store_env
from projections.engine import ProjectionEngine
from projections.parallel import rebuild_in_processes
from tests.integration.test_parallel_rebuild import Probe, Stuck

if __name__ == "__main__":
    app = WattLedger(store_env(sys.argv[1]))
    fork, stuck = sys.argv[3] == "fork", sys.argv[4:]
    projectors = [Probe("probe1"), Stuck("probe2", Path(stuck[0])) if stuck else Probe("probe2")]
    engine = ProjectionEngine(app, sys.argv[1], projectors)
    try:
        engine.setup()
        rebuild_in_processes(engine, ["probe1", "probe2"], 2, fork=fork)
    finally:
        engine.close()
        app.close()
"""


@pytest.fixture
def parent(tmp_path: Path, app: WattLedger) -> Path:
    seed_device(app, "127.0.0.1:16000", LAMP, measured_at=T0)
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    return script


def run_parent(script: Path, database_url: str, fork: bool, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), database_url, str(script.with_suffix(".marks")),
                             "fork" if fork else "spawn", *extra], cwd=ROOT, env=env)  # fmt: skip


def origins(database_url: str, *names: str) -> list[Origin]:
    with psycopg.connect(database_url) as conn:
        found = [conn.execute(f"SELECT pid, parent, modules FROM wl_read.{name}_origin").fetchall() for name in names]
    return [Origin(pid=pid, parent=parent, modules=modules) for rows in found for pid, parent, modules in rows]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def until(condition: Any, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def test_a_fresh_groups_process_imports_neither_the_parents_main_module_nor_the_application(
    parent: Path, database_url: str
) -> None:
    assert run_parent(parent, database_url, False).wait(120) == 0

    marks = parent.with_suffix(".marks").read_text().split()
    assert len(marks) == 1, "only the parent ran its main module"
    found = origins(database_url, "probe1", "probe2")
    assert len({o.pid for o in found}) == 2 and str(os.getpid()) not in marks
    assert all(o.parent == int(marks[0]) for o in found), found
    assert all(o.modules == [] for o in found), found


def test_a_forked_groups_process_has_the_parents_modules_without_running_its_main_module_again(
    parent: Path, database_url: str
) -> None:
    assert run_parent(parent, database_url, True).wait(120) == 0

    marks = parent.with_suffix(".marks").read_text().split()
    assert len(marks) == 1, "only the parent ran its main module"
    found = origins(database_url, "probe1", "probe2")
    assert len({o.pid for o in found}) == 2 and int(marks[0]) not in {o.pid for o in found}
    assert all(o.parent == int(marks[0]) for o in found), found
    assert all("infra.runtime" in o.modules for o in found), "a fork has what its parent imported"


class Leftover:
    """Garbage with a finalizer: notes the process that runs it in `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cycle = self

    def __del__(self) -> None:
        with self.path.open("a") as notes:
            notes.write(f"{os.getpid()}\n")


def test_a_forked_process_runs_no_finalizer_of_what_the_parent_left_for_the_collector(
    app: WattLedger, database_url: str, tmp_path: Path
) -> None:
    seed_device(app, "127.0.0.1:16200", LAMP, measured_at=T0)
    engine = ProjectionEngine(app, database_url, [Collects("probe1"), Collects("probe2")])
    engine.setup()
    engine.catch_up_all()
    notes = tmp_path / "finalized"
    gc.disable()  # the parent keeps its garbage until the end: only a child could collect it meanwhile
    try:
        Leftover(notes)  # a cycle: only the collector ends it

        rebuild_in_processes(engine, ["probe1", "probe2"], 2, fork=True)

        assert {o.parent for o in origins(database_url, "probe1", "probe2")} == {os.getpid()}
    finally:
        engine.close()
        gc.enable()
        gc.collect()
    assert notes.read_text().split() == [str(os.getpid())], "a child ran the finalizer of the parent's garbage"


@pytest.mark.parametrize("fork", KINDS)
def test_a_groups_process_ends_when_its_parent_is_killed(parent: Path, database_url: str, fork: bool) -> None:
    pids = parent.with_suffix(".pids")
    process = run_parent(parent, database_url, fork, str(pids))
    group: list[int] = []
    try:
        until(lambda: pids.exists() and pids.read_text().endswith("\n"), "the group's process to replay")
        group = [int(pid) for pid in pids.read_text().split()]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        until(lambda: not any(alive(pid) for pid in group), "the group's process to end")
    finally:
        for pid in group:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()


@pytest.fixture
def engine(app: WattLedger, database_url: str) -> Iterator[ProjectionEngine]:
    seed_device(app, "127.0.0.1:16100", LAMP, measured_at=T0)
    engine = ProjectionEngine(app, database_url, [Probe("probe1"), Dies("probe2"), Probe("probe3")])
    engine.setup()
    engine.catch_up_all()
    try:
        yield engine
    finally:
        engine.close()


@pytest.mark.parametrize("fork", KINDS)
def test_a_groups_process_that_ends_without_a_word_fails_the_rebuild_and_swaps_nothing(
    engine: ProjectionEngine, database_url: str, fork: bool
) -> None:
    before = origins(database_url, "probe1", "probe2")

    with pytest.raises(GroupFailed, match="the process replaying probe2 ended with code 9"):
        rebuild_in_processes(engine, ["probe1", "probe2"], 2, fork=fork)
    assert origins(database_url, "probe1", "probe2") == before


@pytest.mark.parametrize("fork", KINDS)
def test_groups_run_the_parents_code_whatever_the_working_directory_holds(
    engine: ProjectionEngine, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: bool
) -> None:
    other = tmp_path / "projections"
    other.mkdir()
    (other / "__init__.py").write_text("")
    (other / "replay_worker.py").write_text("raise SystemExit(5)\n")
    monkeypatch.chdir(tmp_path)
    times: list[GroupTimes] = []

    rebuild_in_processes(engine, ["probe1", "probe3"], 2, timed=times.append, fork=fork)

    found = origins(database_url, "probe1", "probe3")
    assert len({o.pid for o in found}) == 2 and os.getpid() not in {o.pid for o in found}
    assert [t.read_models for t in times] == [("probe1",), ("probe3",)]
    assert all(t.start > 0 and t.replay > 0 and t.cpu > 0 for t in times)
