"""The poller against real PostgreSQL: failures stay per device, stops and failed saves lose nothing, leases share."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import OperationalError
from psycopg_pool import AsyncConnectionPool

from adapters.emulator import EmulatorFleet
from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger
from adapters.kasa_driver import KasaDriver
from adapters.leases import Leases
from adapters.poller import AllDevices, Assignment, Poller
from api.metrics import ProcessMetrics
from domain.address import DeviceAddress
from domain.device import Device
from domain.errors import DeviceUnreachable
from domain.handlers import CommandHandlers
from domain.ports import DeviceDriver
from domain.readings import DeviceSnapshot
from projections.devices import TABLE as DEVICES_TABLE
from projections.devices import DevicesProjector
from projections.engine import ProjectionEngine
from tests.kit import eventually


def plug(total_wh: float = 1.0) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Lamp", model="HS110", device_type="plug", mac="AA:BB", firmware="1", is_on=True,
        has_emeter=True, power_w=5.0, voltage_v=230.0, current_a=0.02, total_wh=total_wh,
    )


class FakeDriver(DeviceDriver):
    """Answers every address at once; `broken` addresses raise their exception instead."""

    def __init__(self) -> None:
        self.broken: dict[str, Exception] = {}
        self.polled: list[tuple[str, float]] = []

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        await asyncio.sleep(0)
        self.polled.append((str(address), time.monotonic()))
        if (error := self.broken.get(str(address))) is not None:
            raise error
        return plug(time.time() / 3600)

    async def discover(self, target: str, *, port: int | None = None) -> list[DeviceAddress]:
        return []


class FlakyStore(StoreUnitOfWork):
    """Fails chosen saves: some before anything is stored, some after the transaction committed."""

    def __init__(self, app: WattLedger, *, fail_before: set[int], fail_after: set[int]) -> None:
        super().__init__(app, cache=True)
        self.calls = 0
        self.fail_before = fail_before
        self.fail_after = fail_after

    async def save(self, *aggregates: Aggregate) -> int:
        self.calls += 1
        if self.calls in self.fail_before:
            self._forget(aggregates)
            raise OperationalError("server closed the connection unexpectedly")
        position = await super().save(*aggregates)
        if self.calls in self.fail_after:
            self._forget(aggregates)
            raise OperationalError("connection lost before the commit was acknowledged")
        return position


class DyingLeases(Leases):
    """A member that dies: it never gives its leases back."""

    async def leave(self) -> None:
        return None


def seed(app: WattLedger, addresses: Iterable[str]) -> dict[str, UUID]:
    """Store added devices directly; address → device id."""
    devices = [Device.from_snapshot(a, plug(), alias=None, actor="test") for a in addresses]
    app.save(*devices)
    return {d.address: d.id for d in devices}


def stored_readings(app: WattLedger) -> list[tuple[UUID, datetime]]:
    """(device id, measured at) of every ReadingRecorded event, duplicates included."""
    found = []
    for notification in app.recorder.select_notifications(1, 1_000_000):
        if notification.topic.endswith(".ReadingRecorded"):
            event = app.mapper.to_domain_event(notification)
            found.append((getattr(event, "device_id"), getattr(event, "measured_at")))
    return found


def event_names(app: WattLedger) -> list[str]:
    return [n.topic.rsplit(".", 1)[-1] for n in app.recorder.select_notifications(1, 1_000_000)]


def make_poller(
    app: WattLedger, driver: DeviceDriver, assignment: Assignment, *, store: StoreUnitOfWork | None = None, **options: Any
) -> Poller:
    handlers = CommandHandlers(store or StoreUnitOfWork(app, cache=True), driver, SystemClock())
    return Poller(handlers, driver, assignment, **{"interval": 0.3, "timeout": 5.0, **options})


def fixed(devices: dict[str, UUID]) -> AllDevices:
    async def listing() -> list[tuple[UUID, str]]:
        return [(d, a) for a, d in devices.items()]

    return AllDevices(listing, refresh_every=0.5)


@asynccontextmanager
async def running(poller: Poller, stop: asyncio.Event | None = None) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(poller.run(stop))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def black_holes(count: int) -> AsyncIterator[list[str]]:
    """Loopback TCP servers that accept connections and never answer."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(4096):
            pass

    servers = [await asyncio.start_server(swallow, "127.0.0.1", 0) for _ in range(count)]
    try:
        yield [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    finally:
        for server in servers:
            server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*(s.wait_closed() for s in servers))


