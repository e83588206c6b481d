"""Emulator -> poller -> event store -> relay -> JetStream -> projector -> REST, all real."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import msgspec
import httpx

from adapters.emulator import DeviceServer, EmulatorFleet
from adapters.relay import decode_envelope
from infra.bootstrap import Runtime
from tests.harness import background
from tests.kit import eventually


async def test_emulated_devices_flow_through_every_part_to_the_api(
    runtime: Runtime, client: httpx.AsyncClient, fleet: EmulatorFleet
) -> None:
    prefix = runtime.stream.subject_prefix
    seen: list[Any] = []
    subscription = await runtime.js.subscribe(f"{prefix}.events.>", ordered_consumer=True)

    async def drain() -> None:
        async for message in subscription.messages:
            seen.append((message.subject, decode_envelope(message.data)))

    consumer = asyncio.create_task(drain())
    try:
        async with background(runtime):
            for address in fleet.addresses:
                response = await client.post("/api/devices/manual", json={"ip": address})
                assert response.status_code == 201, response.text
                assert response.json()["device_ip"] == address

            async def all_polled_twice() -> list[dict[str, Any]] | None:
                devices = (await client.get("/api/devices")).json()
                readings = Counter(env.data["device_id"] for s, env in seen if s.endswith(".ReadingRecorded"))
                ready = len(devices) == 5 and len(readings) == 5 and min(readings.values()) >= 2
                return devices if ready else None

            devices = await eventually(all_polled_twice, every=0.2, what="every device polled twice, in the API and stream")
            # The relay saves its position after it publishes: wait for it while it still runs.
            reached = max(env.notification_id for _, env in seen)

            async def position_saved() -> bool:
                return await runtime.relay.position() >= reached

            await eventually(position_saved, what=f"the relay's saved position at {reached} or past it")
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await subscription.unsubscribe()

    by_address = {d["device_ip"]: d for d in devices}
    for emulated, server in fleet:
        shown = by_address[server.address]
        assert (shown["model"], shown["alias"]) == (emulated.model, emulated.alias)
        assert shown["is_on"] == emulated.is_on()
        assert shown["online"] is True and shown["last_seen"] is not None
        if emulated.has_emeter:
            assert shown["current_power_w"] is not None and shown["voltage"] > 100
            if emulated.is_on():
                assert shown["current_power_w"] > 0
        else:
            assert shown["current_power_w"] is None
        if emulated.is_strip:
            assert [o["outlet_id"] for o in shown["outlets"]] == emulated.outlet_ids
            assert [o["is_on"] for o in shown["outlets"]] == [
                emulated.is_on(i) for i in range(len(emulated.outlet_ids))
            ]

    subjects = [s for s, _ in seen]
    ids = [env.notification_id for _, env in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    added = [s for s in subjects if s.endswith(".Added")]
    assert len(added) == 5 and all(s.startswith(f"{prefix}.events.device.") for s in added)
    last = max(ids)
    stream = await runtime.js.stream_info(runtime.stream.name)
    assert stream.state.messages >= last
    assert await runtime.relay.position() >= reached


async def test_relay_state_changed_on_the_device_is_seen_by_the_next_poll(
    runtime: Runtime, client: httpx.AsyncClient, fleet: EmulatorFleet
) -> None:
    emulated, server = next((d, s) for d, s in fleet if d.model == "HS110")
    async with background(runtime):
        response = await client.post("/api/devices/manual", json={"ip": server.address, "alias": "Kettle"})
        assert response.status_code == 201
        assert response.json()["alias"] == "Kettle"
        initially = response.json()["is_on"]
        emulated.set_relay(not initially)

        async def flipped() -> bool:
            shown = (await client.get(f"/api/device/{server.address}")).json()
            return bool(shown["is_on"] is (not initially))

        await eventually(flipped, every=0.2, what="the switched relay shown")
    decoded = []
    info = await runtime.js.stream_info(runtime.stream.name)
    sub = await runtime.js.subscribe(f"{runtime.stream.subject_prefix}.events.device.*.StateChanged",
                                     ordered_consumer=True)
    for _ in range(info.state.messages):
        try:
            message = await sub.next_msg(timeout=1)
        except Exception:
            break
        decoded.append(msgspec.json.decode(message.data))
    await sub.unsubscribe()
    assert [d["data"]["is_on"] for d in decoded] == [initially, not initially]
    assert decoded[-1]["actor"] == "system:poller"


async def test_device_that_stops_answering_goes_offline_once_and_comes_back(
    runtime: Runtime, client: httpx.AsyncClient, fleet: EmulatorFleet
) -> None:
    emulated, server = next((d, s) for d, s in fleet if d.model == "KP115")
    async with background(runtime):
        assert (await client.post("/api/devices/manual", json={"ip": server.address})).status_code == 201

        async def online_is(expected: bool) -> bool:
            return bool((await client.get(f"/api/device/{server.address}")).json()["online"] is expected)

        await server.stop()
        await eventually(lambda: online_is(False), every=0.2, what="the silent device offline")
        assert runtime.settings.offline_after == 2
        revived = DeviceServer(emulated, host=server.host, port=server.port)
        await revived.start()
        try:
            await eventually(lambda: online_is(True), every=0.2, what="the revived device online")
        finally:
            await revived.stop()
    notifications = await asyncio.to_thread(runtime.app.recorder.select_notifications, start=1, limit=10_000)
    names = [n.topic.rsplit(".", 1)[-1] for n in notifications]
    assert names.count("WentOffline") == 1 and names.count("CameOnline") == 1
