"""`GET /metrics`: the Prometheus text exposition of this process and of the devices.

Besides an API key or a session, `/metrics` takes basic auth when `WATTLEDGER_METRICS_BASIC_AUTH`
(`user:<argon2 hash>`) is set: `AcceptBasicAuth` checks the credentials before the guard runs.
"""

from __future__ import annotations

import anyio.to_thread
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from adapters.relay import relay_status
from api.metrics import CONTENT_TYPE, BasicCredentials, ProcessMetrics, Reading, exposition
from api.deps import SystemDeps
from api.guards import BASIC_AUTH
from domain.access import Permission
from projections.device_metrics import device_samples
from projections.tracking import projector_status


class AcceptBasicAuth(ASGIMiddleware):
    """Marks a request to `/metrics` whose basic auth credentials are the configured ones; the guard
    then lets it through. Other credentials, and other paths, are left to the guard as they are."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, credentials: BasicCredentials | None) -> None:
        self.credentials = credentials

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if self.credentials is not None and scope.get("path") == "/metrics":
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if header and await self.credentials.accepts(header):
                scope.setdefault("state", {})[BASIC_AUTH] = True
        await next_app(scope, receive, send)


async def read_now(deps: SystemDeps) -> Reading:
    """One scrape's reading of the read models, the log's head and this process's parts."""
    max_id = await deps.reads.newest()
    async with deps.reads.pool.connection() as conn:
        devices = await device_samples(conn, deps.clock.now(), deps.reads.zone)
        relay = await relay_status(conn, deps.stream_name, max_id)
        projectors = await projector_status(conn, max_id)
    live = (await deps.fanout.status()).subscribers
    return Reading(
        devices=devices, events_stored=max_id, relay_lag=relay.lag,
        projector_lag={p.name: p.lag for p in projectors}, live_clients=live,
        part_restarts={part.name: part.restarts for part in deps.parts()},
    )  # fmt: skip


class MetricsController(Controller):
    path = "/metrics"
    tags = ["system"]

    @get("", operation_id="getMetrics", opt={"permission": Permission.DEVICES_VIEW, BASIC_AUTH: True},
         media_type=CONTENT_TYPE)  # fmt: skip
    async def metrics(
        self, system_deps: NamedDependency[SystemDeps], metrics: NamedDependency[ProcessMetrics]
    ) -> Response[bytes]:
        """Prometheus metrics in the text exposition format, for an API key (`X-API-Key` or
        `Authorization: Bearer <key>`) or a session with DEVICES_VIEW, or basic auth as configured
        (`WATTLEDGER_METRICS_BASIC_AUTH`).

        Per device (labels `device_id`, `alias`, `model`, `outlet`; `outlet` is empty for the device
        itself): power, voltage, current, the energy counter, relay state; per device: up, today's
        energy and cost. The system: events stored, relay lag, each read model's lag, live clients
        and part restarts of this process, API request latency by route template, and the poll
        duration histogram and failures by reason of this process's poller (empty in a process that
        runs none: see `wattledger_poller_in_process`)."""
        reading = await read_now(system_deps)
        # prometheus_client formats about 50k samples a second: 1,000 devices take ~0.15 s, off the loop.
        body = await anyio.to_thread.run_sync(exposition, metrics, reading)
        return Response(body, media_type=CONTENT_TYPE)
