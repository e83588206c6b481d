"""Serving the HTTP API: the Litestar app of a runtime under uvicorn, until a stop is asked for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import structlog
import uvicorn

from api.app import create_app
from infra.runtime import Runtime

__all__ = ["QuietServer", "serve_api"]

log = structlog.get_logger(__name__)


class QuietServer(uvicorn.Server):
    """Uvicorn without its own signal handlers: the CLI owns SIGINT/SIGTERM and sets `stop`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve_api(runtime: Runtime, stop: asyncio.Event) -> None:
    """Run the HTTP API until `stop` is set; requests in flight are finished first."""
    config = uvicorn.Config(
        create_app(runtime.services()),
        host=runtime.settings.host,
        port=runtime.settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        **runtime.settings.proxy_options(),
    )
    server = QuietServer(config)

    async def stop_server() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_server())
    log.info("api.listening", url=f"http://{runtime.settings.host}:{runtime.settings.port}/api")
    try:
        await server.serve()
    finally:
        watcher.cancel()
    if not server.started:
        raise OSError(f"the API could not listen on {runtime.settings.host}:{runtime.settings.port}")
