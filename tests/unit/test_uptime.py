"""Uptime from a device's events, exact to the microsecond the events carry."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import uuid4

import pytest

from domain.device import Device
from domain.errors import InvalidRange
from domain.uptime import parse_period, uptime

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


def history(*steps: tuple[type, datetime]) -> list[object]:
    """A device added at T0, then the given events (class, time), as the stream holds them."""
    device_id = uuid4()
    events: list[object] = [Device.Added(
        originator_id=device_id, originator_version=1, timestamp=T0, address="10.0.0.1", alias="a", model="HS110",
        device_type="plug", mac="m", outlets=[], actor="t",
        originator_topic="domain.device:Device",
    )]  # fmt: skip
    for version, (kind, moment) in enumerate(steps, start=2):
        fields = {"missed_polls": 3} if kind is Device.WentOffline else {}
        if kind is Device.Restored:
            fields = {"alias": "a", "model": "HS110", "device_type": "plug", "mac": "m", "outlets": []}
        events.append(kind(originator_id=device_id, originator_version=version, timestamp=moment, actor="t", **fields))
    return events


def test_outages_inside_the_window_are_exact_and_an_open_one_runs_to_now() -> None:
    events = history((Device.WentOffline, at(hours=1)), (Device.CameOnline, at(hours=1, seconds=90.5)),
                     (Device.WentOffline, at(hours=5)))  # fmt: skip
    result = uptime(events, at(hours=-18), at(hours=6))
    assert result.watched_seconds == 6 * 3600  # nothing before the add is counted
    assert result.online_seconds == 6 * 3600 - 90.5 - 3600
    assert result.percentage == round(100 * (21600 - 3690.5) / 21600, 4)
    assert [(o.start, o.end, o.seconds) for o in result.outages] == [
        (at(hours=1), at(hours=1, seconds=90.5), 90.5), (at(hours=5), None, 3600.0),
    ]


def test_an_outage_across_the_window_start_counts_from_the_start_and_removal_is_not_watched() -> None:
    events = history((Device.WentOffline, at(hours=1)), (Device.CameOnline, at(hours=3)),
                     (Device.Removed, at(hours=4)), (Device.Restored, at(hours=5)))  # fmt: skip
    result = uptime(events, at(hours=2), at(hours=6))
    assert result.watched_seconds == 3 * 3600
    assert result.online_seconds == 2 * 3600
    assert [(o.start, o.end) for o in result.outages] == [(at(hours=2), at(hours=3))]


def test_a_window_before_the_add_watches_nothing_and_repeated_events_change_nothing() -> None:
    assert uptime(history(), at(hours=-5), at(hours=-1)).percentage is None
    events = history((Device.WentOffline, at(hours=1)), (Device.WentOffline, at(hours=2)),
                     (Device.CameOnline, at(hours=3)), (Device.CameOnline, at(hours=4)))  # fmt: skip
    result = uptime(events, T0, at(hours=10))
    assert [(o.start, o.end) for o in result.outages] == [(at(hours=1), at(hours=3))]
    assert result.percentage == 80.0


def test_periods_are_whole_hours_days_or_weeks() -> None:
    assert parse_period("24h") == timedelta(hours=24)
    assert parse_period("7d") == timedelta(days=7)
    assert parse_period("2w") == timedelta(weeks=2)
    assert parse_period("720") == timedelta(hours=720)
    for bad in ("", "0d", "1.5d", "7 days", "367d", "8785", "-1h", "1y"):
        with pytest.raises(InvalidRange):
            parse_period(bad)
