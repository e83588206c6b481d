"""SVG badges: served for public devices only, the same grey N/A for any other, text escaped, XML that parses."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from uuid import uuid4

import httpx

from domain.device import Device
from infra.bootstrap import Runtime
from tests.harness import HEATER, WAIT_S, background, error_of
from tests.kit import seed_device

ALIAS = "<script>alert(1)</script> & Co"
SVG_NS = "{http://www.w3.org/2000/svg}"
KINDS = ("status", "uptime/24h", "power", "cost/7d")


def texts(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.headers["cache-control"] == "max-age=60"
    root = ET.fromstring(response.content)
    assert root.tag == f"{SVG_NS}svg"
    return [node.text or "" for node in root.iter(f"{SVG_NS}text")]


async def test_badges_show_a_public_device_and_nothing_of_any_other(
    runtime: Runtime, client: httpx.AsyncClient, anonymous: httpx.AsyncClient, read_key: httpx.AsyncClient
) -> None:
    device = await asyncio.to_thread(seed_device, runtime.app, "10.4.0.1", HEATER,
                                     measured_at=datetime(2026, 5, 4, 10, tzinfo=timezone.utc), alias=ALIAS)  # fmt: skip
    newest = await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0
    async with background(runtime, poll=False):
        assert await runtime.services().reads.wait_projected(newest, timeout=WAIT_S)
        private = {kind: await anonymous.get(f"/api/badge/{device}/{kind}") for kind in KINDS}
        unknown = {kind: await anonymous.get(f"/api/badge/{uuid4()}/{kind}") for kind in KINDS}
        by_address = await anonymous.get("/api/badge/10.9.9.9:9999/status")
        refused = await read_key.put(f"/api/device/{device}/public", json={"public": True})
        made = await client.put(f"/api/device/{device}/public", json={"public": True})
        public = {kind: await anonymous.get(f"/api/badge/{device}/{kind}") for kind in KINDS}
        bad_duration = await anonymous.get(f"/api/badge/{uuid4()}/uptime/forever")
        bad_body = await client.put(f"/api/device/{device}/public", json={"public": "yes"})
        assert (await client.put(f"/api/device/{device}/public", json={"public": False})).status_code == 200
        hidden = await anonymous.get(f"/api/badge/{device}/status")

    for kind in KINDS:
        assert private[kind].content == unknown[kind].content, kind
        assert texts(private[kind]) == [kind.split("/")[0], "N/A"]
        assert b"script" not in private[kind].content and b"Co" not in private[kind].content
    assert by_address.content == private["status"].content
    assert error_of(refused, 403) == "INSUFFICIENT_PERMISSIONS"
    assert made.status_code == 200 and made.json() == {"device_id": str(device), "public": True}
    stored = await asyncio.to_thread(runtime.app.repository.get, device)
    assert isinstance(stored, Device) and stored.public is False
    marks = [e for e in runtime.app.events.get(device) if isinstance(e, Device.PublicitySet)]
    assert [(e.public, e.actor.startswith("user:")) for e in marks] == [(True, True), (False, True)]

    assert texts(public["status"]) == [ALIAS, "up"]
    assert b"&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in public["status"].content
    assert b"<script>" not in public["status"].content
    assert texts(public["power"]) == [f"{ALIAS} power", "900.0 W"]
    assert texts(public["uptime/24h"])[0] == f"{ALIAS} uptime 24h"
    assert texts(public["cost/7d"]) == [f"{ALIAS} cost 7d", "0.00"]
    assert error_of(bad_duration, 422) == "INVALID_RANGE"
    assert bad_body.status_code in (400, 422)
    assert hidden.content == private["status"].content
