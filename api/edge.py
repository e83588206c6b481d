"""What the app enforces around every route: the rate limiter (wrapped around the whole app) and CORS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from litestar.config.cors import CORSConfig
from litestar.enums import HttpMethod

from adapters.ratelimits import PgRateCounters
from api.pending import PENDING_HEADER
from api.ratelimit import RateLimiter
from api.ratelimit_rules import RateLimits

if TYPE_CHECKING:
    from litestar import Litestar

RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")
CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "X-API-Key", "Idempotency-Key")
CORS_METHODS = (HttpMethod.GET, HttpMethod.HEAD, HttpMethod.POST, HttpMethod.PUT, HttpMethod.PATCH,
                HttpMethod.DELETE, HttpMethod.OPTIONS)  # fmt: skip
EXPOSED_HEADERS = (*RATE_LIMIT_HEADERS, PENDING_HEADER)
"""Answer headers a browser script on an allowed origin may read."""


@dataclass(frozen=True)
class EdgePolicy:
    """What the app enforces around every route: rate limits (with their counters) and CORS."""

    limits: RateLimits = field(default_factory=RateLimits)
    counters: PgRateCounters | None = None
    cors_origins: tuple[str, ...] = ()


def cors_config(origins: Sequence[str]) -> CORSConfig | None:
    """CORS for exactly these origins, no credentials (the API authenticates by headers, not
    cookies); None, so no CORS header at all, when there are none."""
    if not origins:
        return None
    return CORSConfig(
        allow_origins=list(origins),
        allow_methods=list(CORS_METHODS),
        allow_headers=list(CORS_ALLOW_HEADERS),
        allow_credentials=False,
        expose_headers=list(EXPOSED_HEADERS),
    )


def install_edge(app: Litestar, edge: EdgePolicy) -> None:
    """Wrap the whole app in the rate limiter, if any limit is on.

    Route middleware (Litestar's own auth middleware included) runs only for matched routes,
    and an exception it raises is answered outside it; wrapping the app's handler is the one
    place that sees every request and every answer.
    """
    if edge.counters is not None and edge.limits.enabled:
        app.asgi_handler = RateLimiter(app.asgi_handler, edge.limits, edge.counters, cors=app.cors_config)
