"""The dashboard in a real headless Chromium, against the app on loopback with emulated devices.

One test walks what a new user does, sharing one browser and one app: first-run setup and
sign-in, live power, switching a strip outlet, a year of imported history drawn as a chart, the
cost page against `/api/costs`, the audit log and both exports, sign-in with a second factor, and
axe-core at desktop and phone widths. Screenshots go to the
test's temporary directory (printed at the end).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect

from adapters.emulator import EmulatorFleet, loopback_hosts
from domain.commands import AddDevice
from infra.bootstrap import Runtime
from tests.harness import ADMIN, ADMIN_PASSWORD, VIEWER, VIEWER_PASSWORD, LiveServer, background, emulated, executing, serve_live
from tests.kit import eventually

HERE = Path(__file__).parent
AXE = HERE / "vendor" / "axe.min.js"
HOSTILE_ALIAS = '<img src=x id="pwned"> & "Heater"'
DESKTOP = ViewportSize(width=1280, height=900)
PHONE = ViewportSize(width=390, height=844)
WAIT_MS = 20_000
expect.set_options(timeout=WAIT_MS)


@pytest.fixture
async def discoverable() -> AsyncIterator[EmulatorFleet]:
    """One plug of its own loopback address answering UDP discovery."""
    async with EmulatorFleet(["HS100"], host=loopback_hosts(1, first=231), discovery_port=0, seed=5) as devices:
        yield devices


@pytest.fixture
async def live(runtime: Runtime, fleet: EmulatorFleet, discoverable: EmulatorFleet) -> AsyncIterator[LiveServer]:
    """The app on loopback with the poller, projectors, relay and executor running, a plug and a strip
    added, and discovery aimed at `discoverable`."""
    handlers = runtime.handlers()
    for address in (fleet.addresses[0], fleet.addresses[3]):
        await handlers.add_device(AddDevice(address=address, actor="test"))
    async with background(runtime, poll=True), executing(runtime), \
            serve_live(runtime, discovery_target="127.255.255.255", discovery_port=discoverable.discovery_port) as server:
        yield server


@pytest.fixture
async def browser(chromium_path: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=str(chromium_path), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


def test_the_vendored_scripts_match_their_recorded_sha384() -> None:
    for sums in (HERE.parent.parent / "api" / "static" / "vendor" / "uplot" / "SHA384SUMS", HERE / "vendor" / "SHA384SUMS"):
        lines = [line.split() for line in sums.read_text().splitlines() if line.strip()]
        assert len(lines) >= 2
        for digest, name in lines:
            assert hashlib.sha384((sums.parent / name).read_bytes()).hexdigest() == digest, name


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is. Its script is evaluated by the test through the
    DevTools protocol, never served by the app nor allowed by the page's CSP."""
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.evaluate(AXE.read_text() + "\n;true")
    result: list[dict[str, Any]] = await page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}))"
    )
    return result


async def year_of_readings(http: httpx.AsyncClient, device: str, runtime: Runtime) -> None:
    """A reading every 12 hours over the year up to the runtime's clock, its counter rising 600 Wh each."""
    end = runtime.clock.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    readings = [
        {"timestamp": (end - timedelta(hours=12 * i)).isoformat(), "power_w": 50.0 + (i % 8) * 10, "total_wh": 1.0 + 600.0 * (730 - i)}
        for i in range(730, 0, -1)
    ]  # fmt: skip
    answer = await http.post(f"/api/devices/{device}/readings", json={"readings": readings})
    assert answer.status_code == 200, answer.text
    assert answer.json()["recorded"] == len(readings)

    async def projected() -> bool:
        history = (await http.get(f"/api/device/{device}/history", params={"period": "1y"})).json()
        return sum(p["energy_kwh"] or 0 for p in history["data"]) >= 0.6 * (len(readings) - 1) * 0.99

    await eventually(projected, what="the imported year in the energy read model")


