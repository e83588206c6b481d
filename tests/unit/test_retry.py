"""The conflict-retry policy: a conflict is decided again from scratch, within a bounded number of attempts."""

from __future__ import annotations

import pytest

from domain.errors import ConcurrencyConflict, DeviceNotFound
from domain.retry import ATTEMPTS, retrying


class Scripted:
    """An attempt that raises the given conflicts, one a call, then answers with its call count."""

    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.conflicts:
            raise ConcurrencyConflict(f"conflict {self.calls}")
        return self.calls


async def test_one_conflict_is_decided_again() -> None:
    attempt = Scripted(conflicts=1)
    assert await retrying(attempt) == 2


async def test_a_conflict_on_the_last_attempt_reaches_the_caller() -> None:
    attempt = Scripted(conflicts=ATTEMPTS)
    with pytest.raises(ConcurrencyConflict, match=f"conflict {ATTEMPTS}"):
        await retrying(attempt)
    assert attempt.calls == ATTEMPTS


async def test_a_single_attempt_is_never_repeated() -> None:
    attempt = Scripted(conflicts=1)
    with pytest.raises(ConcurrencyConflict):
        await retrying(attempt, attempts=1)
    assert attempt.calls == 1


async def test_another_error_is_not_retried() -> None:
    calls = 0

    async def attempt() -> int:
        nonlocal calls
        calls += 1
        raise DeviceNotFound("gone")

    with pytest.raises(DeviceNotFound):
        await retrying(attempt)
    assert calls == 1
