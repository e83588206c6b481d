"""This process's Prometheus metrics: its own registry, what it measures as it runs, and what a scrape reads.

`ProcessMetrics` holds one `CollectorRegistry` per process (never the library's global
one), with what only this process knows: API request latency by route template, and the
poll durations and failures of the poller when the poller runs in this process
(`wattledger_poller_in_process` says whether it does). A scrape adds what it reads at that
moment (`Reading`): every present device from the read models (the same answer from every
process), events stored, relay and projector lag, live clients and part restarts.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Iterable, Iterator
from typing import Any

import anyio.to_thread
import argon2
import msgspec
from argon2.exceptions import InvalidHashError, VerificationError
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from domain.errors import DeviceError, DeviceTimeout, DeviceUnreachable, UnsupportedDevice
from projections.device_metrics import DeviceSample

CONTENT_TYPE = "text/plain; version=0.0.4"
"""The text exposition format every Prometheus version reads (Litestar adds `; charset=utf-8`)."""

POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DEVICE_LABELS = ("device_id", "alias", "model", "outlet")


def failure_reason(exc: BaseException) -> str:
    """A poll failure as one of a few reasons, so the label's values stay few."""
    if isinstance(exc, (TimeoutError, DeviceTimeout)):
        return "timeout"
    if isinstance(exc, UnsupportedDevice):
        return "unsupported"
    if isinstance(exc, (DeviceUnreachable, OSError)):
        return "unreachable"
    if isinstance(exc, DeviceError):
        return "device"
    return "error"


class ProcessMetrics:
    """One process's registry and the instruments its parts feed."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "wattledger_http_request_duration_seconds", "API request latency by method, route template and status",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.poll_duration = Histogram(
            "wattledger_poll_duration_seconds",
            "Time one device poll took, failed ones included (this process's poller)",
            buckets=POLL_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.poll_failures = Counter(
            "wattledger_poll_failures", "Device polls that failed, by reason (this process's poller)", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.poller_here = Gauge(
            "wattledger_poller_in_process", "1 when this process runs a poller (the poll series are its own)",
            registry=self.registry,
        )  # fmt: skip

    def polled(self, seconds: float, failure: BaseException | None) -> None:
        """One poll of one device took `seconds`; `failure` is what it raised, if it failed."""
        self.poller_here.set(1)
        self.poll_duration.observe(seconds)
        if failure is not None:
            self.poll_failures.labels(failure_reason(failure)).inc()


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """What one scrape read: the devices and the system's state shared by every process."""

    devices: list[DeviceSample]
    events_stored: int
    relay_lag: int
    projector_lag: dict[str, int]
    live_clients: int
    part_restarts: dict[str, int]


def _gauge(name: str, text: str, labels: Iterable[str] = DEVICE_LABELS) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=list(labels))


def _device_families(devices: list[DeviceSample]) -> Iterator[Metric]:
    power = _gauge("wattledger_device_power_watts", "Power now (a strip: its total, and each outlet's)")
    voltage = _gauge("wattledger_device_voltage_volts", "Voltage now")
    current = _gauge("wattledger_device_current_amperes", "Current now")
    energy = _gauge(
        "wattledger_device_energy_watt_hours",
        "The device's cumulative energy counter as last read (it restarts from 0 when the device resets)",
    )
    relay = _gauge("wattledger_device_relay_on", "1 while the relay is on")
    per_device = ("device_id", "alias", "model")
    up = _gauge("wattledger_device_up", "1 while the device answers its polls", per_device)
    today = _gauge("wattledger_device_energy_today_kwh", "Energy used today (local day)", per_device)
    cost = _gauge("wattledger_device_cost_today", "Cost of today's energy (local day), in the rates' currency", per_device)
    for device in devices:
        names = [str(device.device_id), device.alias, device.model]
        up.add_metric(names, 1.0 if device.online else 0.0)
        today.add_metric(names, device.today_kwh)
        cost.add_metric(names, float(device.cost_today))
        for channel in device.channels:
            labels = [*names, channel.outlet]
            for family, value in ((power, channel.power_w), (voltage, channel.voltage_v),
                                  (current, channel.current_a), (energy, channel.total_wh)):  # fmt: skip
                if value is not None:
                    family.add_metric(labels, value)
            if channel.is_on is not None:
                relay.add_metric(labels, 1.0 if channel.is_on else 0.0)
    yield from (power, voltage, current, energy, relay, up, today, cost)


def _system_families(reading: Reading) -> Iterator[Metric]:
    yield GaugeMetricFamily("wattledger_events_stored", "Events in the event store (the log's newest position)",
                            value=reading.events_stored)  # fmt: skip
    yield GaugeMetricFamily("wattledger_relay_lag_events", "Events stored but not yet published to JetStream",
                            value=reading.relay_lag)  # fmt: skip
    projectors = GaugeMetricFamily("wattledger_projector_lag_events", "Events a read model has still to apply",
                                   labels=["projector"])  # fmt: skip
    for name, lag in sorted(reading.projector_lag.items()):
        projectors.add_metric([name], lag)
    yield projectors
    yield GaugeMetricFamily("wattledger_live_clients", "Live clients (WebSocket, socket.io, SSE) of this process",
                            value=reading.live_clients)  # fmt: skip
    restarts = CounterMetricFamily("wattledger_part_restarts", "Restarts of this process's supervised parts",
                                   labels=["part"])  # fmt: skip
    for part, count in sorted(reading.part_restarts.items()):
        restarts.add_metric([part], count)
    yield restarts


class _Scrape:
    """The registry's own metrics and one reading's, as one collector for `generate_latest`."""

    def __init__(self, registry: CollectorRegistry, reading: Reading) -> None:
        self.registry = registry
        self.reading = reading

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from _system_families(self.reading)
        yield from _device_families(self.reading.devices)


def exposition(metrics: ProcessMetrics, reading: Reading) -> bytes:
    """The text exposition of this process's registry and `reading`."""
    return generate_latest(_Scrape(metrics.registry, reading))


class TimeRequests(ASGIMiddleware):
    """Observe each routed HTTP request's latency under its route template (never the raw path)."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, metrics: ProcessMetrics) -> None:
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        began = time.perf_counter()
        status = 500

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await next_app(scope, receive, noting)
        finally:
            route: Any = scope.get("path_template") or "unmatched"
            self.metrics.requests.labels(scope.get("method", "GET"), str(route), str(status)).observe(
                time.perf_counter() - began
            )


class BasicCredentials:
    """The one user and argon2 password hash `/metrics` takes as basic auth."""

    def __init__(self, configured: str) -> None:
        self.user, _, self.password_hash = configured.partition(":")
        self._hasher = argon2.PasswordHasher()

    async def accepts(self, header: str) -> bool:
        """Whether an `Authorization` header's value is `Basic` with this user and password."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        same_user = hmac.compare_digest(user.encode(), self.user.encode())
        return await anyio.to_thread.run_sync(self._verify, password) and same_user

    def _verify(self, password: str) -> bool:
        try:
            return self._hasher.verify(self.password_hash, password)
        except (VerificationError, InvalidHashError):
            return False
