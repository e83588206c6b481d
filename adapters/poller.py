"""The poller: reads every known device on an interval and stores each cycle in one save."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from uuid import UUID

import msgspec
import structlog

from adapters.kasa_driver import DriverError, KasaDriver
from domain.address import parse_address
from domain.commands import MissedPolls, PollResult, RecordPolls
from domain.handlers import CommandHandlers
from domain.errors import InvalidAddress

log = structlog.get_logger(__name__)

POLLER_ACTOR = "system:poller"

DeviceList = Callable[[], Awaitable[Sequence[tuple[UUID, str]]]]


class CycleReport(msgspec.Struct, frozen=True, kw_only=True):
    polled: int
    recorded: int
    failed: int
    offline: int
    seconds: float


class Poller:
    """Polls devices with bounded concurrency and per-device timeouts.

    A device that fails `offline_after` polls in a row is reported offline; the
    Device aggregate turns that into one WentOffline event, and its next good
    poll into CameOnline.
    """

    def __init__(
        self,
        commands: CommandHandlers,
        driver: KasaDriver,
        devices: DeviceList,
        *,
        interval: float,
        concurrency: int = 16,
        offline_after: int = 3,
        on_saved: Callable[[], None] = lambda: None,
    ) -> None:
        self.commands = commands
        self.driver = driver
        self.devices = devices
        self.interval = interval
        self.offline_after = offline_after
        self.on_saved = on_saved
        self._limit = asyncio.Semaphore(concurrency)
        self._missed: dict[UUID, int] = {}
        self.last_cycle: CycleReport | None = None

    async def _poll_one(self, device_id: UUID, address: str) -> PollResult | None:
        async with self._limit:
            try:
                snapshot = await self.driver.poll(parse_address(address))
            except (DriverError, InvalidAddress) as exc:
                log.info("poll.failed", device_id=str(device_id), address=address, error=str(exc))
                return None
        return PollResult(device_id=device_id, measured_at=datetime.now(timezone.utc), snapshot=snapshot)

    async def poll_cycle(self) -> CycleReport:
        """Poll every known device once and store what was seen."""
        started = time.monotonic()
        devices = list(await self.devices())
        outcomes = await asyncio.gather(*(self._poll_one(d, a) for d, a in devices))
        results = [r for r in outcomes if r is not None]
        offline: dict[UUID, int] = {}
        known = {d for d, _ in devices}
        self._missed = {d: n for d, n in self._missed.items() if d in known}
        for (device_id, _), outcome in zip(devices, outcomes, strict=True):
            if outcome is None:
                missed = self._missed[device_id] = self._missed.get(device_id, 0) + 1
                if missed >= self.offline_after:
                    offline[device_id] = missed
            else:
                self._missed.pop(device_id, None)
        recorded = 0
        if results or offline:
            stored = await self.commands.record_polls(
                RecordPolls(
                    results=tuple(results),
                    offline=tuple(MissedPolls(device_id=d, count=n) for d, n in offline.items()),
                    actor=POLLER_ACTOR,
                )
            )
            recorded = stored.recorded
            self.on_saved()
        report = CycleReport(
            polled=len(devices),
            recorded=recorded,
            failed=len(devices) - len(results),
            offline=len(offline),
            seconds=round(time.monotonic() - started, 3),
        )
        self.last_cycle = report
        log.debug("poll.cycle", **msgspec.structs.asdict(report))
        return report

    async def run(self) -> None:
        """Poll every `interval` seconds until cancelled; a failed cycle is logged and the next one runs."""
        while True:
            started = time.monotonic()
            try:
                await self.poll_cycle()
            except Exception:
                log.exception("poll.cycle_failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
