"""System configuration (recorded as events, effective without a restart) and network settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from litestar import Controller, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody

from api.deps import ConfigDeps
from domain.config import ConfigValues
from domain.control import ChangeConfig
from domain.access import Permission, Principal


class ConfigUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The fields to change; those left out keep their value. Ranges: `polling_interval` 1-86400 s,
    `data_retention_days` 1-36500, `offline_after` 1-1000 polls, `poll_timeout` 0.1-120 s,
    `poll_concurrency` 1-1024."""

    polling_interval: float | msgspec.UnsetType = msgspec.UNSET
    data_retention_days: int | msgspec.UnsetType = msgspec.UNSET
    allow_device_control: bool | msgspec.UnsetType = msgspec.UNSET
    require_https: bool | msgspec.UnsetType = msgspec.UNSET
    offline_after: int | msgspec.UnsetType = msgspec.UNSET
    poll_timeout: float | msgspec.UnsetType = msgspec.UNSET
    poll_concurrency: int | msgspec.UnsetType = msgspec.UNSET


class NetworkSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How this installation reaches devices: `network_mode` is `bridge` inside a container, else `host`."""

    network_mode: str
    discovery_enabled: bool
    manual_devices_enabled: bool
    host_ip: str
    discovery_target: str
    discovery_port: int


def _changes(update: ConfigUpdate) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(update).items() if v is not msgspec.UNSET}


class ConfigController(Controller):
    path = "/api"
    tags = ["system"]

    @get("/system/config", operation_id="getSystemConfig", opt={"permission": Permission.SYSTEM_CONFIG})
    async def show(self, config_deps: NamedDependency[ConfigDeps]) -> ConfigValues:
        """The effective system configuration: the settings the process started with, overlaid with every
        recorded change."""
        return await config_deps.config.current()

    @put("/system/config", operation_id="updateSystemConfig", opt={"permission": Permission.SYSTEM_CONFIG})
    async def update(
        self, data: JSONBody[ConfigUpdate], principal: NamedDependency[Principal], config_deps: NamedDependency[ConfigDeps]
    ) -> ConfigValues:
        """Change some fields; each change is a `ConfigChanged` event, taken up by pollers and executors
        within seconds, without a restart. 422 `INVALID_CONFIG` naming the field out of range; 400 for a
        wrong type or an unknown field. Nothing changes on an error."""
        config, position = await config_deps.config.change(
            ChangeConfig(changes=_changes(data), actor=principal.actor)
        )
        if position:
            config_deps.reads.on_saved()
        return config

    @get("/settings/network", operation_id="getNetworkSettings", opt={"permission": Permission.SYSTEM_CONFIG})
    async def network(self, config_deps: NamedDependency[ConfigDeps]) -> NetworkSettings:
        """Where the API listens and where discovery looks for devices."""
        return NetworkSettings(
            network_mode="bridge" if Path("/.dockerenv").exists() else "host",
            discovery_enabled=True,
            manual_devices_enabled=True,
            host_ip=config_deps.host,
            discovery_target=config_deps.discovery.target,
            discovery_port=config_deps.discovery.port or 9999,
        )
