"""A part that is a child process: restarted when it exits, stopped cleanly with its parent, and
gone when its parent dies; and the settings the relay's child process is given."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import structlog.testing

from infra.child_parts import (
    STDIN_OPTION,
    ChildExited,
    ChildProcess,
    relay_child,
    relay_child_env,
    relay_in_child,
)
from infra.settings import Settings, SettingsError
from infra.supervisor import PartFailedTooOften, Supervisor

PYTHON = sys.executable


def script(body: str) -> list[str]:
    return [PYTHON, "-c", textwrap.dedent(body)]


def polite(marks: Path) -> list[str]:
    """A child that notes its start, and on SIGTERM notes its stop and exits 0."""
    return script(f"""
        import pathlib, signal, sys, time
        marks = pathlib.Path({str(marks)!r})
        def stop(*_):
            marks.open("a").write("stopped\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        marks.open("a").write("started\\n")
        while True:
            time.sleep(0.05)
    """)


async def eventually(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def started(child: ChildProcess, marks: Path) -> int:
    """The child's pid once it has noted its start. The child may write before `run` has noted its pid
    (on a busy machine it runs before the parent resumes), so both are waited for."""
    await eventually(lambda: marks.exists() and marks.read_text() != "" and child.pid is not None)
    assert child.pid is not None
    return child.pid


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_stop_sends_sigterm_and_waits_for_the_child_to_finish(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    child = ChildProcess("relay", polite(marks), os.environ)
    stop = asyncio.Event()
    running = asyncio.create_task(child.run(stop))
    pid = await started(child, marks)
    assert "started" in marks.read_text() and alive(pid)
    stop.set()
    await asyncio.wait_for(running, timeout=20)
    assert marks.read_text().split() == ["started", "stopped"]
    assert not alive(pid) and child.pid is None


async def test_a_child_that_ignores_sigterm_is_killed_after_its_patience(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    stubborn = script(f"""
        import pathlib, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        pathlib.Path({str(marks)!r}).write_text("started")
        time.sleep(600)
    """)
    child = ChildProcess("relay", stubborn, os.environ, patience=0.3)
    stop = asyncio.Event()
    running = asyncio.create_task(child.run(stop))
    pid = await started(child, marks)
    stop.set()
    await asyncio.wait_for(running, timeout=20)
    assert not alive(pid)


async def test_cancelling_the_part_kills_the_child(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    child = ChildProcess("relay", polite(marks), os.environ)
    running = asyncio.create_task(child.run(asyncio.Event()))
    pid = await started(child, marks)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not alive(pid)


async def test_a_child_that_exits_is_restarted_and_one_failing_too_often_ends_the_supervisor(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    quitter = script(f"""
        import pathlib, sys
        pathlib.Path({str(runs)!r}).open("a").write("run\\n")
        sys.exit(3)
    """)
    child = ChildProcess("relay", quitter, os.environ)
    supervisor = Supervisor(backoff=0.01, backoff_max=0.02, intensity=2, period=60.0)
    stop = asyncio.Event()
    supervisor.add("relay", lambda: child.run(stop), watches_stop=True)
    with pytest.raises(PartFailedTooOften) as failed:
        await asyncio.wait_for(supervisor.run(stop), timeout=60)
    assert failed.value.part == "relay"
    assert "ChildExited: the relay process" in str(failed.value) and "exited with code 3" in str(failed.value)
    assert runs.read_text().split() == ["run"] * 3
    [status] = supervisor.status()
    assert status.restarts == 2 and status.last_error is not None and "code 3" in status.last_error


async def test_a_killed_child_is_restarted_and_reported_degraded(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    child = ChildProcess("relay", polite(marks), os.environ)
    supervisor = Supervisor(backoff=0.01, backoff_max=0.02, intensity=5, period=60.0)
    stop = asyncio.Event()
    supervisor.add("relay", lambda: child.run(stop), watches_stop=True)
    running = asyncio.create_task(supervisor.run(stop))
    await eventually(lambda: marks.exists() and child.pid is not None)
    first = child.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await eventually(lambda: marks.read_text().count("started") == 2 and child.pid not in (None, first))
    [status] = supervisor.status()
    assert status.state == "degraded" and status.restarts == 1
    assert status.last_error == f"ChildExited: the relay process (pid {first}) was killed by SIGKILL"
    stop.set()
    await asyncio.wait_for(running, timeout=30)
    assert marks.read_text().split() == ["started", "started", "stopped"]


def test_a_child_watching_its_stdin_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    """The parent (a process running the part) is killed with SIGKILL; its child notices the
    closed pipe and stops cleanly by itself."""
    marks, pid_file = tmp_path / "marks", tmp_path / "child.pid"
    watcher = textwrap.dedent(f"""
        import asyncio, pathlib
        from infra.child_parts import stop_when_stdin_closes
        async def main():
            stop = asyncio.Event()
            marks = pathlib.Path({str(marks)!r})
            marks.write_text("started\\n")
            await stop_when_stdin_closes(stop)
            assert stop.is_set()
            marks.open("a").write("stopped\\n")
        asyncio.run(main())
    """)
    parent_code = textwrap.dedent(f"""
        import asyncio, os, pathlib, sys
        from infra.child_parts import ChildProcess
        async def main():
            child = ChildProcess("relay", [sys.executable, "-c", {watcher!r}], os.environ)
            running = asyncio.create_task(child.run(asyncio.Event()))
            while child.pid is None:
                await asyncio.sleep(0.01)
            pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))
            await running
        asyncio.run(main())
    """)
    parent = subprocess.Popen([PYTHON, "-c", parent_code])
    try:
        deadline = time.monotonic() + 30
        while not (marks.exists() and pid_file.exists()):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.02)
        child = int(pid_file.read_text())
        assert alive(child)
    finally:
        parent.kill()
        parent.wait(timeout=10)
    deadline = time.monotonic() + 20
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the child outlived its parent"
    assert marks.read_text().split() == ["started", "stopped"]


def test_the_relay_child_is_the_relay_command_with_the_settings_the_parent_resolved(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, stream_name="WL_X", subject_prefix="wlx", log_level="debug", log_json=True,
        startup_timeout=12.5, timezone="Europe/Paris", nats_relay_url="nats://relay:pw@nats:4222",
    )  # fmt: skip
    environ = {"PATH": "/bin", "WATTLEDGER_RATE_LIMITS": "false", "WATTLEDGER_SECRET_KEY": "stale-key-stale-key",
               "WATTLEDGER_NATS_RELAY_URL": "nats://old@x:1"}  # fmt: skip
    child = relay_child(settings, "postgresql://u@db/wl", "nats://app:pw@nats:4222", None, environ)
    assert child.name == "relay"
    assert child.argv == [sys.executable, "-m", "infra.cli", "relay", STDIN_OPTION]
    assert child.env == {
        "PATH": "/bin",
        "WATTLEDGER_RATE_LIMITS": "false",
        "DATABASE_URL": "postgresql://u@db/wl",
        "NATS_URL": "nats://app:pw@nats:4222",
        "WATTLEDGER_NATS_RELAY_URL": "nats://relay:pw@nats:4222",
        "WATTLEDGER_DATA_DIR": str(tmp_path),
        "WATTLEDGER_STREAM": "WL_X",
        "WATTLEDGER_SUBJECT_PREFIX": "wlx",
        "WATTLEDGER_TIMEZONE": "Europe/Paris",
        "WATTLEDGER_LOG_LEVEL": "debug",
        "WATTLEDGER_LOG_JSON": "true",
        "WATTLEDGER_STARTUP_TIMEOUT": "12.5",
    }
    # The embedded NATS's relay user, resolved by the parent, wins over the settings' one.
    embedded = relay_child_env(settings, "postgresql://u@db/wl", "nats://app:pw@127.0.0.1:4222",
                               "nats://relay:own@127.0.0.1:4222", environ)  # fmt: skip
    assert embedded["WATTLEDGER_NATS_RELAY_URL"] == "nats://relay:own@127.0.0.1:4222"
    # No relay URL at all: the child must not take a stale one from the environment.
    plain = relay_child_env(Settings(), "postgresql://u@db/wl", "nats://n:4222", None, environ)
    assert "WATTLEDGER_NATS_RELAY_URL" not in plain and "WATTLEDGER_SECRET_KEY" not in plain


def test_the_relay_runs_in_a_child_unless_the_setting_says_false() -> None:
    assert relay_in_child({}) is True
    assert relay_in_child({"WATTLEDGER_RELAY_PROCESS": "true"}) is True
    assert relay_in_child({"WATTLEDGER_RELAY_PROCESS": "False"}) is False
    assert relay_in_child({"WATTLEDGER_RELAY_PROCESS": "0"}) is False
    with pytest.raises(SettingsError, match=r"^invalid WATTLEDGER_RELAY_PROCESS='maybe': must be true or false$"):
        relay_in_child({"WATTLEDGER_RELAY_PROCESS": "maybe"})


async def test_child_exited_names_the_exit_code() -> None:
    child = ChildProcess("relay", script("import sys; sys.exit(7)"), os.environ)
    with pytest.raises(ChildExited, match=r"^the relay process \(pid \d+\) exited with code 7$"):
        await asyncio.wait_for(child.run(asyncio.Event()), timeout=30)


async def test_a_child_that_exits_is_one_log_line_without_a_traceback() -> None:
    child = ChildProcess("relay", script("import sys; sys.exit(3)"), os.environ)
    supervisor = Supervisor(backoff=0.01, backoff_max=0.02, intensity=0, period=60.0)
    stop = asyncio.Event()
    supervisor.add("relay", lambda: child.run(stop), watches_stop=True)
    with structlog.testing.capture_logs() as logs, pytest.raises(PartFailedTooOften):
        await asyncio.wait_for(supervisor.run(stop), timeout=60)
    [gave_up] = [entry for entry in logs if entry["event"] == "part.gave_up"]
    assert gave_up["error"].startswith("ChildExited: the relay process") and "exc_info" not in gave_up
    supervisor = Supervisor(backoff=0.01, backoff_max=0.02, intensity=1, period=60.0)
    supervisor.add("relay", lambda: child.run(stop), watches_stop=True)
    stop.clear()
    with structlog.testing.capture_logs() as logs, pytest.raises(PartFailedTooOften):
        await asyncio.wait_for(supervisor.run(stop), timeout=60)
    [failed] = [entry for entry in logs if entry["event"] == "part.failed"]
    assert failed["error"].endswith("exited with code 3") and "exc_info" not in failed
