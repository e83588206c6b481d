"""Alerts end to end: a silenced emulated device fires once, is delivered once to a signed webhook and to
an apprise service on loopback, resolves when it answers again; a rebuild of the log gives the same
alert history; a failing webhook is retried, across a restart, not lost."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest

from adapters.alert_delivery import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature_matches
from adapters.emulator import DeviceServer, EmulatorFleet
from domain.alert import AlertDelivery, delivery_id
from domain.ports import Clock
from infra.bootstrap import Runtime
from projections.alert_dispatch import AlertDispatcher
from tests.harness import WAIT_S, background, error_of
from tests.kit import eventually

SECRET = "a-webhook-secret-of-some-length"


class Receiver:
    """An HTTP server on loopback that keeps every request and answers 500 to the first `failures`."""

    def __init__(self, failures: int = 0) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append((self.path, dict(self.headers.items()), body))
                failing = receiver.failures > 0
                receiver.failures -= failing
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def on(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(headers, body) for p, headers, body in self.requests if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


class OffsetClock(Clock):
    """The system's clock moved on by what the test advances. The poller stamps its readings with the
    system's clock, so the alerts part's ticks must run beside it: a clock years away from it would have
    the energy fold spread one reading's counter over the years between."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def advance(self, seconds: float = 0.0, **delta: float) -> None:
        self.offset += timedelta(seconds=seconds, **delta)


@pytest.fixture
def clock() -> Clock:
    return OffsetClock()


async def settle(runtime: Runtime, dispatcher: AlertDispatcher, *, passes: int = 8) -> None:
    """Pass after pass, each after the read models caught up, until a pass records nothing."""
    for _ in range(passes):
        newest = await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0
        assert await runtime.services().reads.wait_projected(newest, projector="alerts", timeout=WAIT_S)
        if not await dispatcher.pass_once():
            return
    raise AssertionError("the alerts part kept recording")


