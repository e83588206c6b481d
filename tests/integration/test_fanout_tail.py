"""`wattledger tail` against a real JetStream: readings and status as a person reads them, or envelopes."""

from __future__ import annotations

import asyncio
import io
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from adapters.bus import StreamConfig, connect_nats, ensure_stream
from adapters.eventstore import WattLedger
from adapters.relay import Relay
from domain.commands import PollResult
from domain.errors import InvalidAddress
from infra.tail import device_filter, run_tail
from tests.harness import metered_plug
from tests.kit import eventually, seed_device, seed_polls

T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)


async def _tail_lines(app: WattLedger, database_url: str, nats_url: str, stream: StreamConfig, *,
                      as_json: bool, device: str | None, wanted: int) -> list[str]:  # fmt: skip
    nc = await connect_nats(nats_url, name="test-tail")
    js = nc.jetstream()
    await ensure_stream(js, stream)
    plug = seed_device(app, "127.0.0.31", metered_plug(1.0), measured_at=T0, alias="Desk")
    other = seed_device(app, "127.0.0.32", metered_plug(1.0), measured_at=T0, alias="Fridge")
    out, stop, ready = io.StringIO(), asyncio.Event(), asyncio.Event()
    try:
        async with Relay(app, js, database_url=database_url, stream=stream, listen=False) as relay:
            await relay.publish_pending()
            task = asyncio.create_task(run_tail(nats_url, stream, stop, device=device, as_json=as_json, out=out,
                                                ready=ready.set))  # fmt: skip
            await asyncio.wait_for(ready.wait(), timeout=10)
            for k in range(1, 4):
                seed_polls(app, [PollResult(device_id=d, measured_at=T0 + timedelta(seconds=k),
                                            snapshot=metered_plug(40.0 + k)) for d in (plug, other)])  # fmt: skip
            await relay.publish_pending()
            await eventually(lambda: out.getvalue().count("\n") >= wanted, within=10, every=0.05,
                             what=f"{wanted} lines printed")  # fmt: skip
            stop.set()
            await task
    finally:
        await nc.close()
    return out.getvalue().splitlines()


async def test_tail_prints_each_reading_with_time_device_power_and_state(
    app: WattLedger, database_url: str, nats_url: str, stream_config: StreamConfig
) -> None:
    lines = await _tail_lines(app, database_url, nats_url, stream_config, as_json=False, device="127.0.0.31",
                              wanted=3)  # fmt: skip
    assert len(lines) == 3, lines
    assert all("127.0.0.31 (Desk)" in line and line.endswith(" W  on") for line in lines), lines
    assert "41.0 W" in lines[0] and "43.0 W" in lines[2]


async def test_tail_json_prints_envelopes_one_per_line(
    app: WattLedger, database_url: str, nats_url: str, stream_config: StreamConfig
) -> None:
    lines = await _tail_lines(app, database_url, nats_url, stream_config, as_json=True, device=None, wanted=6)
    envelopes = [msgspec.json.decode(line) for line in lines]
    assert {e["event"] for e in envelopes} == {"ReadingRecorded"} and len(envelopes) == 6


def test_a_device_is_named_by_id_or_address() -> None:
    assert device_filter("127.0.0.31") == device_filter("127.0.0.31:9999")
    with pytest.raises(InvalidAddress):
        device_filter("not an address!")


def test_the_tail_command_refuses_a_device_that_is_neither_id_nor_address(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from infra.cli import main

    assert main(["tail", "--device", "not an address!", "--nats-url", nats_url]) == 2
    assert "INVALID_ADDRESS" in capsys.readouterr().err
