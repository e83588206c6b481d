"""Start-up against servers that are not there, as a user runs it: a bounded wait, one clear line, no secret.

Every address here is on 127.0.0.1: a closed port (connection refused) or a socket that accepts
and never answers (a host that is up but silent).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapters.bus import StreamConfig
from tests.harness import free_port

BOUND_S = 2
MARGIN_S = 15
SECRET = "topsecret"


@pytest.fixture
def silent_server() -> Iterator[socket.socket]:
    """A loopback port that takes connections and never says a word."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.settimeout(60)
        yield server


def port_of(server: socket.socket) -> int:
    return int(server.getsockname()[1])


def environment(tmp_path: Path, database_url: str, nats_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "WATTLEDGER_DATA_DIR": str(tmp_path),
        "WATTLEDGER_STARTUP_TIMEOUT": str(BOUND_S),
        **extra,
    }


def run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", command],
        env=env, capture_output=True, text=True, timeout=BOUND_S + MARGIN_S, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("command", ["serve", "api", "poll", "relay", "project"])
def test_unreachable_postgres_stops_every_process_with_one_line_and_no_password(
    tmp_path: Path, command: str
) -> None:
    port = free_port()
    url = f"postgresql://u:{SECRET}@127.0.0.1:{port}/db"
    result = run(command, environment(tmp_path, url, f"nats://127.0.0.1:{free_port()}"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"wattledger: cannot reach PostgreSQL at 127.0.0.1:{port} within {BOUND_S} s: Connection refused"
    ]
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["serve", "relay"])
def test_unreachable_nats_stops_start_up_with_one_line_and_no_password(
    tmp_path: Path, database_url: str, stream_config: StreamConfig, command: str
) -> None:
    port = free_port()
    env = environment(
        tmp_path, database_url, f"nats://wl:{SECRET}@127.0.0.1:{port}",
        WATTLEDGER_STREAM=stream_config.name, WATTLEDGER_SUBJECT_PREFIX=stream_config.subject_prefix,
    )  # fmt: skip
    result = run(command, env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"wattledger: cannot reach NATS at 127.0.0.1:{port} within {BOUND_S} s: Connection refused"
    ]
    assert SECRET not in result.stdout + result.stderr


def test_a_server_that_never_answers_is_given_up_at_the_bound(
    tmp_path: Path, silent_server: socket.socket
) -> None:
    port = port_of(silent_server)
    result = run("serve", environment(tmp_path, f"postgresql://u:{SECRET}@127.0.0.1:{port}/db", "nats://127.0.0.1:1"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"wattledger: cannot reach PostgreSQL at 127.0.0.1:{port} within {BOUND_S} s: no answer"
    ]


@pytest.mark.parametrize("waiting_for", ["postgres", "nats"])
def test_sigterm_while_waiting_for_a_server_stops_at_once(
    tmp_path: Path, silent_server: socket.socket, database_url: str, stream_config: StreamConfig, waiting_for: str
) -> None:
    silent = f"127.0.0.1:{port_of(silent_server)}"
    env = environment(
        tmp_path,
        f"postgresql://u:{SECRET}@{silent}/db" if waiting_for == "postgres" else database_url,
        f"nats://{silent}" if waiting_for == "nats" else f"nats://127.0.0.1:{free_port()}",
        WATTLEDGER_STARTUP_TIMEOUT="600",
        WATTLEDGER_STREAM=stream_config.name,
        WATTLEDGER_SUBJECT_PREFIX=stream_config.subject_prefix,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        connection, _ = silent_server.accept()
        connection.close()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=MARGIN_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "Traceback" not in err and SECRET not in err


@pytest.mark.parametrize("as_json", [False, True])
def test_a_request_path_with_control_characters_is_logged_escaped(
    tmp_path: Path, database_url: str, nats_url: str, stream_config: StreamConfig, as_json: bool
) -> None:
    port = free_port()
    env = environment(
        tmp_path, database_url, nats_url,
        WATTLEDGER_STARTUP_TIMEOUT="30", WATTLEDGER_PORT=str(port), WATTLEDGER_LOG_JSON=str(as_json).lower(),
        WATTLEDGER_STREAM=stream_config.name, WATTLEDGER_SUBJECT_PREFIX=stream_config.subject_prefix,
    )  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "api"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if http.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            refused = http.get("/api/device/%00%1b%5b31mX%07")
        assert refused.status_code == 400 and refused.json()["error_code"] == "INVALID_PATH"
    finally:
        process.send_signal(signal.SIGINT)
        _, raw = process.communicate(timeout=30)
    assert process.returncode == 0
    assert not any(c in raw for c in b"\x00\x1b\x07"), raw
    lines = raw.decode().splitlines()
    refused_lines = [line for line in lines if "api.path_refused" in line]
    assert len(refused_lines) == 1, lines
    if as_json:
        assert json.loads(refused_lines[0])["path"] == "/api/device/\\x00\\x1b[31mX\\x07"
    else:
        assert "path=/api/device/\\x00\\x1b[31mX\\x07" in refused_lines[0]