async def test_an_unexpected_error_from_one_device_is_that_devices_miss_only(app: WattLedger) -> None:
    addresses = [f"127.0.0.1:{20000 + i}" for i in range(5)]
    devices = seed(app, addresses)
    driver = FakeDriver()
    driver.broken[addresses[0]] = RuntimeError("a bug in the driver")
    poller = make_poller(app, driver, fixed(devices), offline_after=2)
    bad = devices[addresses[0]]

    async def others_read_three_times() -> bool:
        counts = Counter(d for d, _ in await asyncio.to_thread(stored_readings, app))
        return all(counts[devices[a]] >= 3 for a in addresses[1:])

    async with running(poller):
        await eventually(others_read_three_times, within=30, what="three readings of each healthy device")
        assert bad not in {d for d, _ in await asyncio.to_thread(stored_readings, app)}
        # The failing device's own clock may put its third poll after the others' third readings are stored.
        await eventually(lambda: poller.stats().failures >= 3, within=30, what="three failed polls of the bad device")
        await eventually(lambda: _has(app, "WentOffline"), within=30, what="the failing device offline")
        del driver.broken[addresses[0]]

        async def bad_read() -> bool:
            return bad in {d for d, _ in await asyncio.to_thread(stored_readings, app)}

        await eventually(bad_read, within=30, what="a reading of the mended device")
    names = event_names(app)
    assert names.count("WentOffline") == 1 and names.count("CameOnline") == 1


async def _has(app: WattLedger, name: str) -> bool:
    return name in await asyncio.to_thread(event_names, app)


async def test_devices_that_never_answer_do_not_delay_the_healthy_ones(app: WattLedger) -> None:
    async with EmulatorFleet(["HS110", "KP115", "HS300", "HS100"], port=0, seed=3) as fleet, black_holes(8) as holes:
        healthy = list(fleet.addresses)
        devices = seed(app, [*healthy, *holes])
        async with KasaDriver(timeout=1.5) as driver:
            poller = make_poller(app, driver, fixed(devices), interval=0.25, concurrency=4, suspect_concurrency=2)
            async with running(poller):
                # Each black hole times out twice: a cycle that waited for them would read the others twice.
                await eventually(lambda: poller.stats().failures >= 2 * len(holes), within=30,
                                 what="each black hole timed out twice")  # fmt: skip
            counts = Counter(d for d, _ in stored_readings(app))
    assert all(counts[devices[h]] == 0 for h in holes)
    assert min(counts[devices[a]] for a in healthy) >= 8, counts


async def test_a_stop_while_a_device_never_answers_stores_every_reading_taken(app: WattLedger) -> None:
    async with EmulatorFleet(["HS110", "KP115", "HS300"], port=0, seed=5) as fleet, black_holes(1) as holes:
        healthy = list(fleet.addresses)
        devices = seed(app, [*healthy, *holes])
        async with KasaDriver(timeout=60.0) as driver:
            # Readings wait in the queue far longer than the test runs: only the stop can store them.
            poller = make_poller(app, driver, fixed(devices), timeout=60.0, flush_every=120.0, grace=10.0)
            task = asyncio.create_task(poller.run())
            await eventually(lambda: poller.stats().readings >= 2 * len(fleet), within=30, what="two readings a device")
            assert poller.stats().stored == 0 and poller.stats().pending > 0
            task.cancel()
            await asyncio.wait({task}, timeout=30)
            assert task.done(), "the stop waited for the device that never answers"
    taken = poller.stats().readings
    stored = stored_readings(app)
    assert len(stored) == len(set(stored)) == taken
    assert {d for d, _ in stored} == {devices[a] for a in healthy}
    assert poller.stats().pending == 0


