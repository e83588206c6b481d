"""`wattledger serve` runs its relay in a child process: supervised as the part `relay`, restarted
when it dies, stopped with the serve process, and never left behind when that one is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from adapters.bus import StreamConfig
from adapters.eventlog import EventLog
from adapters.eventstore import WattLedger, ensure_events_schema, store_env
from domain.device import Device
from domain.readings import DeviceSnapshot
from tests.harness import cli_env, free_port, wattledger


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except FileNotFoundError:
        return False


def until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    port = free_port()
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "infra.cli", "serve", "--port", str(port)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            def healthy() -> bool:
                assert server.poll() is None, log.read_text()
                try:
                    return http.get("/api/health").status_code == 200
                except httpx.TransportError:
                    return False

            until(healthy, "the API")
            yield server, http
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)


def relay_part(http: httpx.Client) -> dict[str, Any]:
    parts = http.get("/api/health").json()["parts"]
    return next(part for part in parts if part["name"] == "relay")


def store_device(database_url: str, n: int) -> int:
    """Store one device; the notification id of its event."""
    ensure_events_schema(database_url)
    app = WattLedger(store_env(database_url))
    try:
        device = Device.from_snapshot(f"10.9.0.{n}:9999", DeviceSnapshot(
            alias=f"plug {n}", model="HS110", device_type="plug", mac=f"m{n}", firmware="1", is_on=True,
            has_emeter=True, power_w=0.0, total_wh=0.0,
        ), alias=None, actor="test")  # fmt: skip
        app.save(device)
        return EventLog(app).max_id()
    finally:
        app.close()


def relayed(database_url: str, stream: str, position: int) -> bool:
    with psycopg.connect(database_url) as conn:
        try:
            row = conn.execute("SELECT position FROM wl_ops.relay_position WHERE stream_name = %s",
                               (stream,)).fetchone()  # fmt: skip
        except psycopg.errors.UndefinedTable:  # the relay has not started yet
            return False
    return row is not None and row[0] >= position


def test_serve_runs_the_relay_in_a_child_restarted_when_it_dies_and_stopped_with_serve(
    tmp_path: Path, database_url: str, nats_url: str, stream_config: StreamConfig
) -> None:
    env = cli_env(database_url, nats_url, stream_config, tmp_path)
    log = tmp_path / "serve.log"
    with serving(env, log) as (server, http):
        [child] = until(lambda: children(server.pid), "the relay process")
        assert "relay" in Path(f"/proc/{child}/cmdline").read_text()
        assert relay_part(http)["state"] == "running"
        position = store_device(database_url, 1)
        until(lambda: relayed(database_url, stream_config.name, position), "the child to relay the first event")

        os.kill(child, signal.SIGKILL)
        until(lambda: relay_part(http)["restarts"] == 1, "the relay part to be restarted")
        assert "SIGKILL" in relay_part(http)["last_error"]
        [again] = until(lambda: [p for p in children(server.pid) if p != child], "a new relay process")
        position = store_device(database_url, 2)
        until(lambda: relayed(database_url, stream_config.name, position), "the new child to relay")

        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0, log.read_text()
    output = log.read_text()
    assert not alive(again)
    assert f"child.stopped                  code=0 part=relay pid={again}" in output, output
    assert "Traceback" not in output


def test_a_killed_serve_leaves_no_relay_process_behind(
    tmp_path: Path, database_url: str, nats_url: str, stream_config: StreamConfig
) -> None:
    env = cli_env(database_url, nats_url, stream_config, tmp_path)
    log = tmp_path / "serve.log"
    with serving(env, log) as (server, _):
        [child] = until(lambda: children(server.pid), "the relay process")
        server.kill()
        server.wait(timeout=10)
    until(lambda: not alive(child), "the orphaned relay to stop", timeout=30)
    assert "shutdown.parent_gone" in log.read_text()


def test_serve_keeps_the_relay_in_its_own_process_when_asked(
    tmp_path: Path, database_url: str, nats_url: str, stream_config: StreamConfig
) -> None:
    env = {**cli_env(database_url, nats_url, stream_config, tmp_path), "WATTLEDGER_RELAY_PROCESS": "false"}
    with serving(env, tmp_path / "serve.log") as (server, http):
        position = store_device(database_url, 1)
        until(lambda: relayed(database_url, stream_config.name, position), "the relay to publish")
        assert children(server.pid) == [] and relay_part(http)["state"] == "running"
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0


def test_an_invalid_relay_process_setting_stops_serve_with_one_line() -> None:
    result = wattledger("serve", env={**os.environ, "WATTLEDGER_RELAY_PROCESS": "sometimes"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "wattledger: invalid WATTLEDGER_RELAY_PROCESS='sometimes': must be true or false"
    ]
