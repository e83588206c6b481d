"""The device list, decoded and encoded once per state of the devices read model.

`GET /api/devices` is the page every dashboard and script polls, and with a large fleet its
answer is hundreds of kilobytes that change only when the `devices` read model does. The
answer is kept with the key it was built for: the position in the log the read model had
applied (read before the rows, so the rows are never older than the key) and the local day
(today's and this month's energy depend on it). Any process sees the same key, as the
position is read from the database; a new event, another day or another zone builds it again.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from litestar.serialization import encode_json

from projections.devices import DeviceView, list_devices
from projections.tracking import projector_position

Key = tuple[int | None, date, str]


class DeviceListing:
    """The newest device list this process built, as views and as JSON, with its key."""

    def __init__(self) -> None:
        self._key: Key | None = None
        self._views: list[DeviceView] = []
        self._body = b"[]"
        self._building = asyncio.Lock()

    async def current(
        self, conn: psycopg.AsyncConnection[Any], zone: ZoneInfo, now: datetime
    ) -> tuple[list[DeviceView], bytes]:
        """Every present device (as `list_devices` gives them) and their JSON, built again only
        when the read model has moved on or the local day has changed since the last call."""
        key: Key = (await projector_position(conn, "devices"), now.astimezone(zone).date(), zone.key)
        if key == self._key:
            return self._views, self._body
        async with self._building:
            # A request that waited here finds the list another one just built.
            if key != self._key:
                views = await list_devices(conn, zone, now)
                self._views, self._body, self._key = views, encode_json(views), key
        return self._views, self._body