async def test_a_new_user_sets_up_signs_in_switches_and_reads_history_and_costs(
    runtime: Runtime, fleet: EmulatorFleet, live: LiveServer, browser: Browser, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.set_default_timeout(WAIT_MS)

    # First run: the page offers setup instead of curl, then sign-in.
    await page.goto(live.http_url + "/")
    await expect(page.get_by_role("heading", name="Create the administrator")).to_be_visible()
    await page.get_by_label("User name").fill(ADMIN)
    await page.get_by_label("Password").fill(ADMIN_PASSWORD)
    await page.get_by_role("button", name="Create administrator").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Password").fill(ADMIN_PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Devices", exact=True)).to_be_visible()
    cookies = {c["name"]: c for c in await context.cookies()}
    assert cookies["wl_refresh"]["httpOnly"] and cookies["wl_refresh"]["sameSite"] == "Strict"
    assert "wl_refresh" not in await page.evaluate("document.cookie")

    async with httpx.AsyncClient(base_url=live.http_url, timeout=60) as http:
        signed_in = await http.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
        http.headers["Authorization"] = f"Bearer {signed_in.json()['access_token']}"
        devices = {d["device_ip"]: d for d in (await http.get("/api/devices")).json()}
        plug_id, strip_id = devices[fleet.addresses[0]]["device_id"], devices[fleet.addresses[3]]["device_id"]
        rate = {"rate_type": "simple", "rate_per_kwh": "0.25", "currency": "EUR",
                "effective_from": (runtime.clock.now() - timedelta(days=400)).isoformat()}  # fmt: skip
        assert (await http.post("/api/rates", json=rate)).status_code == 201
        await year_of_readings(http, plug_id, runtime)

        # A device added by address from the page, its name text and never markup, also after a reload
        # (which keeps the session through the refresh cookie).
        await page.get_by_label("Device address").fill(fleet.addresses[1])
        await page.get_by_label("Alias (optional)").fill(HOSTILE_ALIAS)
        await page.get_by_role("button", name="Add device").click()
        hostile_card = page.locator("article.device", has_text="KP115")
        await expect(hostile_card.get_by_role("heading")).to_have_text(HOSTILE_ALIAS)
        await page.reload()
        await expect(hostile_card.get_by_role("heading")).to_have_text(HOSTILE_ALIAS)
        assert await page.locator("#pwned").count() == 0
        await page.get_by_role("button", name="Run discovery").click()
        await expect(page.locator("#status")).to_have_text("Discovery: 1 found, 1 added, 0 already known.")
        await expect(page.locator("article.device")).to_have_count(4)

        # Live power: the plug is switched at the device itself, and its card follows over the WebSocket.
        plug_card = page.locator(f'article[data-device="{plug_id}"]')
        power = plug_card.locator('[data-role="power"]')
        await expect(power).not_to_have_text("–")
        before = await power.text_content()
        device, _ = emulated(fleet, "HS110")
        device.set_relay(not device.sysinfo()["relay_state"])
        await expect(power).not_to_have_text(before or "")

        # A strip outlet switched from the page: requested, then confirmed, and off on the device.
        strip_card = page.locator(f'article[data-device="{strip_id}"]')
        outlet = strip_card.locator('li[data-outlet="1"]')
        strip, _ = emulated(fleet, "HS300")
        strip.set_relay(True, outlet=1)
        await outlet.get_by_role("button", name="off").click()
        await expect(outlet.locator(".lifecycle")).to_have_text("off: confirmed")
        assert strip.sysinfo()["children"][1]["state"] == 0
        await page.set_viewport_size(PHONE)
        await page.screenshot(path=str(shots / "devices-phone.png"))
        assert await axe_violations(page) == []
        await page.set_viewport_size(DESKTOP)
        assert await axe_violations(page) == []

        # A year of history, drawn.
        await page.goto(f"{live.http_url}/#/device/{plug_id}")
        await page.get_by_label("Period").select_option("1y")
        await page.get_by_label("Time zone").fill("Europe/Berlin")
        await page.get_by_role("button", name="Show").click()
        chart = page.locator(".chart")
        await expect(chart).to_have_attribute("aria-label", re.compile(r"History chart: 5[234] 1w points in Europe/Berlin"))
        painted = await chart.locator("canvas").evaluate(
            "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"
        )
        assert painted > 2000
        await expect(page.get_by_role("region", name="Energy and cost per 1w bucket (Europe/Berlin)")).to_be_visible()
        await page.screenshot(path=str(shots / "device.png"), full_page=True)
        await page.get_by_role("region", name="History", exact=True).screenshot(path=str(shots / "device-history.png"))
        assert await axe_violations(page) == []

        # Costs: the total shown is /api/costs's for a range of past days (live readings change today's).
        await page.goto(f"{live.http_url}/#/costs")
        total = page.locator('[data-role="total-cost"]')
        await expect(total).to_contain_text("EUR")
        day = runtime.clock.now().date()
        start, end = (day - timedelta(days=40)).isoformat(), (day - timedelta(days=3)).isoformat()
        await page.get_by_label("From").fill(start)
        await page.get_by_label("To (inclusive)").fill(end)
        await page.get_by_role("button", name="Show costs").click()
        await expect(page.get_by_role("region", name="Daily breakdown").locator("tbody tr")).to_have_count(38)
        costs = (await http.get("/api/costs", params={"start_date": start, "end_date": end})).json()
        assert costs["total_cost"] > 0
        await expect(total).to_have_text(f"{costs['total_cost']:.4f} EUR")
        await expect(page.get_by_text("In force: simple")).to_be_visible()
        await page.set_viewport_size(PHONE)
        assert await axe_violations(page) == []
        await page.set_viewport_size(DESKTOP)
        await page.screenshot(path=str(shots / "costs.png"), full_page=True)

        # Audit: the log filtered by event type, and both exports started and downloaded from the page.
        await page.goto(f"{live.http_url}/#/audit")
        log = page.get_by_role("region", name="Audit log, newest first")
        await expect(log).to_contain_text("Added")
        async def switch_audited() -> bool:
            found = await http.get("/api/audit", params={"event_type": "ControlSucceeded"})
            return len(found.json()["entries"]) == 1

        await eventually(switch_audited, what="the switch in the audit log")
        await page.get_by_label("Event type").fill("ControlSucceeded")
        await page.get_by_role("button", name="Filter").click()
        await expect(log.locator("tbody tr")).to_have_count(1)
        await expect(log).to_contain_text("command.ControlSucceeded")
        await page.get_by_role("button", name="Start compliance export").click()
        async with page.expect_download() as compliance:
            await page.get_by_role("button", name="Download events.jsonl").click()
        lines = Path(await (await compliance.value).path()).read_text().splitlines()
        assert len(lines) > 10 and all(line.startswith("{") for line in lines)
        await page.get_by_role("button", name="Export device data").click()
        async with page.expect_download() as data:
            await page.get_by_role("button", name=re.compile(r"Download export_.*\.csv")).click()
        assert Path(await (await data.value).path()).read_text().startswith("timestamp")
        assert await axe_violations(page) == []

        # A viewer is offered no switch, no device management and no audit.
        made = await http.post("/api/users", json={"username": VIEWER, "password": VIEWER_PASSWORD, "role": "viewer"})
        assert made.status_code == 201, made.text
        viewer = await browser.new_context(viewport=PHONE)
        as_viewer = await viewer.new_page()
        await as_viewer.goto(live.http_url + "/")
        await as_viewer.get_by_label("User name").fill(VIEWER)
        await as_viewer.get_by_label("Password").fill(VIEWER_PASSWORD)
        await as_viewer.get_by_role("button", name="Sign in").click()
        await expect(as_viewer.locator(f'article[data-device="{strip_id}"] li.relay')).to_have_count(6)
        assert await as_viewer.get_by_role("button", name=re.compile("^Switch ")).count() == 0
        assert await as_viewer.get_by_role("button", name="Add device").count() == 0
        await expect(as_viewer.get_by_role("link", name="Audit")).to_be_hidden()
        await viewer.close()

        # With two-factor on, sign-in asks for a code.
        started = await http.post("/api/auth/2fa/setup", json={"current_password": ADMIN_PASSWORD})
        enrollment = started.json()
        verified = await http.post("/api/auth/2fa/verify", json={"token": pyotp.TOTP(enrollment["secret"]).now()})
        assert verified.status_code == 200, verified.text
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert "wl_refresh" not in {c["name"] for c in await context.cookies()}
        await page.get_by_label("User name").fill(ADMIN)
        await page.get_by_label("Password").fill(ADMIN_PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_label("Two-factor code")).to_be_visible()
        await page.get_by_label("Two-factor code").fill(enrollment["backup_codes"][0])
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Audit", exact=True)).to_be_visible()

    # No CSP violation, no script error; the one 401 is the sign-in that asked for the code.
    assert [p for p in problems if "401" not in p] == []
    await context.close()
    print(f"screenshots: {shots}")
