"""The supervisor restarts a failing part alone, reports it, and gives up past the restart intensity."""

from __future__ import annotations

import asyncio

import pytest

from infra.supervisor import PartFailedTooOften, Supervisor


class Beats:
    """A part that counts its runs and beats until cancelled."""

    def __init__(self) -> None:
        self.runs = 0
        self.beat = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        while True:
            self.beat.set()
            await asyncio.sleep(0.001)


async def test_a_failing_part_is_restarted_alone_and_reported_degraded() -> None:
    steady, attempts, restarted = Beats(), [], asyncio.Event()

    async def flaky() -> None:
        attempts.append(1)
        if len(attempts) <= 2:
            raise ConnectionResetError("the peer went away")
        restarted.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(backoff=0.001, backoff_max=0.002, intensity=5, period=60.0)
    supervisor.add("steady", steady)
    supervisor.add("flaky", flaky)
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    await asyncio.wait_for(restarted.wait(), timeout=30)
    status = {part.name: part for part in supervisor.status()}
    stop.set()
    await asyncio.wait_for(running, timeout=30)
    assert steady.runs == 1, "the healthy part was never restarted"
    assert status["steady"].state == "running" and status["steady"].restarts == 0
    assert status["flaky"].state == "degraded" and status["flaky"].restarts == 2
    assert status["flaky"].last_error == "ConnectionResetError: the peer went away"
    assert {part.state for part in supervisor.status()} == {"stopped"}


async def test_a_part_failing_past_the_intensity_ends_the_supervisor_and_stops_the_others() -> None:
    steady = Beats()

    async def broken() -> None:
        raise ValueError("bad state")

    supervisor = Supervisor(backoff=0.001, backoff_max=0.001, intensity=3, period=3600.0)
    supervisor.add("steady", steady)
    supervisor.add("broken", broken)
    stop = asyncio.Event()
    with pytest.raises(PartFailedTooOften) as failed:
        await asyncio.wait_for(supervisor.run(stop), timeout=30)
    assert failed.value.part == "broken" and "4 times" in str(failed.value) and "bad state" in str(failed.value)
    assert stop.is_set()
    assert {part.name: part.state for part in supervisor.status()} == {"steady": "stopped", "broken": "stopped"}


async def test_a_part_that_ends_by_itself_while_running_is_restarted() -> None:
    runs: list[int] = []
    again = asyncio.Event()

    async def quits() -> None:
        runs.append(1)
        if len(runs) > 1:
            again.set()
            await asyncio.Event().wait()

    supervisor = Supervisor(backoff=0.001, backoff_max=0.001)
    supervisor.add("quits", quits)
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    await asyncio.wait_for(again.wait(), timeout=30)
    [status] = supervisor.status()
    stop.set()
    await asyncio.wait_for(running, timeout=30)
    assert status.restarts == 1 and status.last_error == "RuntimeError: ended by itself while the process runs"


async def test_stop_lets_a_watching_part_finish_and_cancels_the_rest() -> None:
    finished, cancelled, started = asyncio.Event(), asyncio.Event(), asyncio.Event()
    stop = asyncio.Event()

    async def watcher() -> None:
        await stop.wait()
        finished.set()

    async def oblivious() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    supervisor = Supervisor()
    supervisor.add("watcher", watcher, watches_stop=True)
    supervisor.add("oblivious", oblivious)
    running = asyncio.create_task(supervisor.run(stop))
    await asyncio.wait_for(started.wait(), timeout=30)
    stop.set()
    await asyncio.wait_for(running, timeout=30)
    assert finished.is_set() and cancelled.is_set()
    assert all(part.restarts == 0 for part in supervisor.status())
