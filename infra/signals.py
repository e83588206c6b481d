"""How a command runs until it is stopped: the first SIGINT or SIGTERM asks for a clean stop, a second one cancels.

`run` drives a command's coroutine on a new event loop; `signals_interrupt` covers the
synchronous start-up and shutdown around it (embedded servers), where no loop is there
to turn a signal into a clean stop; `until` runs work that knows no stop event.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from infra.errors import InfraError

log = structlog.get_logger(__name__)


class Interrupted(InfraError):
    """SIGINT or SIGTERM arrived while no event loop was there to turn it into a clean stop."""


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """While synchronous start-up or shutdown runs, SIGINT and SIGTERM unwind it (closing what it opened)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run until done; the first SIGINT/SIGTERM asks for a clean stop, a second one cancels.

    Start-up counts as running: a stop asked for while connecting ends the start-up at once.
    """

    async def runner() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(main(stop))

        def on_signal() -> None:
            if stop.is_set():
                task.cancel()
            else:
                log.info("shutdown.requested")
                stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await task
        except asyncio.CancelledError:
            log.info("shutdown.forced")

    outer = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(runner())
    finally:
        # The loop resets the handlers it installed to the defaults; put back the ones from before.
        for sig, handler in outer.items():
            signal.signal(sig, handler)


async def until(stop: asyncio.Event, work: Coroutine[Any, Any, Any]) -> None:
    """Run `work` until `stop` is set, then cancel it (it cleans up on cancellation)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stopper):
        pending.cancel()
    await asyncio.gather(task, stopper, return_exceptions=True)
