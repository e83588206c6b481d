"""Failed sign-ins, lockouts and refused permissions, recorded as summaries so they cannot flood the log.

Each API process counts these refusals per kind and client address as they happen and, once a
minute when there were any, records one `SecurityActivity.Summarised` event: the window it covers
and the counts, the busiest sources first. A flood of refusals therefore costs one event a minute
per process, and the audit trail still shows who was refused, how often and from where.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid4

import msgspec
from eventsourcing.domain import Aggregate

from domain.ports import EventStore

KINDS = ("failed_sign_in", "lockout", "permission_refused")
MAX_SOURCES = 100
"""Sources listed in one summary; the others are only counted (`others`)."""
ACTOR = "system:security"


class SourceCount(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    source: str
    count: int


class SecurityActivity(Aggregate):
    """One summary of refusals seen by one API process over one window."""

    class Summarised(Aggregate.Created):
        window_start: datetime
        window_end: datetime
        counts: list[dict[str, object]]
        others: int
        actor: str

    def __init__(
        self, *, window_start: datetime, window_end: datetime, counts: list[dict[str, object]], others: int,
        actor: str,
    ) -> None:  # fmt: skip
        self.window_start, self.window_end = window_start, window_end
        self.counts, self.others = counts, others

    @classmethod
    def summarise(
        cls, window_start: datetime, window_end: datetime, counts: list[SourceCount], others: int
    ) -> SecurityActivity:
        listed = sorted(counts, key=lambda c: (-c.count, c.kind, c.source))
        return cls._create(
            cls.Summarised, id=uuid4(), window_start=window_start, window_end=window_end,
            counts=[msgspec.structs.asdict(c) for c in listed], others=others, actor=ACTOR,
        )  # fmt: skip


class SecurityHandlers:
    """Records the summaries; the counting happens at the edge that sees the refusals."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def record_summary(
        self, window_start: datetime, window_end: datetime, counts: list[SourceCount], others: int
    ) -> tuple[UUID, int]:
        """Store one summary; returns its id and position."""
        activity = SecurityActivity.summarise(window_start, window_end, counts, others)
        return activity.id, await self.store.save(activity)
