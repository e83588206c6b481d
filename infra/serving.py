"""Serving the HTTP API: the Litestar app of a runtime under uvicorn, until a stop is asked for.

With a certificate and its key in `<data dir>/ssl/` (uploaded through `/api/system/ssl/...`), the
API is served over HTTPS only; a pair that does not match, or half a pair, is not used (a warning
says so) and the API is served over plain HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import structlog
import uvicorn

from adapters.tls_files import server_pair
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
    pair = server_pair(runtime.settings.ssl_dir)
    if pair is None and any((runtime.settings.ssl_dir / name).exists() for name in ("cert.pem", "key.pem")):
        log.warning("api.tls_not_used", reason="the certificate and key are not both there or do not match",
                    directory=str(runtime.settings.ssl_dir))  # fmt: skip
    config = uvicorn.Config(
        create_app(runtime.services()),
        host=runtime.settings.host,
        port=runtime.settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        **runtime.settings.proxy_options(),
        ssl_certfile=pair[0] if pair is not None else None,
        ssl_keyfile=pair[1] if pair is not None else None,
    )
    server = QuietServer(config)

    async def stop_server() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_server())
    scheme = "https" if pair is not None else "http"
    log.info("api.listening", url=f"{scheme}://{runtime.settings.host}:{runtime.settings.port}/api")
    try:
        await server.serve()
    finally:
        watcher.cancel()
    if not server.started:
        raise OSError(f"the API could not listen on {runtime.settings.host}:{runtime.settings.port}")
