"""Counting the refusals the API answers, for the security summaries of `domain.security`.

`TallyRefusals` watches every HTTP answer: a 401 to a sign-in, second-factor, password or
step-up request is a failed sign-in, a 429 to one of those a lockout, and any 403 a refused
permission. It counts them per kind and client address in memory (bounded), and
`summarise_every` records what was counted once a minute as one event.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import datetime

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.ratelimit_requests import client_subject
from api.ratelimit_rules import LOGIN_PATHS, PASSWORD_PATHS, SECOND_FACTOR_PREFIX, STEP_UP_PATHS
from domain.security import MAX_SOURCES, SecurityHandlers, SourceCount

log = structlog.get_logger(__name__)

MAX_TRACKED = 10_000
"""Distinct (kind, source) pairs held between two summaries; past it, refusals are only counted."""


def _is_sign_in(path: str) -> bool:
    return path in LOGIN_PATHS or path in PASSWORD_PATHS or path in STEP_UP_PATHS or path.startswith(
        SECOND_FACTOR_PREFIX
    ) or path.startswith("/api/auth/sessions")


class RefusalTally:
    """Refusals per (kind, source) since the last summary."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self._now = now
        self._counts: Counter[tuple[str, str]] = Counter()
        self._overflow = 0
        self._since = now()

    def count(self, kind: str, source: str) -> None:
        key = (kind, source)
        if key in self._counts or len(self._counts) < MAX_TRACKED:
            self._counts[key] += 1
        else:
            self._overflow += 1

    def kind_of(self, path: str, status: int) -> str | None:
        """What an answer with `status` to `path` counts as, if anything."""
        if status == 403:
            return "permission_refused"
        if status in (401, 429) and _is_sign_in(path):
            return "failed_sign_in" if status == 401 else "lockout"
        return None

    def put_back(self, start: datetime, counts: list[SourceCount], others: int) -> None:
        """Return a drained window that could not be recorded, so the next summary holds it."""
        self._since = min(self._since, start)
        for c in counts:
            self._counts[(c.kind, c.source)] += c.count
        self._overflow += others

    def drain(self) -> tuple[datetime, datetime, list[SourceCount], int] | None:
        """The window since the last drain with its busiest sources, and how many refusals are left
        unlisted; None when nothing was refused."""
        end = self._now()
        counts, overflow, start = self._counts, self._overflow, self._since
        self._counts, self._overflow, self._since = Counter(), 0, end
        if not counts and not overflow:
            return None
        listed = counts.most_common(MAX_SOURCES)
        others = overflow + sum(counts.values()) - sum(n for _, n in listed)
        return start, end, [SourceCount(kind=k, source=s, count=n) for (k, s), n in listed], others


class TallyRefusals:
    """The outermost ASGI wrapper (outside the rate limiter, so its 429s count too)."""

    def __init__(self, app: ASGIApp, tally: RefusalTally) -> None:
        self.app = app
        self.tally = tally

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                kind = self.tally.kind_of(scope.get("path", ""), message["status"])
                if kind is not None:
                    self.tally.count(kind, client_subject(scope))
            await send(message)

        await self.app(scope, receive, counting)


async def summarise_every(tally: RefusalTally, handlers: SecurityHandlers, *, interval: float = 60.0,
                          on_saved: Callable[[], None] = lambda: None) -> None:  # fmt: skip
    """Record the tally as one event every `interval` seconds while there is something to record."""
    while True:
        await asyncio.sleep(interval)
        drained = tally.drain()
        if drained is None:
            continue
        start, end, counts, others = drained
        try:
            await handlers.record_summary(start, end, counts, others)
        except BaseException:
            tally.put_back(start, counts, others)
            raise
        log.info("security.summarised", refusals=sum(c.count for c in counts) + others, sources=len(counts))
        on_saved()
