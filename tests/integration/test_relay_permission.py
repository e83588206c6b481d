"""A relay whose NATS user may not publish events stops start-up with one line, and a process without
the relay part opens no relay connection (a real nats-server with authorization on a free port)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.bus import StreamConfig, ensure_stream, may_publish_events
from infra.bootstrap import open_runtime
from infra.embedded import EmbeddedNats
from infra.nats_auth import APP, RELAY
from infra.settings import Settings
from infra.startup import StartupError

pytestmark = pytest.mark.embedded

STREAM = StreamConfig(name="WL_RELAYPERM", subject_prefix="wlrelayperm")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    nats_server = EmbeddedNats(tmp_path_factory.mktemp("relay-permission"), port=0,
                               subject_prefix=STREAM.subject_prefix, stream=STREAM.name)  # fmt: skip
    nats_server.start()
    try:
        yield nats_server
    finally:
        nats_server.stop()


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, stream_name=STREAM.name, subject_prefix=STREAM.subject_prefix,
                    rate_limits=False, startup_timeout=20.0)  # fmt: skip


async def test_the_probe_tells_the_relay_user_from_one_who_may_not_publish_and_stores_nothing(
    server: EmbeddedNats, database_url: str, tmp_path: Path
) -> None:
    async with open_runtime(_settings(tmp_path), database_url, server.url_for(APP), with_relay=False) as runtime:
        await ensure_stream(runtime.js, STREAM)
        assert not await may_publish_events(runtime.js, STREAM, timeout=1.0)
        before = (await runtime.js.stream_info(STREAM.name)).state.messages
    async with open_runtime(_settings(tmp_path), database_url, server.url_for(APP),
                            relay_url=server.url_for(RELAY)) as runtime:  # fmt: skip
        assert await may_publish_events(runtime.relay.js, STREAM)
        assert (await runtime.js.stream_info(STREAM.name)).state.messages == before


async def test_a_relay_without_a_user_who_may_publish_events_stops_start_up_naming_the_setting(
    server: EmbeddedNats, database_url: str, tmp_path: Path
) -> None:
    with pytest.raises(StartupError) as refused:
        async with open_runtime(_settings(tmp_path), database_url, server.url_for(APP)):
            pass
    line = str(refused.value)
    assert "\n" not in line
    assert f"may not publish to {STREAM.subject_prefix}.events.>" in line
    assert "WATTLEDGER_NATS_RELAY_URL" in line


async def test_a_process_without_the_relay_part_opens_no_relay_connection(
    server: EmbeddedNats, database_url: str, tmp_path: Path
) -> None:
    async with open_runtime(_settings(tmp_path), database_url, server.url_for(APP),
                            relay_url=server.url_for(RELAY), with_relay=False) as runtime:  # fmt: skip
        assert runtime.relay.js is runtime.js
    async with open_runtime(_settings(tmp_path), database_url, server.url_for(APP),
                            relay_url=server.url_for(RELAY)) as runtime:  # fmt: skip
        assert runtime.relay.js is not runtime.js
