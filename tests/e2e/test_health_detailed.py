"""`GET /api/health/detailed`: every dependency and part with its state, and the reason of each one degraded."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import psycopg
import pytest
from litestar import Litestar

from api.app import create_app
from domain.ports import Clock
from infra.bootstrap import Runtime
from infra.supervisor import Supervisor
from projections.tables import READ_SCHEMA
from tests.harness import background, http_client, seed_heater, set_up_and_log_in
from tests.kit import ManualClock, eventually

NOW = datetime(2026, 5, 4, 10, 5, 2, tzinfo=timezone.utc)
"""Two seconds after the heater's last reading (`seed_heater`), within three polling intervals of 1 s."""


@pytest.fixture
def clock() -> Clock:
    return ManualClock(NOW)


class Part(msgspec.Struct, frozen=True, kw_only=True):
    """A supervised part's status as the supervisor reports it."""

    name: str
    state: str
    restarts: int
    last_error: str | None = None


class Parts(Supervisor):
    """A supervisor whose parts are in the states a test gives."""

    def __init__(self, parts: list[Part]) -> None:
        super().__init__()
        self.given = parts

    def status(self) -> list[Any]:
        return list(self.given)


def app_with_parts(runtime: Runtime, parts: list[Part]) -> Litestar:
    runtime.live_fanout()
    runtime.supervisor = Parts(parts)
    return create_app(runtime.services())


async def test_a_healthy_process_reports_each_component(runtime: Runtime) -> None:
    parts = [Part(name="api", state="running", restarts=0)]
    async with http_client(app_with_parts(runtime, parts)) as client, background(runtime, poll=False):
        await set_up_and_log_in(client)
        await seed_heater(runtime, "system:demo")
        newest = runtime.app.recorder.max_notification_id() or 0

        async def caught_up() -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get("/api/health/detailed")).json()
            nats = body["components"]["nats"]
            lags = [m["lag"] for m in body["components"]["projectors"]["read_models"]]
            done = nats["relay_lag"] == 0 and lags and max(lags) == 0 and nats["stream_messages"] >= newest
            return body if done else None

        body = await eventually(caught_up, what="the relay and every read model caught up")
    assert body["status"] == "healthy", body
    components = body["components"]
    database = components["database"]
    assert database["status"] == "healthy" and database["reason"] is None and database["response_time_ms"] >= 0
    assert database["details"]["events_stored"] >= newest and database["details"]["device_count"] == 1
    assert database["details"]["size_mb"] > 0
    assert components["nats"]["connected"] is True and components["nats"]["relay_rejected"] == 0
    devices = components["device_manager"]
    assert (devices["connected_devices"], devices["failed_devices"], devices["offline_devices"]) == (1, 0, 0)
    assert devices["last_cycle"] == (NOW - timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    assert {"devices", "energy", "audit"} <= {m["name"] for m in components["projectors"]["read_models"]}
    assert components["parts"]["parts"] == [{"name": "api", "state": "running", "restarts": 0, "last_error": None}]
    assert components["scheduler"] == {"status": "healthy", "reason": None, "jobs_pending": 0, "jobs_running": 0,
                                       "jobs": []}  # fmt: skip
    assert body["memory_usage_mb"] > 0 and body["cpu_usage_percent"] >= 0 and body["uptime_seconds"] >= 0


async def test_each_degraded_component_says_why(runtime: Runtime, clock: ManualClock, database_url: str) -> None:
    parts = [Part(name="poller", state="degraded", restarts=3, last_error="OSError: boom")]
    async with http_client(app_with_parts(runtime, parts)) as client:
        async with background(runtime, poll=False):
            await set_up_and_log_in(client)
            await seed_heater(runtime, "system:demo")
            await eventually(
                lambda: runtime.engine.position("devices") >= (runtime.app.recorder.max_notification_id() or 0),
                what="the devices read model caught up",
            )
        # The projectors have stopped: nothing clears the failure set below before the report reads it.
        clock.advance(hours=1)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"UPDATE {READ_SCHEMA}.projector_tracking SET last_error = 'boom', failing_since = now() "
                         "WHERE name = 'audit'")  # fmt: skip
        response = await client.get("/api/health/detailed")
    assert response.status_code == 200, response.text
    body = response.json()
    components = body["components"]
    assert body["status"] == "degraded"
    assert components["parts"]["status"] == "degraded" and components["parts"]["reason"] == "not running: poller"
    assert components["parts"]["parts"][0]["restarts"] == 3
    assert components["projectors"]["status"] == "degraded" and "audit" in components["projectors"]["reason"]
    devices = components["device_manager"]
    assert (devices["status"], devices["connected_devices"], devices["failed_devices"]) == ("degraded", 0, 1)
    assert "poller" in devices["reason"]
    assert components["database"]["status"] == "healthy"
