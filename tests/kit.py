"""The fakes every kind of test shares; none of them opens a socket.

- `ManualClock`: a clock that moves only when the test moves it.
- `MemoryStore`: the production `EventStore` on eventsourcing's in-memory recorder, with scripted faults.
- `StaticDriver`, `NoDevices`: device drivers whose devices always answer, or never do;
  `FakeSwitch`: relays in memory.
- `eventually`: polls a condition for a bounded time and fails naming what did not happen.
- `seed_device`, `seed_polls`, `save_devices`: event histories stored as the command handlers store them.
- `self_signed`: a certificate and key for HTTPS tests.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import inspect
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from uuid import UUID

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from eventsourcing.domain import Aggregate

from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger
from domain.address import DeviceAddress
from domain.commands import AddDevice, MissedPolls, PollResult, PollsRecorded, RecordPolls
from domain.device import Device
from domain.errors import ConcurrencyConflict, DeviceUnreachable
from domain.handlers import CommandHandlers
from domain.ports import Clock, DeviceDriver, DeviceSwitch, EventStore
from domain.readings import DeviceSnapshot

T = TypeVar("T")
E = TypeVar("E", bound=Aggregate.Event)

IN_MEMORY = {"PERSISTENCE_MODULE": "eventsourcing.popo"}


class ManualClock(Clock):
    """A clock that moves only when told to: `set`, `advance`, or by `step` on every `now()`.

    `monotonic` gives the moment in seconds, for the parts that take a `Callable[[], float]`
    clock (the emulated devices, the projection engine's retry timer, the replay's progress).
    """

    def __init__(self, at: datetime, *, step: timedelta = timedelta(0)) -> None:
        self.moment = at
        self.step = step

    def now(self) -> datetime:
        self.moment += self.step
        return self.moment

    def set(self, moment: datetime) -> None:
        self.moment = moment

    def advance(self, seconds: float = 0.0, **delta: float) -> None:
        self.moment += timedelta(seconds=seconds, **delta)

    def monotonic(self) -> float:
        return self.moment.timestamp()


class _ScriptedLedger(WattLedger):
    """A `WattLedger` on the in-memory recorder whose next saves can be made to fail."""

    def __init__(self) -> None:
        super().__init__(IN_MEMORY)
        self.lock = threading.Lock()
        self.failures: deque[BaseException] = deque()
        self.refusals: list[tuple[Callable[[Aggregate], bool], BaseException]] = []
        self.saves = 0
        self.conflicts = 0

    def store(self, *aggregates: Aggregate) -> int:
        with self.lock:
            failure = self.failures.popleft() if self.failures else None
        if failure is None:
            failure = next((copy.copy(e) for refused, e in self.refusals if any(map(refused, aggregates))), None)
        if failure is not None:
            for aggregate in aggregates:  # as a save the recorder fails: the pending events are gone
                aggregate.collect_events()
            raise failure
        try:
            position = super().store(*aggregates)
        except ConcurrencyConflict:
            with self.lock:
                self.conflicts += 1
            raise
        with self.lock:
            self.saves += 1
        return position


class MemoryStore(StoreUnitOfWork):
    """The production `EventStore` (`StoreUnitOfWork` over a `WattLedger`) on eventsourcing's
    in-memory (POPO) recorder: versions, conflicts and transcoding are the library's.

    On top: `fail_next` and `refuse` script failed saves, `collide(n)` makes the next `n` saves
    wait for each other so that writers that decided on the same versions collide as two
    processes would, and `saves` / `conflicts` count what happened.
    """

    app: _ScriptedLedger

    def __init__(self, *, cache: bool = False) -> None:
        super().__init__(_ScriptedLedger(), cache=cache)
        self._barrier: asyncio.Barrier | None = None

    @property
    def saves(self) -> int:
        """Saves that stored (or had nothing to store)."""
        return self.app.saves

    @property
    def conflicts(self) -> int:
        """Saves the recorder refused because another writer had stored those versions first."""
        return self.app.conflicts

    @property
    def position(self) -> int:
        """The notification id of the last stored event (0: none)."""
        return self.app.recorder.max_notification_id() or 0

    def fail_next(self, *errors: BaseException) -> None:
        """The next saves raise these errors in turn, losing their pending events as a failed save does."""
        self.app.failures.extend(errors)

    def refuse(self, refused: Callable[[Aggregate], bool], error: BaseException) -> None:
        """Every save holding an aggregate that `refused` accepts raises (a copy of) `error`."""
        self.app.refusals.append((refused, error))

    def collide(self, writers: int) -> None:
        self._barrier = asyncio.Barrier(writers)

    async def save(self, *aggregates: Aggregate) -> int:
        ids = [a.id for a in aggregates]
        assert len(ids) == len(set(ids)), "one aggregate twice in one save"
        if (barrier := self._barrier) is not None:
            try:
                async with asyncio.timeout(10):
                    await barrier.wait()
            except TimeoutError:
                raise AssertionError("the writers meant to collide did not all reach save()") from None
            self._barrier = None
        return await super().save(*aggregates)

    def put(self, *aggregates: Aggregate) -> None:
        """Store aggregates as they are, from sync code (a test's setup)."""
        self.app.store(*aggregates)

    def load(self, aggregate_id: UUID) -> Aggregate | None:
        return self.app.load(aggregate_id)

    def version(self, aggregate_id: UUID) -> int | None:
        """The aggregate's version as stored now; None if it has no event."""
        last = self.app.recorder.select_events(aggregate_id, desc=True, limit=1)
        return last[0].originator_version if last else None

    def all_events(self) -> list[Aggregate.Event]:
        """Every stored event in notification order, decoded afresh."""
        notifications = self.app.recorder.select_notifications(start=1, limit=max(self.position, 1))
        return [self.app.mapper.to_domain_event(n) for n in notifications]  # type: ignore[misc]

    @property
    def events(self) -> dict[UUID, list[Aggregate.Event]]:
        """The stored events of each aggregate, in version order."""
        grouped: dict[UUID, list[Aggregate.Event]] = {}
        for event in self.all_events():
            grouped.setdefault(event.originator_id, []).append(event)
        return grouped

    def of_type(self, kind: type[E], aggregate_id: UUID | None = None) -> list[E]:
        """The stored events of one type, of one aggregate or of all."""
        return [
            e for e in self.all_events()
            if isinstance(e, kind) and (aggregate_id is None or e.originator_id == aggregate_id)
        ]


class StaticDriver(DeviceDriver):
    """A driver whose every device answers with one fixed snapshot."""

    def __init__(self, snapshot: DeviceSnapshot, found: Iterable[DeviceAddress] = ()) -> None:
        self.snapshot = snapshot
        self.found = list(found)
        self.polled: list[DeviceAddress] = []

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        self.polled.append(address)
        return self.snapshot

    async def discover(self, target: str, *, port: int | None = None) -> list[DeviceAddress]:
        return list(self.found)


class NoDevices(DeviceDriver):
    """A driver for which no device ever answers: each poll raises `error` (default: unreachable)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        raise self.error or DeviceUnreachable(f"{address}: no devices here")

    async def discover(self, target: str, *, port: int | None = None) -> list[DeviceAddress]:
        return []


class FakeSwitch(DeviceSwitch):
    """Relays in memory; counts switches; can be told to fail or to lose the next switch's answer."""

    def __init__(self, snapshot: DeviceSnapshot) -> None:
        self.snapshot = snapshot
        self.switches: list[tuple[bool, int | None]] = []
        self.fail_with: Exception | None = None

    def _set(self, on: bool, index: int | None) -> None:
        if not self.snapshot.outlets:
            self.snapshot = msgspec.structs.replace(self.snapshot, is_on=on)
            return
        outlets = tuple(
            msgspec.structs.replace(o, is_on=on) if index is None or o.index == index else o
            for o in self.snapshot.outlets
        )
        self.snapshot = msgspec.structs.replace(self.snapshot, outlets=outlets, is_on=any(o.is_on for o in outlets))

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        return self.snapshot

    async def set_relay(self, address: DeviceAddress, *, on: bool, outlet_index: int | None = None) -> DeviceSnapshot:
        self.switches.append((on, outlet_index))
        if self.fail_with is not None:
            raise self.fail_with
        self._set(on, outlet_index)
        return self.snapshot

    async def set_alias(self, address: DeviceAddress, alias: str) -> None:
        self.snapshot = msgspec.structs.replace(self.snapshot, alias=alias)


async def eventually(
    check: Callable[[], Any],
    *,
    what: str,
    within: float = 20.0,
    every: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> Any:
    """The first truthy answer of `check()` (sync or async), asked every `every` seconds.

    Fails the test with `what`, the time allowed and the last answer when none came within
    `within` seconds. The condition is asked once more after the deadline, so a slow machine
    fails only on the state it reached. Errors of the `ignoring` types count as no answer yet.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        late = loop.time() >= deadline
        try:
            answer = check()
            if inspect.isawaitable(answer):
                answer = await answer
        except ignoring as error:
            answer = error
        else:
            if answer:
                return answer
        if late:
            raise AssertionError(f"{what}: not within {within:g} s (last answer: {answer!r})")
        await asyncio.sleep(every)


def plug(total_wh: float = 10.0, *, is_on: bool = True) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Lamp", model="HS110", device_type="plug", mac="AA:BB", firmware="1", is_on=is_on,
        has_emeter=True, power_w=5.0, total_wh=total_wh,
    )


async def save_devices(store: EventStore, snapshot: DeviceSnapshot, count: int) -> dict[UUID, str]:
    """Store `count` added devices (at 127.0.0.1:30000 and up) straight into `store`; id → address."""
    devices = {}
    for i in range(count):
        device = Device.from_snapshot(f"127.0.0.1:{30000 + i}", snapshot, alias=None, actor="test")
        await store.save(device)
        devices[device.id] = device.address
    return devices


class RecordingHandlers(CommandHandlers):
    """The real handlers, keeping every RecordPolls they were given."""

    def __init__(self, store: EventStore) -> None:
        super().__init__(store, NoDevices(), SystemClock())
        self.commands: list[RecordPolls] = []

    async def record_polls(self, command: RecordPolls) -> PollsRecorded:
        self.commands.append(command)
        return await super().record_polls(command)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a private loop in a worker thread, from sync or async code alike."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def seed_device(
    app: WattLedger,
    address: str | DeviceAddress,
    snapshot: DeviceSnapshot,
    *,
    measured_at: datetime,
    alias: str | None = None,
    actor: str = "test",
) -> UUID:
    """Store an added device with its first reading through the real handlers; returns the device id."""
    handlers = CommandHandlers(StoreUnitOfWork(app), StaticDriver(snapshot), ManualClock(measured_at))
    added = run_sync(handlers.add_device(AddDevice(address=str(address), alias=alias, actor=actor)))
    return added.device_id


def seed_polls(
    app: WattLedger,
    results: Iterable[PollResult],
    offline: Mapping[UUID, int] | None = None,
    *,
    actor: str = "test",
) -> int:
    """Store poll results (and missed polls) as the poller would; returns readings recorded."""
    command = RecordPolls(
        results=tuple(results),
        offline=tuple(MissedPolls(device_id=d, count=n) for d, n in (offline or {}).items()),
        actor=actor,
    )
    handlers = CommandHandlers(StoreUnitOfWork(app), NoDevices(), ManualClock(datetime.min))
    return run_sync(handlers.record_polls(command)).recorded


def self_signed(common_name: str = "127.0.0.1", *, key_pem: bytes | None = None,
                valid_from: datetime = datetime(2026, 1, 1, tzinfo=timezone.utc)) -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) for `common_name`, also valid for 127.0.0.1, and its EC key
    (PEM; `key_pem` to certify a given key): (certificate, key)."""
    key = (serialization.load_pem_private_key(key_pem, password=None) if key_pem is not None
           else ec.generate_private_key(ec.SECP256R1()))  # fmt: skip
    assert isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(valid_from)
        .not_valid_after(valid_from + timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_out = key_pem or key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())  # fmt: skip
    return certificate.public_bytes(serialization.Encoding.PEM), key_out