async def test_failed_saves_and_killed_connections_lose_no_reading_and_store_none_twice(
    app: WattLedger, database_url: str
) -> None:
    addresses = [f"127.0.0.1:{21000 + i}" for i in range(30)]
    devices = seed(app, addresses)
    driver = FakeDriver()
    store = FlakyStore(app, fail_before={2, 3}, fail_after={4, 6})
    poller = make_poller(app, driver, fixed(devices), store=store, flush_every=0.2)
    stop = asyncio.Event()
    async with running(poller, stop) as task:
        await eventually(lambda: poller.stats().stored >= 2 * len(addresses), within=30,
                         what="two readings a device stored")  # fmt: skip
        assert await asyncio.to_thread(_terminate_a_busy_connection, database_url)
        stored_before = poller.stats().stored
        await eventually(lambda: poller.stats().stored >= stored_before + len(addresses), within=30,
                         what="a reading a device stored after the killed connection")  # fmt: skip
        stop.set()
        await asyncio.wait({task}, timeout=30)
        assert task.done()
    stats = poller.stats()
    assert stats.save_failures >= 4 and stats.pending == 0 and stats.dropped == 0
    stored = stored_readings(app)
    assert len(stored) == len(set(stored)), "a reading was stored twice"
    assert len(stored) == stats.readings, "a reading taken was not stored"


def _terminate_a_busy_connection(database_url: str, *, attempts: int = 20_000) -> bool:
    """Kill a connection of the store while it is inside a transaction (a save or its loads)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for _ in range(attempts):
            cur = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND xact_start IS NOT NULL AND state <> 'idle'"
            )
            row = cur.fetchone()
            if row is not None and row[0]:
                return True
    return False


async def test_two_pollers_share_the_devices_and_one_takes_over_when_the_other_dies(
    app: WattLedger, database_url: str
) -> None:
    addresses = [f"127.0.0.1:{22000 + i}" for i in range(10)]
    devices = seed(app, addresses)
    engine = ProjectionEngine(app, database_url, [DevicesProjector(ZoneInfo("UTC"))])
    await asyncio.to_thread(engine.setup)
    await asyncio.to_thread(engine.catch_up_all)
    engine.close()
    async with AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False) as pool:
        first_leases = DyingLeases(pool, devices_table=DEVICES_TABLE, ttl=1.5, name="first")
        second_leases = Leases(pool, devices_table=DEVICES_TABLE, ttl=1.5, name="second")
        first_driver, second_driver = FakeDriver(), FakeDriver()
        first = make_poller(app, first_driver, first_leases)
        second = make_poller(app, second_driver, second_leases)
        async with running(first) as first_task, running(second):

            async def balanced() -> bool:
                owners = Counter((await first_leases.holders()).values())
                return sorted(owners.values()) == [5, 5] and first.stats().devices == second.stats().devices == 5

            await eventually(balanced, within=30, what="the devices split five and five")
            since = time.monotonic()

            def polled_since(driver: FakeDriver, moment: float) -> Counter[str]:
                return Counter(a for a, at in driver.polled if at >= moment)

            async def each_polled_twice() -> bool:
                both = polled_since(first_driver, since) + polled_since(second_driver, since)
                return all(both[a] >= 2 for a in addresses)

            await eventually(each_polled_twice, within=30, what="each device polled twice")
            by_first, by_second = set(polled_since(first_driver, since)), set(polled_since(second_driver, since))
            assert by_first.isdisjoint(by_second) and by_first | by_second == set(addresses)

            taken = second.stats().taken
            first_task.cancel()
            await asyncio.gather(first_task, return_exceptions=True)
            died = time.monotonic()

            async def second_polls_all() -> bool:
                return set(polled_since(second_driver, died)) == set(addresses)

            await eventually(second_polls_all, within=30, what="the second poller polling every device")
            assert not [a for a, at in first_driver.polled if at > died]
            assert second.stats().devices == len(addresses)
            assert second.stats().taken - taken >= len(addresses) // 2


async def test_every_poll_is_timed_and_each_failure_counted_by_reason_in_the_metrics(app: WattLedger) -> None:
    addresses = [f"127.0.0.1:{20600 + i}" for i in range(3)]
    devices = seed(app, addresses)
    driver = FakeDriver()
    driver.broken[addresses[0]] = DeviceUnreachable("refused")
    metrics = ProcessMetrics()
    poller = make_poller(app, driver, fixed(devices), observe=metrics.polled)

    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    async def polled_and_failed() -> bool:
        return sample("wattledger_poll_failures_total", reason="unreachable") >= 2 and len(driver.polled) >= 6

    async with running(poller):
        await eventually(polled_and_failed, within=30, what="two failed polls of the refusing device")
    assert sample("wattledger_poll_duration_seconds_count") == len(driver.polled)
    assert sample("wattledger_poll_failures_total", reason="unreachable") == poller.stats().failures
    assert sample("wattledger_poll_failures_total", reason="timeout") == 0
    assert sample("wattledger_poller_in_process") == 1
