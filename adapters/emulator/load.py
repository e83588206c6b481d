"""The load and energy model of an emulated device: each outlet's drifting load and energy counter.

Time passes by a monotonic `clock` multiplied by `speed`; the load follows a bounded,
mean-reverting random walk around each outlet's base load, energy is counted while the relay is
on, and scheduled reboots return the counters to 0. `EmulatedDevice` (`adapters.emulator.device`)
builds on it and answers the IOT requests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

_LOAD_CORRELATION_S = 300.0
_LOAD_SPREAD = 0.08
_LOAD_BOUND = 0.25


class Outlet:
    """Mutable state of one relay and the load behind it."""

    __slots__ = ("alias", "base_w", "child_id", "energy_wh", "index", "load_w", "on", "on_since")

    def __init__(
        self, *, index: int, child_id: str, alias: str, on: bool, base_w: float, now: float
    ) -> None:
        self.index = index
        self.child_id = child_id
        self.alias = alias
        self.on = on
        self.base_w = base_w
        self.load_w = base_w
        self.energy_wh = 0.0
        self.on_since = now


class LoadModel:
    """The outlets' loads and energy counters over time, and the reboots that reset the counters."""

    _outlets: list[Outlet]

    def __init__(
        self, *, speed: float, reboot_every: float | None, seed: int | None, clock: Callable[[], float]
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        if reboot_every is not None and reboot_every <= 0:
            raise ValueError(f"reboot_every must be positive or None, got {reboot_every}")
        self._speed = speed
        self._reboot_every = reboot_every
        self._rng = random.Random(seed)
        self._clock = clock
        now = clock()
        self._last = now
        self._next_reboot = None if reboot_every is None else now + reboot_every
        self._reboots = 0

    def reboot(self) -> None:
        """Reboot now: energy counters go back to 0, relays keep their state."""
        now = self._clock()
        self._advance(now)
        self._restart(now)
        if self._reboot_every is not None:
            self._next_reboot = now + self._reboot_every

    def _on_time(self, outlet: Outlet, now: float) -> int:
        return int(now - outlet.on_since) if outlet.on else 0

    def _switch(self, outlet: Outlet, on: bool, now: float) -> None:
        if outlet.on != on:
            outlet.on = on
            outlet.on_since = now

    def _restart(self, now: float) -> None:
        self._reboots += 1
        for outlet in self._outlets:
            outlet.energy_wh = 0.0
            outlet.on_since = now

    def _advance(self, now: float) -> None:
        while self._next_reboot is not None and self._next_reboot <= now:
            assert self._reboot_every is not None
            self._integrate(self._next_reboot)
            self._restart(self._next_reboot)
            self._next_reboot += self._reboot_every
        self._integrate(now)

    def _integrate(self, until: float) -> None:
        """Move the load along a bounded mean-reverting walk and count energy up to `until`."""
        if until <= self._last:
            return
        dt = (until - self._last) * self._speed
        decay = math.exp(-dt / _LOAD_CORRELATION_S)
        spread = math.sqrt(1.0 - decay * decay)
        for outlet in self._outlets:
            before = outlet.load_w
            drifted = (
                outlet.base_w
                + (before - outlet.base_w) * decay
                + outlet.base_w * _LOAD_SPREAD * spread * self._rng.gauss(0.0, 1.0)
            )
            outlet.load_w = self._bounded(outlet, drifted)
            if outlet.on:
                outlet.energy_wh += (before + outlet.load_w) / 2 * dt / 3600
        self._last = until

    @staticmethod
    def _bounded(outlet: Outlet, watts: float) -> float:
        low = outlet.base_w * (1 - _LOAD_BOUND)
        high = outlet.base_w * (1 + _LOAD_BOUND)
        return min(max(watts, low), high)
