"""The conflict-retry policy of every write: optimistic concurrency, decided again from fresh loads.

A use case loads its aggregates, decides and saves in one `attempt`. When another writer
stored a version first, `save` raises `ConcurrencyConflict`; `retrying` runs the whole
attempt again (loading anew), and a conflict on the last attempt reaches the caller, which
the HTTP edge answers with 409.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from domain.errors import ConcurrencyConflict

T = TypeVar("T")

ATTEMPTS = 2
"""A conflict is decided again once; a second one reaches the caller."""


async def retrying(attempt: Callable[[], Awaitable[T]], *, attempts: int = ATTEMPTS) -> T:
    """The result of the first `attempt` that stores without a conflict, within `attempts` tries.

    Raises the last `ConcurrencyConflict`; any other error of an attempt reaches the caller at once.
    """
    for number in range(1, attempts + 1):
        try:
            return await attempt()
        except ConcurrencyConflict:
            if number == attempts:
                raise
    raise AssertionError("attempts must be at least 1")
