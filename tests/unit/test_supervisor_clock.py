"""The supervisor stamps a part's failure with the clock it was given."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from infra.supervisor import Supervisor
from tests.kit import ManualClock, eventually

T0 = datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc)


async def test_a_failure_is_stamped_with_the_injected_clock() -> None:
    clock = ManualClock(T0)

    async def broken() -> None:
        raise ConnectionResetError("the peer went away")

    supervisor = Supervisor(backoff=3600.0, backoff_max=3600.0, clock=clock)
    supervisor.add("broken", broken)
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    [status] = await eventually(
        lambda: [part for part in supervisor.status() if part.last_error is not None], every=0.01,
        what="the failure reported",
    )
    stop.set()
    await asyncio.wait_for(running, timeout=30)
    assert status.last_error == "ConnectionResetError: the peer went away"
    assert status.last_failure_at == T0
