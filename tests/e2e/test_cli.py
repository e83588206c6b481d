"""The `wattledger` command as a user runs it: a real process, real servers, real HTTP on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from adapters.bus import StreamConfig


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cli_env(database_url: str, nats_url: str, stream: StreamConfig, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "WATTLEDGER_STREAM": stream.name,
        "WATTLEDGER_SUBJECT_PREFIX": stream.subject_prefix,
        "WATTLEDGER_DATA_DIR": str(data_dir),
    }


def wattledger(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )


def test_invalid_setting_stops_start_up_with_one_line_naming_it(tmp_path: Path) -> None:
    result = wattledger("serve", env={**os.environ, "WATTLEDGER_PORT": "eighty"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "wattledger: invalid WATTLEDGER_PORT='eighty': must be a number from 1 to 65535"
    ]


def test_serve_demo_shows_live_devices_then_stops_cleanly_and_rebuild_gives_same_rows(
    tmp_path: Path, database_url: str, nats_url: str, stream_config: StreamConfig
) -> None:
    env = cli_env(database_url, nats_url, stream_config, tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "serve", "--demo", "--port", str(port), "--polling-interval", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    devices: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    devices = http.get("/api/devices").json()
                except httpx.TransportError:
                    devices = []
                if len(devices) == 5 and all(d["last_seen"] != d["added_at"] for d in devices):
                    break
                time.sleep(0.3)
            models = sorted(str(d["model"]) for d in devices)
            assert models == ["HS100", "HS110", "HS300", "KP115", "KP303"], server.poll()
            assert http.get("/schema/openapi.json").status_code == 200
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
        print(output)
    assert server.returncode == 0, output
    assert "Traceback" not in output

    rebuilt = wattledger("project", "--rebuild", "devices", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt devices:" in rebuilt.stderr
