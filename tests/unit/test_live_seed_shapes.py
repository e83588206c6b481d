"""Every `device_update` the live endpoints send has the fields the seed's clients read."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from adapters.contract import Envelope
from adapters.live_events import seed_message

SEED_UPDATE_FIELDS = {"is_on", "current_power_w", "timestamp"}
"""`kasa-monitor-api.md` § WebSocket Events: the `data` of a `device_update`."""
DEVICE = uuid.UUID(int=7)


def envelope(event: str, data: dict[str, Any]) -> Envelope[dict[str, Any]]:
    return Envelope(notification_id=1, originator_id=DEVICE, version=2, aggregate="device", event=event,
                    timestamp=datetime(2026, 5, 1, 12, tzinfo=timezone.utc), actor="poller", data=data)  # fmt: skip


def test_a_relay_switch_is_a_device_update_with_the_seeds_fields_its_power_unknown() -> None:
    message = seed_message(envelope("StateChanged", {"is_on": False, "outlet_index": None}), "127.0.0.9:9999")
    assert message is not None and message["event"] == "device_update"
    assert SEED_UPDATE_FIELDS <= set(message["data"])
    assert message["data"]["is_on"] is False and message["data"]["current_power_w"] is None
    assert message["data"]["timestamp"] == "2026-05-01T12:00:00Z"