async def test_a_silenced_device_fires_once_delivers_once_resolves_and_replays_alike(
    runtime: Runtime, client: httpx.AsyncClient, viewer: httpx.AsyncClient, fleet: EmulatorFleet,
    receiver: Receiver,
) -> None:  # fmt: skip
    clock = runtime.clock
    assert isinstance(clock, OffsetClock)
    emulated, server = next((d, s) for d, s in fleet if d.model == "KP115")
    subject = f"{runtime.stream.subject_prefix}.events.alert.*.Fired"
    published = await runtime.js.subscribe(subject, ordered_consumer=True)
    base = f"http://127.0.0.1:{receiver.port}"
    async with background(runtime):
        added = await client.post("/api/devices/manual", json={"ip": server.address})
        device_id = added.json()["device_id"]
        refused = await viewer.post("/api/alerts/rules", json={"name": "x", "kind": "part_degraded"})
        invalid = await client.post("/api/alerts/rules", json={"name": "no device", "kind": "device_offline"})
        created = await client.post("/api/alerts/rules", json={
            "name": "Freezer silent", "kind": "device_offline", "device_id": device_id, "for_minutes": 5,
            "targets": [{"type": "webhook", "url": f"{base}/hook", "secret": SECRET},
                        {"type": "apprise", "url": f"json://127.0.0.1:{receiver.port}/apprise"},
                        {"type": "webhook", "url": f"{base}/made"}],
        })  # fmt: skip
        assert created.status_code == 201, created.text
        rule = created.json()["rule"]
        dispatcher = runtime.alert_dispatcher()
        await settle(runtime, dispatcher)

        await server.stop()
        await eventually(lambda: _online(client, device_id, False), every=0.2, what="the silent device offline")
        await settle(runtime, dispatcher)
        firing_early = (await client.get("/api/alerts")).json()
        clock.advance(minutes=6)
        await settle(runtime, dispatcher)
        firing = (await viewer.get("/api/alerts?status=firing")).json()
        for bad in ("limit=0", "limit=1001", "status=sometimes"):
            assert error_of(await viewer.get(f"/api/alerts?{bad}"), 422) == "VALIDATION_ERROR"
        clock.advance(minutes=1)
        await settle(runtime, dispatcher)

        revived = DeviceServer(emulated, host=server.host, port=server.port)
        await revived.start()
        try:
            await eventually(lambda: _online(client, device_id, True), every=0.2, what="the device online again")
            await settle(runtime, dispatcher)
        finally:
            await revived.stop()
        await settle(runtime, runtime.alert_dispatcher())  # as after a restart: nothing is sent again
        history = (await client.get("/api/alerts")).json()
        rules = (await client.get("/api/alerts/rules")).json()
        await asyncio.to_thread(runtime.engine.rebuild, "alerts")
        replayed = (await client.get("/api/alerts")).json()
        differences = await asyncio.to_thread(runtime.engine.verify, ["alerts"])
    messages = []
    while True:
        try:
            messages.append(msgspec.json.decode((await published.next_msg(timeout=1)).data))
        except Exception:
            break
    await published.unsubscribe()

    assert error_of(refused, 403) == "INSUFFICIENT_PERMISSIONS"
    assert invalid.status_code == 400 and invalid.json()["error_code"] == "INVALID_ALERT_RULE"
    made = created.json()["secrets"]
    assert [s["target_id"] for s in made] == [rule["targets"][2]["target_id"]]
    assert SECRET not in created.text and "json://127.0.0.1" not in json.dumps(rules)
    assert [t["hint"] for t in rules[0]["targets"]] == [f"{base}/hook", "json://…", f"{base}/made"]
    assert firing_early["count"] == 0
    assert firing["count"] == 1 and firing["alerts"][0]["state"] == "firing"
    assert history["count"] == 1
    alert = history["alerts"][0]
    assert alert["state"] == "resolved" and alert["detail"] == "device offline"
    held = datetime.fromisoformat(alert["fired_at"]) - datetime.fromisoformat(rules[0]["created_at"])
    assert timedelta(minutes=5) <= held < timedelta(minutes=7)
    assert datetime.fromisoformat(alert["resolved_at"]) - datetime.fromisoformat(alert["fired_at"]) >= timedelta(minutes=1)
    assert sorted((d["phase"], d["delivered"], d["attempts"]) for d in alert["deliveries"]) == [
        ("fired", True, 1)] * 3 + [("resolved", True, 1)] * 3

    hooks = receiver.on("/hook")
    assert [json.loads(body)["phase"] for _, body in hooks] == ["fired", "resolved"]
    for headers, body in hooks:
        assert signature_matches(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert not signature_matches("another-secret-entirely", headers[TIMESTAMP_HEADER], body,
                                     headers[SIGNATURE_HEADER])  # fmt: skip
    assert hooks[0][0][DELIVERY_HEADER] == str(delivery_id(alert_id_of(alert), rule["targets"][0]["target_id"], "fired"))
    made_hooks = receiver.on("/made")
    assert len(made_hooks) == 2 and signature_matches(made[0]["secret"], made_hooks[0][0][TIMESTAMP_HEADER],
                                                      made_hooks[0][1], made_hooks[0][0][SIGNATURE_HEADER])  # fmt: skip
    apprised = [json.loads(body) for _, body in receiver.on("/apprise")]
    assert [m["title"] for m in apprised] == ["[WattLedger FIRING] Freezer silent",
                                              "[WattLedger RESOLVED] Freezer silent"]  # fmt: skip
    assert [(m["aggregate"], m["event"], m["data"]["rule_name"]) for m in messages] == [
        ("alert", "Fired", "Freezer silent")
    ]
    assert "targets" not in json.dumps(messages)
    assert replayed == history and differences == []


def alert_id_of(alert: dict[str, Any]) -> UUID:
    return UUID(alert["alert_id"])


async def _online(client: httpx.AsyncClient, device_id: str, expected: bool) -> bool:
    return bool((await client.get(f"/api/device/{device_id}")).json()["online"] is expected)


async def test_a_failing_webhook_is_retried_after_its_backoff_even_after_a_restart_and_a_test_send_goes_out(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    clock = runtime.clock
    assert isinstance(clock, OffsetClock)
    receiver.failures = 1
    async with background(runtime, poll=False):
        created = await client.post("/api/alerts/rules", json={
            "name": "Relay trouble", "kind": "part_degraded", "part": "relay",
            "targets": [{"type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/hook", "secret": SECRET}],
        })  # fmt: skip
        assert created.status_code == 201, created.text
        rule = created.json()["rule"]
        handlers = runtime.alert_handlers()
        assert await handlers.observe_part("relay", degraded=True, error="NATS away")
        first = runtime.alert_dispatcher()
        await settle(runtime, first)
        failed = (await client.get("/api/alerts")).json()["alerts"]
        restarted = runtime.alert_dispatcher()
        await settle(runtime, restarted)
        still = len(receiver.on("/hook"))
        clock.advance(31)
        await settle(runtime, runtime.alert_dispatcher())
        delivered = (await client.get("/api/alerts")).json()["alerts"]
        unknown_service = await client.post("/api/alerts/rules", json={
            "name": "nowhere", "kind": "part_degraded", "targets": [{"type": "apprise", "url": "nonsense://x"}],
        })  # fmt: skip
        tested = await client.post(f"/api/alerts/rules/{rule['rule_id']}/test")
        unknown = await client.post("/api/alerts/rules/00000000-0000-0000-0000-000000000000/test")
        patched = await client.patch(f"/api/alerts/rules/{rule['rule_id']}", json={"name": "Relay down"})
        deleted = await client.delete(f"/api/alerts/rules/{rule['rule_id']}")
        await settle(runtime, runtime.alert_dispatcher())
        gone = await client.get(f"/api/alerts/rules/{rule['rule_id']}")
        newest = await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0
        assert await runtime.services().reads.wait_projected(newest, projector="audit", timeout=WAIT_S)
        audit = {
            kind: [e["summary"] for e in (await client.get("/api/audit", params={"aggregate": kind})).json()["entries"]]
            for kind in ("alertrule", "alert", "parthealth")
        }  # fmt: skip

    assert [(d["attempts"], d["delivered"], d["error"]) for d in failed[0]["deliveries"]] == [
        (1, False, "answered 500")
    ]
    assert still == 1
    assert [(d["attempts"], d["delivered"], d["status"]) for d in delivered[0]["deliveries"]] == [(2, True, 200)]
    hooks = receiver.on("/hook")
    assert len({headers[DELIVERY_HEADER] for headers, _ in hooks[:2]}) == 1
    stream_id = delivery_id(alert_id_of(delivered[0]), rule["targets"][0]["target_id"], "fired")
    attempts = [e for e in runtime.app.events.get(stream_id) if isinstance(e, AlertDelivery.Attempted)]
    assert [(e.attempt, e.ok) for e in attempts] == [(1, False), (2, True)]
    assert tested.status_code == 200 and [r["ok"] for r in tested.json()["results"]] == [True]
    assert json.loads(hooks[-1][1])["phase"] == "test"
    assert error_of(unknown, 404) == "ALERT_RULE_NOT_FOUND"
    assert error_of(unknown_service, 400) == "INVALID_ALERT_RULE"
    assert patched.status_code == 200 and patched.json()["rule"]["name"] == "Relay down"
    assert patched.json()["secrets"] == [] and patched.json()["rule"]["targets"] == rule["targets"]
    assert deleted.status_code == 200 and error_of(gone, 404) == "ALERT_RULE_NOT_FOUND"
    admin = "user root"
    assert audit["alertrule"] == [
        f"{admin} deleted alert rule Relay down", f"{admin} changed alert rule Relay down (rule of part relay)",
        f"{admin} created alert rule Relay trouble (part_degraded of part relay)",
    ]
    assert audit["alert"] == [
        "system (alerts) resolved alert " + delivered[0]["alert_id"] + ": rule deleted",
        "system (alerts) fired alert 1 of alert rule Relay trouble: part relay degraded",
    ]
    assert audit["parthealth"] == ["system saw part relay degraded: NATS away",
                                   "system began keeping the health of a supervised part"]  # fmt: skip
