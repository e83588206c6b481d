"""The system configuration: one singleton aggregate whose changes take effect without a restart.

The settings a process starts with are the defaults; each accepted `PUT /api/system/config`
is a `ConfigChanged` event naming only the fields it changed, and the effective
configuration is the defaults overlaid with every recorded change. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidConfig

CONFIG_ID: UUID = uuid5(NAMESPACE_URL, "https://wattledger.invalid/system-config")


class ConfigValues(msgspec.Struct, frozen=True, kw_only=True):
    """The effective configuration (the seed's fields plus the poller's)."""

    polling_interval: float = 60.0
    data_retention_days: int = 365
    allow_device_control: bool = True
    require_https: bool = False
    offline_after: int = 3
    poll_timeout: float = 5.0
    poll_concurrency: int = 64


CONFIG_FIELDS: tuple[str, ...] = ConfigValues.__struct_fields__

_RANGES: dict[str, tuple[float, float]] = {
    "polling_interval": (1, 86400),
    "data_retention_days": (1, 36500),
    "offline_after": (1, 1000),
    "poll_timeout": (0.1, 120),
    "poll_concurrency": (1, 1024),
}
_INTEGERS = frozenset({"data_retention_days", "offline_after", "poll_concurrency"})
_FLAGS = frozenset({"allow_device_control", "require_https"})


def check_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """The changes in canonical types, or InvalidConfig naming the first field that is wrong.

    Unknown fields, wrong types (a bool is not a number) and values out of range are refused.
    """
    checked: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in CONFIG_FIELDS:
            raise InvalidConfig(f"{name} is not a configuration field", field=name)
        if name in _FLAGS:
            if not isinstance(value, bool):
                raise InvalidConfig(f"{name} must be true or false", field=name)
            checked[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidConfig(f"{name} must be a number", field=name)
        if name in _INTEGERS and not float(value).is_integer():
            raise InvalidConfig(f"{name} must be a whole number", field=name)
        low, high = _RANGES[name]
        if not low <= value <= high:
            raise InvalidConfig(f"{name} must be from {low:g} to {high:g}, got {value}", field=name)
        checked[name] = int(value) if name in _INTEGERS else float(value)
    return checked


class SystemConfig(Aggregate):
    """The recorded configuration changes (fields never changed keep the process's defaults)."""

    class Initialised(Aggregate.Created):
        actor: str

    class ConfigChanged(Aggregate.Event):
        polling_interval: float | None
        data_retention_days: int | None
        allow_device_control: bool | None
        require_https: bool | None
        offline_after: int | None
        poll_timeout: float | None
        poll_concurrency: int | None
        actor: str

    @staticmethod
    def create_id(**_: object) -> UUID:
        return CONFIG_ID

    @event(Initialised)
    def __init__(self, *, actor: str) -> None:
        self.recorded: dict[str, Any] = {}

    def change(self, changes: dict[str, Any], *, actor: str) -> bool:
        """Record the fields whose value differs from the recorded one; True if any did.

        Raises InvalidConfig for a bad field or value; nothing is recorded then.
        """
        checked = check_changes(changes)
        different = {k: v for k, v in checked.items() if self.recorded.get(k) != v}
        if not different:
            return False
        self._changed(actor=actor, **{name: different.get(name) for name in CONFIG_FIELDS})
        return True

    @event(ConfigChanged)
    def _changed(
        self,
        polling_interval: float | None,
        data_retention_days: int | None,
        allow_device_control: bool | None,
        require_https: bool | None,
        offline_after: int | None,
        poll_timeout: float | None,
        poll_concurrency: int | None,
        actor: str,
    ) -> None:
        values = {
            "polling_interval": polling_interval, "data_retention_days": data_retention_days,
            "allow_device_control": allow_device_control, "require_https": require_https,
            "offline_after": offline_after, "poll_timeout": poll_timeout, "poll_concurrency": poll_concurrency,
        }  # fmt: skip
        self.recorded.update({k: v for k, v in values.items() if v is not None})

    def effective(self, defaults: ConfigValues) -> ConfigValues:
        return effective(defaults, self)


def effective(defaults: ConfigValues, config: SystemConfig | None) -> ConfigValues:
    """The defaults overlaid with every recorded change."""
    if config is None or not config.recorded:
        return defaults
    return msgspec.structs.replace(defaults, **config.recorded)
