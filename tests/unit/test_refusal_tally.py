"""Refusals are counted per kind and source and drained as one bounded summary a window."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

import api.security
from api.security import RefusalTally
from domain.security import MAX_SOURCES

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


class Steps:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at


def test_answers_count_by_what_they_refuse() -> None:
    tally = RefusalTally(Steps())
    assert tally.kind_of("/api/auth/login", 401) == "failed_sign_in"
    assert tally.kind_of("/api/auth/2fa/verify", 429) == "lockout"
    assert tally.kind_of("/api/devices", 403) == "permission_refused"
    assert tally.kind_of("/api/devices", 401) is None and tally.kind_of("/api/auth/login", 200) is None


def test_a_window_is_drained_once_busiest_first_and_nothing_is_lost_when_it_cannot_be_recorded() -> None:
    clock = Steps()
    tally = RefusalTally(clock)
    assert tally.drain() is None
    for _ in range(3):
        tally.count("failed_sign_in", "10.0.0.1")
    tally.count("permission_refused", "10.0.0.2")
    clock.at = T0 + timedelta(minutes=1)
    drained = tally.drain()
    assert drained is not None
    start, end, counts, others = drained
    assert (start, end, others) == (T0, T0 + timedelta(minutes=1), 0)
    assert [(c.kind, c.source, c.count) for c in counts] == [
        ("failed_sign_in", "10.0.0.1", 3), ("permission_refused", "10.0.0.2", 1),
    ]
    assert tally.drain() is None
    tally.put_back(start, counts, others)
    again = tally.drain()
    assert again is not None and again[0] == T0 and sum(c.count for c in again[2]) == 4


def test_a_flood_from_many_sources_lists_the_busiest_and_counts_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    tally = RefusalTally(Steps())
    monkeypatch.setattr(api.security, "MAX_TRACKED", MAX_SOURCES + 50)
    for n in range(MAX_SOURCES + 100):
        tally.count("failed_sign_in", f"10.0.{n // 256}.{n % 256}")
    tally.count("failed_sign_in", "10.0.0.0")
    drained = tally.drain()
    assert drained is not None
    _, _, counts, others = drained
    assert len(counts) == MAX_SOURCES and counts[0].source == "10.0.0.0" and counts[0].count == 2
    assert sum(c.count for c in counts) + others == MAX_SOURCES + 101
