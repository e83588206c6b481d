"""`require_https` through the app: once on, plain HTTP from another machine is turned away, HTTPS passes."""

from __future__ import annotations

import httpx
from litestar import Litestar

from tests.harness import SignedIn, bearer


def remote(api: Litestar, scheme: str, headers: dict[str, str]) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api, client=("192.0.2.20", 51000))
    return httpx.AsyncClient(transport=transport, base_url=f"{scheme}://wattledger.test", headers=headers)


async def test_plain_http_from_another_machine_is_turned_away_once_https_is_required(
    api: Litestar, admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    signed_in, local = admin
    async with remote(api, "http", bearer(signed_in)) as plain, remote(api, "https", bearer(signed_in)) as secure:
        assert (await secure.get("/api/devices")).status_code == 200
        assert (await local.put("/api/system/config", json={"require_https": True})).status_code == 200
        refused = await plain.get("/api/devices")
        assert refused.status_code == 403 and refused.json()["error_code"] == "HTTPS_REQUIRED"
        assert refused.headers["x-content-type-options"] == "nosniff"
        page = await plain.get("/schema")
        assert page.status_code == 307 and page.headers["location"] == "https://wattledger.test/schema"
        answered = await secure.get("/api/devices")
        assert answered.status_code == 200 and answered.headers["strict-transport-security"].startswith("max-age")
        assert (await local.get("/api/system/config")).json()["require_https"] is True
